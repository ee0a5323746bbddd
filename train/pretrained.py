"""Pretrained starts: SEDD (louaaron/sedd-small layout), MDLM (kuleshov-group/mdlm-owt layout) and MDLM training
checkpoints (the PyTorch Lightning .ckpt MDLM's own main.py writes) loaded into this backbone, from a hub id, a
local folder or a local .ckpt file, for any stage or a single-stage run.

All three hold the same DiT this package uses (train/model.py was laid out to match), so the mapping is a
renaming:

    SEDD  (config.json: {"model": {"hidden_size", "cond_dim", "n_blocks", "n_heads", ...}, "tokens", ...};
           weights pytorch_model.bin or model.safetensors, keys without prefix)
    MDLM  (config.json: {"model_type": "mdlm", "hidden_dim", "cond_dim", "n_blocks", "n_heads", "vocab_size",
           "time_conditioning", ...}; weights model.safetensors, keys under "backbone.")
    MDLM .ckpt (one torch.save'd dict, written by Lightning's checkpoint connector + MDLM's
           Diffusion.on_save_checkpoint in diffusion.py; the file MDLM's eval.checkpoint_path reads):
           "state_dict"       Diffusion.state_dict(): the network's keys under "backbone." (table below); a
                              "noise." key only for a schedule with tensors registered on the module, which none of
                              MDLM's noise_schedule.py classes has (they keep sigma_min/max as plain attributes)
           "ema"              only when training.ema > 0: {"decay", "num_updates", "shadow_params"}, with
                              shadow_params[i] = the EMA of the i-th tensor of
                                  [p for p in chain(backbone.parameters(), noise.parameters()) if p.requires_grad]
                              (models/ema.py; each optimizer step s <- s - (1 - d) (s - p),
                              d = min(decay, (1 + n) / (10 + n)) for update n). backbone.parameters() runs in
                              module registration order, which is the state_dict order of the "backbone." keys
                              with the buffers (rotary_emb.inv_freq) left out; MDLM's noise schedules have no
                              parameters, so the list is exactly the backbone's.
           "hyper_parameters" {"config": the Hydra DictConfig (model.hidden_size, cond_dim, n_blocks, n_heads,
                              length, ...; time_conditioning, backbone, parameterization, ...), "tokenizer": the
                              pickled HF tokenizer} (save_hyperparameters() of Diffusion.__init__(config, tokenizer))
           also "epoch", "global_step", "pytorch-lightning_version", "loops", "callbacks", "optimizer_states",
           "lr_schedulers", "hparams_name", "sampler" (unused here)

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
(GPT-2 + mask = 50258 for both published models; a .ckpt's is read from its embedding): use that tokenizer.
A .ckpt loads its EMA weights when it has them (MDLM evaluates and samples with them unless
eval.disable_ema), else its raw state_dict; the returned report says which ("weights": "ema" | "raw").
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

NEW_KEYS = ("prefix_embed",)
DROPPED_SUFFIXES = ("rotary_emb.inv_freq",)
CKPT_SUFFIX = ".ckpt"
BACKBONE = "backbone."
# what a module missing at unpickling time was needed for in an MDLM .ckpt's hyper_parameters
PICKLED_BY = {
    "omegaconf": "the Hydra config (an OmegaConf DictConfig)",
    "transformers": "MDLM's tokenizer object",
    "tokenizers": "MDLM's tokenizer object",
}


def resolve_source(source: str) -> Path:
    """A local folder or .ckpt file as is; anything else is a hub id fetched with huggingface_hub.snapshot_download."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == CKPT_SUFFIX:
        return path
    if path.exists():
        raise ValueError(
            f"pretrained source {source}: a file that is not a {CKPT_SUFFIX} training checkpoint; "
            f"expected a checkpoint folder, an MDLM {CKPT_SUFFIX} file or a hub id"
        )
    if path.suffix == CKPT_SUFFIX:  # clearly meant as a local file: don't send it to the hub as a repo id
        raise FileNotFoundError(f"pretrained source {source}: no such {CKPT_SUFFIX} file")
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


