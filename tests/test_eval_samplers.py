"""Samplers over a clean prefix: the prefix never changes, no mask survives, ddpm_cache replays ddpm, the
one-step posteriors match hand computations, and semi-AR blocks tell the network the masked share."""

import pytest
import torch

from eval.denoiser import Denoiser
from eval.samplers import (
    SAMPLERS,
    _bisect_time,
    autoregressive,
    sample,
    sample_categorical,
    time_grid,
    time_of_mask_share,
)
from train.model import DiffusionTransformer, ModelConfig
from train.noise import CosineNoise, GeometricNoise, LogLinearNoise

torch.set_num_threads(1)

VOCAB, MASK = 24, 23
PREFIX_LEN, TARGET_LEN = 5, 12


def tiny_model(causal=False, seed=0, time_conditioning=True):
    """A random-weight transformer whose logits are far from uniform (adaLN-zero starts at zero)."""
    torch.manual_seed(seed)
    model = DiffusionTransformer(
        ModelConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=2,
            cond_dim=16,
            causal=causal,
            time_conditioning=time_conditioning,
        )
    )
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def tiny_denoiser(objective="mdlm", time_conditioning=True, prefix_len=PREFIX_LEN):
    return Denoiser(tiny_model(time_conditioning=time_conditioning), objective, MASK, prefix_len)


def prefix_batch(batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, MASK, (batch, PREFIX_LEN), generator=g)


def flat_importance(sampler):
    """The estimate the uncertainty sampler needs (eval/samplers.uncertainty_steps), flat; no other sampler takes
    one."""
    return (lambda x, sigma: torch.zeros(x.shape)) if sampler == "uncertainty" else None


@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("block_size", [None, 5])
def test_prefix_kept_and_no_mask_survives(objective, sampler, block_size):
    denoiser = tiny_denoiser(objective)
    prefix = prefix_batch()
    seen_prefixes = []
    inner = denoiser.model

    def spy(x, sigma, prefix_len):  # the prefix the network sees at every call is the clean one
        seen_prefixes.append(x[:, :prefix_len].clone())
        return inner(x, sigma, prefix_len)

    denoiser.model = spy
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = sample(
            denoiser,
            LogLinearNoise(),
            prefix,
            TARGET_LEN,
            sampler,
            steps=7,
            temperature=0.9,
            block_size=block_size,
            generator=g,
            importance=flat_importance(sampler),
        )
    assert out.shape == (3, TARGET_LEN)
    assert not (out == MASK).any()
    # ddpm_cache calls the network on a subset of rows: every row it sees starts with one of the clean prefixes
    clean = {tuple(row) for row in prefix.tolist()}
    assert seen_prefixes and all(tuple(row) in clean for p in seen_prefixes for row in p.tolist())
    assert ((out >= 0) & (out < VOCAB)).all()


def test_one_step_leaves_no_mask_even_at_high_noise():
    with torch.no_grad():
        out = sample(tiny_denoiser(), LogLinearNoise(), prefix_batch(), TARGET_LEN, "ddpm", steps=1)
    assert not (out == MASK).any()


@pytest.mark.parametrize("block_size", [None, 4])
@pytest.mark.parametrize("time_conditioning", [False, True])
def test_ddpm_cache_equals_ddpm_under_same_stream(time_conditioning, block_size):
    denoiser = tiny_denoiser("mdlm", time_conditioning=time_conditioning)
    prefix = prefix_batch(batch=4)
    outs, calls = {}, {}
    for sampler in ("ddpm", "ddpm_cache"):
        denoiser.calls = 0
        with torch.no_grad():
            outs[sampler] = sample(
                denoiser,
                LogLinearNoise(),
                prefix,
                TARGET_LEN,
                sampler,
                steps=200,
                temperature=0.8,
                block_size=block_size,
                generator=torch.Generator().manual_seed(123),
            )
        calls[sampler] = denoiser.calls
    assert torch.equal(outs["ddpm"], outs["ddpm_cache"])
    assert calls["ddpm"] == 200 - 200 % (TARGET_LEN // (block_size or TARGET_LEN))  # steps // blocks per block
    # a call only at steps where some row unmasks a position: at most 4 rows x 12 tokens of the 200 steps
    assert calls["ddpm_cache"] <= 4 * TARGET_LEN


def test_same_seed_same_samples_different_seed_different():
    def run(seed):
        with torch.no_grad():
            return sample(
                tiny_denoiser(),
                LogLinearNoise(),
                prefix_batch(),
                TARGET_LEN,
                "confidence",
                6,
                generator=torch.Generator().manual_seed(seed),
            )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_sample_categorical_frequencies():
    weights = torch.tensor([1.0, 3.0, 0.0, 6.0]).expand(40000, 4)
    draws = sample_categorical(weights, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / 40000
    assert freq[2] == 0
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.0, 0.6], dtype=torch.float64), atol=0.01)


