"""Samplers for absorbing-state (masked) discrete diffusion, all over a clean prefix.

The sequence is ``x = [prefix ; target]``. The prefix (stage k-1 tokens, or nothing) is clean and is never
touched; the target starts fully masked and is denoised from t = 1 down to t = 0 on the grid
t_i = 1 - i / steps. With sigma_bar(t) the total noise, a token is masked at time t with probability
1 - exp(-sigma_bar(t)). Every sampler's last step denoises every remaining mask, so no mask token survives.

A sampler sees the model through a ``denoiser`` (eval/denoiser.py) with two views of the same network:

    denoiser.x0_log_probs(x, sigma) -> log p_theta(x_0 | x_t)        native for mdlm (SUBS)
    denoiser.log_score(x, sigma)    -> log s_theta(x_t)_y            native for sedd (score entropy)

On the absorbing graph the two are tied by s(x_t)_y = p(x_0 = y | x_t) / (exp(sigma) - 1) at a masked
position, so every sampler runs on both objectives; each docstring names the objective it is written for.

Given tokens inside the target: a target position that already holds a token (not the mask) when a ``*_steps``
function starts is given. The samplers only ever write masked positions, so a given token is never changed, and
every schedule counts the masked positions of its span, not the given ones (confidence_steps). The placing
samplers (PLACING_SAMPLERS, ``{sampler}_placed``) start from such a canvas: place_prefix puts the prefix's tokens
into the target (eval/placement.py), then the sampler fills the rest; constrained decoding, not the model's law.

Randomness: every draw comes from the caller's ``torch.Generator`` (categorical draws by Gumbel-max in
float64), and how many numbers a step draws never depends on the network's output. That is why
``ddpm_cache`` reproduces ``ddpm`` token for token under the same generator.

Prompted generation (eval/generate.py) is ``remask`` over the prompt as the prefix: LLaDA's sampler, a fixed
number of commits per step chosen by a remasking rule, with one generator per row. It is not one of SAMPLERS
(the values of the config's sample.samplers, with PLACING_SAMPLERS) but shares their pieces: the Gumbel-max
draw (exponential_noise), the confidence ranking (most_confident), the block spans (block_spans) and the
masked-share noise level (mask_share_level).
"""

from __future__ import annotations

import math

import torch

from common.config import PLACED
from eval.placement import best_placement

SAMPLERS = ("ddpm", "ddpm_cache", "analytic", "euler", "confidence", "semi_ar", "uncertainty")
NATIVE_OBJECTIVE = {
    "ddpm": "mdlm",
    "ddpm_cache": "mdlm",
    "confidence": "mdlm",
    "semi_ar": "mdlm",
    "uncertainty": "mdlm",
    "analytic": "sedd",
    "euler": "sedd",
}
SEMI_AR_BLOCKS = 4  # semi_ar without a block size: the target in this many blocks
# {sampler}_placed (PLACED, common/config.py): place the prefix's tokens in the target first (place_prefix), then sample
PLACING_SAMPLERS = tuple(s + PLACED for s in SAMPLERS)


def placing(sampler: str) -> tuple[str, bool]:
    """(the sampler that fills the target, whether the prefix is placed first): 'confidence_placed' ->
    ('confidence', True), 'confidence' -> ('confidence', False)."""
    if sampler in PLACING_SAMPLERS:
        return sampler[: -len(PLACED)], True
    return sampler, False


def exponential_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """E = -log U ~ Exp(1) with U ~ U[0, 1), float64 [*shape]: the noise of the Gumbel-max race
    argmax_v w_v / E_v (= argmax_v log w_v + G_v with G_v = -log E_v ~ Gumbel(0, 1))."""
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return -torch.log(uniform.clamp_min(1e-300))


