"""Experiment trackers through accelerate (tensorboard, wandb), beside metrics.csv: offline-safe arguments,
a refusal when a tracker's package is missing, and the settings flattened into a tracker's config.
"""

from __future__ import annotations

import os
from pathlib import Path


def check_trackers(log_with: list[str]) -> None:
    """accelerate leaves out a tracker whose package is missing without a word; refuse instead."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [name for name in log_with if name not in available]
    if missing:
        raise ValueError(
            f"train.log_with asks for {missing}, but the package(s) are not installed here "
            f"(pip install {' '.join(missing)}, or drop them from log_with)"
        )


def tracker_init_kwargs(log_with: list[str], tracker_dir: Path, resume_step: int) -> dict:
    """Per-tracker arguments: local files under tracker_dir, nothing contacted unless the user asked."""
    kwargs = {}
    if "tensorboard" in log_with:
        # hide the events a killed run logged after its checkpoint's step (all of them, on a fresh start)
        kwargs["tensorboard"] = {"purge_step": resume_step + 1 if resume_step else 0}
    if "wandb" in log_with:
        os.environ.setdefault("WANDB_MODE", "offline")
        kwargs["wandb"] = {"dir": str(tracker_dir)}
    return kwargs


def flat_config(values: dict, prefix: str = "") -> dict:
    """Nested settings as the flat str / int / float / bool mapping trackers accept: {"noise": {"type": ..}}
    becomes "noise.type", anything else that is not a scalar (a tuple, None) its str()."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
