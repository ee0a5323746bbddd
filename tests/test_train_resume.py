"""A run killed (SIGKILL) or preempted (SIGTERM: checkpoint after the step in flight, exit 75) and resumed gives the same loss at every later step, and the
same final weights, as a run that was never stopped. Tiny model, toy data, subprocesses, one thread."""
import csv
import os
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
        "train": {"model": "tiny", "noise": {"type": "loglinear", "eps": 1e-3}, "global_batch_size": 16,
                  "micro_batch_size": 8, "lr": 3e-3, "weight_decay": 0.01, "warmup_steps": 3, "max_steps": 12,
                  "grad_clip": 1.0, "ema": 0.9, "dropout": 0.1, "eval_every": 4, "eval_batches": 1,
                  "save_every": 4, "shuffle_prefix": True, "warm_start": False, "antithetic": True,
                  "precision": "auto", "deepspeed": None, "seed": 0, "gpus": 0},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "runner.py").write_text(RUNNER)
    return tmp, data


def train(tmp, data, out, kill_at=0, sig=signal.SIGKILL):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "KILL_AT": str(kill_at),
           "KILL_SIGNAL": str(int(sig))}
    cmd = [sys.executable, str(tmp / "runner.py"), "--config", str(tmp / "config.yaml"), "--run", "toy",
           "--stage", "2", "--train-shards", data["train"], "--val-shards", data["validation"],
           "--tokenizer", data["tokenizer"], "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def metrics(out):
    with open(Path(out) / "metrics.csv") as f:
        return [(int(r["step"]), r["split"], float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.parametrize("sig, expected_rc, resumed_from", [(signal.SIGKILL, -signal.SIGKILL, "step_00000004"),
                                                            (signal.SIGTERM, 75, "step_00000007")])
def test_interrupted_and_resumed_equals_uninterrupted(setup, sig, expected_rc, resumed_from):
    tmp, data = setup
    reference = tmp / "uninterrupted"
    if not (reference / "metrics.csv").exists():
        done = train(tmp, data, reference)
        assert done.returncode == 0, done.stderr[-3000:]
    out = tmp / f"interrupted-{int(sig)}"
    first = train(tmp, data, out, kill_at=6, sig=sig)
    assert first.returncode == expected_rc, first.stderr[-3000:]
    assert not (out / "model.safetensors").exists()  # an unfinished run declares no outputs
    assert (out / "checkpoints" / resumed_from).is_dir()
    second = train(tmp, data, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / resumed_from}" in second.stdout + second.stderr

    want, got = metrics(reference), metrics(out)
    assert [r[:2] for r in got] == [r[:2] for r in want]  # every step and validation row exactly once
    assert len([r for r in want if r[1] == "train"]) == 12
    for (step, split, a), (_, _, b) in zip(want, got):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-7), f"step {step} {split}: {b} vs {a}"
    w_ref, w_out = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    for name in w_ref:
        assert (w_ref[name] - w_out[name]).abs().max().item() <= 1e-6, name
