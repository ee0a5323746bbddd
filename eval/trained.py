"""One trained model folder as eval/ uses it: the one loader behind sampling, validation, scoring and the bench.

    from eval.trained import load_trained
    m = load_trained("runs/demo/cascade/stage2", device)
    m.name         'stage2': stage{k} with k = config.json's stage (single-stage and AR models model stage 3)
    m.model        the network in eval mode with its EMA weights (train.checkpoint.load_model): a
                   DiffusionTransformer or a transformers masked LM (train/backbones.py), called alike
    m.backbone     config.json's backbone kind: "dit" (also when absent) or "masked_lm" (m.record.backbone_kind)
    m.meta         config.json, its keys checked (train.checkpoint.read_meta)
    m.record       the same config.json as eval/record.ModelRecord: provenance, backbone, run, training objective
    m.tokenizer    the model folder's tokenizer copy (train.checkpoint.model_tokenizer_dir: digest checked),
                   loaded on first use: a job that needs only ids (validation) never imports transformers (~1 s)
    m.noise        the noise schedule, train.noise.get_noise(meta["noise"])      diffusion only, else None
    m.denoiser     the x_t -> p_theta(x_0 | x_t) and score views (eval/denoiser.py)  diffusion only, else None
    m.is_ar        objective == "ar": sampled left to right, scored as a causal LM
    m.max_positions  the longest input the network takes: a masked_lm backbone's max_position_embeddings,
                   None for the DiT (rotary positions, no table)

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
from eval.record import ModelRecord


@lru_cache(maxsize=8)
def load_tokenizer(path: str):
    """A tokenizer folder, loaded once per path."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@dataclass
class Trained:
    name: str
    model_dir: Path
    model: torch.nn.Module
    meta: dict
    loaded_tokenizer: object | None  # None until the first use of .tokenizer
    tokenizer_dir: Path
    noise: object | None = None
    denoiser: Denoiser | None = None

    @property
    def tokenizer(self):
        """The tokenizer of tokenizer_dir (transformers' AutoTokenizer), loaded once; None for a stand-in model
        with no tokenizer folder."""
        if self.loaded_tokenizer is None and self.tokenizer_dir is not None:
            self.loaded_tokenizer = load_tokenizer(str(self.tokenizer_dir))
        return self.loaded_tokenizer

    @property
    def record(self) -> ModelRecord:
        """The folder's record (eval/record.py): provenance, backbone, run, training objective, ..."""
        return ModelRecord(self.model_dir, self.meta)

    @property
    def backbone(self) -> str:
        return self.record.backbone_kind

    @property
    def tokenizer_sha256(self) -> str:
        """The tokenizer's digest (train.checkpoint.tokenizer_digest): equal digests, equal token ids."""
        from train.checkpoint import model_tokenizer_digest

        return model_tokenizer_digest(self.model_dir, self.meta)

    @property
    def is_ar(self) -> bool:
        return self.meta["objective"] == "ar"

    @property
    def max_positions(self) -> int | None:
        """The input length the network cannot exceed (train/backbones.MaskedLMDenoiser checks it in forward):
        config.json's transformers config max_position_embeddings for a masked_lm backbone; None for the DiT."""
        if self.backbone != "masked_lm":
            return None
        limit = self.meta["model"].get("max_position_embeddings")
        return int(limit) if limit is not None else None


def load_trained(model_dir, device=torch.device("cpu")) -> Trained:
    """Everything a consumer needs from a model folder (see the module docstring)."""
    from train.checkpoint import load_model, model_tokenizer_dir
    from train.noise import get_noise

    model, meta = load_model(model_dir, device=device)
    tokenizer_dir = model_tokenizer_dir(model_dir, meta).resolve()
    parts = dict(
        name=f"stage{meta['stage']}",
        model_dir=Path(model_dir),
        model=model,
        meta=meta,
        loaded_tokenizer=None,
        tokenizer_dir=tokenizer_dir,
    )
    if meta["objective"] == "ar":
        return Trained(**parts)
    # an inserting stage's network reads only its canvas: the prefix_len given tokens sit inside it, not before it
    network_prefix = 0 if meta.get("stage_form") == "insert" else meta["prefix_len"]
    denoiser = Denoiser(model, meta["objective"], meta["mask_id"], network_prefix)
    return Trained(**parts, noise=get_noise(meta["noise"]), denoiser=denoiser)
