"""Pretrained starts: SEDD (louaaron/sedd-small layout) and MDLM (kuleshov-group/mdlm-owt layout) weights
loaded into this backbone, from a hub id or a local folder, for any stage or a single-stage run.

Both published models are the same DiT this package uses (train/model.py was laid out to match), so the
mapping is a renaming:

    SEDD  (config.json: {"model": {"hidden_size", "cond_dim", "n_blocks", "n_heads", ...}, "tokens", ...};
           weights pytorch_model.bin or model.safetensors, keys without prefix)
    MDLM  (config.json: {"model_type": "mdlm", "hidden_dim", "cond_dim", "n_blocks", "n_heads", "vocab_size",
           "time_conditioning", ...}; weights model.safetensors, keys under "backbone.")

    theirs                                   ours
    vocab_embed.embedding                    vocab_embed.weight
    sigma_map.mlp.{0,2}.{weight,bias}        same
    rotary_emb.inv_freq                      (dropped: recomputed from the head size)
    blocks.{i}.{norm1,norm2}.weight          same
    blocks.{i}.attn_qkv.weight, attn_out.weight, mlp.{0,2}.{weight,bias}, adaLN_modulation.{weight,bias}
    output_layer.{norm_final.weight, linear.{weight,bias}, adaLN_modulation.{weight,bias}}

`prefix_embed` (the segment embedding marking a cascade stage's prefix) has no counterpart and stays at its
zero init, so the loaded model starts exactly as the published one. Any other missing, unexpected or
mis-shaped key is an error that names it. The vocabulary must be the one the checkpoint was trained with
(GPT-2 + mask = 50258 for both): use that tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

NEW_KEYS = ("prefix_embed",)
DROPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def resolve_source(source: str) -> Path:
    """A local folder as is; anything else is a hub id fetched with huggingface_hub.snapshot_download."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"pretrained source {source}: a file, expected a checkpoint folder or a hub id")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=source, allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def read_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing (a SEDD / MDLM checkpoint folder has config.json)")
    config = json.loads(config_path.read_text())
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file
        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")
    return config, state


def detect_layout(config: dict, state: dict) -> str:
    if config.get("model_type") == "mdlm" or any(k.startswith("backbone.") for k in state):
        return "mdlm"
    if isinstance(config.get("model"), dict) and "vocab_embed.embedding" in state:
        return "sedd"
    raise ValueError(f"unknown pretrained layout (config keys {sorted(config)[:12]}, first weight keys "
                     f"{sorted(state)[:5]}); expected louaaron/sedd-* or kuleshov-group/mdlm-* layout")


def architecture(layout: str, config: dict, state: dict) -> dict:
    """Our ModelConfig fields implied by the checkpoint's config.json."""
    if layout == "sedd":
        m = config["model"]
        vocab = state["vocab_embed.embedding"].shape[0]
        return dict(vocab_size=vocab, dim=m["hidden_size"], n_layers=m["n_blocks"], n_heads=m["n_heads"],
                    cond_dim=m["cond_dim"], time_conditioning=True)
    return dict(vocab_size=config["vocab_size"], dim=config["hidden_dim"], n_layers=config["n_blocks"],
                n_heads=config["n_heads"], cond_dim=config["cond_dim"],
                time_conditioning=bool(config.get("time_conditioning", False)))


def convert_state(layout: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the checkpoint's keys to ours (table in the module docstring)."""
    out = {}
    for key, value in state.items():
        if layout == "mdlm":
            if not key.startswith("backbone."):
                continue  # e.g. registered scalar buffers outside the network
            key = key[len("backbone."):]
        if key.endswith(DROPPED_SUFFIXES):
            continue
        out["vocab_embed.weight" if key == "vocab_embed.embedding" else key] = value
    return out


def load_pretrained(model: torch.nn.Module, source: str, layout: str | None = None) -> dict:
    """Load a SEDD / MDLM checkpoint (hub id or folder) into `model` in place; returns a short report.
    `layout` (train.pretrained_format: sedd | mdlm) must agree with what the files show when given."""
    folder = resolve_source(source)
    config, state = read_checkpoint(folder)
    detected = detect_layout(config, state)
    if layout not in (None, detected):
        raise ValueError(f"{source}: pretrained_format is {layout!r} but the files are in the {detected} layout")
    layout = detected
    arch = architecture(layout, config, state)
    ours = model.config
    mismatched = {k: (v, getattr(ours, k)) for k, v in arch.items() if getattr(ours, k) != v}
    if "time_conditioning" in mismatched:  # a model property, not a shape: follow the checkpoint
        ours.time_conditioning = arch["time_conditioning"]
        mismatched.pop("time_conditioning")
    if mismatched:
        raise ValueError(f"{source} ({layout} layout): checkpoint architecture differs from the configured "
                         f"model: " + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, (a, b) in mismatched.items())
                         + ("; the vocabulary must be the checkpoint's tokenizer (+ mask)"
                            if "vocab_size" in mismatched else ""))
    converted = convert_state(layout, state)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in converted and k not in NEW_KEYS)
    unexpected = sorted(k for k in converted if k not in own)
    shapes = sorted(f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in converted if k in own and converted[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"{source} ({layout} layout): missing keys {missing}, unexpected keys {unexpected}, "
                         f"mismatched shapes {shapes}")
    with torch.no_grad():
        for key, value in converted.items():
            own[key].copy_(value.to(own[key].dtype))
    return {"layout": layout, "source": str(folder), "loaded": len(converted),
            "new": [k for k in NEW_KEYS if k in own]}