class FixedDenoiser:
    """A denoiser whose p(x_0 | x_t) at a masked position is a fixed distribution (as SUBS, carry-over)."""

    mask_id = 3

    def __init__(self, probs):
        self.probs = torch.tensor(probs)

    def x0_log_probs(self, x, sigma):
        out = self.probs.log().expand(*x.shape, 4).clone()
        carry = torch.full_like(out, float("-inf")).scatter(-1, x[..., None], 0.0)
        return torch.where((x != self.mask_id)[..., None], carry, out)

    def log_score(self, x, sigma, network_sigma=None):
        return self.x0_log_probs(x, sigma) - torch.log(torch.expm1(sigma))[:, None, None]


@pytest.mark.parametrize("sampler", ["ddpm", "analytic", "euler"])
def test_two_step_unmask_rate_matches_posterior(sampler):
    """With 2 steps, after the first step a position is unmasked with probability
    (exp(-sigma(1/2)) - exp(-sigma(1))) / (1 - exp(-sigma(1))) (ddpm; analytic with exact scores), or
    dt sigma'(1) sum_y s_y = dt sigma'(1) / expm1(sigma(1)) (euler), and then takes token y with p(y)."""
    noise = LogLinearNoise(eps=1e-3)
    denoiser = FixedDenoiser([0.5, 0.3, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    x = torch.full((20000, 1), 3)
    editable = torch.ones(1, dtype=torch.bool)
    from eval.samplers import analytic_steps, ddpm_steps, euler_steps

    s1, s_half = (
        noise.total(torch.tensor(1.0, dtype=torch.float64)),
        noise.total(torch.tensor(0.5, dtype=torch.float64)),
    )
    expected = float((torch.exp(-s_half) - torch.exp(-s1)) / (1 - torch.exp(-s1)))
    if sampler == "euler":
        expected = float(0.5 * noise.rate(torch.tensor(1.0, dtype=torch.float64)) / torch.expm1(s1))
    # one step of a two-step grid: run the step function with steps=2 but stop after the first by hand
    grid = time_grid(2)
    assert grid.tolist() == [1.0, 0.5, 0.0]
    step = {"ddpm": ddpm_steps, "analytic": analytic_steps, "euler": euler_steps}[sampler]

    class StopAfterFirst(Exception):
        pass

    calls = []

    def x0(x_, sigma):
        if calls:
            raise StopAfterFirst(x_)
        calls.append(1)
        return FixedDenoiser.x0_log_probs(denoiser, x_, sigma)

    def score(x_, sigma, network_sigma=None):
        return x0(x_, sigma) - torch.log(torch.expm1(sigma))[:, None, None]

    denoiser.x0_log_probs, denoiser.log_score = x0, score
    with pytest.raises(StopAfterFirst) as stop:
        step(denoiser, x, editable, noise, 2, 1.0, g)
    x1 = stop.value.args[0]
    unmasked = (x1 != 3).double().mean().item()
    assert abs(unmasked - expected) < 0.012
    freq = torch.bincount(x1[x1 != 3], minlength=4).double() / (x1 != 3).sum()
    assert torch.allclose(freq[:3], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.02)
    assert abs(expected - 0.5) < 0.01  # loglinear: move(t) = (1 - eps) t, so half the masks go at t = 1/2


def test_confidence_reveals_most_confident_first():
    """One of two steps: the schedule keeps round(4 * move(1/2)) = 2 of 4 masked; the two revealed are the
    positions whose proposal is most probable."""

    class PositionDenoiser(FixedDenoiser):
        def x0_log_probs(self, x, sigma):
            # position j puts probability peak_j on token 0 (a certain proposal when peak = 1)
            peaks = torch.tensor([0.4, 1.0, 0.34, 1.0])
            probs = torch.stack([peaks, (1 - peaks) / 2, (1 - peaks) / 2, torch.zeros(4)], -1)
            out = probs.log().expand(x.shape[0], 4, 4).clone()
            carry = torch.full_like(out, float("-inf")).scatter(-1, x[..., None], 0.0)
            return torch.where((x != self.mask_id)[..., None], carry, out)

    from eval.samplers import confidence_steps

    denoiser = PositionDenoiser([0.25] * 4)
    x = torch.full((50, 4), 3)
    calls = []
    inner = denoiser.x0_log_probs

    def spy(x_, sigma):
        calls.append(x_.clone())
        return inner(x_, sigma)

    denoiser.x0_log_probs = spy
    out = confidence_steps(
        denoiser, x, torch.ones(4, dtype=torch.bool), LogLinearNoise(), 2, 1.0, torch.Generator().manual_seed(0)
    )
    after_first = calls[1]
    assert (after_first[:, [1, 3]] == 0).all()
    assert (after_first[:, [0, 2]] == 3).all()
    assert not (out == 3).any()


def test_autoregressive_sampler_never_emits_mask():
    model = tiny_model(causal=True)
    with torch.no_grad():
        out = autoregressive(
            model, bos_id=0, mask_id=MASK, batch=4, target_len=9, generator=torch.Generator().manual_seed(0)
        )
    assert out.shape == (4, 9) and not (out == MASK).any()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(tiny_denoiser(), LogLinearNoise(), prefix_batch(), 4, "nope", 4)
    with pytest.raises(ValueError, match="temperature"):
        sample(tiny_denoiser(), LogLinearNoise(), prefix_batch(), 4, "ddpm", 4, temperature=0)


def test_semi_ar_fills_blocks_left_to_right():
    """While block j is being denoised, blocks < j are complete and blocks > j are still all masks."""
    denoiser = tiny_denoiser("mdlm", time_conditioning=False)
    inner = denoiser.model
    seen = []

    def spy(x, sigma, prefix_len):
        seen.append(x[:, prefix_len:].clone())
        return inner(x, sigma, prefix_len)

    denoiser.model = spy
    with torch.no_grad():
        out = sample(
            denoiser,
            LogLinearNoise(),
            prefix_batch(),
            TARGET_LEN,
            "semi_ar",
            steps=8,
            generator=torch.Generator().manual_seed(0),
        )  # 4 blocks of 3 tokens, 2 steps each
    assert not (out == MASK).any()
    for target in seen:
        masked = (target == MASK).any(0)
        first_open = int(masked.nonzero()[0]) if masked.any() else TARGET_LEN
        block = first_open // 3
        assert not (target[:, : block * 3] == MASK).any()
        assert (target[:, (block + 1) * 3 :] == MASK).all()


def test_model_without_time_conditioning_ignores_sigma():
    """Time conditioning is the network's own switch: the denoiser passes sigma on and the views agree."""
    x = torch.cat([prefix_batch(), torch.full((3, TARGET_LEN), MASK)], 1)
    for objective in ("mdlm", "sedd"):
        denoiser = tiny_denoiser(objective, time_conditioning=False)
        with torch.no_grad():
            low, high = (denoiser.x0_log_probs(x, torch.full((3,), s)) for s in (0.1, 5.0))
        assert torch.allclose(low, high, atol=1e-5)
    conditioned = tiny_denoiser("mdlm", time_conditioning=True)
    with torch.no_grad():
        assert not torch.allclose(
            conditioned.x0_log_probs(x, torch.full((3,), 0.1)),
            conditioned.x0_log_probs(x, torch.full((3,), 5.0)),
            atol=1e-3,
        )


class SquareNoise:
    """A schedule without a closed-form inverse here: sigma_bar(t) = 3 t^2."""

    def total(self, t):
        return 3 * t**2


@pytest.mark.parametrize(
    "noise",
    [LogLinearNoise(1e-3), LogLinearNoise(0.2), CosineNoise(1e-3), GeometricNoise(1e-4, 20.0), SquareNoise()],
    ids=lambda n: type(n).__name__,
)
def test_time_of_mask_share_inverts_the_mask_probability(noise):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    share = -torch.expm1(-noise.total(t))
    assert torch.allclose(time_of_mask_share(noise, share), t, atol=1e-6)
    assert torch.allclose(_bisect_time(noise, share), t, atol=1e-9)
    # shares the schedule never reaches are clamped to the ends of [0, 1]
    assert time_of_mask_share(noise, torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(1.0, abs=1e-12)
    assert time_of_mask_share(noise, torch.tensor([0.0], dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


class RecordingDenoiser(FixedDenoiser):
    """Records the noise level the network would be told at every call, with the sequence it is told it for."""

    def __init__(self):
        super().__init__([0.5, 0.3, 0.2, 0.0])
        self.heard = []

    def x0_log_probs(self, x, sigma):
        self.heard.append((x.clone(), sigma.clone()))
        return super().x0_log_probs(x, sigma)

    def log_score(self, x, sigma, network_sigma=None):
        self.heard.append((x.clone(), (sigma if network_sigma is None else network_sigma).clone()))
        return FixedDenoiser.x0_log_probs(self, x, sigma) - torch.log(torch.expm1(sigma))[:, None, None]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_semi_ar_blocks_tell_the_network_the_masked_share(sampler):
    """In blocks, the network is told sigma with 1 - exp(-sigma) = share of target positions still masked
    (loglinear: (1 - eps) t = share, capped at t = 1), not the block's own restarted t = 1."""
    eps, prefix_len, target_len = 0.05, 5, 12
    denoiser = RecordingDenoiser()
    prefix = torch.randint(0, 3, (6, prefix_len), generator=torch.Generator().manual_seed(2))
    sample(
        denoiser,
        LogLinearNoise(eps),
        prefix,
        target_len,
        sampler,
        steps=12,
        block_size=3,
        generator=torch.Generator().manual_seed(0),
        importance=flat_importance(sampler),
    )
    shares = []
    for x, sigma in denoiser.heard:
        share = (x[:, prefix_len:] == 3).double().mean(-1)
        told = -torch.expm1(-sigma.double())
        assert torch.allclose(told, share.clamp(max=1 - eps), atol=1e-6), (told, share)
        shares += share.tolist()
    # the later blocks were reached, where a restarted grid would have said "all masked"
    assert min(shares) <= 0.25 and max(shares) == 1.0
