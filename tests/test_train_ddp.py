"""Two gloo processes (accelerate launch --num_processes 2 --cpu) against one process at the same global batch.

Both see the same global batch and noise at every step (train/trainer.py draws them for the whole global
batch and each process takes its slice; one process takes the same slices as accumulation steps), so the
curves may differ only by float summation order in the gradient all-reduce. Stated tolerance: relative
1e-4 on every train and validation loss over 8 steps, and 1e-4 absolute on the final EMA weights.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from train.toydata import write_stage_shards

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def metrics(out):
    with open(Path(out) / "metrics.csv") as f:
        return [(int(r["step"]), r["split"], float(r["loss"])) for r in csv.DictReader(f)]


def test_two_processes_match_one(tmp_path):
    data = write_stage_shards(tmp_path / "data", rows=128, val_rows=32, lengths=(4, 8, 16))
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "runs": {"toy": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "sedd"}},
        "train": {
            "model": "tiny",
            "noise": {"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20.0},
            "global_batch_size": 16,
            "micro_batch_size": 8,
            "lr": 3e-3,
            "weight_decay": 0.0,
            "warmup_steps": 2,
            "max_steps": 8,
            "grad_clip": 1.0,
            "ema": 0.5,
            "dropout": 0.0,
            "eval_every": 4,
            "eval_batches": 2,
            "save_every": 1000,
            "shuffle_prefix": False,
            "warm_start": False,
            "antithetic": True,
            "precision": "fp32",
            "deepspeed": None,
            "seed": 1,
            "gpus": 0,
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = [
        "-m",
        "train",
        "--config",
        str(tmp_path / "config.yaml"),
        "--run",
        "toy",
        "--stage",
        "3",
        "--train-shards",
        data["train"],
        "--val-shards",
        data["validation"],
        "--tokenizer",
        data["tokenizer"],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [*launcher, *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) == 8 + 3
    assert a[-1][2] < a[0][2]  # it trained
    for (step, split, x), (_, _, y) in zip(a, b):
        assert y == pytest.approx(x, rel=TOLERANCE), f"step {step} {split}: 2 processes {y} vs 1 process {x}"
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= TOLERANCE
