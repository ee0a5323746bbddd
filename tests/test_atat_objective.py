"""Objective atat in use: the importance estimator learns, the loss reports its statistics, frequency
importance matches a hand computation, learned weights keep micro-batches consistent, and the uncertainty
sampler leaves no mask, keeps the prefix and replays under the same generator."""

import math

import numpy as np
import pytest
import torch

from eval.denoiser import Denoiser
from eval.samplers import NATIVE_OBJECTIVE, SAMPLERS, sample
from train.atat import atat_loss, learned_weights
from train.importance import (
    ImportanceEstimator,
    estimator_importance,
    estimator_loss,
    frequency_importance,
    importance_stats,
    load_importance,
    save_importance,
    unigram_counts,
)
from train.model import DiffusionTransformer, ModelConfig
from train.noise import LogLinearNoise, sample_times
from train.objectives import corrupt

torch.set_num_threads(1)

VOCAB, MASK = 24, 23


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    model = DiffusionTransformer(ModelConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, cond_dim=16))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


# -- the estimator learns ----------------------------------------------------------------------------------
PAIR_TOKENS = 16


def pair_batch(g, batch=32, pairs=6):
    """Copy-pair data: x0 = a a b b c c ..., each letter uniform over PAIR_TOKENS ids; noised by the loglinear
    schedule. The exact denoiser's surprisal at a masked position is 0 when its partner is visible and
    log(PAIR_TOKENS) when both are masked: a target the estimator can only match by reading x_t around it."""
    letters = torch.randint(0, PAIR_TOKENS, (batch, pairs), generator=g)
    x0 = letters.repeat_interleave(2, dim=1)
    t = sample_times(batch, g)
    sigma = LogLinearNoise().total(t)
    x_t = corrupt(x0, sigma, MASK, torch.rand(x0.shape, generator=g))
    masked = x_t == MASK
    partner = torch.arange(x0.shape[1]) ^ 1
    surprisal = torch.where(masked[:, partner], math.log(PAIR_TOKENS), 0.0)
    return x_t, sigma, masked, surprisal


def test_estimator_learns_a_toy_surprisal():
    torch.manual_seed(0)
    estimator = ImportanceEstimator(VOCAB, dim=16, kernel=3, layers=2)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    held_out = pair_batch(torch.Generator().manual_seed(99), batch=64)

    def held_out_stats():
        x_t, sigma, masked, surprisal = held_out
        with torch.no_grad():
            prediction = estimator(x_t, sigma)[masked]
        return importance_stats(prediction, surprisal[masked]), float(estimator_loss(prediction, surprisal[masked]))

    before, loss_before = held_out_stats()
    for _ in range(40):
        x_t, sigma, masked, surprisal = pair_batch(g)
        loss = estimator_loss(estimator(x_t, sigma)[masked], surprisal[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, loss_after = held_out_stats()
    assert before["importance_corr"] == 0.0 and before["importance_std"] == 0.0  # starts constant (1 nat)
    # without the parity of its position the estimator cannot tell which neighbour is the partner when one of
    # them is masked, so the best it can do is below 1; a constant guess stays at 0
    assert after["importance_corr"] > 0.7, after
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)


def test_importance_stats_by_hand():
    stats = importance_stats(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, 4.0, 8.0]), prefix="est")
    assert stats["est_mean"] == pytest.approx(7 / 3) and stats["est_min"] == 1.0 and stats["est_max"] == 4.0
    assert stats["est_std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3))
    assert stats["est_corr"] == pytest.approx(1.0)
    assert importance_stats(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0]))["importance_corr"] == pytest.approx(-1)


def test_estimator_size_is_small():
    assert 5_000 < ImportanceEstimator(2048).num_params() < 100_000


# -- atat_loss ---------------------------------------------------------------------------------------------
def batch(seed=0, rows=6, length=12):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, MASK - 1, (rows, length), generator=g)
    return x0, sample_times(rows, g), torch.rand(rows, length, generator=g)


def frequency_of(x0):
    return frequency_importance(unigram_counts([x0], VOCAB))


