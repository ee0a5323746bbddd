"""A trained diffusion model as samplers and metrics see it: x_t -> p_theta(x_0 | x_t) and the score.

The network returns raw logits ``model(x, sigma, prefix_len) -> [B, L, V]`` (docs/contracts.md). Each
objective reads them its own way (train/objectives.py), and on the absorbing graph the two readings are
tied at a masked position by

    s_theta(x_t)_y = p_theta(x_0 = y | x_t) / (exp(sigma) - 1),      y != m,

so both views are offered for both objectives: the native one exactly, the other through this identity
(for sedd, p_theta(x_0 | x_t) is the score renormalised over y != m).

    python -m eval.denoiser --model-dir runs/single/model     # prints the model's config and view shapes
"""
from __future__ import annotations

import argparse
import json

import torch

from common.device import resolve_device


class Denoiser:
    """Wraps ``model(x, sigma, prefix_len)``; ``time_conditioned=False`` feeds sigma = 0 (MDLM's default for
    SUBS, where the number of masks already tells the time), which makes the output independent of t."""

    def __init__(self, model, objective: str, mask_id: int, prefix_len: int, time_conditioned: bool = True):
        if objective not in ("mdlm", "sedd"):
            raise ValueError(f"a diffusion denoiser needs objective mdlm or sedd, got {objective!r}")
        self.model, self.objective = model, objective
        self.mask_id, self.prefix_len = int(mask_id), int(prefix_len)
        self.time_conditioned = bool(time_conditioned)
        self.calls = 0  # network calls and the rows they computed, counted so benchmarks can report them
        self.rows = 0

    def logits(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        model_sigma = sigma if self.time_conditioned else torch.zeros_like(sigma)
        return self.model(x, model_sigma, self.prefix_len)

    def x0_log_probs(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_theta(x_0 | x_t) [B, L, V]: SUBS for mdlm; for sedd softmax_{y != m}(log s_y) at masked
        positions and a point mass on x_t elsewhere (carry-over, as SUBS)."""
        from train.objectives import sedd_log_score, subs_log_probs

        logits = self.logits(x, sigma)
        if self.objective == "mdlm":
            return subs_log_probs(logits, x, self.mask_id)
        log_score = sedd_log_score(logits, x, sigma, self.mask_id)
        log_score[..., self.mask_id] = float("-inf")
        renormalised = log_score.log_softmax(dim=-1)
        carry = torch.full_like(renormalised, float("-inf")).scatter(-1, x[..., None], 0.0)
        return torch.where((x != self.mask_id)[..., None], carry, renormalised)

    def log_score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log s_theta(x_t)_y [B, L, V]: SEDD's scaled score for sedd; log p_theta(y | x_t) - log expm1(sigma)
        for mdlm. Only masked positions are read by the samplers."""
        from train.objectives import sedd_log_score, subs_log_probs

        logits = self.logits(x, sigma)
        if self.objective == "sedd":
            return sedd_log_score(logits, x, sigma, self.mask_id)
        log_p0 = subs_log_probs(logits, x, self.mask_id)
        return log_p0 - torch.log(torch.expm1(sigma.float()))[:, None, None]


def load_denoiser(model_dir, device="cpu"):
    """(Denoiser, noise schedule, config.json dict) of a trained diffusion model folder."""
    from train.checkpoint import load_model
    from train.noise import get_noise

    model, meta = load_model(str(model_dir), device=device)
    if meta["objective"] == "ar":
        raise ValueError(f"{model_dir}: an autoregressive model has no denoiser; use eval.ar_sampler")
    objective = "mdlm" if meta["objective"] == "atat" else meta["objective"]
    denoiser = Denoiser(model, objective, meta["mask_id"], meta["prefix_len"],
                        time_conditioned=meta.get("time_conditioning", True))
    return denoiser, get_noise(meta["noise"]), meta


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m eval.denoiser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    denoiser, noise, meta = load_denoiser(args.model_dir, device)
    print(json.dumps(meta, indent=2))
    x = torch.full((1, meta["prefix_len"] + meta["target_len"]), meta["mask_id"], device=device)
    sigma = noise.total(torch.tensor([0.5], dtype=torch.float64)).float().to(device)
    with torch.no_grad():
        print("x0_log_probs", tuple(denoiser.x0_log_probs(x, sigma).shape),
              "log_score", tuple(denoiser.log_score(x, sigma).shape))


if __name__ == "__main__":
    main()