def read_training_checkpoint(path: Path) -> tuple[dict, str]:
    """torch.load an MDLM .ckpt; returns it and how it was unpickled ("weights_only" | "full").

    weights_only=True first: it reads only tensors and plain containers. MDLM's hyper_parameters hold an OmegaConf
    DictConfig and the tokenizer object, which it refuses; then the file is unpickled in full (weights_only=False),
    which can run code the file names. That is acceptable here only because this path is reached for a local
    .ckpt the user named themselves (their own training output), never for anything fetched from the hub.
    The full unpickling imports the classes it meets, so omegaconf (and transformers for the tokenizer) must be
    installed; a missing one is named.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError:
        pass  # non-tensor objects (DictConfig, tokenizer) in hyper_parameters; handled below
    try:
        return torch.load(path, map_location="cpu", weights_only=False), "full"
    except ModuleNotFoundError as e:
        needed_for = PICKLED_BY.get((e.name or "").split(".")[0], "an object in the checkpoint")
        raise ModuleNotFoundError(
            f"{path}: unpickling this MDLM training checkpoint needs the Python package {e.name!r} (for "
            f"{needed_for} in its hyper_parameters), which is not installed; install it (pip install "
            f"{(e.name or '').split('.')[0]}) to load the file",
            name=e.name,
        ) from e
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not readable as a PyTorch Lightning checkpoint ({e})") from e


def training_checkpoint_parts(path: Path, ckpt) -> tuple[Mapping, dict[str, torch.Tensor], list | None]:
    """The Hydra config, the state_dict and the EMA shadow params (None without EMA) of a loaded .ckpt."""
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:12] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"{path}: no 'state_dict' (found {keys}); expected the PyTorch Lightning checkpoint MDLM's main.py writes"
        )
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError(
            f"{path}: no hyper_parameters['config']['model'] (the Hydra config MDLM saves with "
            f"save_hyperparameters()); hyper_parameters keys {sorted(ckpt.get('hyper_parameters') or {})}"
        )
    ema = ckpt.get("ema")
    if ema is not None and not isinstance(ema.get("shadow_params") if isinstance(ema, Mapping) else None, list):
        raise ValueError(
            f"{path}: 'ema' has no shadow_params list (models/ema.py state_dict: decay, num_updates, shadow_params)"
        )
    return config, dict(ckpt["state_dict"]), None if ema is None else ema["shadow_params"]


def detect_layout(config: dict, state: dict) -> str:
    if config.get("model_type") == "mdlm" or any(k.startswith(BACKBONE) for k in state):
        return "mdlm"
    if isinstance(config.get("model"), dict) and "vocab_embed.embedding" in state:
        return "sedd"
    raise ValueError(
        f"unknown pretrained layout (config keys {sorted(config)[:12]}, first weight keys "
        f"{sorted(state)[:5]}); expected louaaron/sedd-* or kuleshov-group/mdlm-* layout"
    )


def architecture(layout: str, config: dict, state: dict) -> dict:
    """Our ModelConfig fields implied by the checkpoint's config.json."""
    if layout == "sedd":
        m = config["model"]
        vocab = state["vocab_embed.embedding"].shape[0]
        return dict(
            vocab_size=vocab,
            dim=m["hidden_size"],
            n_layers=m["n_blocks"],
            n_heads=m["n_heads"],
            cond_dim=m["cond_dim"],
            time_conditioning=True,
        )
    return dict(
        vocab_size=config["vocab_size"],
        dim=config["hidden_dim"],
        n_layers=config["n_blocks"],
        n_heads=config["n_heads"],
        cond_dim=config["cond_dim"],
        time_conditioning=bool(config.get("time_conditioning", False)),
    )


