"""Token importance for ATAT (objective atat, train/atat.py): a learned estimator and a fixed frequency prior.

Importance here means how hard a token is to denoise, in nats. Two sources:

Learned: ImportanceEstimator, a small convolutional network beside the diffusion model, reads the noisy sequence
[prefix ; x_t] and the noise level and predicts, at every position, the diffusion model's own surprisal there:

    s_hat_i(x_t, t)  ~=  -log p_theta(x0_i | x_t)        (the target, at masked positions only)

trained by regression (estimator_loss: MSE against the detached surprisal). It reads x_t, never x0, so it can
weigh the terms of a loss but cannot define a forward (masking) process: masking must be decided before x_t
exists. train/atat.py uses it only as a weight, and always detached.

Frequency: a fixed value per vocabulary item from unigram counts of the training data, the standardized
surprisal of the smoothed unigram distribution f (add-one: every id gets a finite value),

    f_v = (c_v + 1) / (N + V),   s_v = -log f_v,   z_v = (s_v - H) / S,
    H = sum_v f_v s_v (the unigram entropy),   S^2 = sum_v f_v (s_v - H)^2,

so z has mean 0 and variance 1 under f: a typical token of the data scores about 0, rare ones are positive.
It depends on the clean token's id, so using it in the masking schedule makes the schedule state-dependent
(train/atat.py derives the bound that keeps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMPORTANCE_FILE = "importance.safetensors"  # beside model.safetensors in a model folder


class ImportanceEstimator(nn.Module):
    """x [B, L] (prefix and noisy target), sigma [B] -> predicted surprisal in nats, [B, L], >= 0.

        h = embed(x) ++ [move(t), is_prefix]          move(t) = 1 - exp(-sigma), the mask probability
        h = GELU(conv_k(h))  (layers times, 'same' padding)
        s_hat = softplus(linear(h))

    The convolutions see k // 2 tokens on each side per layer (receptive field layers * (k - 1) + 1): the local
    context that decides most of a masked token's difficulty, at about V * dim + layers * k * dim^2 parameters
    (77k for V = 2048 at the defaults) and no length limit. Its last layer starts at zero with the bias at
    log(e - 1), so an untrained estimator predicts 1 nat everywhere instead of a random ranking.
    """

    def __init__(self, vocab_size: int, dim: int = 32, kernel: int = 5, layers: int = 2):
        super().__init__()
        if kernel % 2 == 0 or kernel < 1:
            raise ValueError(f"importance estimator: kernel must be odd and >= 1 ('same' padding), got {kernel}")
        if dim < 1 or layers < 1:
            raise ValueError(f"importance estimator: dim and layers must be >= 1, got dim {dim}, layers {layers}")
        self.config = {"vocab_size": int(vocab_size), "dim": int(dim), "kernel": int(kernel), "layers": int(layers)}
        self.embed = nn.Embedding(vocab_size, dim)
        self.convs = nn.ModuleList(
            nn.Conv1d(dim + 2 if i == 0 else dim, dim, kernel, padding=kernel // 2) for i in range(layers)
        )
        self.head = nn.Linear(dim, 1)
        nn.init.normal_(self.embed.weight, std=0.1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(math.e - 1))  # softplus(bias) = 1

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, prefix_len: int = 0) -> torch.Tensor:
        B, L = x.shape
        move = (-torch.expm1(-sigma.float()))[:, None, None].expand(B, 1, L)
        segment = (torch.arange(L, device=x.device) < prefix_len).float()[None, None].expand(B, 1, L)
        h = torch.cat([self.embed(x).transpose(1, 2), move, segment], dim=1)  # [B, dim + 2, L]
        for conv in self.convs:
            h = F.gelu(conv(h))
        return F.softplus(self.head(h.transpose(1, 2)).squeeze(-1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def estimator_loss(prediction: torch.Tensor, surprisal: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the estimator at masked positions, against the diffusion model's surprisal
    -log p_theta(x0_i | x_t) there, detached here so that this loss never reaches the diffusion model:

        L_est = (1 / N) sum_{i masked} (s_hat_i - sg[-log p_theta(x0_i | x_t)])^2.

    prediction, surprisal: [N] (the masked positions). With N = 0 it is 0 with the estimator still in the graph
    (every parameter gets a zero gradient, as distributed training needs)."""
    if prediction.numel() == 0:
        return prediction.sum() * 0.0
    return F.mse_loss(prediction.float(), surprisal.detach().float())


