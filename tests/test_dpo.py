"""Diffusion-DPO (train/dpo.py): the score, the draws and the loss against hand computations; policy = reference
gives margins of exactly 0 and a loss of exactly ln 2; shared draws cut the variance of the preference score; and
the trainer: step-0 validation at ln 2, learning on a toy preference, and a run with cached reference scores,
preempted and resumed, equal to an uninterrupted run that scores the reference at every step (that one in
tests/test_train_resume.py)."""

import copy
import math
import os

import pytest
import torch
import yaml
from toy_runs import ToyProject, rows_of

from train.backbones import build_backbone
from train.dpo import answer_scores, pair_draws, pair_scores, preference_loss, preference_metrics
from train.noise import get_noise

NOISE = get_noise({"type": "loglinear", "eps": 1e-3})
V, MASK = 20, 19


def tiny_dit(seed=0, **spec):
    torch.manual_seed(seed)
    return build_backbone({"kind": "dit", **spec}, V, "tiny", 0.0, causal=False).eval()


def random_pairs(m=6, length=12, prompt=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randint(0, MASK, (m, length), generator=gen)
    rejected = chosen.clone()
    rejected[:, prompt:] = torch.randint(0, MASK, (m, length - prompt), generator=gen)
    mask = torch.zeros(m, length, dtype=torch.bool)
    mask[:, prompt:] = True
    return chosen, mask, rejected, mask.clone()


# ----------------------------------------------------------------------------------------------------------
# The method


def test_loss_values_against_hand_computation():
    h = torch.tensor([0.0, 2.0, -1.0])
    beta, eps = 0.5, 0.1
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    want = [-(1 - eps) * math.log(sig(beta * x)) - eps * math.log(sig(-beta * x)) for x in h.tolist()]
    assert preference_loss(h, beta, "sigmoid", eps).tolist() == pytest.approx(want, rel=1e-6)
    assert preference_loss(h, beta, "ipo").tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in h.tolist()])
    assert float(preference_loss(torch.zeros(1), 0.1, "sigmoid")) == pytest.approx(math.log(2), abs=1e-7)
    with pytest.raises(ValueError, match="dpo.loss"):
        preference_loss(h, beta, "hinge")