def training_architecture(path: Path, config: Mapping, state: dict) -> dict:
    """Our ModelConfig fields implied by a .ckpt's Hydra config (configs/model/*.yaml + config.yaml's
    time_conditioning, default False there); the vocabulary is the embedding's row count, since MDLM derives it
    from the tokenizer (+1 for the mask when the tokenizer has none) rather than storing it."""
    backbone = config.get("backbone", "dit")
    if backbone != "dit":
        raise ValueError(f"{path}: backbone {backbone!r}; only MDLM's 'dit' backbone maps onto this model")
    m = config["model"]
    missing = [k for k in ("hidden_size", "cond_dim", "n_blocks", "n_heads") if k not in m]
    embedding = BACKBONE + "vocab_embed.embedding"
    if missing or embedding not in state:
        raise ValueError(
            f"{path}: missing hyper_parameters config.model keys {missing}"
            + ("" if embedding in state else f", missing state_dict key {embedding!r}")
        )
    return dict(
        vocab_size=state[embedding].shape[0],
        dim=m["hidden_size"],
        n_layers=m["n_blocks"],
        n_heads=m["n_heads"],
        cond_dim=m["cond_dim"],
        time_conditioning=bool(config.get("time_conditioning", False)),
    )


def check_architecture(source, layout: str, arch: dict, model: torch.nn.Module) -> None:
    """Every shape-defining field must agree; time_conditioning (a property, not a shape) follows the checkpoint."""
    ours = model.config
    mismatched = {k: (v, getattr(ours, k)) for k, v in arch.items() if getattr(ours, k) != v}
    if "time_conditioning" in mismatched:
        ours.time_conditioning = arch["time_conditioning"]
        mismatched.pop("time_conditioning")
    if mismatched:
        raise ValueError(
            f"{source} ({layout} layout): checkpoint architecture differs from the configured "
            f"model: "
            + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, (a, b) in mismatched.items())
            + ("; the vocabulary must be the checkpoint's tokenizer (+ mask)" if "vocab_size" in mismatched else "")
        )