def importance_stats(prediction: torch.Tensor, target: torch.Tensor, prefix: str = "importance") -> dict:
    """Logging numbers of the estimator on one batch's masked positions: the mean, std, min and max of its
    predictions and their Pearson correlation with the target (0 where either side is constant or N < 2):

        corr = sum (p - p_bar)(y - y_bar) / sqrt(sum (p - p_bar)^2 * sum (y - y_bar)^2).

    Plain floats, keys `{prefix}_{mean,std,min,max,corr}`."""
    p, y = prediction.detach().double().flatten(), target.detach().double().flatten()
    keys = [f"{prefix}_{k}" for k in ("mean", "std", "min", "max", "corr")]
    if p.numel() == 0:
        return dict.fromkeys(keys, float("nan"))
    dp, dy = p - p.mean(), y - y.mean()
    denominator = float((dp.square().sum() * dy.square().sum()).sqrt())
    corr = float((dp * dy).sum()) / denominator if denominator > 0 else 0.0
    std = float(p.std(unbiased=False))
    return dict(zip(keys, (float(p.mean()), std, float(p.min()), float(p.max()), corr)))


def unigram_counts(arrays, vocab_size: int, where: str = "token arrays") -> np.ndarray:
    """c_v = how often id v occurs in `arrays` (any iterable of integer arrays or tensors), int64 [V]."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for array in arrays:
        ids = np.asarray(array.cpu() if isinstance(array, torch.Tensor) else array).ravel()
        if ids.size == 0:
            continue
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{where}: unigram counts need integer token ids, got dtype {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{where}: token ids must lie in [0, {vocab_size}) (the vocabulary), got ids from {low} to {high}"
            )
        counts += np.bincount(ids, minlength=vocab_size)
    return counts


def frequency_importance(counts) -> torch.Tensor:
    """z_v = (s_v - H) / S with s_v = -log f_v of the add-one smoothed unigram distribution (module docstring):
    mean 0 and variance 1 under f. All ids equally frequent: z = 0. counts [V] -> float32 [V]."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if c.dim() != 1 or (c < 0).any():
        raise ValueError(f"frequency importance needs a 1-d array of counts >= 0, got shape {tuple(c.shape)}")
    f = (c + 1) / (c.sum() + c.numel())
    s = -f.log()
    entropy = (f * s).sum()
    spread = (f * (s - entropy).square()).sum().sqrt()
    if spread <= 1e-12:
        return torch.zeros_like(c, dtype=torch.float32)
    return ((s - entropy) / spread).float()


def estimator_importance(estimator: nn.Module, prefix_len: int):
    """The sampler's view of the estimator (eval/samplers.py, sampler uncertainty): x [B, P + L], sigma [B]
    -> predicted surprisal [B, P + L] in nats, without gradients."""

    def importance(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return estimator(x, sigma, prefix_len)

    return importance


def save_importance(out_dir, estimator: ImportanceEstimator, frequency: torch.Tensor | None = None) -> Path:
    """Write the estimator's weights (and the frequency importance it was trained with, if any) to
    out_dir/importance.safetensors, its architecture in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(out_dir) / IMPORTANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"estimator.{k}": v.detach().cpu().contiguous() for k, v in estimator.state_dict().items()}
    if frequency is not None:
        tensors["frequency"] = frequency.detach().cpu().float().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"estimator": json.dumps(estimator.config)})
    tmp.replace(path)
    return path


def load_importance(model_dir, device="cpu") -> tuple[ImportanceEstimator, torch.Tensor | None]:
    """(estimator in eval mode, frequency importance or None) from model_dir/importance.safetensors."""
    from safetensors import safe_open

    path = Path(model_dir) / IMPORTANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no importance estimator; the uncertainty sampler needs the folder of a "
            f"run trained with objective atat"
        )
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        if "estimator" not in meta:
            raise ValueError(f"{path}: metadata key 'estimator' (the architecture) is missing, got keys {sorted(meta)}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    estimator = ImportanceEstimator(**json.loads(meta["estimator"]))
    state = {k[len("estimator.") :]: v for k, v in tensors.items() if k.startswith("estimator.")}
    estimator.load_state_dict(state, strict=True)
    return estimator.to(device).eval(), tensors.get("frequency")
