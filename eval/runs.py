"""A run folder as eval/ reads it: its trained model folders in cascade order.

    runs/{profile}/{run}/stage1/, stage2/, stage3/    a cascade run (stage k is conditioned on stage k-1)
    runs/{profile}/{run}/model/                       a single-stage or autoregressive run (the stage-3 blocks)

Each model folder holds model.safetensors and config.json (docs/contracts.md); eval/trained.py loads one.
"""

from __future__ import annotations

from pathlib import Path


class RunError(ValueError):
    """A run folder that is missing or malformed; the message names the path."""


def run_model_dirs(run_dir: str | Path) -> list[Path]:
    """The run's model folders, stage 1 first; a single-stage or AR run has one."""
    run_dir = Path(run_dir)
    stages = sorted(run_dir.glob("stage[0-9]*"), key=lambda p: int(p.name[len("stage") :]))
    stages = [p for p in stages if p.is_dir()]
    dirs = stages or ([run_dir / "model"] if (run_dir / "model").is_dir() else [])
    if not dirs:
        raise RunError(f"{run_dir}: no stage1..3/ or model/ folder: is the run trained?")
    for d in dirs:
        for name in ("config.json", "model.safetensors"):
            if not (d / name).exists():
                raise RunError(f"{d}: missing {name}: training has not finished")
    return dirs