@pytest.mark.parametrize("variant", ["full", "learned", "frequency", "uniform"])
def test_stats_keys(variant):
    x0, t, u = batch()
    model, estimator = tiny_dit(), ImportanceEstimator(VOCAB, dim=8)
    loss, est_loss, stats = atat_loss(
        model, estimator, x0, None, t, u, LogLinearNoise(), MASK, variant, 0.5, frequency_of(x0)
    )
    assert set(stats) == {
        "atat_loss",
        "atat_nelbo",
        "atat_rate_term",
        "atat_strength",
        "atat_masked",
        "estimator_loss",
        "importance_mean",
        "importance_std",
        "importance_min",
        "importance_max",
        "importance_corr",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert stats["atat_loss"] == float(loss.detach()) and stats["estimator_loss"] == float(est_loss.detach())
    assert (stats["atat_rate_term"] != 0.0) == (variant in ("full", "frequency"))
    if variant in ("uniform", "frequency"):  # an estimator is optional there: then no estimator numbers
        _, none, fewer = atat_loss(model, None, x0, None, t, u, LogLinearNoise(), MASK, variant, 0.5, frequency_of(x0))
        assert none is None and not any(k.startswith(("importance", "estimator")) for k in fewer)


def test_variant_errors_name_the_key():
    x0, t, u = batch()
    model = tiny_dit()
    with pytest.raises(ValueError, match="atat.importance must be one of"):
        atat_loss(model, None, x0, None, t, u, LogLinearNoise(), MASK, "both", 1.0)
    with pytest.raises(ValueError, match="'learned' weights the loss by the learned estimator"):
        atat_loss(model, None, x0, None, t, u, LogLinearNoise(), MASK, "learned", 1.0)
    with pytest.raises(ValueError, match="'frequency' masks by frequency importance"):
        atat_loss(model, None, x0, None, t, u, LogLinearNoise(), MASK, "frequency", 1.0)


def test_learned_weights_have_mean_one_per_row():
    prediction = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0])
    rows = torch.tensor([0, 0, 0, 2, 2])
    g = learned_weights(prediction, rows, batch=3, strength=1.0)
    e = torch.exp(-torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(g[:3].double(), 3 * e / e.sum())
    assert torch.allclose(g[3:], torch.ones(2))  # equal predictions in a row: weight 1
    assert torch.equal(learned_weights(prediction, rows, 3, 0.0), torch.ones(5))


@pytest.mark.parametrize("variant", ["full", "learned", "frequency"])
def test_micro_batches_average_to_the_batch_loss(variant):
    """Weights are normalized within rows, never across them: two halves of a batch give its loss."""
    x0, t, u = batch(rows=8)
    model, estimator = tiny_dit(), ImportanceEstimator(VOCAB, dim=8)
    for p in estimator.parameters():
        torch.nn.init.normal_(p, std=0.5)
    frequency = frequency_of(x0)
    args = (LogLinearNoise(), MASK, variant, 1.0, frequency)
    with torch.no_grad():
        whole, _, _ = atat_loss(model, estimator, x0, None, t, u, *args)
        halves = [atat_loss(model, estimator, x0[s], None, t[s], u[s], *args)[0] for s in (slice(0, 4), slice(4, 8))]
    assert torch.allclose(whole, sum(halves) / 2, rtol=1e-5)


# -- frequency importance ----------------------------------------------------------------------------------
def test_unigram_counts_and_frequency_importance_by_hand():
    counts = unigram_counts([np.array([0, 0, 1]), torch.tensor([[0]])], vocab_size=3)
    assert counts.tolist() == [3, 1, 0]
    # add-one: f = (4, 2, 1) / 7; s = -log f; H = sum f s; S^2 = sum f (s - H)^2; z = (s - H) / S
    f = [4 / 7, 2 / 7, 1 / 7]
    s = [-math.log(v) for v in f]
    entropy = sum(a * b for a, b in zip(f, s))
    spread = math.sqrt(sum(a * (b - entropy) ** 2 for a, b in zip(f, s)))
    expected = [(b - entropy) / spread for b in s]
    z = frequency_importance(counts)
    assert z.tolist() == pytest.approx(expected, rel=1e-6)
    assert z[2] > z[1] > 0 > z[0]  # the rarest id is the most important
    assert frequency_importance(np.array([5, 5, 5])).tolist() == [0.0, 0.0, 0.0]


def test_unigram_counts_reject_bad_ids():
    with pytest.raises(ValueError, match=r"shard 3: token ids must lie in \[0, 3\).*got ids from 0 to 7"):
        unigram_counts([np.array([0, 7])], 3, where="shard 3")
    with pytest.raises(ValueError, match="integer token ids, got dtype float"):
        unigram_counts([np.array([0.5])], 3)


def test_estimator_round_trip(tmp_path):
    estimator = ImportanceEstimator(VOCAB, dim=8, kernel=3, layers=1)
    for p in estimator.parameters():
        torch.nn.init.normal_(p, std=0.5)
    frequency = torch.linspace(-1, 1, VOCAB)
    save_importance(tmp_path, estimator, frequency)
    loaded, loaded_frequency = load_importance(tmp_path)
    x, sigma = torch.randint(0, VOCAB, (2, 9)), torch.tensor([0.3, 2.0])
    assert torch.equal(loaded(x, sigma, 2), estimator(x, sigma, 2))
    assert torch.equal(loaded_frequency, frequency)
    with pytest.raises(FileNotFoundError, match="importance.safetensors: no importance estimator"):
        load_importance(tmp_path / "elsewhere")


# -- the uncertainty sampler -------------------------------------------------------------------------------
PREFIX_LEN, TARGET_LEN = 5, 12


def prefix_batch(rows=3, seed=1):
    return torch.randint(0, MASK, (rows, PREFIX_LEN), generator=torch.Generator().manual_seed(seed))


def test_uncertainty_is_a_registered_mdlm_sampler():
    assert "uncertainty" in SAMPLERS and NATIVE_OBJECTIVE["uncertainty"] == "mdlm"


@pytest.mark.parametrize("block_size", [None, 5])
def test_uncertainty_sampler_keeps_prefix_and_leaves_no_mask(block_size):
    denoiser = Denoiser(tiny_dit().eval(), "mdlm", MASK, PREFIX_LEN)
    estimator = ImportanceEstimator(VOCAB, dim=8)
    for p in estimator.parameters():
        torch.nn.init.normal_(p, std=0.5)
    seen = []
    inner = estimator_importance(estimator, PREFIX_LEN)

    def spy(x, sigma):
        seen.append(x[:, :PREFIX_LEN].clone())
        return inner(x, sigma)

    prefix = prefix_batch()
    with torch.no_grad():
        out = sample(
            denoiser,
            LogLinearNoise(),
            prefix,
            TARGET_LEN,
            "uncertainty",
            steps=7,
            block_size=block_size,
            generator=torch.Generator().manual_seed(0),
            importance=spy,
        )
    assert out.shape == (3, TARGET_LEN) and not (out == MASK).any()
    assert seen and all(torch.equal(p, prefix) for p in seen)


def test_uncertainty_sampler_replays_and_follows_the_estimate():
    denoiser = Denoiser(tiny_dit().eval(), "mdlm", MASK, PREFIX_LEN)
    prefix = prefix_batch(rows=4)

    def run(sampler, importance=None, seed=0):
        with torch.no_grad():
            return sample(
                denoiser,
                LogLinearNoise(),
                prefix,
                TARGET_LEN,
                sampler,
                steps=TARGET_LEN,
                temperature=0.9,
                generator=torch.Generator().manual_seed(seed),
                importance=importance,
            )

    estimator = ImportanceEstimator(VOCAB, dim=8)
    for p in estimator.parameters():
        torch.nn.init.normal_(p, std=0.5)
    importance = estimator_importance(estimator, PREFIX_LEN)
    assert torch.equal(run("uncertainty", importance), run("uncertainty", importance))
    assert not torch.equal(run("uncertainty", importance), run("uncertainty", importance, seed=1))
    # a flat estimate changes no ranking: the confidence sampler token for token (same random stream)
    flat = lambda x, sigma: torch.zeros(x.shape)  # noqa: E731
    assert torch.equal(run("uncertainty", flat), run("confidence"))

    # an estimate that calls the first target position very uncertain keeps it masked until the last step
    states = []

    def first_is_hard(x, sigma):
        states.append(x[:, PREFIX_LEN].clone())
        hard = torch.zeros(x.shape)
        hard[:, PREFIX_LEN] = 100.0
        return hard

    out = run("uncertainty", first_is_hard)
    assert len(states) == TARGET_LEN and all((s == MASK).all() for s in states)
    assert not (out == MASK).any()


def test_uncertainty_sampler_without_estimator_is_an_error():
    denoiser = Denoiser(tiny_dit().eval(), "mdlm", MASK, PREFIX_LEN)
    with pytest.raises(ValueError, match="sampler 'uncertainty' needs the importance estimator"):
        sample(denoiser, LogLinearNoise(), prefix_batch(), TARGET_LEN, "uncertainty", steps=3)
