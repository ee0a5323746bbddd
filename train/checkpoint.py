"""Model checkpoints: what a training run leaves for sampling and evaluation.

A model folder holds
    model.safetensors   the EMA weights (the ones used for evaluation and sampling)
    config.json         everything needed to rebuild and use the model: model (architecture), objective,
                        noise, stage, prefix_len, target_len, vocab_size, mask_id, eos_id, bos_id, tokenizer
                        ("tokenizer": the copy below) and tokenizer_sha256 (its digest, checked at load)
    tokenizer/          a copy of the tokenizer the model was trained with: the folder loads from anywhere
                        (REQUIRED below; the trainer also writes run, kind, method, steps, ...), and
                        backbone (train/backbones.py: {"kind": "dit"} or a transformers masked LM, whose
                        "model" is then its transformers config dict; absent = dit)

    from train.checkpoint import load_model
    model, meta = load_model("runs/demo/cascade/stage2", device="cpu")   # eval mode, EMA weights
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


TOKENIZER = "tokenizer"  # the model folder's own copy of the tokenizer it was trained with


def tokenizer_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over the tokenizer folder's files (names and bytes, sorted by name): equal digests, equal
    tokenizers. Recorded in config.json as tokenizer_sha256 and checked at load."""
    import hashlib

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{folder}: no tokenizer files")
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def copy_tokenizer(source: str | os.PathLike, out_dir: Path) -> dict:
    """Copy the tokenizer folder ``source`` into ``out_dir/tokenizer`` (atomically) and return the config.json
    keys that name it: the path relative to the model folder and its digest. A model folder is self-contained:
    it loads from any working directory, and two configs' tokenizers can never be confused."""
    import shutil

    from common.io import atomic_dir

    source = Path(source)
    if source.resolve() != (out_dir / TOKENIZER).resolve():
        with atomic_dir(out_dir / TOKENIZER) as tmp:
            for path in sorted(source.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    shutil.copy2(path, tmp / path.name)
    return {"tokenizer": TOKENIZER, "tokenizer_sha256": tokenizer_digest(out_dir / TOKENIZER)}


def save_model(out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Write the tokenizer copy, model.safetensors, then config.json (config last: its presence marks a complete
    folder). meta["tokenizer"] is the tokenizer folder the model was trained with; the folder gets a copy of it
    (copy_tokenizer) and config.json names the copy."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {**meta, **copy_tokenizer(resolve_tokenizer_source(meta["tokenizer"], out_dir), out_dir)}
    save_weights_atomic(out_dir / WEIGHTS, state_dict)
    write_json(meta, out_dir / CONFIG)


def resolve_tokenizer_source(path: str, model_dir: Path) -> Path:
    """The tokenizer folder a config.json "tokenizer" value names: relative to the model folder (the copy save_model
    makes), else as given (folders written before models carried their tokenizer: relative to the working
    directory they were trained in)."""
    inside = Path(model_dir) / path
    return inside if not Path(path).is_absolute() and inside.is_dir() else Path(path)


def model_tokenizer_digest(model_dir: str | os.PathLike, meta: dict) -> str:
    """The digest of a model folder's tokenizer: what config.json records, else (a folder written before models
    carried their tokenizer) computed from the folder it names."""
    return meta.get("tokenizer_sha256") or tokenizer_digest(model_tokenizer_dir(model_dir, meta))


def model_tokenizer_dir(model_dir: str | os.PathLike, meta: dict) -> Path:
    """The tokenizer folder of a model folder, checked against the digest config.json records: a tokenizer that
    does not match the model is refused (it would decode silently wrong, or fail on ids past its vocabulary)."""
    folder = resolve_tokenizer_source(meta["tokenizer"], Path(model_dir))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{Path(model_dir) / CONFIG}: tokenizer {meta['tokenizer']!r} not found (looked in "
            f"{Path(model_dir) / meta['tokenizer']} and {folder})"
        )
    expected = meta.get("tokenizer_sha256")
    if expected is not None and tokenizer_digest(folder) != expected:
        raise ValueError(
            f"{folder}: this tokenizer does not match the model in {model_dir} (sha256 "
            f"{tokenizer_digest(folder)[:12]}..., config.json records {expected[:12]}...)"
        )
    return folder


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# config.json: every key eval/ and warm starts rely on, with the check its value must pass
REQUIRED = {
    "model": (
        lambda v: isinstance(v, dict),
        "an object (train.model.ModelConfig.to_dict(), or the transformers config dict of a masked_lm backbone)",
    ),
    "objective": (lambda v: v in OBJECTIVES, f"one of {list(OBJECTIVES)}"),
    "noise": (lambda v: isinstance(v, dict) and "type" in v, "an object with a 'type' (train.noise.get_noise)"),
    "stage": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "prefix_len": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "target_len": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "vocab_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "mask_id": (_is_int, "an integer token id"),
    "eos_id": (_is_int, "an integer token id"),
    "bos_id": (_is_int, "an integer token id (the AR model reads [bos ; block])"),
    "tokenizer": (
        lambda v: isinstance(v, str) and v != "",
        "a tokenizer folder path (relative: inside the model folder, where save_model copies it)",
    ),
}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _listing(folder: Path, limit: int = 6) -> str:
    """A few names of what a folder holds, for an error message."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_meta(model_dir: str | os.PathLike) -> dict:
    """config.json of a model folder, every REQUIRED key checked: the one reader of the file save_model writes."""
    folder = Path(model_dir)
    path = folder / CONFIG
    if not folder.exists():
        raise FileNotFoundError(
            f"{folder}: no such folder; expected a model folder written by python -m train "
            f"(runs/{{run}}/model or runs/{{run}}/stage{{k}})"
        )
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{folder}: a file, not a folder; expected a model folder holding {CONFIG} and {WEIGHTS}"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no config.json; is {model_dir} a finished training folder? (a model "
            f"folder holds {CONFIG} and {WEIGHTS}; found {_listing(folder)})"
        )
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if "objective" not in meta:  # a transformers model or tokenizer folder has a config.json too
        raise ValueError(
            f"{path}: not a model folder written by python -m train (its config.json has no "
            f"'objective'; found keys {sorted(meta)[:8]}): a transformers or data folder?"
        )
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
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: weights do not fit the model; missing {missing}, unexpected {unexpected}, "
            f"mismatched shapes {shapes}"
        )
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
    state = read_weights(weights)
    load_state_strict(model, state, str(weights))
    return model.to(device).eval(), meta


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a model.safetensors, checked: a file safetensors cannot parse (truncated by a full disk or
    an interrupted copy) and a tensor with a NaN or +-inf value are errors naming the file (and the tensor).

    The finiteness check is one reduction per tensor: sum(t) is finite when every element is (NaN and +-inf
    propagate through a sum), so only a tensor whose sum is not finite is searched element by element (its
    sum may merely overflow, e.g. float16 past 65504)."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors' SafetensorError (Rust) is not importable by a stable name
        raise ValueError(
            f"{path}: cannot read the weights ({err}); the file ({path.stat().st_size:,} bytes) is "
            f"truncated or corrupt: copy it again or rerun the training job"
        ) from None
    bad = [
        (name, int((~torch.isfinite(t)).sum()), t.numel())
        for name, t in state.items()
        if t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all()
    ]
    if bad:
        name, count, numel = bad[0]
        raise ValueError(
            f"{path}: non-finite weights: tensor {name!r} has {count} NaN/inf value(s) of {numel}"
            + (f" ({len(bad) - 1} more tensor(s) too: {[b[0] for b in bad[1:4]]})" if len(bad) > 1 else "")
            + "; the run diverged or the file is corrupt"
        )
    return state