def sample_categorical(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw index ~ weights / weights.sum(-1) for non-negative, unnormalised ``weights[..., V]``.

    Gumbel-max in the exponential form argmax_v w_v / E_v with E_v = -log U_v ~ Exp(1), in float64: float32
    Gumbel noise truncates the tail and silently lowers the sampling temperature (Zheng et al., 2024).
    """
    return (weights.to(torch.float64) / exponential_noise(weights.shape, generator, weights.device)).argmax(dim=-1)


def most_confident(score: torch.Tensor, first: torch.Tensor, k) -> torch.Tensor:
    """Bool [B, L]: per row the ``k`` (an int, or Long[B]) positions that come first in the order: the ``first``
    positions before the others, then the larger ``score``, then the leftmost."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    order = order.gather(-1, (~first).gather(-1, order).long().argsort(dim=-1, stable=True))
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return rank < torch.as_tensor(k, device=rank.device).reshape(-1, 1)


def time_grid(steps: int) -> torch.Tensor:
    """t_i = 1 - i / steps for i = 0..steps (float64, so sigma_bar near t = 0 stays exact)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps


def _sigma(noise, t: float, batch: int, device) -> torch.Tensor:
    total = noise.total(torch.full((batch,), float(t), dtype=torch.float64, device=device))
    return total.to(torch.float32)


def _bisect_time(noise, share: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """The t in [0, 1] with 1 - exp(-sigma_bar(t)) = share, by bisection on noise.total (the mask
    probability rises with t for every schedule); 60 halvings reach float64 resolution."""
    low, high = torch.zeros_like(share), torch.ones_like(share)
    for _ in range(iterations):
        mid = (low + high) / 2
        below = -torch.expm1(-noise.total(mid)) < share
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return (low + high) / 2


def time_of_mask_share(noise, share: torch.Tensor) -> torch.Tensor:
    """Invert the mask probability: the t in [0, 1] with move(t) = 1 - exp(-sigma_bar(t)) = share
    (float64, any shape), clamped to [0, 1] where the schedule never reaches the share (loglinear and cosine
    top out at 1 - eps; geometric starts at 1 - exp(-sigma_min)). Each schedule of train/noise.py writes its
    closed form as `time_of_move`; a schedule without one is inverted numerically (_bisect_time)."""
    share = share.to(torch.float64)
    t = noise.time_of_move(share) if hasattr(noise, "time_of_move") else _bisect_time(noise, share)
    return t.clamp(0.0, 1.0)


def mask_share_level(noise, prefix_len: int, mask_id: int, given: torch.Tensor | None = None):
    """Noise level from the sequence itself, for semi-autoregressive blocks: x [B, P + L] -> sigma [B] with
    sigma = sigma_bar(t) and 1 - exp(-sigma_bar(t)) = share of the row's L target positions still masked
    (time_of_mask_share). A block's own grid restarts at t = 1, where the network would be told that the
    whole target is masked while the blocks to its left are already clean; this tells it the truth. ``given``
    (Bool [B, P + L], inserting stages): the given positions are not target positions (never masked), so the
    share is of the others."""

    def level(x: torch.Tensor) -> torch.Tensor:
        masked = (x[:, prefix_len:] == mask_id).to(torch.float64)
        if given is None:
            share = masked.mean(dim=-1)
        else:
            share = masked.sum(dim=-1) / (~given[:, prefix_len:]).sum(dim=-1).clamp_min(1)
        return noise.total(time_of_mask_share(noise, share)).to(torch.float32)

    return level


def tempered_log_probs(log_p: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p^(1/T) renormalised: for SUBS, softmax(logits / T) with the mask logit at -inf."""
    if temperature == 1.0:
        return log_p
    return torch.log_softmax(log_p / temperature, dim=-1)


def _unmask_probability(sigma_t: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """P(x_s unmasked | x_t masked) = (exp(-sigma_s) - exp(-sigma_t)) / (1 - exp(-sigma_t)), s < t.

    Written as expm1(sigma_t - sigma_s) / expm1(sigma_t) (multiply through by exp(sigma_t)), which is
    stable for small sigma.
    """
    return torch.expm1(sigma_t - sigma_s) / torch.expm1(sigma_t)


def editable_masks(editable: torch.Tensor, x: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Bool [B, P + L]: the masked positions a step may fill, ``editable`` ([P + L] for every row, or [B, P + L]
    per row: an inserting canvas's given positions are not editable) and masked in x."""
    return (editable if editable.dim() == 2 else editable[None, :]) & (x == mask_id)


def told(given: torch.Tensor | None) -> dict:
    """The denoiser's keyword for given tokens: none without them, so a denoiser that knows no given tokens
    serves every canvas that has none."""
    return {} if given is None else {"given": given}


def ddpm_steps(denoiser, x, editable, noise, steps, temperature, generator, cache=False, level=None, given=None):
    """Ancestral sampling of the MDLM reverse process (Sahoo et al., 2024, eq. 7). Objective: mdlm.

    For a masked position from time t to s < t (sigma_t = sigma_bar(t), sigma_s = sigma_bar(s)):
        q(x_s = y   | x_t = m) = p_theta(x_0 = y | x_t) * P_unmask(t, s)     for y != m
        q(x_s = m   | x_t = m) = 1 - P_unmask(t, s)
        P_unmask(t, s)         = (exp(-sigma_s) - exp(-sigma_t)) / (1 - exp(-sigma_t))
    Unmasked positions carry over (SUBS). The last step sets P_unmask = 1.

    The draw is made in two stages with the same law: first whether each masked position unmasks
    (u < P_unmask, one uniform per position), then, only where it does, which token (y ~ p_theta). Under SUBS
    P_unmask does not depend on the network, so the first stage needs no network call.

    ``cache=True`` is ``ddpm_cache``: the network is evaluated only for the rows in which some position
    unmasks at this step. Every other row keeps its x_t, so its output would be the same as at its last call
    (time-independent network) or unused (time-conditioned network): MDLM's cache, taken one step further
    (a row is recomputed only when its output is needed, not whenever x_t changed). The random stream is
    identical to ``ddpm``'s, so under the same generator both return the same tokens (bit for bit where the
    network gives a row the same numbers whatever the batch around it, as on CPU; GPU kernels chosen by
    batch size can differ in the last bits). A row of L tokens needs at most L network evaluations instead
    of one per step (1,000 at 1,000 steps).

    ``level`` (x -> sigma [B]), when given, is the noise level the network is told instead of sigma_bar(t) of
    the grid (semi-autoregressive blocks, see sample()); it depends on each row alone, so the cache still holds.
    ``given`` (Bool [B, P + L] or None): clean given tokens told to the network (sample(), inserting stages); the
    same for every sampler below.
    """
    batch = x.shape[0]
    grid = time_grid(steps)
    x = x.clone()
    for i in range(steps):
        sigma64 = noise.total(grid[i : i + 2].to(x.device))
        sigma_t = sigma64[0].to(torch.float32).expand(batch) if level is None else level(x)
        p_unmask = 1.0 if i == steps - 1 else float(_unmask_probability(sigma64[0], sigma64[1]))
        masked = editable_masks(editable, x, denoiser.mask_id)
        uniform = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        unmask = masked & (uniform < p_unmask)
        rows = unmask.any(dim=-1) if cache else torch.ones(batch, dtype=torch.bool, device=x.device)
        if not rows.any():
            continue
        log_p0 = denoiser.x0_log_probs(x[rows], sigma_t[rows], **told(None if given is None else given[rows]))
        if not unmask.any():
            continue
        p0 = tempered_log_probs(log_p0, temperature).exp()
        sub = x[rows]
        picked = unmask[rows]
        sub[picked] = sample_categorical(p0[picked], generator)
        x[rows] = sub
    return x


def _tempered_score(log_score: torch.Tensor, temperature: float, mask_id: int) -> torch.Tensor:
    """exp(log s) with the mask entry zeroed; temperature reshapes which token, not how much mass:
    s'_y = S * softmax(log s / T)_y with S = sum_y s_y, so the unmasking rate is unchanged."""
    log_score = log_score.clone()
    log_score[..., mask_id] = float("-inf")
    if temperature == 1.0:
        return log_score.exp()
    total = torch.logsumexp(log_score, dim=-1, keepdim=True)
    return (total + torch.log_softmax(log_score / temperature, dim=-1)).exp()


def _jump_from_masks(weights, x, editable, mask_id, last_step, generator):
    """One jump of the absorbing reverse chain: each editable masked position draws its next token from
    ``weights`` [B, L, V] (unnormalised jump weights). The mask entry gets the stay-masked weight
    max(0, 1 - sum_y w_y), or 0 on the last step so that every mask is replaced."""
    if last_step:
        weights[..., mask_id] = 0.0
    else:
        weights[..., mask_id] = (1.0 - weights.sum(-1)).clamp_min(0.0)
    proposal = sample_categorical(weights, generator)
    return torch.where(editable_masks(editable, x, mask_id), proposal, x)


def analytic_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None, given=None):
    """Analytic (Tweedie) tau-leaping of SEDD (Lou et al., 2024, sec. 4.2), absorbing graph. Objective: sedd.

    For a masked position from sigma_t to sigma_s, with d = sigma_t - sigma_s and learned ratios
    s_y = s_theta(x_t)_y ~ p_t(y) / p_t(m):
        w_y = s_y * (exp(d) - 1)                     for y != m
        w_m = max(0, 1 - (exp(d) - 1) * sum_y s_y)
    (SEDD's staggered_score x transp_transition, worked out for the absorbing graph). With the true ratios
    this is exactly the posterior that ``ddpm`` samples. The last step drops the mask entry (SEDD's final
    denoiser), so every mask is replaced. ``level``: as in ddpm_steps; the score stays expressed at sigma_t.
    """
    batch = x.shape[0]
    grid = time_grid(steps)
    for i in range(steps):
        sigma_t = _sigma(noise, grid[i], batch, x.device)
        sigma_s = _sigma(noise, grid[i + 1], batch, x.device)
        log_score = denoiser.log_score(x, sigma_t, None if level is None else level(x), **told(given))
        score = _tempered_score(log_score, temperature, denoiser.mask_id)
        growth = torch.expm1(sigma_t - sigma_s)[:, None, None].to(score.dtype)
        weights = score * growth
        x = _jump_from_masks(weights, x, editable, denoiser.mask_id, i == steps - 1, generator)
    return x


def euler_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None, given=None):
    """Euler discretisation of the reverse CTMC (SEDD's EulerPredictor), absorbing graph. Objective: sedd.

    The reverse rate out of the mask is sigma'(t) * s_theta(x_t)_y, so over a step dt:
        w_y = dt * sigma'(t) * s_y                   for y != m
        w_m = max(0, 1 - dt * sigma'(t) * sum_y s_y)
    The last step drops the mask entry so every mask is replaced. ``level``: as in analytic_steps.
    """
    batch = x.shape[0]
    grid = time_grid(steps)
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((batch,), float(grid[i]), dtype=torch.float64, device=x.device)
        sigma_t = noise.total(t).to(torch.float32)
        rate = noise.rate(t).to(torch.float32)
        log_score = denoiser.log_score(x, sigma_t, None if level is None else level(x), **told(given))
        score = _tempered_score(log_score, temperature, denoiser.mask_id)
        weights = score * (dt * rate)[:, None, None].to(score.dtype)
        x = _jump_from_masks(weights, x, editable, denoiser.mask_id, i == steps - 1, generator)
    return x


def confidence_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None, penalty=None, given=None):
    """Low-confidence remasking (MaskGIT; LLaDA's ``low_confidence``; the uncertainty sampler of ATAT).
    Objective: mdlm.

    Each step proposes x_0 ~ p_theta(x_0 | x_t)^(1/T) at every masked position, scores each proposal by its
    own probability, keeps the most confident ones and remasks the rest. How many stay masked follows the
    noise schedule: after the step to time s, round(n * (1 - exp(-sigma_bar(s)))) of the row's n masked
    positions of the editable span (counted at the start: given tokens are not) are still masked, and none after
    the last step. ``level``: as in ddpm_steps.
    ``penalty`` (x, sigma) -> [B, P + L] nats, when given, is subtracted from each position's confidence before
    the ranking (uncertainty_steps); it draws nothing, so the random stream is the same with or without it.
    """
    batch = x.shape[0]
    grid = time_grid(steps)
    n_editable = editable.sum(-1).double()  # per row when editable is
    for i in range(steps):
        sigma_t = _sigma(noise, grid[i], batch, x.device) if level is None else level(x)
        log_p0 = tempered_log_probs(denoiser.x0_log_probs(x, sigma_t, **told(given)), temperature)
        proposal = sample_categorical(log_p0.exp(), generator)
        confidence = log_p0.gather(-1, proposal[..., None]).squeeze(-1)
        if penalty is not None:
            confidence = confidence - penalty(x, sigma_t).to(confidence.dtype)
        masked = editable_masks(editable, x, denoiser.mask_id)
        if i == steps - 1:
            keep_masked = torch.zeros(batch, dtype=torch.long, device=x.device)
        else:
            move_chance = -math.expm1(-float(noise.total(grid[i + 1 : i + 2])[0]))
            # round half to even, as Python's round
            keep_masked = torch.round(n_editable * move_chance).long().to(x.device).expand(batch)
        reveal = (masked.sum(-1) - keep_masked).clamp_min(0)  # <= the masked count: only masks are revealed
        x = torch.where(most_confident(confidence, masked, reveal), proposal, x)
    return x


def uncertainty_steps(
    denoiser, x, editable, noise, steps, temperature, generator, level=None, importance=None, given=None
):
    """Uncertainty-guided unmasking (ATAT's sampler; train/atat.py). Objective: mdlm (an atat run trains the same
    SUBS network and ends its curriculum on the plain MDLM loss).

    confidence_steps with a second opinion on how uncertain each position is: the importance estimator's
    predicted surprisal s_hat_i(x_t, t) (train/importance.py, nats), so each step reveals the positions of least

        uncertainty_i = -log p_theta(proposal_i | x_t) + s_hat_i(x_t, t)

    (ties: the leftmost first), as many as the schedule allows. ``importance``: x [B, P + L], sigma [B] ->
    s_hat [B, P + L] (train.importance.estimator_importance), told the same noise level as the network.
    """
    if importance is None:
        raise ValueError(
            "sampler 'uncertainty' needs the importance estimator of an atat run (sample(..., "
            "importance=train.importance.estimator_importance(estimator, prefix_len))); got none"
        )
    return confidence_steps(
        denoiser, x, editable, noise, steps, temperature, generator, level, penalty=importance, given=given
    )


def autoregressive(
    model,
    bos_id: int,
    mask_id: int,
    batch: int,
    target_len: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    device="cpu",
) -> torch.Tensor:
    """Ancestral left-to-right sampling of the causal baseline. Objective: ar.

    x_0 = bos, then x_{i+1} ~ softmax(logits_i / T) with the mask token excluded (the AR model never
    emits it); the whole prefix is re-run each step (no KV cache: blocks are short). Returns Long[B, L].
    """
    x = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    for _ in range(target_len):
        logits = model(x)[:, -1].float()
        logits[:, mask_id] = float("-inf")
        probs = torch.softmax(logits / temperature, dim=-1)
        x = torch.cat([x, sample_categorical(probs, generator)[:, None]], dim=1)
    return x[:, 1:]


def block_spans(target_len: int, block_size: int | None, steps: int) -> tuple[list[tuple[int, int]], int]:
    """Semi-autoregressive blocks: the target's spans [start, end) of ``block_size`` tokens, left to right (the
    last one shorter when block_size does not divide target_len; None: one block), and the steps each gets,
    max(1, steps // n_blocks)."""
    block_size = block_size or target_len
    spans = [(start, min(start + block_size, target_len)) for start in range(0, target_len, block_size)]
    return spans, max(1, steps // len(spans))


def masked_target(prefix: torch.Tensor, target_len: int, mask_id: int) -> torch.Tensor:
    """x = [prefix ; target_len masks]: Long[B, P + L], where every sampler starts."""
    masks = torch.full((prefix.shape[0], target_len), mask_id, dtype=torch.long, device=prefix.device)
    return torch.cat([prefix.long(), masks], dim=1)


def place_prefix(denoiser, noise, prefix: torch.Tensor, target_len: int) -> torch.Tensor:
    """x = [prefix ; target] with the prefix's m tokens also placed in the target, in order, where the network
    finds them most likely (eval/placement.py), and masks elsewhere: Long[B, P + L], where a placing sampler
    starts. One network call on masked_target(prefix, ...), told sigma_bar(1) as every sampler's first step, gives

        S[r, i] = log p_theta(x_0^i = prefix_r | x_1)        (untempered; the sampler's temperature is not used)

    and placement.best_placement picks j_0 < ... < j_{m-1} maximising sum_r S[r, j_r] (ties: the leftmost).
    A prefix of no tokens (stage 1) places nothing and calls nothing."""
    prefix_len = prefix.shape[1]
    x = masked_target(prefix, target_len, denoiser.mask_id)
    if prefix_len == 0:
        return x
    if prefix_len > target_len:
        raise ValueError(f"cannot place a prefix of {prefix_len} tokens in a target of {target_len}")
    log_p = denoiser.x0_log_probs(x, _sigma(noise, 1.0, x.shape[0], x.device))[:, prefix_len:]  # [B, L, V]
    tokens = prefix.long()[:, None, :].expand(-1, target_len, -1)
    scores = log_p.gather(-1, tokens).transpose(1, 2)  # S [B, m, L]
    return x.scatter(1, prefix_len + best_placement(scores), prefix.long())


def finished_target(
    x: torch.Tensor, prefix: torch.Tensor, mask_id: int, given: torch.Tensor | None = None, canvas=None
) -> torch.Tensor:
    """The target of a finished x = [prefix ; target], checked: a sampler that changed the clean prefix or a given
    token (``given`` Bool [B, L] of ``canvas`` Long [B, L]), or left a mask, is a bug, not a sample."""
    prefix_len = prefix.shape[1]
    if not torch.equal(x[:, :prefix_len], prefix.long()):
        raise AssertionError("the sampler changed the clean prefix (the prompt)")
    if given is not None and not torch.equal(x[:, prefix_len:][given], canvas.long()[given]):
        raise AssertionError("the sampler changed a given token of the canvas")
    if (x[:, prefix_len:] == mask_id).any():
        raise AssertionError("a mask token survived the final step")
    return x[:, prefix_len:]


def sample(
    denoiser,
    noise,
    prefix: torch.Tensor,
    target_len: int,
    sampler: str,
    steps: int,
    temperature: float = 1.0,
    block_size: int | None = None,
    generator: torch.Generator | None = None,
    importance=None,
    given: torch.Tensor | None = None,
    canvas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate ``target_len`` tokens after the clean ``prefix: Long[B, P]``; returns ``Long[B, target_len]``.

    ``block_size`` turns on semi-autoregressive blocks (Arriola et al., 2025; LLaDA): the target is filled
    left to right in blocks of ``block_size`` tokens, each with ``max(1, steps // n_blocks)`` steps of the
    chosen sampler, while the finished blocks act as clean context and the later ones stay masked.
    Sampler ``semi_ar`` is ``ddpm_cache`` in such blocks (default: ceil(target_len / 4) tokens each).
    Each block runs its own grid from t = 1 to 0 (how many of its positions unmask when), but the network
    is told the noise level whose mask probability is the share of the target still masked
    (mask_share_level): that is the state it was trained on, a uniformly noised target.
    ``importance`` (x, sigma) -> predicted surprisal [B, P + L]: the estimator sampler ``uncertainty`` needs.

    ``{sampler}_placed`` (PLACING_SAMPLERS): place_prefix first puts the prefix's tokens into the target, in order,
    where the network finds them most likely (one call); they are given, and ``sampler`` fills the other
    L - P positions. The network is then told the masked share's noise level (mask_share_level), as in blocks:
    the target is not all masked at t = 1. Every prefix token is in the output, in order (retention 1). With no
    prefix (stage 1) it is exactly ``sampler``. Constrained decoding: not a draw from the model's distribution.
    ``given`` (Bool [B, L]) with ``canvas`` (Long [B, L]): target positions that start clean, holding canvas's
    tokens, are never edited and are told to the network (model(..., given=...)); an inserting stage's given
    tokens at their placement (eval/sample.py). The other target positions start masked, as without them.
    """
    if sampler not in SAMPLERS + PLACING_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS + PLACING_SAMPLERS}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sampler, placed = placing(sampler)
    if sampler == "semi_ar":
        sampler, block_size = "ddpm_cache", block_size or -(-target_len // SEMI_AR_BLOCKS)
    prefix_len = prefix.shape[1]
    placed = placed and prefix_len > 0
    x = masked_target(prefix, target_len, denoiser.mask_id)
    fixed = None  # the given positions of x = [prefix ; target], Bool [B, P + L]
    if given is not None:
        if placed:
            raise ValueError(
                f"sampler {sampler}{PLACED} places a re-predicting stage's prefix; this stage has given positions "
                f"(an inserting stage): use {sampler!r}"
            )
        if given.shape != (len(prefix), target_len) or canvas is None or canvas.shape != given.shape:
            raise ValueError(
                f"given and canvas must both be [{len(prefix)}, {target_len}], got "
                f"{tuple(given.shape)} and {None if canvas is None else tuple(canvas.shape)}"
            )
        fixed = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), given.to(x.device)], dim=1)
        x = torch.where(fixed, torch.cat([prefix.long(), canvas.long().to(x.device)], dim=1), x)
    elif placed:  # the prefix's tokens placed in the target: given from here on, but not told to the network
        x = place_prefix(denoiser, noise, prefix, target_len)
        fixed = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), x[:, prefix_len:] != denoiser.mask_id], 1)
        given, canvas = fixed[:, prefix_len:], x[:, prefix_len:]
    spans, steps_per_block = block_spans(target_len, block_size, steps)
    positions = torch.arange(x.shape[1], device=x.device)
    # the level the network is told: an inserting stage's given positions are outside its target (never masked),
    # so its share is of the others; a re-predicting network reads placed tokens as unmasked target tokens
    level = None
    if placed:
        level = mask_share_level(noise, prefix_len, denoiser.mask_id)
    elif len(spans) > 1:
        level = mask_share_level(noise, prefix_len, denoiser.mask_id, fixed)
    for start, end in spans:
        editable = (positions >= prefix_len + start) & (positions < prefix_len + end)
        if fixed is not None:
            editable = editable[None, :] & ~fixed
        kwargs = dict(noise=noise, steps=steps_per_block, temperature=temperature, generator=generator, level=level)
        kwargs["given"] = None if placed else fixed  # placed tokens are told as ordinary unmasked ones
        if sampler in ("ddpm", "ddpm_cache"):
            x = ddpm_steps(denoiser, x, editable, cache=sampler == "ddpm_cache", **kwargs)
        elif sampler == "analytic":
            x = analytic_steps(denoiser, x, editable, **kwargs)
        elif sampler == "euler":
            x = euler_steps(denoiser, x, editable, **kwargs)
        elif sampler == "uncertainty":
            x = uncertainty_steps(denoiser, x, editable, importance=importance, **kwargs)
        else:
            x = confidence_steps(denoiser, x, editable, **kwargs)
    return finished_target(x, prefix, denoiser.mask_id, given, canvas)


# ------------------------------------------------------------------------ remasking (prompted generation)
REMASKING = ("random", "low_confidence", "margin", "entropy")


def commit_schedule(n: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps so that all ``n`` are, the remainder spread over the steps:

        k_s = floor((s + 1) n / steps) - floor(s n / steps),     sum_s k_s = n

    (after s steps floor(s n / steps) are committed). LLaDA's get_num_transfer_tokens gives the n mod steps extra
    tokens to the first steps instead, so the two differ where steps does not divide n (n = 8, 3 steps: 2, 3, 3
    here, 3, 3, 2 there). Steps beyond n commit nothing."""
    if steps < 1 or n < 0:
        raise ValueError(f"need steps >= 1 and n >= 0, got steps={steps}, n={n}")
    return [(s + 1) * n // steps - s * n // steps for s in range(steps)]


def block_plan(target_len: int, steps: int, block_size: int | None) -> tuple[int, int]:
    """(number of blocks, steps per block) of block_spans, where remask needs them exact: block_size divides
    target_len and the number of blocks divides steps, so every block has the same length and steps. Errors
    name the sizes as eval.generate's options do (gen_length, block_length)."""
    if target_len < 1:
        raise ValueError(f"gen_length must be >= 1, got {target_len}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    block_size = block_size or target_len
    if block_size < 1 or target_len % block_size:
        raise ValueError(f"gen_length {target_len} is not divisible by block_length {block_size}")
    spans, steps_per_block = block_spans(target_len, block_size, steps)
    if steps % len(spans):
        raise ValueError(
            f"steps {steps} is not divisible by the number of blocks {len(spans)} "
            f"(gen_length {target_len} / block_length {block_size}); steps are split evenly"
        )
    return len(spans), steps_per_block


def remasking_confidence(remasking: str, log_p: torch.Tensor, token: torch.Tensor, uniform: torch.Tensor | None):
    """c_i of remask for log_p [..., V] (untempered, as LLaDA) and the committed candidate ``token`` [...]."""
    if remasking == "random":
        return uniform
    if remasking == "low_confidence":
        return log_p.gather(-1, token[..., None]).squeeze(-1).exp()
    p = log_p.exp()
    if remasking == "margin":
        top = p.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if remasking == "entropy":
        return (p * log_p.clamp_min(-1e30)).nan_to_num(0.0).sum(-1)  # 0 log 0 = 0
    raise ValueError(f"unknown remasking {remasking!r}; choose one of {REMASKING}")


def _answer_final(target: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """Bool [B]: some committed EOS has no mask to its left, so the answer (cut at the first EOS) is final."""
    length = target.shape[1]
    pos = torch.arange(length, device=target.device).expand_as(target)
    first_eos = torch.where(target == eos_id, pos, length).min(-1).values
    first_mask = torch.where(target == mask_id, pos, length).min(-1).values
    return (first_eos < length) & (first_eos < first_mask)


def _remask_step(denoiser, x, sigma, span, prefix_len, k, remasking, temperature, generators, eos_id, eos_guard):
    """One step of remask on rows x [R, P + L] that share the schedule: commits k masked positions of ``span``."""
    rows = x.shape[0]
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[:, span[0] : span[1]] = x[:, span[0] : span[1]] == denoiser.mask_id
    m = int(masked[0].sum())
    if not (masked.sum(-1) == m).all() or m < k:
        raise AssertionError("rows of a batch left the shared unmasking schedule")
    log_p = denoiser.masked_x0_log_probs(x, sigma, masked).view(rows, m, -1)
    positions = masked.nonzero()[:, 1].view(rows, m)
    first_mask = prefix_len + (x[:, prefix_len:] == denoiser.mask_id).int().argmax(-1)
    race = log_p.double()
    if temperature > 0:  # each row's draws from its own generator: its tokens do not depend on the batch
        noise = torch.stack([exponential_noise((m, log_p.shape[-1]), g, x.device) for g in generators])
        race = tempered_log_probs(race, temperature).exp() / noise
    proposal = race.argmax(-1)
    uniform = None
    if remasking == "random":
        uniform = torch.stack([torch.rand(m, generator=g, dtype=torch.float64, device=x.device) for g in generators])
    score = remasking_confidence(remasking, log_p, proposal, uniform)
    first = torch.ones_like(proposal, dtype=torch.bool)
    tokens = proposal
    if eos_guard:
        guarded = (proposal == eos_id) & (positions > first_mask[:, None])
        alternative = race.clone()
        alternative[..., eos_id] = float("-inf")
        alternative = alternative.argmax(-1)
        tokens = torch.where(guarded, alternative, proposal)
        score = torch.where(guarded, remasking_confidence(remasking, log_p, alternative, uniform), score)
        first = ~guarded
    pick = most_confident(score, first, k)
    return x.scatter(-1, positions, torch.where(pick, tokens, x.gather(-1, positions)))


def remask(
    denoiser,
    noise,
    prefix: torch.Tensor,
    target_len: int,
    steps: int,
    generators: list[torch.Generator],
    remasking: str = "low_confidence",
    temperature: float = 0.0,
    block_size: int | None = None,
    eos_id: int | None = None,
    eos_guard: bool = False,
    stop_at_answer: bool = False,
    on_step=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA-style generation after the clean ``prefix: Long[B, P]`` (a prompt): a fixed number of commits per
    step, chosen by a remasking rule. Objective: mdlm or sedd (both give the same p at a masked position).
    Returns (target Long[B, target_len], network calls per row Long[B]).

    With x the target, M the masked positions of the current block and p = p_theta(x_0 | x_t):

      network   one call per step with only M projected to the vocabulary (Denoiser.masked_x0_log_probs), told
                the noise level of mask_share_level (the share of the target still masked).
      proposal  x0_i = argmax_y p_i(y)^(1/T) / E_iy, E ~ Exp(1) from the row's own generator in float64
                (Gumbel-max: x0_i ~ p_i^(1/T) renormalised); T = 0: x0_i = argmax_y p_i(y).
      schedule  block b's n = B tokens are committed over its S_b = steps / blocks steps, k_s at step s:
                    k_s = floor((s + 1) n / S_b) - floor(s n / S_b),     sum_s k_s = n
                (commit_schedule: the remainder spread over the steps; a step that commits nothing calls
                nothing).
      remasking which k_s of the masked positions are committed (each with its proposal), the k_s largest of:
                    random          c_i = u_i, u_i ~ U(0, 1)                   ancestral: a uniform random subset
                    low_confidence  c_i = p_i(x0_i)                            the most probable proposals first
                    margin          c_i = p_i(y1) - p_i(y2)                    top-1 minus top-2 probability
                    entropy         c_i = -H(p_i) = sum_y p_i(y) log p_i(y)    the most peaked distributions first
                ties go to the leftmost position. c uses the untempered p (as LLaDA).

    ``eos_guard``: a position whose proposal is EOS with a masked position anywhere to its left (before this step)
    is ranked after every other one and, if the schedule still reaches it, committed with its best non-EOS
    proposal (the same draw with EOS excluded), ranked by that proposal's confidence; so no EOS is committed with
    a mask to its left. ``stop_at_answer``: a row in which some committed EOS has no mask to its left has its final
    answer (committed tokens never change); its masks are filled with EOS and it leaves the batch (no more calls).

    Blocks: block_spans, with block_plan's exact division. Draws per step and row: (masked positions of the
    block) x V exponentials (T > 0), then for ``random`` one uniform per masked position; counts fixed by the
    schedule, never by the network. ``on_step(info)`` after every step: {step, steps, block, canvas [B, L]}.
    """
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; choose one of {REMASKING}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if len(generators) != prefix.shape[0]:
        raise ValueError(f"one generator per row: {prefix.shape[0]} rows, got {len(generators)} generators")
    if (eos_guard or stop_at_answer) and eos_id is None:
        raise ValueError("eos_guard and stop_at_answer need eos_id")
    block_plan(target_len, steps, block_size)
    prefix_len, mask_id = prefix.shape[1], denoiser.mask_id
    x = masked_target(prefix, target_len, mask_id)
    level = mask_share_level(noise, prefix_len, mask_id)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    calls = torch.zeros(x.shape[0], dtype=torch.long)
    spans, steps_per_block = block_spans(target_len, block_size, steps)
    step = 0
    for block, (start, end) in enumerate(spans):
        for k in commit_schedule(end - start, steps_per_block):
            step += 1
            rows = active.nonzero().squeeze(-1)
            if k and len(rows):
                xa = _remask_step(
                    denoiser,
                    x[rows],
                    level(x[rows]),
                    (prefix_len + start, prefix_len + end),
                    prefix_len,
                    k,
                    remasking,
                    temperature,
                    [generators[r] for r in rows.tolist()],
                    eos_id,
                    eos_guard,
                )
                calls[rows.cpu()] += 1
                if stop_at_answer:
                    target = xa[:, prefix_len:]
                    done = _answer_final(target, mask_id, eos_id)
                    target[done] = torch.where(target[done] == mask_id, eos_id, target[done])
                    active[rows[done]] = False
                x[rows] = xa  # the whole row: a step that wrote into the prefix is caught by finished_target
            if on_step is not None:
                on_step({"step": step, "steps": steps, "block": block, "canvas": x[:, prefix_len:]})
    return finished_target(x, prefix, mask_id), calls