def test_metrics_use_trl_names_and_definitions():
    m = preference_metrics(
        2.0,
        torch.tensor([-3.0, -5.0]),
        torch.tensor([-4.0, -4.0]),
        torch.tensor([-3.5, -4.5]),
        torch.tensor([-4.0, -4.5]),
    )
    assert m["rewards/chosen"].tolist() == [1.0, -1.0]
    assert m["rewards/rejected"].tolist() == [0.0, 1.0]
    assert m["rewards/margins"].tolist() == [1.0, -2.0]
    assert m["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert m["logps/chosen"].tolist() == [-3.0, -5.0]


def test_draws_are_stratified_and_a_pure_function_of_seed_pair_and_epoch():
    pairs, epochs = torch.tensor([3, 7, 3]), torch.tensor([0, 0, 1])
    t, u = pair_draws(5, pairs, epochs, n=4, length=9)
    assert t.shape == (3, 4) and u.shape == (3, 4, 9)
    for j in range(4):  # draw j lies in its stratum [j/n, (j+1)/n) (scaled into [eps, 1])
        assert bool(((t[:, j] >= 1e-3 + (1 - 1e-3) * j / 4) & (t[:, j] <= 1e-3 + (1 - 1e-3) * (j + 1) / 4)).all())
    t2, u2 = pair_draws(5, pairs[:1], epochs[:1], n=4, length=9)  # the same pair alone: the same draws
    assert torch.equal(t2[0], t[0]) and torch.equal(u2[0], u[0])
    assert not torch.equal(t[0], t[2])  # another epoch, other draws
    t3, _ = pair_draws(5, pairs, epochs, n=4, length=9, stream=1)
    assert not torch.equal(t3, t)


def test_answer_score_equals_the_elbo_by_hand():
    """n = 1 draw, one row: B = -sum over masked answer positions of (1/t) * -log p(x0_i | x_t) (loglinear)."""
    model = tiny_dit()
    ids, mask, _, _ = random_pairs(m=1)
    t = torch.tensor([[0.6]])
    u = torch.rand(1, 1, ids.shape[1], generator=torch.Generator().manual_seed(1))
    got = answer_scores(model, ids, mask, t, u, NOISE, MASK)
    move = float(-torch.expm1(-NOISE.total(t[0])))
    masked = mask[0] & (u[0, 0] < move)
    assert masked.sum() >= 1
    x_t = torch.where(masked, torch.full_like(ids[0], MASK), ids[0])
    with torch.no_grad():
        logits = model(x_t[None], NOISE.total(t[0]))[0].float()
    logits[:, MASK] = float("-inf")
    nll = -logits.log_softmax(-1)[masked, ids[0][masked]]
    weight = float(NOISE.rate(t[0]) / torch.expm1(NOISE.total(t[0])))
    with torch.no_grad():
        assert float(got) == pytest.approx(-(weight * nll).sum().item(), rel=1e-5)
    assert weight == pytest.approx(1 / 0.6, rel=1e-3)  # loglinear: w(t) = 1/t (eps shifts it slightly)


@pytest.mark.parametrize("backbone", ["dit", "bert"])
def test_policy_equal_to_reference_gives_zero_margin_and_ln2(backbone):
    """Shared draws: with policy = reference every margin is exactly 0 and the sigmoid loss exactly ln 2, for any
    data, beta and draws (a masked LM with dropout in its config too: the DPO trainer switches dropout off)."""
    from train.dpo import disable_dropout

    if backbone == "dit":
        policy = tiny_dit(seed=3)
    else:
        torch.manual_seed(3)
        policy = build_backbone(
            {
                "kind": "masked_lm",
                "config": {
                    "model_type": "bert",
                    "hidden_size": 32,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                    "max_position_embeddings": 64,
                    "vocab_size": V,
                    "hidden_dropout_prob": 0.1,
                },
            },
            V,
            "tiny",
            0.0,
            causal=False,
        )
    reference = copy.deepcopy(policy)
    disable_dropout(policy), disable_dropout(reference)
    policy.train()
    reference.eval()
    chosen, cm, rejected, rm = random_pairs(m=8)
    t, u = pair_draws(0, torch.arange(8), torch.zeros(8, dtype=torch.long), n=3, length=chosen.shape[1])
    pc, pr = pair_scores(policy, chosen, cm, rejected, rm, t, u, NOISE, MASK)
    with torch.no_grad():
        rc, rr = pair_scores(reference, chosen, cm, rejected, rm, t, u, NOISE, MASK)
    h = (pc - rc) - (pr - rr)
    assert torch.equal(h, torch.zeros_like(h))
    for beta in (0.05, 1.0, 10.0):
        assert float(preference_loss(h, beta, "sigmoid").mean().detach()) == pytest.approx(math.log(2), abs=1e-7)
    loss = preference_loss(h, 0.1, "sigmoid").mean()
    loss.backward()  # the gradient still flows (into the policy only)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_shared_draws_cut_the_variance_of_the_preference_score():
    """Policy = reference perturbed: h over 64 draw sets has a far smaller variance when policy and reference
    share times and masks than when each draws its own."""
    reference = tiny_dit(seed=4)
    with torch.no_grad():  # away from the zero-initialised head, whose uniform output scores every answer alike
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    chosen, cm, rejected, rm = random_pairs(m=4, seed=2)
    rows = torch.arange(4)
    shared, independent = [], []
    with torch.no_grad():
        for k in range(64):
            t, u = pair_draws(k, rows, torch.zeros_like(rows), 2, chosen.shape[1])
            t2, u2 = pair_draws(k + 1000, rows, torch.zeros_like(rows), 2, chosen.shape[1])
            pc, pr = pair_scores(policy, chosen, cm, rejected, rm, t, u, NOISE, MASK)
            rc, rr = pair_scores(reference, chosen, cm, rejected, rm, t, u, NOISE, MASK)
            rc2, rr2 = pair_scores(reference, chosen, cm, rejected, rm, t2, u2, NOISE, MASK)
            shared.append((pc - rc) - (pr - rr))
            independent.append((pc - rc2) - (pr - rr2))
    ratio = torch.stack(independent).var(0).mean() / torch.stack(shared).var(0).mean()
    assert ratio > 20, f"variance ratio independent / shared = {float(ratio):.1f}"


# ----------------------------------------------------------------------------------------------------------
# The trainer on a toy preference: chosen continues an arithmetic progression, rejected breaks it


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A base model trained 80 steps on progressions (stage-3 blocks), then 12 dpo steps on the toy preference with
    the reference scored at every step (cache_reference: false). (The dpo run preempted and resumed with cached
    reference scores equals the uncached one: tests/test_train_resume.py.)"""
    train = {
        "warmup_steps": 2,
        "max_steps": 80,
        "ema": 0.0,
        "dropout": 0.0,
        "eval_every": 40,
        "eval_batches": 2,
        "save_every": 4,
    }
    runs = {"base": {"max_steps": 80}, "dpo": {"max_steps": 12, "eval_every": 4}}
    project = ToyProject.build(
        tmp_path_factory.mktemp("dpo"), train=train, runs=runs, dpo={"cache_reference": False}, stage_rows=128
    )
    out = project.root / "dpo-uninterrupted"
    done = project.train("dpo", out)
    assert done.returncode == 0, done.log[-3000:]
    return out, done.log


def test_step0_validation_is_ln2_and_training_learns_the_preference(uninterrupted):
    out, log = uninterrupted
    rows = rows_of(out)
    first = rows[0]
    assert (first["step"], first["split"]) == ("0", "val")
    assert float(first["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(first["rewards/margins"]) == 0.0 and float(first["rewards/accuracies"]) == 0.0
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "nll_loss",
        "memory_mb",
        "lr",
        "grad_norm",
    ):
        assert rows[1][key] != "", key  # every TRL column filled on a train row
    last = [r for r in rows if r["split"] == "val"][-1]
    assert last["step"] == "12"
    assert float(last["loss"]) < math.log(2) - 0.05, last
    assert float(last["rewards/accuracies"]) > 0.7, last
    assert float(last["logps/chosen"]) > float(last["logps/rejected"])
    assert "dpo reference scores" not in log and "checkpoints" not in os.listdir(out)  # scored at every step
    meta = yaml.safe_load((out / "config.json").read_text())
    assert meta["kind"] == "dpo" and meta["dpo"]["beta"] == 0.5 and meta["reference"].endswith("base")


def test_a_run_overrides_the_dpo_training_keys_only():
    from common.config import ConfigError, validate_config
    from train.settings import resolve

    def config(run_dpo):
        return {
            "stages": {"lengths": [4, 8, 16]},
            "dpo": {"beta": 0.2, "n_train": 10},
            "runs": {
                "sft": {"kind": "sft", "objective": "mdlm"},
                "dpo": {"kind": "dpo", "objective": "mdlm", "init_from": "sft", "dpo": run_dpo},
            },
        }

    s = resolve(validate_config(config({"sft_weight": 1.0, "loss": "ipo"})), "dpo")
    assert s.dpo == {
        "beta": 0.2,
        "loss": "ipo",
        "label_smoothing": 0.0,
        "sft_weight": 1.0,
        "time_samples": 4,
        "reference": None,
    }
    with pytest.raises(ConfigError, match="n_train"):  # the pairs are shared by every dpo run
        validate_config(config({"n_train": 5}))


@pytest.mark.parametrize(
    "section,run,keys",
    [
        ({"loss": "ipo", "label_smoothing": 0.1}, {}, ("dpo.loss", "dpo.label_smoothing")),
        ({"label_smoothing": 0.1}, {"loss": "ipo"}, ("runs.dpo.dpo.loss", "dpo.label_smoothing")),
        ({"loss": "ipo"}, {"label_smoothing": 0.2}, ("dpo.loss", "runs.dpo.dpo.label_smoothing")),
    ],
)
def test_ipo_with_label_smoothing_is_refused_naming_the_run_and_both_keys(section, run, keys):
    """IPO has no label smoothing (train/dpo.preference_loss): the combination, from the section or a run's own
    dpo keys, stops validate_config instead of training without the smoothing asked for."""
    from common.config import ConfigError, validate_config

    def config(section, run):
        return {
            "stages": {"lengths": [4, 8, 16]},
            "dpo": section,
            "runs": {
                "sft": {"kind": "sft", "objective": "mdlm"},
                "dpo": {"kind": "dpo", "objective": "mdlm", "init_from": "sft", "dpo": run},
            },
        }

    with pytest.raises(ConfigError) as err:
        validate_config(config(section, run))
    message = str(err.value)
    assert "runs.dpo (kind dpo)" in message and all(f"{k} is" in message for k in keys), message
    # either key alone is fine, and a run may switch the combination off
    validate_config(config({**section, **run, "label_smoothing": 0.0}, {}))
    validate_config(config({**section, **run, "loss": "sigmoid"}, {}))
    validate_config(config(section, {**run, "label_smoothing": 0.0}))
    with pytest.raises(ValueError, match="dpo.label_smoothing"):
        preference_loss(torch.zeros(2), 0.1, "ipo", 0.1)
