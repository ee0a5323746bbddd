"""A run killed (SIGKILL) or preempted (SIGTERM: checkpoint after the step in flight, exit 75) and resumed gives the
same loss at every later step, and the same final weights, as a run that was never stopped. A checkpoint resumes
only the settings that wrote it; a damaged newest checkpoint falls back to the older one; a finished run leaves
no checkpoint behind. Tiny model, toy data, subprocesses, one thread."""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from train.toydata import write_stage_shards

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import os, signal, sys
from train.__main__ import main
kill_at, sig = int(os.environ.get("KILL_AT", "0")), int(os.environ.get("KILL_SIGNAL", "9"))
def on_step(step):
    if step == kill_at:
        os.kill(os.getpid(), sig)
sys.exit(main(sys.argv[1:], on_step=on_step))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = write_stage_shards(tmp / "data", rows=96, val_rows=32, lengths=(4, 8, 16))
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "runs": {"toy": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "mdlm"}},
        # dropout > 0 so the restored RNG state matters; micro 8 of global 16 so accumulation is exercised
        "train": {
            "model": "tiny",
            "noise": {"type": "loglinear", "eps": 1e-3},
            "global_batch_size": 16,
            "micro_batch_size": 8,
            "lr": 3e-3,
            "weight_decay": 0.01,
            "warmup_steps": 3,
            "max_steps": 12,
            "grad_clip": 1.0,
            "ema": 0.9,
            "dropout": 0.1,
            "eval_every": 4,
            "eval_batches": 1,
            "save_every": 4,
            "shuffle_prefix": True,
            "warm_start": False,
            "antithetic": True,
            "precision": "auto",
            "deepspeed": None,
            "seed": 0,
            "gpus": 0,
        },
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "runner.py").write_text(RUNNER)
    return tmp, data


def train(tmp, data, out, *extra, kill_at=0, sig=signal.SIGKILL):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "KILL_AT": str(kill_at),
        "KILL_SIGNAL": str(int(sig)),
    }
    cmd = [
        sys.executable,
        str(tmp / "runner.py"),
        "--config",
        str(tmp / "config.yaml"),
        "--run",
        "toy",
        "--stage",
        "2",
        "--train-shards",
        data["train"],
        "--val-shards",
        data["validation"],
        "--tokenizer",
        data["tokenizer"],
        "--out",
        str(out),
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    done.log = done.stdout + done.stderr
    return done


def metrics(out):
    with open(Path(out) / "metrics.csv") as f:
        return [(int(r["step"]), r["split"], float(r["loss"])) for r in csv.DictReader(f)]


def resumed(log):
    return re.search(r"^resuming from ", log, re.MULTILINE) is not None


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run, every other run's yardstick."""
    tmp, data = setup
    out = tmp / "uninterrupted"
    done = train(tmp, data, out)
    assert done.returncode == 0, done.log[-3000:]
    return out


def assert_same_run(reference, out):
    want, got = metrics(reference), metrics(out)
    assert [r[:2] for r in got] == [r[:2] for r in want]  # every step and validation row exactly once
    assert len([r for r in want if r[1] == "train"]) == 12
    for (step, split, a), (_, _, b) in zip(want, got):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-7), f"step {step} {split}: {b} vs {a}"
    w_ref, w_out = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    for name in w_ref:
        assert (w_ref[name] - w_out[name]).abs().max().item() <= 1e-6, name


@pytest.mark.parametrize(
    "sig, expected_rc, resumed_from",
    [(signal.SIGKILL, -signal.SIGKILL, "step_00000004"), (signal.SIGTERM, 75, "step_00000007")],
)
def test_interrupted_and_resumed_equals_uninterrupted(setup, reference, sig, expected_rc, resumed_from):
    tmp, data = setup
    out = tmp / f"interrupted-{int(sig)}"
    first = train(tmp, data, out, kill_at=6, sig=sig)
    assert first.returncode == expected_rc, first.log[-3000:]
    assert not (out / "model.safetensors").exists()  # an unfinished run declares no outputs
    assert (out / "checkpoints" / resumed_from).is_dir()
    # mem_mb is a job-only setting (not in the digest): the checkpoint still resumes under a new value
    second = train(tmp, data, out, "--set", "mem_mb=4000")
    assert second.returncode == 0, second.log[-3000:]
    assert f"resuming from {out / 'checkpoints' / resumed_from}" in second.log
    assert "not resuming" not in second.log
    assert_same_run(reference, out)
    assert not (out / "checkpoints").exists()  # a finished run keeps no resumable state


def test_checkpoint_of_other_settings_is_not_resumed(setup, reference):
    tmp, data = setup
    out = tmp / "new-lr"
    first = train(tmp, data, out, kill_at=6)
    assert first.returncode == -signal.SIGKILL and (out / "checkpoints" / "step_00000004").is_dir()
    second = train(tmp, data, out, "--set", "lr=0.002")
    assert second.returncode == 0, second.log[-3000:]
    assert (
        f"warning: not resuming from {out / 'checkpoints' / 'step_00000004'}: written under other settings"
        in second.log
    )
    assert "lr 0.003 -> 0.002" in second.log and "training from step 0" in second.log
    assert not resumed(second.log)
    want, got = metrics(reference), metrics(out)
    assert [r[:2] for r in got] == [r[:2] for r in want]  # trained from step 0, every row once
    assert got[1][2] == pytest.approx(want[1][2], rel=1e-6)  # step 1: the weights before any update
    assert got[2][2] != pytest.approx(want[2][2], rel=1e-4)  # step 2 already shows the new lr


def test_finished_run_forced_again_trains_from_step_0(setup, reference, tmp_path):
    tmp, data = setup
    out = tmp_path / "forced"
    shutil.copytree(reference, out)  # a finished run's folder, as `snakemake --forcerun` finds it
    done = train(tmp, data, out)
    assert done.returncode == 0, done.log[-3000:]
    assert not resumed(done.log)
    assert_same_run(reference, out)


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(setup, reference):
    tmp, data = setup
    out = tmp / "damaged"
    first = train(tmp, data, out, kill_at=10)
    assert first.returncode == -signal.SIGKILL
    newest, older = out / "checkpoints" / "step_00000008", out / "checkpoints" / "step_00000004"
    assert older.is_dir() and newest.is_dir()  # the last two are kept
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    second = train(tmp, data, out)
    assert second.returncode == 0, second.log[-3000:]
    assert f"warning: not resuming from {newest}: {weights}: unreadable safetensors file" in second.log
    assert f"resuming from {older} (step 4)" in second.log
    assert_same_run(reference, out)
