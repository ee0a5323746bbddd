"""Training objectives: MDLM (SUBS), SEDD (score entropy, absorbing graph) and AR cross-entropy.

Notation: x0 the clean target tokens, x_t the noised tokens, m the mask (absorbing) token,
sigma = sigma_bar(t) the total noise and dsigma = sigma'(t) its rate (train/noise.py). Under the absorbing
graph each target token independently becomes m with probability 1 - exp(-sigma).

Every loss here is a per-token NELBO (nats per target token): the sum over target positions divided by
B * L_target, so MDLM, SEDD and AR numbers share a unit and a batch split into micro-batches or
processes averages to the same value.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from train.fused import subs_cross_entropy, use_fused

OBJECTIVES = ("mdlm", "sedd", "ar")


def forward_mask(uniform: torch.Tensor, move: torch.Tensor, maskable: torch.Tensor | None = None) -> torch.Tensor:
    """The positions the absorbing forward process masks: Bool [B, L],

        masked_i = (u_i < move_i) and maskable_i,      move_i = 1 - keep probability of position i,

    u = `uniform` [B, L] in [0, 1), move [B, 1] (one sigma per row: 1 - exp(-sigma)) or [B, L] (per position,
    train/atat.py), maskable Bool [B, L] (None: every position). P(masked_i) = move_i on maskable positions.
    """
    masked = uniform < move
    return masked if maskable is None else masked & maskable


def corrupt(x0: torch.Tensor, sigma: torch.Tensor, mask_id: int, uniform: torch.Tensor) -> torch.Tensor:
    """Absorbing forward process: x_t[i] = m if u[i] < 1 - exp(-sigma) else x0[i] (forward_mask).

    `uniform` (same shape as x0, U[0,1)) is drawn by the caller so that a global batch can be noised once
    and split across micro-batches and processes identically.
    """
    move = -torch.expm1(-sigma)  # 1 - exp(-sigma), exact for small sigma
    return torch.where(forward_mask(uniform, move[:, None]), torch.full_like(x0, mask_id), x0)


class MaskedForward(NamedTuple):
    """The network's output at the masked target positions of one batch (masked_forward): logits [N, V] and the
    clean tokens x0_i they are scored against, targets [N], both in row-major order of the masked positions; the
    row of each, rows [N]; the mask Bool [B, L]; the network input x_in = [prefix ; x_t] [B, P + L]."""

    logits: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    masked: torch.Tensor
    x_in: torch.Tensor


def masked_forward(
    model,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    masked: torch.Tensor,
    sigma: torch.Tensor,
    mask_id: int,
    given: torch.Tensor | None = None,
) -> MaskedForward:
    """Noise x0 with a given mask and run the network where its output is scored:

        x_t[i] = m if masked[i] else x0[i],      logits = model([prefix ; x_t], sigma, P, select = [0_P ; masked]),

    P = prefix length (the prefix stays clean and is never selected). x0 [B, L], prefix [B, P] or None, masked
    Bool [B, L], sigma [B] (what the network is told). Only the masked positions are scored (SUBS and the absorbing
    score entropy give every other position 0), so the output head runs on those N positions only. The scored
    positions are `masked` itself, not x_t == m (a clean x0 token that is the mask id is not scored). The training
    losses (masked_token_losses, sequence_nelbo, train/atat.py) and the validation NELBO (eval/likelihood.py) all
    call the network through here. given (Bool [B, L], inserting stages; prefix None): the clean tokens placed in
    the canvas, which the network is told (model(..., given=given)); they must never be masked.
    """
    x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    x_in = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    select = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), masked], 1) if prefix_len else masked
    if given is None:
        logits = model(x_in, sigma, prefix_len, select=select)  # [N, V], rows in masked-position order
    else:
        if prefix_len:
            raise ValueError(f"an inserting canvas has no prefix (its given tokens sit inside it), got {prefix_len}")
        logits = model(x_in, sigma, 0, select=select, given=given)
    return MaskedForward(logits, x0[masked], masked.nonzero(as_tuple=True)[0], masked, x_in)


def fused_switch(model) -> bool | str:
    """The model's own fused cross-entropy switch ("auto", True, False; train.fused.use_fused), read through a
    DDP / DeepSpeed wrapper (which holds the model as .module); "auto" for a model without one."""
    return getattr(getattr(model, "module", model), "fused", "auto")


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """MDLM's SUBS parameterization of log p_theta(x0 | x_t).

    Zero masking probability: the mask logit is set to -inf, so the model never predicts m.
    Carry-over unmasking: where x_t != m the distribution is a point mass on x_t
    (log prob 0 at x_t, -inf elsewhere); elsewhere it is log_softmax(logits).
    logits: [..., V], x_t: [...] -> [..., V] (float32).
    """
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    log_probs = logits.log_softmax(dim=-1)
    unmasked = (x_t != mask_id)[..., None]
    carry = torch.full_like(log_probs, float("-inf")).scatter(-1, x_t[..., None], 0.0)
    return torch.where(unmasked, carry, log_probs)


def subs_nll(logits_masked: torch.Tensor, x0_masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p_theta(x0_i | x_t) at masked positions under SUBS: the cross-entropy of the logits with the mask
    logit set to -inf (zero masking probability). logits [N, V], x0 [N] -> float32 [N]."""
    logits = logits_masked.float().clone()
    logits[:, mask_id] = float("-inf")
    return F.cross_entropy(logits, x0_masked, reduction="none")


