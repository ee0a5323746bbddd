"""Model checkpoints: what a training run leaves for sampling and evaluation.

A model folder holds
    model.safetensors   the EMA weights (the ones used for evaluation and sampling)
    config.json         everything needed to rebuild and use the model: model (architecture), objective,
                        noise, stage, prefix_len, target_len, vocab_size, mask_id, eos_id, bos_id, tokenizer
                        (REQUIRED below; the trainer also writes run, kind, method, steps, ...), and
                        backbone (train/backbones.py: {"kind": "dit"} or a transformers masked LM, whose
                        "model" is then its transformers config dict; absent = dit)

    from train.checkpoint import load_model
    model, meta = load_model("runs/cascade/stage2", device="cpu")   # eval mode, EMA weights
    logits = model(x, sigma, meta["prefix_len"])                     # diffusion; AR: model(x)

The network is a DiffusionTransformer or a MaskedLMDenoiser (train/backbones.py: model_from_meta); both
are called alike.

Every file is written to a temporary name in the same folder and renamed into place (os.replace), so a
killed job never leaves a file that looks finished.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.io import atomic_path, write_json
from train.backbones import model_from_meta
from train.objectives import OBJECTIVES

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
    write_json(meta, out_dir / CONFIG)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# config.json: every key eval/ and warm starts rely on, with the check its value must pass
REQUIRED = {
    "model": (lambda v: isinstance(v, dict), "an object (train.model.ModelConfig.to_dict(), or the transformers "
                                             "config dict of a masked_lm backbone)"),
    "objective": (lambda v: v in OBJECTIVES, f"one of {list(OBJECTIVES)}"),
    "noise": (lambda v: isinstance(v, dict) and "type" in v, "an object with a 'type' (train.noise.get_noise)"),
    "stage": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "prefix_len": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "target_len": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "vocab_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "mask_id": (_is_int, "an integer token id"),
    "eos_id": (_is_int, "an integer token id"),
    "bos_id": (_is_int, "an integer token id (the AR model reads [bos ; block])"),
    "tokenizer": (lambda v: isinstance(v, str) and v != "", "a tokenizer folder path"),
}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_meta(model_dir: str | os.PathLike) -> dict:
    """config.json of a model folder, every REQUIRED key checked: the one reader of the file save_model writes."""
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; is {model_dir} a finished training folder?")
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    for key, (valid, expected) in REQUIRED.items():
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r} (expected {expected})")
        if not valid(meta[key]):
            raise ValueError(f"{path}: key {key!r} should be {expected}, got {meta[key]!r}")
    return meta


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by save_model: its config.json names an ``objective`` (the
    config.json of a transformers model folder has no such key). Says nothing about the folder being complete:
    read_meta / load_model check that."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    meta = _read_json(config)
    return isinstance(meta, dict) and "objective" in meta


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


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a training folder with its EMA weights, in eval mode. Returns (model, meta), meta
    being config.json as read_meta checks it; the network is whichever backbone config.json names
    (train.backbones.model_from_meta). eval/trained.py builds everything else eval needs on top."""
    meta = read_meta(model_dir)
    weights = Path(model_dir) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing model weights")
    model = model_from_meta(meta)
    load_state_strict(model, load_file(str(weights)), str(weights))
    return model.to(device).eval(), meta
