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

Randomness: every draw comes from the caller's ``torch.Generator`` (categorical draws by Gumbel-max in
float64), and how many numbers a step draws never depends on the network's output. That is why
``ddpm_cache`` reproduces ``ddpm`` token for token under the same generator.
"""

from __future__ import annotations

import math

import torch

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


def sample_categorical(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw index ~ weights / weights.sum(-1) for non-negative, unnormalised ``weights[..., V]``.

    Gumbel-max in the exponential form argmax_v w_v / E_v with E_v = -log U_v ~ Exp(1), in float64: float32
    Gumbel noise truncates the tail and silently lowers the sampling temperature (Zheng et al., 2024).
    """
    uniform = torch.rand(weights.shape, generator=generator, dtype=torch.float64, device=weights.device)
    exponential = -torch.log(uniform.clamp_min(1e-300))
    return (weights.to(torch.float64) / exponential).argmax(dim=-1)


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


def mask_share_level(noise, prefix_len: int, mask_id: int):
    """Noise level from the sequence itself, for semi-autoregressive blocks: x [B, P + L] -> sigma [B] with
    sigma = sigma_bar(t) and 1 - exp(-sigma_bar(t)) = share of the row's L target positions still masked
    (time_of_mask_share). A block's own grid restarts at t = 1, where the network would be told that the
    whole target is masked while the blocks to its left are already clean; this tells it the truth."""

    def level(x: torch.Tensor) -> torch.Tensor:
        share = (x[:, prefix_len:] == mask_id).to(torch.float64).mean(dim=-1)
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


def ddpm_steps(denoiser, x, editable, noise, steps, temperature, generator, cache=False, level=None):
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
    """
    batch = x.shape[0]
    grid = time_grid(steps)
    x = x.clone()
    for i in range(steps):
        sigma64 = noise.total(grid[i : i + 2].to(x.device))
        sigma_t = sigma64[0].to(torch.float32).expand(batch) if level is None else level(x)
        p_unmask = 1.0 if i == steps - 1 else float(_unmask_probability(sigma64[0], sigma64[1]))
        masked = editable[None, :] & (x == denoiser.mask_id)
        uniform = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        unmask = masked & (uniform < p_unmask)
        rows = unmask.any(dim=-1) if cache else torch.ones(batch, dtype=torch.bool, device=x.device)
        if not rows.any():
            continue
        log_p0 = denoiser.x0_log_probs(x[rows], sigma_t[rows])
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
    update = editable[None, :] & (x == mask_id)
    return torch.where(update, proposal, x)


def analytic_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None):
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
        log_score = denoiser.log_score(x, sigma_t, None if level is None else level(x))
        score = _tempered_score(log_score, temperature, denoiser.mask_id)
        growth = torch.expm1(sigma_t - sigma_s)[:, None, None].to(score.dtype)
        weights = score * growth
        x = _jump_from_masks(weights, x, editable, denoiser.mask_id, i == steps - 1, generator)
    return x


def euler_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None):
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
        log_score = denoiser.log_score(x, sigma_t, None if level is None else level(x))
        score = _tempered_score(log_score, temperature, denoiser.mask_id)
        weights = score * (dt * rate)[:, None, None].to(score.dtype)
        x = _jump_from_masks(weights, x, editable, denoiser.mask_id, i == steps - 1, generator)
    return x


def confidence_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None, penalty=None):
    """Low-confidence remasking (MaskGIT; LLaDA's ``low_confidence``; the uncertainty sampler of ATAT).
    Objective: mdlm.

    Each step proposes x_0 ~ p_theta(x_0 | x_t)^(1/T) at every masked position, scores each proposal by its
    own probability, keeps the most confident ones and remasks the rest. How many stay masked follows the
    noise schedule: after the step to time s, round(n_editable * (1 - exp(-sigma_bar(s)))) positions of the
    editable span are still masked, and none after the last step. ``level``: as in ddpm_steps.
    ``penalty`` (x, sigma) -> [B, P + L] nats, when given, is subtracted from each position's confidence before
    the ranking (uncertainty_steps); it draws nothing, so the random stream is the same with or without it.
    """
    batch = x.shape[0]
    grid = time_grid(steps)
    n_editable = int(editable.sum())
    for i in range(steps):
        sigma_t = _sigma(noise, grid[i], batch, x.device) if level is None else level(x)
        log_p0 = tempered_log_probs(denoiser.x0_log_probs(x, sigma_t), temperature)
        proposal = sample_categorical(log_p0.exp(), generator)
        confidence = log_p0.gather(-1, proposal[..., None]).squeeze(-1)
        if penalty is not None:
            confidence = confidence - penalty(x, sigma_t).to(confidence.dtype)
        masked = editable[None, :] & (x == denoiser.mask_id)
        confidence = confidence.masked_fill(~masked, float("-inf"))
        if i == steps - 1:
            keep_masked = torch.zeros(batch, dtype=torch.long, device=x.device)
        else:
            move_chance = -math.expm1(-float(noise.total(grid[i + 1 : i + 2])[0]))
            keep_masked = torch.full((batch,), round(n_editable * move_chance), device=x.device)
        reveal = (masked.sum(-1) - keep_masked).clamp_min(0)
        # rank of each position by confidence within its row (0 = most confident)
        order = confidence.argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[1], device=x.device).expand_as(order))
        update = masked & (rank < reveal[:, None])
        x = torch.where(update, proposal, x)
    return x


def uncertainty_steps(denoiser, x, editable, noise, steps, temperature, generator, level=None, importance=None):
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
    return confidence_steps(denoiser, x, editable, noise, steps, temperature, generator, level, penalty=importance)


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
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if sampler == "semi_ar":
        sampler, block_size = "ddpm_cache", block_size or -(-target_len // SEMI_AR_BLOCKS)
    batch, prefix_len = prefix.shape
    masks = torch.full((batch, target_len), denoiser.mask_id, dtype=torch.long, device=prefix.device)
    x = torch.cat([prefix.long(), masks], dim=1)
    block_size = block_size or target_len
    starts = list(range(0, target_len, block_size))
    steps_per_block = max(1, steps // len(starts))
    positions = torch.arange(x.shape[1], device=x.device)
    level = mask_share_level(noise, prefix_len, denoiser.mask_id) if len(starts) > 1 else None
    for start in starts:
        editable = (positions >= prefix_len + start) & (positions < prefix_len + min(start + block_size, target_len))
        kwargs = dict(noise=noise, steps=steps_per_block, temperature=temperature, generator=generator, level=level)
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
    if not torch.equal(x[:, :prefix_len], prefix.long()):
        raise AssertionError("sampler changed the clean prefix")
    if (x[:, prefix_len:] == denoiser.mask_id).any():
        raise AssertionError("a mask token survived the final step")
    return x[:, prefix_len:]
