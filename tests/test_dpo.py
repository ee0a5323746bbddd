"""Diffusion-DPO (train/dpo.py): the score, the draws and the loss against hand computations; policy = reference
gives margins of exactly 0 and a loss of exactly ln 2; shared draws cut the variance of the preference score; and
the trainer: step-0 validation at ln 2, learning on a toy preference, and a run with cached reference scores,
preempted and resumed, equal to an uninterrupted run that scores the reference at every step."""

import copy
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from train.backbones import build_backbone
from train.dpo import answer_scores, pair_draws, pair_scores, preference_loss, preference_metrics
from train.noise import get_noise
from train.toydata import write_stage_shards

ROOT = Path(__file__).resolve().parents[1]
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


PROMPT, ANSWER = 6, 10
RUNNER = """
import os, signal, sys
from train.__main__ import main
kill_at = int(os.environ.get("KILL_AT", "0"))
def on_step(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGTERM)
sys.exit(main(sys.argv[1:], on_step=on_step))
"""


def preference_table(rows: int, n_words: int, seed: int) -> pa.Table:
    gen = torch.Generator().manual_seed(seed)
    length = PROMPT + ANSWER
    a = torch.randint(0, n_words, (rows, 1), generator=gen)
    b = torch.randint(1, 4, (rows, 1), generator=gen)
    chosen = (a + b * torch.arange(length)) % n_words
    rejected = chosen.clone()
    rejected[:, PROMPT:] = torch.randint(0, n_words, (rows, ANSWER), generator=gen)
    mask = [[0] * PROMPT + [1] * ANSWER] * rows

    def lists(values):
        return pa.array(values, type=pa.list_(pa.int32()))

    return pa.table(
        {
            "pair_id": [f"p{i}" for i in range(rows)],
            "chosen_ids": lists(chosen.tolist()),
            "chosen_mask": lists(mask),
            "rejected_ids": lists(rejected.tolist()),
            "rejected_mask": lists(mask),
        }
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A base model trained 80 steps on progressions (stage-3 blocks), the preference shards and a config."""
    tmp = tmp_path_factory.mktemp("dpo")
    data = write_stage_shards(tmp / "data", rows=128, val_rows=32, lengths=(4, 8, 16), n_words=61)
    for split, rows, seed in (("train", 96, 0), ("validation", 32, 1)):
        (tmp / "pairs" / split).mkdir(parents=True)
        pq.write_table(preference_table(rows, 61, seed), tmp / "pairs" / split / "shard_00000.parquet")
    train_keys = {
        "model": "tiny",
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "max_steps": 80,
        "ema": 0.0,
        "dropout": 0.0,
        "eval_every": 40,
        "eval_batches": 2,
        "save_every": 4,
        "seed": 0,
    }
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "sft": {"length": PROMPT + ANSWER},
        "dpo": {"beta": 0.5, "time_samples": 2},
        "runs": {
            "base": {"kind": "single", "method": "keybert_no_stopword", "objective": "mdlm"},
            "dpo": {
                "kind": "dpo",
                "objective": "mdlm",
                "init_from": "base",
                "max_steps": 12,
                "lr": 2e-3,
                "eval_every": 4,
            },
        },
        "train": train_keys,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "runner.py").write_text(RUNNER)
    done = run_train(tmp, "base", data["train"], data["validation"], data["tokenizer"], tmp / "base")
    assert done.returncode == 0, done.log[-3000:]
    return tmp, data


def run_train(tmp, run, train, val, tokenizer, out, *extra, kill_at=0, config="config.yaml"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "KILL_AT": str(kill_at)}
    cmd = [
        sys.executable,
        str(tmp / "runner.py"),
        "--config",
        str(tmp / config),
        "--run",
        run,
        "--train-shards",
        train,
        "--val-shards",
        val,
        "--tokenizer",
        tokenizer,
        "--out",
        str(out),
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    done.log = done.stdout + done.stderr
    return done


def run_dpo(toy, out, *extra, kill_at=0, config="config.yaml"):
    tmp, data = toy
    return run_train(
        tmp,
        "dpo",
        str(tmp / "pairs/train/shard_00000.parquet"),
        str(tmp / "pairs/validation/shard_00000.parquet"),
        data["tokenizer"],
        out,
        "--init",
        str(tmp / "base"),
        *extra,
        kill_at=kill_at,
        config=config,
    )


def rows_of(out):
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(toy):
    """The yardstick run, with the reference scored at every step (cache_reference: false); the preempted run
    below caches them, so its equality with this one also shows the cache changes nothing."""
    tmp = toy[0]
    config = yaml.safe_load((tmp / "config.yaml").read_text())
    config["dpo"]["cache_reference"] = False
    (tmp / "config-nocache.yaml").write_text(yaml.safe_dump(config))
    out = tmp / "dpo-uninterrupted"
    done = run_dpo(toy, out, config="config-nocache.yaml")
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


def test_preempted_and_resumed_with_cached_reference_equals_uninterrupted(toy, uninterrupted):
    """cache_reference is a speed choice: a run that caches the reference's scores, preempted and resumed (reading
    the cache back), computes the losses and weights of the uncached uninterrupted run."""
    out = toy[0] / "dpo-preempted"
    first = run_dpo(toy, out, kill_at=6)
    assert first.returncode == 75, first.log[-3000:]
    assert "dpo reference scores" in first.log
    assert (out / "checkpoints" / "reference_scores.pt").is_file()
    second = run_dpo(toy, out)
    assert second.returncode == 0, second.log[-3000:]
    assert "resuming from" in second.log and "read from" in second.log  # the cached scores are reused
    want, got = rows_of(uninterrupted[0]), rows_of(out)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for a, b in zip(want, got):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-6, abs=1e-7), (a, b)
    w_ref, w_out = load_file(uninterrupted[0] / "model.safetensors"), load_file(out / "model.safetensors")
    for name in w_ref:
        assert (w_ref[name] - w_out[name]).abs().max().item() <= 1e-6, name


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
