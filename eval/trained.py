"""One trained model folder as eval/ uses it: the one loader behind sampling, validation, scoring and the bench.

    from eval.trained import load_trained
    m = load_trained("runs/cascade/stage2", device)
    m.name         'stage2': stage{k} with k = config.json's stage (single-stage and AR models model stage 3)
    m.model        the network in eval mode with its EMA weights (train.checkpoint.load_model): a
                   DiffusionTransformer or a transformers masked LM (train/backbones.py), called alike
    m.backbone     config.json's backbone kind: "dit" (also when absent) or "masked_lm"
    m.meta         config.json, its keys checked (train.checkpoint.read_meta)
    m.tokenizer    the tokenizer folder named in config.json
    m.noise        the noise schedule, train.noise.get_noise(meta["noise"])      diffusion only, else None
    m.denoiser     the x_t -> p_theta(x_0 | x_t) and score views (eval/denoiser.py)  diffusion only, else None
    m.is_ar        objective == "ar": sampled left to right, scored as a causal LM

Time conditioning is the network's own business: a model built with ModelConfig.time_conditioning False
ignores the sigma it is given (train/model.py), as a masked_lm backbone always does (train/backbones.py),
so nothing here or downstream special-cases it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from eval.denoiser import Denoiser


@lru_cache(maxsize=8)
def load_tokenizer(path: str):
    """The tokenizer folder of config.json, loaded once per path (the stages of a cascade share one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@dataclass
class Trained:
    name: str
    model_dir: Path
    model: torch.nn.Module
    meta: dict
    tokenizer: object
    noise: object | None = None
    denoiser: Denoiser | None = None

    @property
    def backbone(self) -> str:
        return (self.meta.get("backbone") or {}).get("kind", "dit")

    @property
    def is_ar(self) -> bool:
        return self.meta["objective"] == "ar"


def load_trained(model_dir, device=torch.device("cpu")) -> Trained:
    """Everything a consumer needs from a model folder (see the module docstring)."""
    from train.checkpoint import load_model
    from train.noise import get_noise

    model, meta = load_model(model_dir, device=device)
    parts = dict(name=f"stage{meta['stage']}", model_dir=Path(model_dir), model=model, meta=meta,
                 tokenizer=load_tokenizer(meta["tokenizer"]))
    if meta["objective"] == "ar":
        return Trained(**parts)
    denoiser = Denoiser(model, meta["objective"], meta["mask_id"], meta["prefix_len"])
    return Trained(**parts, noise=get_noise(meta["noise"]), denoiser=denoiser)
