"""A run folder as eval/ reads it: its trained models in cascade order, and the tokenizer they share.

    runs/{run}/stage1/, stage2/, stage3/    a cascade run (stage k is conditioned on stage k-1)
    runs/{run}/model/                       a single-stage or autoregressive run (the stage-3 blocks)

Each model folder holds model.safetensors and config.json (docs/contracts.md).

    python -m eval.runs runs/cascade        # lists the run's model folders with their objective and lengths
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


class RunError(ValueError):
    """A run folder that is missing or malformed; the message names the path."""


def run_model_dirs(run_dir: str | Path) -> list[Path]:
    """The run's model folders, stage 1 first; a single-stage or AR run has one."""
    run_dir = Path(run_dir)
    stages = sorted(run_dir.glob("stage[0-9]*"), key=lambda p: int(p.name[len("stage"):]))
    stages = [p for p in stages if p.is_dir()]
    dirs = stages or ([run_dir / "model"] if (run_dir / "model").is_dir() else [])
    if not dirs:
        raise RunError(f"{run_dir}: no stage1..3/ or model/ folder: is the run trained?")
    for d in dirs:
        for name in ("config.json", "model.safetensors"):
            if not (d / name).exists():
                raise RunError(f"{d}: missing {name}: training has not finished")
    return dirs


def read_model_config(model_dir: str | Path) -> dict:
    """config.json of a model folder, checked for the keys eval/ relies on."""
    path = Path(model_dir) / "config.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not readable JSON ({err})") from err
    needed = ("objective", "prefix_len", "target_len", "vocab_size", "mask_id", "eos_id", "tokenizer")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise RunError(f"{path}: missing key(s) {missing}")
    return meta


def stage_name(model_dir: str | Path, meta: dict) -> str:
    """'stage{k}' for a cascade stage; 'stage3' for a single-stage / AR model (it models the stage-3 blocks)."""
    model_dir = Path(model_dir)
    if model_dir.name.startswith("stage"):
        return model_dir.name
    return f"stage{meta.get('stage') or 3}"


def load_tokenizer(path: str | Path):
    """The pipeline tokenizer folder named in config.json (a hub id works where the network does)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m eval.runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    for d in run_model_dirs(args.run_dir):
        meta = read_model_config(d)
        print(f"{d}: {stage_name(d, meta)} objective={meta['objective']} prefix_len={meta['prefix_len']} "
              f"target_len={meta['target_len']} vocab={meta['vocab_size']}")


if __name__ == "__main__":
    main()
