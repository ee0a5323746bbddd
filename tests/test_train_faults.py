"""Faults that must not pass in silence: a diverging run fails naming the step and the quantity and writes no
model; a lone non-finite step is skipped (no update) and counted; a non-finite validation loss stops the run;
a checkpoint that cannot be used is named and training starts from step 0. In-process, tiny model, toy data."""

import csv
import math
import re
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file

from common.config import load_config
from train.__main__ import main
from train.objective import LikelihoodObjective
from train.resume import checkpoint_problem
from train.settings import resolve
from train.toydata import write_stage_shards
from train.trainer import Trainer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    data = write_stage_shards(tmp / "data", rows=96, val_rows=32, lengths=(4, 8, 16))
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "runs": {"toy": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "mdlm"}},
        "train": {
            "model": "tiny",
            "global_batch_size": 16,
            "micro_batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 3,
            "max_steps": 6,
            "ema": 0.9,
            "eval_every": 3,
            "eval_batches": 1,
            "save_every": 2,
            "max_nonfinite_steps": 2,
        },
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp, data


def args(toy, out, *extra):
    tmp, data = toy
    return [
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


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_diverging_run_fails_naming_step_and_quantity(toy, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(SystemExit) as stopped:
        main(args(toy, out, "--set", "lr=1000000.0"))
    message = str(stopped.value.code)  # a string: the process exits 1 and prints it
    found = re.search(
        r"training diverged at step (\d+): non-finite grad_norm \(loss \S+, grad_norm inf\) on 3 "
        r"consecutive steps \((\d+) to (\d+)\), more than max_nonfinite_steps = 2",
        message,
    )
    assert found, message
    last, first = int(found[1]), int(found[2])
    assert int(found[3]) == last and last - first == 2
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert not (out / "metrics.csv").exists()
    skipped = {int(r["step"]): r["skipped"] for r in rows(out / "checkpoints" / "metrics.csv") if r["split"] == "train"}
    assert [s for s, what in skipped.items() if what] == list(range(first, last + 1))
    assert all(skipped[s] == "grad_norm" for s in range(first, last + 1))
    # the checkpoints stay, intact, and resume this run's settings
    kept = sorted((out / "checkpoints").glob("step_*"))
    assert kept and f"last checkpoint kept: {kept[-1]}" in message
    settings = resolve(load_config(str(toy[0] / "config.yaml")), "toy", 2).replace(lr=1e6)
    expected = [
        "trainer_state.json",
        "model.safetensors",
        "optimizer.bin",
        "custom_checkpoint_0.pkl",
        "random_states_0.pkl",
    ]
    assert checkpoint_problem(kept[-1], settings, expected) is None


def test_an_in_process_run_gives_the_signal_handlers_back(toy, tmp_path):
    """Trainer.run installs its stop request for SIGTERM and SIGUSR1; after the run, finished or failed, the
    caller's own handlers are back (pytest's SIGTERM handling, not a stop flag of a dead trainer)."""

    def mine(signum, frame):
        raise AssertionError(f"signal {signum}: not expected in this test")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for sig in saved:
            signal.signal(sig, mine)
        assert main(args(toy, tmp_path / "done")) in (None, 0)
        assert (tmp_path / "done" / "model.safetensors").is_file()
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGUSR1) is mine
        with pytest.raises(SystemExit, match="training diverged"):
            main(args(toy, tmp_path / "diverged", "--set", "lr=1000000.0"))
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGUSR1) is mine
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def poison_losses(monkeypatch, steps):
    """Make the training loss NaN at the given (0-based) steps, through the real skip logic."""
    train_step, loss = Trainer.train_step, LikelihoodObjective.loss

    def train_step_at(self, step):
        self.poisoned = step in steps
        return train_step(self, step)

    def poisoned_loss(self, model, *rest):
        value = loss(self, model, *rest)
        return value * float("nan") if model.training and self.trainer.poisoned else value

    monkeypatch.setattr(Trainer, "train_step", train_step_at)
    monkeypatch.setattr(LikelihoodObjective, "loss", poisoned_loss)


def test_isolated_nonfinite_steps_are_skipped_and_counted(toy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "skipped"
    poison_losses(monkeypatch, {1, 3})  # logged as steps 2 and 4; never two in a row
    assert main(args(toy, out, "--set", "max_nonfinite_steps=1")) == 0
    log = capsys.readouterr().out
    assert "warning: step 2: non-finite loss and grad_norm (loss nan, grad_norm nan); update skipped" in log
    assert "warning: step 4: non-finite loss and grad_norm" in log
    assert "finished with 2 step(s) skipped" in log
    train = [r for r in rows(out / "metrics.csv") if r["split"] == "train"]
    assert [r["skipped"] for r in train] == ["", "loss grad_norm", "", "loss grad_norm", "", ""]
    # a NaN that reached the optimizer or the EMA would have spread to every weight
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    val = [float(r["loss"]) for r in rows(out / "metrics.csv") if r["split"] == "val"]
    assert all(math.isfinite(v) for v in val)


def test_nonfinite_validation_loss_stops_the_run(toy, tmp_path, monkeypatch):
    out = tmp_path / "bad-val"
    validate, calls = LikelihoodObjective.validate, []

    def nan_after_the_first(self):  # step 0 scores the untrained model; step 3 "diverges"
        calls.append(1)
        return validate(self) if len(calls) == 1 else math.nan

    monkeypatch.setattr(LikelihoodObjective, "validate", nan_after_the_first)
    with pytest.raises(SystemExit, match=r"training diverged at step 3: non-finite validation loss \(nan\)"):
        main(args(toy, out))
    assert not (out / "model.safetensors").exists()
    assert (out / "checkpoints" / "step_00000002").is_dir()


def test_unusable_only_checkpoint_means_a_fresh_start(toy, tmp_path, capsys):
    out = tmp_path / "unusable"

    def crash_at_3(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        main(args(toy, out), on_step=crash_at_3)
    state = out / "checkpoints" / "step_00000002" / "trainer_state.json"
    state.write_text("{")
    capsys.readouterr()
    assert main(args(toy, out)) == 0
    log = capsys.readouterr().out
    assert f"warning: not resuming from {state.parent}: {state}: unreadable (JSONDecodeError" in log
    assert f"warning: no usable checkpoint in {out / 'checkpoints'}; training from step 0" in log
    assert [(int(r["step"]), r["split"]) for r in rows(out / "metrics.csv")] == [
        (0, "val"),
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (3, "val"),
        (4, "train"),
        (5, "train"),
        (6, "train"),
        (6, "val"),
    ]