def mdlm_token_loss(
    logits_masked: torch.Tensor,
    x0_masked: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    mask_id: int,
    fused: bool | str = "auto",
) -> torch.Tensor:
    """Continuous-time MDLM NELBO term of each masked position (unmasked positions contribute 0 by SUBS):

        loss_i = dsigma / expm1(sigma) * -log p_theta(x0_i | x_t),

    and dsigma / expm1(sigma) = 1/t under the loglinear schedule. All inputs are already restricted to
    the masked positions: logits [N, V], x0 [N], sigma and dsigma [N]. fused ("auto", True, False, as the
    model's switch): the cross-entropy through train.fused.subs_cross_entropy, same values, cheaper backward.
    """
    if use_fused(fused, logits_masked):
        nll = subs_cross_entropy(logits_masked, x0_masked, mask_id)
    else:
        nll = subs_nll(logits_masked, x0_masked, mask_id)
    return dsigma / torch.expm1(sigma) * nll


def sedd_log_score(logits: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SEDD's absorbing-graph log score with scale_by_sigma:

        log s_theta(x_t)_y = logits_y - log(expm1(sigma)) - log(V - 1),   and log s(x_t)_{x_t} = 0.

    The shift makes an untrained (zero-logit) network output the score of a uniform guess,
    p_t(y)/p_t(m) = 1 / ((V - 1) expm1(sigma)). The mask id is not needed by the formula itself (the
    scatter puts 0 at the current token, which is m at every masked position); it is kept in the
    signature so all parameterizations are called alike.
    logits [..., V], x_t [...], sigma broadcastable from the left ([B] for [B, L, V]; [N] for [N, V]).
    """
    del mask_id
    logits = logits.float()
    sigma = sigma.float().reshape(sigma.shape + (1,) * (logits.dim() - sigma.dim()))
    esigm1 = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1)
    score = logits - esigm1.log() - math.log(logits.shape[-1] - 1)
    return score.scatter(-1, x_t[..., None], 0.0)


def sedd_token_loss(
    log_score: torch.Tensor, x0_masked: torch.Tensor, sigma: torch.Tensor, dsigma: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """Denoising score entropy of each masked position (x_t = m; unmasked positions have no
    transition out of them under the absorbing graph and contribute 0):

        loss_i = dsigma * [ sum_{y != m} s_y  -  r log s_{x0}  +  r (log r - 1) ],   r = 1 / expm1(sigma),

    where s = exp(log_score) and r = p_t(x0)/p_t(m) is the true ratio, so the bracket is >= 0 and is 0
    exactly when s_{x0} = r and s_y = 0 for every other y. log_score [N, V], the rest [N].
    """
    log_score = log_score.float()
    ratio = 1 / torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1)
    keep = torch.ones(log_score.shape[-1], dtype=torch.bool, device=log_score.device)
    keep[mask_id] = False
    positive = log_score[:, keep].exp().sum(-1)
    negative = ratio * log_score.gather(-1, x0_masked[:, None]).squeeze(-1)
    constant = ratio * (ratio.log() - 1)
    return dsigma * (positive - negative + constant)


def ar_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Autoregressive NLL: loss_i = -log p_theta(x_{i+1} | x_{<=i}); logits [B, L, V], targets [B, L]."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def masked_token_losses(
    model,
    objective: str,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    t: torch.Tensor,
    uniform: torch.Tensor,
    noise,
    mask_id: int,
    maskable: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
):
    """Noise x0 at times t and return (loss_i of every masked position, the row of each): the terms whose sum is
    the NELBO (unmasked positions contribute exactly 0 under both objectives, so they are not computed).

    The model sees [prefix (clean) ; x_t]; only target positions are noised, and of those only the `maskable`
    ones (Bool [B, L]; None: all): masked_i = u_i < 1 - exp(-sigma) (forward_mask). The output head runs only on
    the masked positions (masked_forward). mdlm: loss_i of mdlm_token_loss; sedd: of sedd_token_loss.
    given (Bool [B, L], inserting stages): clean tokens the network is told of (masked_forward); never masked.
    """
    if given is not None:
        maskable = ~given if maskable is None else maskable & ~given
    if objective not in ("mdlm", "sedd"):
        raise ValueError(f"diffusion objective must be mdlm or sedd, got {objective!r}")
    sigma, dsigma = noise.total(t), noise.rate(t)
    masked = forward_mask(uniform, -torch.expm1(-sigma)[:, None], maskable)
    out = masked_forward(model, x0, prefix, masked, sigma, mask_id, given)
    rows = out.rows
    if objective == "mdlm":
        return mdlm_token_loss(out.logits, out.targets, sigma[rows], dsigma[rows], mask_id, fused_switch(model)), rows
    x_t = torch.full_like(out.targets, mask_id)  # x_t = m at every masked position
    log_score = sedd_log_score(out.logits, x_t, sigma[rows], mask_id)
    return sedd_token_loss(log_score, out.targets, sigma[rows], dsigma[rows], mask_id), rows


def diffusion_loss(
    model,
    objective: str,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    t: torch.Tensor,
    uniform: torch.Tensor,
    noise,
    mask_id: int,
    pad_id: int | None = None,
    maskable: torch.Tensor | None = None,
    normalization: str = "token",
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-target-token NELBO of one (micro-)batch for objective mdlm or sedd (terms: masked_token_losses).

    pad_id (blocks padded to length, data: doc): positions where x0 = pad are never masked (the model sees
    them clean, as it sees a prefix), so they carry no loss, and the sum is divided by the number of non-pad
    target tokens instead of B * L:  loss = sum_i loss_i / #{i : x0_i != pad}.
    maskable (SFT, Bool [B, L]: the answer tokens): likewise only these positions are ever masked and scored;
    prompt, system and user tokens stay clean. normalization "token": sum over the batch's maskable positions /
    their count; "sequence": the mean over rows b of sum_{i in b} loss_i / n_b (each conversation weighs the
    same, whatever its answer length; rows with n_b = 0 count as 0).
    given (inserting stages, Bool [B, L]): the given tokens, clean, told to the network and not scored, so
    maskable = not given and the loss is per inserted token (train/inserting.py).
    """
    if given is not None:
        maskable = ~given if maskable is None else maskable & ~given
    if pad_id is not None:
        not_pad = x0 != pad_id
        maskable = not_pad if maskable is None else maskable & not_pad
    told = {} if given is None else {"given": given}  # the seed's call exactly when there are none
    token_loss, rows = masked_token_losses(model, objective, x0, prefix, t, uniform, noise, mask_id, maskable, **told)
    # sum over masked positions / all target positions (unmasked positions contribute exactly 0). When nothing
    # is masked the [0, V] logits still carry the graph, so every parameter gets a (zero) gradient (DDP needs it)
    if maskable is None:
        return token_loss.sum() / x0.numel()
    if normalization == "sequence":
        per_row = torch.zeros(x0.shape[0], dtype=token_loss.dtype, device=token_loss.device).index_add(
            0, rows, token_loss
        )
        return (per_row / maskable.sum(1).clamp(min=1)).mean()
    if normalization != "token":
        raise ValueError(f"normalization must be token or sequence, got {normalization!r}")
    return token_loss.sum() / maskable.sum().clamp(min=1)


def sequence_nelbo(
    model, x0: torch.Tensor, t: torch.Tensor, uniform: torch.Tensor, noise, mask_id: int, maskable: torch.Tensor
) -> torch.Tensor:
    """One-draw estimate of each row's MDLM NELBO of its `maskable` tokens given the rest, in nats (a sum, not
    a per-token mean):  NELBO_b ~= sum_{i in b masked} dsigma/expm1(sigma) * -log p_theta(x0_i | x_t),
    unbiased for E_t E_mask of the same sum with t ~ U(0, 1). x0 [B, L], t [B], uniform [B, L] -> float32 [B].
    The Diffusion-DPO score of an answer is -NELBO averaged over draws (train/dpo.py)."""
    token_loss, rows = masked_token_losses(model, "mdlm", x0, None, t, uniform, noise, mask_id, maskable)
    return torch.zeros(x0.shape[0], dtype=token_loss.dtype, device=token_loss.device).index_add(0, rows, token_loss)


def ar_loss(model, x0: torch.Tensor, bos_id: int, pad_id: int | None = None) -> torch.Tensor:
    """Per-token NLL of the causal model on [bos ; x0]: every token of the block is predicted (every non-pad
    token, when blocks are padded: sum over non-pad targets / their count)."""
    x_in = torch.cat([torch.full_like(x0[:, :1], bos_id), x0[:, :-1]], dim=1)
    token_loss = ar_token_loss(model(x_in), x0)
    if pad_id is None:
        return token_loss.mean()
    valid = x0 != pad_id
    return (token_loss * valid).sum() / valid.sum().clamp(min=1)