def convert_state(layout: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the checkpoint's keys to ours (table in the module docstring)."""
    out = {}
    for key, value in state.items():
        if layout == "mdlm":
            if not key.startswith(BACKBONE):
                continue  # e.g. noise schedule or metric state outside the network
            key = key[len(BACKBONE) :]
        if key.endswith(DROPPED_SUFFIXES):
            continue
        out["vocab_embed.weight" if key == "vocab_embed.embedding" else key] = value
    return out


def check_keys(source, layout: str, converted: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    missing = sorted(k for k in own if k not in converted and k not in NEW_KEYS)
    unexpected = sorted(k for k in converted if k not in own)
    shapes = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
        for k in converted
        if k in own and converted[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} ({layout} layout): missing keys {missing}, unexpected keys {unexpected}, "
            f"mismatched shapes {shapes}"
        )


def backbone_parameter_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The .ckpt's backbone parameters in MDLM's `self.backbone.parameters()` order.

    Module.state_dict() and Module.parameters() walk the same module tree in the same (registration) order; the
    state_dict adds each module's persistent buffers after its parameters. So the "backbone." keys in state_dict
    order, less the buffers (rotary_emb.inv_freq is the DIT's only one), are the parameter order. Every DIT
    parameter requires grad in MDLM's training, so ExponentialMovingAverage's requires_grad filter drops none.
    """
    return [k for k in state if k.startswith(BACKBONE) and not k.endswith(DROPPED_SUFFIXES)]


def ema_state(path: Path, state: dict[str, torch.Tensor], shadow: list) -> dict[str, torch.Tensor]:
    """`state` with each backbone parameter replaced by its EMA shadow: shadow_params[i] is the i-th of
    backbone_parameter_keys(state), then noise.parameters() (none in MDLM's schedules; any extra entries must be
    covered by "noise." keys and are ignored, this model has no noise module). Position and shape must agree."""
    keys = backbone_parameter_keys(state)
    n_noise = sum(k.startswith("noise.") for k in state)
    if not len(keys) <= len(shadow) <= len(keys) + n_noise:
        raise ValueError(
            f"{path}: ema.shadow_params has {len(shadow)} tensors, expected {len(keys)} (one per "
            f"backbone parameter in state_dict"
            + (f", plus up to {n_noise} noise parameters" if n_noise else "")
            + "); the EMA does not match the weights"
        )
    shapes = [
        f"shadow_params[{i}] {tuple(s.shape) if torch.is_tensor(s) else type(s).__name__} vs {k} "
        f"{tuple(state[k].shape)}"
        for i, (k, s) in enumerate(zip(keys, shadow))
        if not torch.is_tensor(s) or s.shape != state[k].shape
    ]
    if shapes:  # the first few are enough to see a shifted or reordered list
        raise ValueError(
            f"{path}: ema.shadow_params do not line up with the state_dict's backbone parameters "
            f"(position i = i-th backbone parameter), {len(shapes)} mismatched: "
            + "; ".join(shapes[:4])
            + ("; ..." if len(shapes) > 4 else "")
        )
    return {**state, **dict(zip(keys, shadow))}


def copy_weights(model: torch.nn.Module, converted: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    with torch.no_grad():
        for key, value in converted.items():
            own[key].copy_(value.to(own[key].dtype))


def load_training_checkpoint(model: torch.nn.Module, path: Path, use_ema: bool = True) -> dict:
    """Load an MDLM Lightning .ckpt into `model` in place: its EMA weights when it has them and `use_ema`
    (MDLM's eval.disable_ema is the opposite switch), else its raw state_dict. Returns a short report."""
    ckpt, unpickling = read_training_checkpoint(path)
    config, state, shadow = training_checkpoint_parts(path, ckpt)
    check_architecture(path, "mdlm", training_architecture(path, config, state), model)
    own = model.state_dict()
    # names are checked on the raw state_dict, so a missing key is named even when the EMA is then used
    check_keys(path, "mdlm", convert_state("mdlm", state), own)
    weights = "ema" if shadow is not None and use_ema else "raw"
    converted = convert_state("mdlm", ema_state(path, state, shadow) if weights == "ema" else state)
    copy_weights(model, converted)
    return {
        "layout": "mdlm",
        "source": str(path),
        "format": "lightning-ckpt",
        "weights": weights,
        "ema_available": shadow is not None,
        "unpickling": unpickling,
        "step": ckpt.get("global_step"),
        "parameterization": config.get("parameterization"),
        "loaded": len(converted),
        "new": [k for k in NEW_KEYS if k in own],
    }


def load_pretrained(model: torch.nn.Module, source: str, layout: str | None = None, use_ema: bool = True) -> dict:
    """Load a SEDD / MDLM checkpoint (hub id, folder, or MDLM training .ckpt file) into `model` in place; returns
    a short report. `layout` (train.pretrained_format: sedd | mdlm) must agree with what the files show when
    given; a .ckpt is always mdlm. `use_ema` only matters for a .ckpt (a published folder holds one set)."""
    path = resolve_source(source)
    if path.is_file():
        if layout not in (None, "mdlm"):
            raise ValueError(
                f"{source}: pretrained_format is {layout!r} but a {CKPT_SUFFIX} file is an MDLM "
                f"training checkpoint (mdlm layout)"
            )
        return load_training_checkpoint(model, path, use_ema)
    config, state = read_checkpoint(path)
    detected = detect_layout(config, state)
    if layout not in (None, detected):
        raise ValueError(f"{source}: pretrained_format is {layout!r} but the files are in the {detected} layout")
    layout = detected
    check_architecture(source, layout, architecture(layout, config, state), model)
    converted = convert_state(layout, state)
    own = model.state_dict()
    check_keys(source, layout, converted, own)
    copy_weights(model, converted)
    return {
        "layout": layout,
        "source": str(path),
        "format": "hf-folder",
        "weights": "published",
        "loaded": len(converted),
        "new": [k for k in NEW_KEYS if k in own],
    }
