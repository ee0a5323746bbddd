"""A trained diffusion model as samplers and metrics see it: x_t -> p_theta(x_0 | x_t) and the score.

The network returns raw logits ``model(x, sigma, prefix_len) -> [B, L, V]`` (docs/contracts.md). Each
objective reads them its own way (train/objectives.py), and on the absorbing graph the two readings are
tied at a masked position by

    s_theta(x_t)_y = p_theta(x_0 = y | x_t) / (exp(sigma) - 1),      y != m,

so both views are offered for both objectives: the native one exactly, the other through this identity
(for sedd, p_theta(x_0 | x_t) is the score renormalised over y != m). eval/trained.py builds one per model.
"""

from __future__ import annotations

import torch


class Denoiser:
    """Wraps ``model(x, sigma, prefix_len)``. A model trained without time conditioning ignores sigma itself
    (ModelConfig.time_conditioning), so the views pass sigma on unchanged."""

    def __init__(self, model, objective: str, mask_id: int, prefix_len: int):
        if objective not in ("mdlm", "sedd"):
            raise ValueError(f"a diffusion denoiser needs objective mdlm or sedd, got {objective!r}")
        self.model, self.objective = model, objective
        self.mask_id, self.prefix_len = int(mask_id), int(prefix_len)
        self.calls = 0  # network calls and the rows they computed, counted so benchmarks can report them
        self.rows = 0

    def logits(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        select: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's logits [B, L, V]; with ``select`` (Bool [B, L]) those of the selected positions [N, V]
        (row-major), the only ones it projects to the vocabulary (a network that ignores it is indexed here).
        ``given`` (Bool [B, L]; inserting stages): the clean given tokens of the canvas, told to the network."""
        self.calls += 1
        self.rows += x.shape[0]
        told = {} if given is None else {"given": given}
        if select is None:
            return self.model(x, sigma, self.prefix_len, **told)
        logits = self.model(x, sigma, self.prefix_len, select=select, **told)
        return logits[select] if logits.dim() == 3 else logits

    def masked_x0_log_probs(
        self, x: torch.Tensor, sigma: torch.Tensor, select: torch.Tensor, given: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p_theta(x_0 | x_t) [N, V] at the ``select``ed masked positions only, one call that projects just
        those: log_softmax of the logits with the mask entry at -inf for both objectives (mdlm: SUBS at a masked
        position; sedd: the score renormalised over y != m, where its shift -log expm1(sigma) - log(V - 1)
        cancels)."""
        logits = self.logits(x, sigma, select, given).float().clone()
        logits[:, self.mask_id] = float("-inf")
        return logits.log_softmax(dim=-1)

    def x0_log_probs(self, x: torch.Tensor, sigma: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """log p_theta(x_0 | x_t) [B, L, V], the network told noise level ``sigma`` [B]: SUBS for mdlm; for sedd
        softmax_{y != m}(log s_y) at masked positions and a point mass on x_t elsewhere (carry-over, as SUBS).
        The sedd renormalisation cancels the 1 / expm1(sigma) scale, so sigma only reaches the network."""
        from train.objectives import sedd_log_score, subs_log_probs

        logits = self.logits(x, sigma, given=given)
        if self.objective == "mdlm":
            return subs_log_probs(logits, x, self.mask_id)
        log_score = sedd_log_score(logits, x, sigma, self.mask_id)
        log_score[..., self.mask_id] = float("-inf")
        renormalised = log_score.log_softmax(dim=-1)
        carry = torch.full_like(renormalised, float("-inf")).scatter(-1, x[..., None], 0.0)
        return torch.where((x != self.mask_id)[..., None], carry, renormalised)

    def log_score(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        network_sigma: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log s_theta(x_t)_y [B, L, V] at noise level ``sigma`` [B]: SEDD's scaled score for sedd;
        log p_theta(y | x_t) - log expm1(sigma) for mdlm. Only masked positions are read by the samplers.

        ``network_sigma`` (default ``sigma``) is the level the network is told; the score is still expressed at
        ``sigma`` through the identity above, s_y = p_theta(y | x_t) / expm1(sigma). Semi-autoregressive
        blocks use it: the network hears the masked share of the whole target, the jump weights use the
        block's own time (eval/samplers.py)."""
        from train.objectives import sedd_log_score, subs_log_probs

        logits = self.logits(x, sigma if network_sigma is None else network_sigma, given=given)
        if self.objective == "sedd":
            return sedd_log_score(logits, x, sigma, self.mask_id)
        log_p0 = subs_log_probs(logits, x, self.mask_id)
        return log_p0 - torch.log(torch.expm1(sigma.float()))[:, None, None]
