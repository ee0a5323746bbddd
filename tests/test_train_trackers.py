"""Experiment trackers through accelerate, beside metrics.csv: tensorboard events carry the same losses as
metrics.csv; wandb is kept offline unless the user set WANDB_MODE; a tracker that is not installed is refused
by name instead of dropped without a word."""

import csv
import os

import pytest
import torch
import yaml

from train.__main__ import main
from train.toydata import write_stage_shards
from train.trackers import check_trackers, flat_config, tracker_init_kwargs

torch.set_num_threads(1)


def test_tensorboard_events_hold_the_metrics_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_stage_shards(tmp_path / "data", rows=64, val_rows=16, lengths=(4, 8, 16))
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "runs": {"toy": {"kind": "single", "method": "keybert_no_stopword", "objective": "mdlm"}},
        "train": {
            "model": "tiny",
            "global_batch_size": 8,
            "micro_batch_size": 8,
            "max_steps": 4,
            "warmup_steps": 2,
            "eval_every": 2,
            "eval_batches": 1,
            "save_every": 2,
            "log_with": ["tensorboard"],
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model"
    argv = [
        "--config",
        str(tmp_path / "config.yaml"),
        "--run",
        "toy",
        "--train-shards",
        data["train"],
        "--val-shards",
        data["validation"],
        "--tokenizer",
        data["tokenizer"],
        "--out",
        str(out),
    ]

    def crash_at_3(step):  # after the checkpoint of step 2: step 3 is logged, then lost
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        main(argv, on_step=crash_at_3)
    assert main(argv) == 0  # resumes from step 2; the events of step 3 logged before the crash are purged

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    events = EventAccumulator(str(out / "tracker" / "toy-model"))
    events.Reload()
    for split, steps in (("train", [1, 2, 3, 4]), ("val", [0, 2, 4])):
        logged = [(e.step, e.value) for e in events.Scalars(f"{split}/loss")]
        assert [s for s, _ in logged] == steps
        want = [float(r["loss"]) for r in rows if r["split"] == split]
        assert [v for _, v in logged] == pytest.approx(want, rel=1e-6)
    assert [e.value for e in events.Scalars("train/skipped")] == [0.0] * 4
    assert not (out / "checkpoints").exists() and (out / "model.safetensors").is_file()


def test_wandb_stays_offline_unless_the_user_says(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    kwargs = tracker_init_kwargs(["wandb"], tmp_path / "tracker", resume_step=0)
    assert os.environ["WANDB_MODE"] == "offline" and kwargs["wandb"]["dir"] == str(tmp_path / "tracker")
    monkeypatch.setenv("WANDB_MODE", "online")
    tracker_init_kwargs(["wandb"], tmp_path / "tracker", resume_step=0)
    assert os.environ["WANDB_MODE"] == "online"
    assert tracker_init_kwargs(["tensorboard"], tmp_path, resume_step=7) == {"tensorboard": {"purge_step": 8}}


def test_missing_tracker_package_is_refused_by_name(monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match=r"train.log_with asks for \['wandb'\].*pip install wandb"):
        check_trackers(["wandb"])
    check_trackers([])


def test_tracker_config_is_flat_scalars():
    flat = flat_config(
        {
            "lr": 0.1,
            "noise": {"type": "loglinear", "eps": 1e-3},
            "lengths": (4, 8, 16),
            "deepspeed": None,
            "shuffle_prefix": False,
        }
    )
    assert flat == {
        "lr": 0.1,
        "noise.type": "loglinear",
        "noise.eps": 1e-3,
        "lengths": "(4, 8, 16)",
        "deepspeed": "None",
        "shuffle_prefix": False,
    }
