"""Model checkpoints: what a training run leaves for sampling and evaluation.

A model folder holds
    model.safetensors   the EMA weights (the ones used for evaluation and sampling)
    config.json         everything needed to rebuild and use the model: model (architecture), objective,
                        noise, stage, prefix_len, target_len, vocab_size, mask_id, eos_id, tokenizer

    from train.checkpoint import load_model
    model, meta = load_model("runs/cascade/stage2", device="cpu")   # eval mode, EMA weights
    logits = model(x, sigma, meta["prefix_len"])                     # diffusion; AR: model(x)

    python -m train.checkpoint runs/cascade/stage2        # prints the config and parameter count

Every file is written to a temporary name in the same folder and renamed into place (os.replace), so a
killed job never leaves a file that looks finished.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.io import atomic_path
from train.model import DiffusionTransformer, build_model

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_weights_atomic(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp))


def save_model(out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Write model.safetensors then config.json (config last: its presence marks a complete folder)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights_atomic(out_dir / WEIGHTS, state_dict)
    write_text_atomic(out_dir / CONFIG, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; is {model_dir} a finished training folder?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    for key in ("model", "objective", "vocab_size", "mask_id"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    return meta


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) with an error that names every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"{source}: weights do not fit the model; missing {missing}, unexpected {unexpected}, "
                         f"mismatched shapes {shapes}")
    model.load_state_dict(state)


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DiffusionTransformer, dict]:
    """Rebuild the model of a training folder with its EMA weights, in eval mode. Returns (model, meta)."""
    meta = read_meta(model_dir)
    weights = Path(model_dir) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing model weights")
    model = build_model(meta["model"])
    load_state_strict(model, load_file(str(weights)), str(weights))
    return model.to(device).eval(), meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    args = parser.parse_args(argv)
    model, meta = load_model(args.model_dir)
    print(json.dumps(meta, indent=2, sort_keys=True))
    print(f"{model.num_params():,} parameters")


if __name__ == "__main__":
    main()
