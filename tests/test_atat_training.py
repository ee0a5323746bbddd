"""Objective atat in the trainer (train/trainer.py with train/atat.py): the uniform variant trains exactly as
objective mdlm (same losses at every step, same weights); the full variant logs its curriculum and the estimator's
statistics, validates with the plain MDLM NELBO, saves the estimator beside the model, and a preempted run resumed
equals an uninterrupted one. Tiny model, toy data, subprocesses, one thread."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from train.importance import IMPORTANCE_FILE, load_importance
from train.toydata import write_stage_shards
from train.trainer import ATAT_FIELDS

ROOT = Path(__file__).resolve().parents[1]
RUNNER = """
import os, signal, sys
from train.__main__ import main
kill_at = int(os.environ.get("KILL_AT", "0"))
def on_step(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGTERM)
sys.exit(main(sys.argv[1:], on_step=on_step))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atat")
    data = write_stage_shards(tmp / "data", rows=96, val_rows=32, lengths=(4, 8, 16))
    run = {"kind": "single", "method": "keybert_no_stopword"}
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "atat": {"stages": 3, "max_strength": 1.0, "estimator_dim": 16},
        "runs": {
            "mdlm": {**run, "objective": "mdlm"},
            "uniform": {**run, "objective": "atat", "atat": {"importance": "uniform"}},
            "full": {**run, "objective": "atat"},
        },
        "train": {
            "model": "tiny",
            "global_batch_size": 16,
            "micro_batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 3,
            "max_steps": 12,
            "ema": 0.9,
            "eval_every": 4,
            "eval_batches": 1,
            "save_every": 4,
            "seed": 0,
        },
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "runner.py").write_text(RUNNER)
    return tmp, data


def train(setup, run, out, kill_at=0):
    tmp, data = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "KILL_AT": str(kill_at)}
    cmd = [
        sys.executable,
        str(tmp / "runner.py"),
        "--config",
        str(tmp / "config.yaml"),
        "--run",
        run,
        "--train-shards",
        data["train"],
        "--val-shards",
        data["validation"],
        "--tokenizer",
        data["tokenizer"],
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    done.log = done.stdout + done.stderr
    return done


def rows_of(out):
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full(setup):
    out = setup[0] / "full"
    done = train(setup, "full", out)
    assert done.returncode == 0, done.log[-3000:]
    return out, done.log


def test_uniform_variant_trains_exactly_as_mdlm(setup):
    runs = {}
    for run in ("mdlm", "uniform"):
        done = train(setup, run, setup[0] / run)
        assert done.returncode == 0, done.log[-3000:]
        runs[run] = setup[0] / run
    want, got = rows_of(runs["mdlm"]), rows_of(runs["uniform"])
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for a, b in zip(want, got):
        assert float(b["loss"]) == float(a["loss"]), (a, b)
    w_mdlm, w_uniform = load_file(runs["mdlm"] / "model.safetensors"), load_file(runs["uniform"] / "model.safetensors")
    assert all((w_mdlm[k] == w_uniform[k]).all() for k in w_mdlm)
    assert all(float(r["atat_strength"]) >= 0 for r in got if r["split"] == "train")


def test_full_variant_logs_curriculum_and_estimator_and_reports_plain_nelbo(full):
    out, log = full
    stages = [line for line in log.splitlines() if line.startswith("atat curriculum: stage")]
    assert [s.split(":")[1].split()[1] for s in stages] == ["1/3", "2/3", "3/3"], stages
    assert "plain MDLM (strength 0)" in stages[-1]
    rows = rows_of(out)
    train_rows = [r for r in rows if r["split"] == "train"]
    strengths = [float(r["atat_strength"]) for r in train_rows]
    assert strengths == sorted(strengths, reverse=True) and strengths[0] == 1.0 and strengths[-1] == 0.0
    for key in ATAT_FIELDS:
        assert all(r[key] != "" for r in train_rows), key
    assert all(r["atat_nelbo"] == "" for r in rows if r["split"] == "val")  # validation: the plain NELBO only
    meta = yaml.safe_load((out / "config.json").read_text())
    assert meta["objective"] == "mdlm" and meta["training_objective"] == "atat"
    assert meta["atat"]["importance"] == "full"
    estimator, frequency = load_importance(out)
    assert frequency is not None and frequency.shape == (meta["vocab_size"],)
    assert (out / IMPORTANCE_FILE).is_file() and not (out / "checkpoints").exists()


def test_preempted_and_resumed_equals_uninterrupted(setup, full):
    out = setup[0] / "full-preempted"
    first = train(setup, "full", out, kill_at=6)
    assert first.returncode == 75, first.log[-3000:]
    second = train(setup, "full", out)
    assert second.returncode == 0, second.log[-3000:]
    assert "resuming from" in second.log and "not resuming" not in second.log
    want, got = rows_of(full[0]), rows_of(out)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for a, b in zip(want, got):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-6, abs=1e-7), (a, b)
    for name in ("model.safetensors", IMPORTANCE_FILE):
        w_ref, w_out = load_file(full[0] / name), load_file(out / name)
        for key in w_ref:
            assert (w_ref[key] - w_out[key]).abs().max().item() <= 1e-6, (name, key)
