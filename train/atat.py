r"""Objective atat: MDLM with importance-aware masking, importance weighting and an easy-to-hard curriculum.

Notation as train/objectives.py: x0 the clean target, x_t the noised one, m the mask, sigma = sigma_bar(t) and
sigma' its rate (train/noise.py), alpha(t) = exp(-sigma) the plain keep probability. Importance sources:
train/importance.py (z_v: standardized unigram surprisal of id v; s_hat_i: the learned estimate of position i's
surprisal, read from x_t). `strength` (lambda >= 0) comes from the curriculum below and ends at 0.

1. Frequency schedule (variants full, frequency): a STATE-DEPENDENT masking schedule. A position whose clean
   token is v is kept with probability

       alpha_v(t) = alpha(t)^{w_v} = exp(-w_v sigma),      w_v = exp(-lambda z_v) > 0,

   so the mask hazard out of v is w_v sigma' and rare tokens (z_v > 0) stay clean longer: early in training the
   model mostly predicts frequent (easy) tokens with the rare ones as context. Because w depends on x0, the
   reverse process is not MDLM's. Per position, the forward CTMC moves v -> m at rate w_v sigma'; its time
   reversal moves m -> v at rate (ratio of marginals q_t(x^{i<-v}) / q_t(x_t), with q(x_t | x0) a product)

       R_t(x_t -> x_t^{i<-v}) = lambda_v(t) p_t(x0_i = v | x_t),    lambda_v(t) = -alpha_v' / (1 - alpha_v)
                                                                              = w_v sigma' / expm1(w_v sigma),

   and p_t(x0 | x_t) now depends on t: p(x0) prod_{i masked} (1 - alpha_{x0_i}(t)) over the x0 that agree with
   x_t. The model takes the same form with the network's p_theta (SUBS: p_theta(m) = 0, unmasked tokens carried
   over), and the continuous-time ELBO of the CTMC (sum over reverse jumps of R_theta - R log R_theta +
   R (log R - 1), R the reverse rate given x0, which is lambda_{x0_i} at v = x0_i and 0 elsewhere) gives per
   masked position

       l_i = lambda_{x0_i} * -log p_theta(x0_i | x_t)  +  [ sum_v lambda_v p_theta(v | x_t) - lambda_{x0_i} ],

   NELBO(x0) = int_0^1 E_{x_t ~ q_t(.|x0)} [ sum_{i masked} l_i ] dt  (+ the prior term, 0 when alpha(1) = 0).
   Each l_i >= 0 (log p <= p - 1). The bracket (MD4's GenMD4 term) sums over the whole vocabulary; it is 0
   exactly when w is constant, which gives back MDLM: lambda = sigma'/expm1(sigma) (= 1/t, loglinear). Dropping it
   is NOT a bound (tests/test_atat_math.py: the exact denoiser then misses -log p(x), and sum_x e^{-NELBO} > 1).
   When alpha(1) = 0, one draw t ~ U[0, 1], x_t ~ q_t is an unbiased estimate of this NELBO, which bounds
   -log p_theta(x0) for the model's own reverse process (rates lambda_v p_theta), whatever w; with the exact
   posterior it equals -log p(x0) (tests/test_atat_math.py). Training draws t ~ U[s, 1] (s = SAMPLING_EPS,
   train/noise.sample_times) under a schedule with alpha(1) = eps > 0 (loglinear), and its loss leaves out both
   ends, as MDLM's training loss does (eval/likelihood.py says why that number is not itself a strict bound and
   what eval reports instead). Under w that matters more than for MDLM: a token is still clean at t = 1 with
   probability alpha_v(1) = eps^{w_v} (0.11 for w_v = 0.32 at eps = 1e-3), so the mean of sum l_i falls below
   -log p(x0) even for the exact denoiser (tests/test_atat_math.py). The loss stays as it is; the logged
   atat_nelbo adds the missing ends (below). It is a different bound from MDLM's for the same network, so the
   plain NELBO (diffusion_loss, objective mdlm) is what a run reports and compares.

   What atat_nelbo bounds. The model: at t = 1 each position independently holds v ~ pi, kept clean with
   probability alpha_v(1), else the mask (p_1); the reverse CTMC above runs from t = 1 down to s; a position
   still masked at s is drawn from pi. pi is a fixed distribution over the ids other than the mask (the trainer
   uses the add-one unigram of its training targets, f in train/importance.py). For any network

       -log p_theta(x0) <= KL(q_1(. | x0) || p_1) + int_s^1 E_{x_t ~ q_t}[ sum_{i masked} l_i ] dt
                           + E_{x_s ~ q_s}[ sum_{i masked at s} -log pi(x0_i) ],

   the outer two terms in closed form (boundary_terms), the middle one estimated without bias by (1 - s) sum l_i
   at t ~ U[s, 1]. With alpha(1) = 0 and s = 0 the outer terms vanish and it is the NELBO above. p_1 is not the
   samplers' all-mask start, so this bounds a model that differs from the sampled one near t = 1, and it is
   looser the more tokens stay clean at t = 1 (about alpha_v(1) (-log pi(v)) nats for such a token).

2. Learned weighting (variants full, learned). s_hat reads x_t, so it cannot define the forward process. It
   weighs the terms instead, detached, normalized to mean 1 over each row's masked positions:

       g_i = n_b exp(-lambda s_hat_i) / sum_{j masked in row b} exp(-lambda s_hat_j),     loss = sum g_i l_i / N.

   This estimates E_t E_{x_t}[ sum g_i(x_t, t) l_i ], a weighted NELBO, NOT a NELBO: it lies between
   min g * NELBO and max g * NELBO, and equals it only at lambda = 0. Because g reads only (x_t, t), each
   context's term is still minimized by the true posterior, so the weighting moves emphasis (which contexts the
   capacity goes to), not the optimum. Rows are never split across micro-batches, so the weights are too.

3. Curriculum (curriculum_stage): `stages` equal spans of training, lambda = max_strength (S-1-k)/(S-1) in span k:
   monotone down to lambda = 0 in the last span, where every variant is exactly MDLM (w = 1, g = 1).

Variant uniform is MDLM itself: the same mask draw (train/objectives.forward_mask), network call
(train/objectives.masked_forward) and 1/t-weighted cross-entropy as train/objectives.diffusion_loss, so the loss
is bit for bit equal on the same draws.

4. In the trainer (AtatObjective, the hooks of train/objective.py): the MDLM objective's data, draws and
   validation (the plain MDLM NELBO); build() counts the training targets for z and pi and returns the importance
   estimator as an extra module (its own AdamW at atat.estimator_lr, else the run's lr, on the model's schedule;
   checkpointed as model_1 / optimizer_1); begin_step() sets the curriculum's strength and logs a stage change;
   each micro-batch backpropagates atat_loss's loss plus the estimator's loss and reports ATAT_FIELDS, averaged
   over the global batch; write_outputs() saves importance.safetensors beside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from train.fused import subs_cross_entropy, use_fused
from train.importance import estimator_loss, importance_stats
from train.noise import SAMPLING_EPS
from train.objective import ExtraModule, LikelihoodObjective, MicroLoss, StepDraw
from train.objectives import forward_mask, fused_switch, masked_forward, subs_nll

VARIANTS = ("full", "learned", "frequency", "uniform")
# metrics.csv columns of a training step: the schedule's own NELBO, the curriculum strength and the importance
# estimator's fit (means over the global batch; validation rows leave them empty)
ATAT_FIELDS = [
    "atat_nelbo",
    "atat_strength",
    "estimator_loss",
    "importance_mean",
    "importance_std",
    "importance_min",
    "importance_max",
    "importance_corr",
]
USES_FREQUENCY = ("full", "frequency")
USES_ESTIMATOR = ("full", "learned")


# -- the schedule ------------------------------------------------------------------------------------------
def schedule_exponents(frequency: torch.Tensor, strength: float) -> torch.Tensor:
    """w_v = exp(-strength * z_v) > 0 for the frequency importance z [V] (float32 [V])."""
    return torch.exp(-float(strength) * frequency.float())


def token_move(x0: torch.Tensor, sigma: torch.Tensor, exponents: torch.Tensor | None) -> torch.Tensor:
    """The mask probability of each position under the state-dependent schedule, 1 - alpha_{x0_i}(t) =
    1 - exp(-w_{x0_i} sigma): float [B, L] for x0 [B, L], sigma [B]; exponents None (w = 1): 1 - exp(-sigma) as
    [B, 1], train.objectives.corrupt's."""
    if exponents is None:
        return -torch.expm1(-sigma)[:, None]
    return -torch.expm1(-exponents.to(sigma.device)[x0] * sigma[:, None])


def corrupt_by_token(
    x0: torch.Tensor, sigma: torch.Tensor, mask_id: int, uniform: torch.Tensor, exponents: torch.Tensor
) -> torch.Tensor:
    """State-dependent absorbing forward process: x_t[i] = m if u[i] < 1 - exp(-w_{x0_i} sigma) else x0[i].
    With w = 1 it is train.objectives.corrupt."""
    masked = forward_mask(uniform, token_move(x0, sigma, exponents))
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def unmask_rates(sigma: torch.Tensor, dsigma: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """lambda_v(t) = w_v sigma'(t) / expm1(w_v sigma(t)) for each row's (sigma, sigma') [N]: [N, V] float32,
    computed as

        lambda_v = (sigma' / sigma) * phi(w_v sigma),      phi(x) = x / expm1(x),  phi(x) = 1 - x / 2 for x < 1e-6,

    which stays finite where w_v underflows to 0 (w_v = exp(-strength z_v) is 0 in float32 once strength z_v >
    ~104, e.g. the mask id, never a target, which has the largest z): there lambda_v is its w -> 0 limit
    sigma' / sigma, where the plain formula gives 0 / 0 = NaN and, through sum_v lambda_v p_theta(v), a NaN loss.
    x is capped at 100 (phi(100) ~ 4e-42, 0 in float32 arithmetic), so x = inf gives 0 too."""
    sigma, dsigma = sigma.float()[:, None], dsigma.float()[:, None]
    x = (exponents.float()[None, :] * sigma).clamp(max=100.0)
    small = x < 1e-6
    safe = torch.where(small, torch.ones_like(x), x)  # no 0 / 0 in the branch that torch.where drops
    phi = torch.where(small, 1 - x / 2, safe / torch.expm1(safe))
    return dsigma / sigma * phi


def state_dependent_token_loss(
    logits: torch.Tensor,
    x0_masked: torch.Tensor,
    sigma: torch.Tensor,
    dsigma: torch.Tensor,
    exponents: torch.Tensor,
    mask_id: int,
):
    """(lambda_{x0} * -log p_theta(x0 | x_t), sum_v lambda_v p_theta(v | x_t) - lambda_{x0}, -log p_theta(x0 | x_t))
    of each masked position, all [N]: the two parts of l_i (module docstring) and the surprisal. logits [N, V]."""
    logits = logits.float().clone()
    logits[:, mask_id] = float("-inf")  # SUBS zero masking probability: p_theta(m) = 0
    log_p = logits.log_softmax(dim=-1)
    nll = -log_p.gather(-1, x0_masked[:, None]).squeeze(-1)
    rates = unmask_rates(sigma, dsigma, exponents)
    rate_x0 = rates.gather(-1, x0_masked[:, None]).squeeze(-1)
    rate_term = (log_p.exp() * rates).sum(-1) - rate_x0
    return rate_x0 * nll, rate_term, nll


class TokenTerms(NamedTuple):
    """The masked positions of one batch: loss l_i [N] (with gradient), its rate part [N] (0 for w = 1),
    the surprisal -log p_theta(x0_i | x_t) [N], their rows [N], the mask [B, L], the network input, sigma [B] and
    the network's vocabulary size V."""

    loss: torch.Tensor
    rate_term: torch.Tensor
    nll: torch.Tensor
    rows: torch.Tensor
    masked: torch.Tensor
    x_in: torch.Tensor
    sigma: torch.Tensor
    vocab_size: int


def atat_token_terms(
    model,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    t: torch.Tensor,
    uniform: torch.Tensor,
    noise,
    mask_id: int,
    exponents: torch.Tensor | None = None,
    maskable: torch.Tensor | None = None,
) -> TokenTerms:
    """Noise x0 at times t (per-token schedule w = exponents [V]; None: w = 1, plain MDLM) and return the
    masked positions' terms l_i. masked_i = u_i < 1 - exp(-w_{x0_i} sigma) on the maskable positions (token_move,
    train.objectives.forward_mask); the model sees [prefix (clean) ; x_t], is told sigma = sigma_bar(t) of the
    base schedule and scores the masked positions only (train.objectives.masked_forward). With exponents None
    every operation is train.objectives.masked_token_losses' for mdlm, so the sums agree bit for bit."""
    sigma, dsigma = noise.total(t), noise.rate(t)
    masked = forward_mask(uniform, token_move(x0, sigma, exponents), maskable)
    out = masked_forward(model, x0, prefix, masked, sigma, mask_id)
    logits, x0_masked, rows = out.logits, out.targets, out.rows
    if exponents is None:
        if use_fused(fused_switch(model), logits):
            nll = subs_cross_entropy(logits, x0_masked, mask_id)
        else:
            nll = subs_nll(logits, x0_masked, mask_id)
        # mdlm_token_loss's expression, operation for operation
        loss = dsigma[rows] / torch.expm1(sigma[rows]) * nll
        return TokenTerms(loss, torch.zeros_like(loss), nll, rows, masked, out.x_in, sigma, logits.shape[-1])
    nll_term, rate_term, nll = state_dependent_token_loss(
        logits, x0_masked, sigma[rows], dsigma[rows], exponents.to(logits.device), mask_id
    )
    return TokenTerms(nll_term + rate_term, rate_term, nll, rows, masked, out.x_in, sigma, logits.shape[-1])


def learned_weights(prediction: torch.Tensor, rows: torch.Tensor, batch: int, strength: float) -> torch.Tensor:
    """g_i = n_b exp(-strength s_hat_i) / sum_{j in row b} exp(-strength s_hat_j) over the masked positions
    (prediction [N], detached here; rows [N]): mean 1 in every row, float32 [N]."""
    a = -float(strength) * prediction.detach().double()
    peak = torch.full((batch,), float("-inf"), dtype=a.dtype, device=a.device)
    peak = peak.scatter_reduce(0, rows, a, "amax", include_self=False)
    e = torch.exp(a - peak[rows])
    total = torch.zeros(batch, dtype=a.dtype, device=a.device).index_add(0, rows, e)
    count = torch.zeros(batch, dtype=a.dtype, device=a.device).index_add(0, rows, torch.ones_like(e))
    return (count[rows] * e / total[rows]).float()


def log_mask_ratio(
    x0: torch.Tensor,
    masked: torch.Tensor,
    sigma: torch.Tensor,
    exponents: torch.Tensor,
    maskable: torch.Tensor | None = None,
) -> torch.Tensor:
    """log q_1(x_t | x0) - log q_w(x_t | x0) per row, float64 [B]: the importance-sampling weight that turns a
    draw of the w schedule into an unbiased estimate under the plain one (w = 1),

        sum_{i masked} [log(1 - e^{-sigma}) - log(1 - e^{-w_i sigma})] + sum_{i clean} (w_i - 1) sigma,

    w_i = w_{x0_i}, over the maskable positions. E_{q_w}[exp(ratio) f(x_t)] = E_{q_1}[f(x_t)] for any f."""
    s = sigma.double()[:, None]
    w = exponents.double().to(x0.device)[x0]
    masked_term = torch.log(-torch.expm1(-s)) - torch.log(-torch.expm1(-w * s))
    clean_term = (w - 1) * s
    term = torch.where(masked, masked_term, clean_term)
    if maskable is not None:
        term = torch.where(maskable, term, torch.zeros_like(term))
    return term.sum(-1)


def boundary_terms(
    x0: torch.Tensor,
    sigma_floor,
    sigma_one,
    vocab_size: int,
    mask_id: int,
    exponents: torch.Tensor | None = None,
    prior_logits: torch.Tensor | None = None,
    maskable: torch.Tensor | None = None,
) -> torch.Tensor:
    """The two ends of the bound that training's draws t ~ U[s, 1] do not cover, per row, float64 [B] (module
    docstring, "What atat_nelbo bounds"). With alpha_i(t) = exp(-w_i sigma(t)), w_i = w_{x0_i} (w = 1 for
    exponents None), pi = softmax(prior_logits) over the ids other than the mask (prior_logits None: uniform)
    and sigma_floor = sigma(s), sigma_one = sigma(1), summed over the maskable positions i:

        prior_i = KL(q_1(x_1i | x0) || p_1) = alpha_i(1) (-log pi(x0_i))
                                             + (1 - alpha_i(1)) log[(1 - alpha_i(1)) / sum_v pi(v) (1 - alpha_v(1))],
        end_i   = E_{q_s}[-log pi(x0_i) if masked at s] = (1 - alpha_i(s)) (-log pi(x0_i)).

    p_1 (each position independently: v ~ pi kept clean with probability alpha_v(1), else the mask) and the
    decoder at s (a position still masked there drawn from pi) are fixed distributions, so both terms are
    closed forms without a network call. Both are 0 when alpha(1) = 0 and s = 0 (sigma_one = inf,
    sigma_floor = 0)."""
    V = int(vocab_size)
    device = x0.device
    w = torch.ones(V, dtype=torch.float64, device=device) if exponents is None else exponents.double().to(device)
    logits = (
        torch.zeros(V, dtype=torch.float64, device=device) if prior_logits is None else prior_logits.double().to(device)
    )
    for name, value in (("exponents", w), ("prior_logits", logits)):
        if value.shape != (V,):
            raise ValueError(
                f"atat bound: {name} must have one value per vocabulary id, shape ({V},), got {tuple(value.shape)}"
            )
    logits = logits.clone()
    logits[mask_id] = float("-inf")  # the prior never draws the mask as a clean token
    log_pi = logits.log_softmax(-1)
    s_floor = torch.as_tensor(sigma_floor, dtype=torch.float64).to(device)
    s_one = torch.as_tensor(sigma_one, dtype=torch.float64).to(device)
    move_one = -torch.expm1(-w * s_one)  # 1 - alpha_v(1)   [V]
    move_floor = -torch.expm1(-w * s_floor)  # 1 - alpha_v(s)   [V]
    log_moved = torch.log((log_pi.exp() * move_one).sum())  # log sum_v pi(v) (1 - alpha_v(1))
    surprisal = (-log_pi).masked_fill(torch.isinf(log_pi), 0.0)  # -log pi(v), 0 at the mask (no target)
    moved = torch.where(
        move_one > 0, move_one * (torch.log(move_one.clamp_min(1e-300)) - log_moved), torch.zeros_like(move_one)
    )
    per_id = (1 - move_one) * surprisal + moved + move_floor * surprisal  # prior_v + end_v   [V]
    term = per_id[x0]
    if maskable is not None:
        term = torch.where(maskable, term, torch.zeros_like(term))
    return term.sum(-1)


# -- the objective -----------------------------------------------------------------------------------------
def check_variant(variant: str, estimator, frequency) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"atat.importance must be one of {VARIANTS}, got {variant!r}")
    if variant in USES_ESTIMATOR and estimator is None:
        raise ValueError(f"atat.importance {variant!r} weights the loss by the learned estimator; none was given")
    if variant in USES_FREQUENCY and frequency is None:
        raise ValueError(
            f"atat.importance {variant!r} masks by frequency importance; no frequency vector [V] "
            f"was given (train.importance.frequency_importance of the training counts)"
        )


def atat_loss(
    model,
    estimator,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    t: torch.Tensor,
    uniform: torch.Tensor,
    noise,
    mask_id: int,
    variant: str,
    strength: float,
    frequency: torch.Tensor | None = None,
    pad_id: int | None = None,
    maskable: torch.Tensor | None = None,
    prior_logits: torch.Tensor | None = None,
    time_floor: float = SAMPLING_EPS,
):
    """One (micro-)batch of objective atat: (diffusion loss to backprop, estimator loss or None, stats).

    diffusion loss = sum_{i masked} g_i l_i / N with N = B * L, or the count of maskable non-pad positions when
    pad_id / maskable are given (train.objectives.diffusion_loss's "token" normalization); l_i the frequency
    schedule's terms (variants full, frequency, strength > 0) or MDLM's, g_i the learned weights (full, learned,
    strength > 0) or 1. At strength 0 and for variant uniform it is diffusion_loss(..., "mdlm") exactly.
    estimator loss = estimator_loss of the estimator's prediction against the detached surprisal at the masked
    positions (None without an estimator; variants frequency and uniform may still train one for the sampler).
    The estimator's output enters the diffusion loss only detached; its own loss sees the surprisal detached.

    stats (floats): atat_loss; atat_nelbo, an unbiased estimate, for t ~ U[time_floor, 1] (sample_times), of an
    upper bound on -log p_theta(x0) per token under the schedule the batch was noised with (module docstring,
    "What atat_nelbo bounds"; g = 1):

        atat_nelbo = [ (1 - s) sum_{i masked} l_i + sum_b boundary_terms_b ] / N,      s = time_floor,

    with the boundary terms' fixed prior pi = softmax(prior_logits) (None: uniform over the ids other than the
    mask; the trainer passes log(c_v + 1) of the training counts); atat_rate_term ((1 - s) times the vocabulary
    bracket's sum over N: its share of atat_nelbo), atat_strength, atat_masked (masked share), and with an
    estimator estimator_loss and importance_{mean,std,min,max,corr} (train.importance).
    """
    check_variant(variant, estimator, frequency)
    if strength < 0:
        raise ValueError(f"atat strength must be >= 0 (0: plain MDLM), got {strength}")
    if pad_id is not None:
        not_pad = x0 != pad_id
        maskable = not_pad if maskable is None else maskable & not_pad
    shaped = variant in USES_FREQUENCY and strength > 0
    exponents = schedule_exponents(frequency, strength).to(x0.device) if shaped else None
    terms = atat_token_terms(model, x0, prefix, t, uniform, noise, mask_id, exponents, maskable)
    count = x0.numel() if maskable is None else maskable.sum().clamp(min=1)

    est_loss, prediction = None, None
    if estimator is not None:
        prefix_len = 0 if prefix is None else prefix.shape[1]
        prediction = estimator(terms.x_in, terms.sigma, prefix_len)[:, prefix_len:][terms.masked]
        est_loss = estimator_loss(prediction, terms.nll)
    token_loss = terms.loss
    if variant in USES_ESTIMATOR and strength > 0:
        token_loss = learned_weights(prediction, terms.rows, x0.shape[0], strength) * token_loss
    loss = token_loss.sum() / count

    n_maskable = x0.numel() if maskable is None else int(maskable.sum())
    sigma_floor, sigma_one = noise.total(torch.tensor([float(time_floor), 1.0], dtype=torch.float64))
    ends = boundary_terms(x0, sigma_floor, sigma_one, terms.vocab_size, mask_id, exponents, prior_logits, maskable)
    inside = 1 - float(time_floor)  # t ~ U[s, 1]: (1 - s) l(t) estimates int_s^1 of the integrand
    nelbo = (inside * terms.loss.detach().double().sum() + ends.sum()) / count
    stats = {
        "atat_loss": float(loss.detach()),
        "atat_nelbo": float(nelbo),
        "atat_rate_term": float(inside * terms.rate_term.detach().double().sum() / count),
        "atat_strength": float(strength),
        "atat_masked": float(terms.masked.sum()) / max(n_maskable, 1),
    }
    if est_loss is not None:
        stats["estimator_loss"] = float(est_loss.detach())
        stats.update(importance_stats(prediction, terms.nll))
    return loss, est_loss, stats


# -- the curriculum ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurriculumStage:
    """Stage `stage` (0-based) of `stages`, starting at optimizer step `start`, with importance strength
    `strength` (0: the plain objective)."""

    stage: int
    stages: int
    start: int
    strength: float

    def describe(self) -> str:
        what = "plain MDLM (strength 0)" if self.strength == 0 else f"importance strength {self.strength:g}"
        return f"atat curriculum: stage {self.stage + 1}/{self.stages} from step {self.start}: {what}"


def curriculum_stage(step: int, max_steps: int, stages: int = 3, max_strength: float = 1.0) -> CurriculumStage:
    """The stage of optimizer step `step` (0-based) of `max_steps`: training in `stages` equal spans, span k
    covering steps [ceil(k T / S), ceil((k + 1) T / S)), T = max_steps, with strength

        lambda_k = max_strength * (S - 1 - k) / (S - 1)    (S >= 2),     lambda = 0 for S = 1,

    non-increasing in the step and 0 from the last span on: training ends in the plain objective. A trainer prints
    describe() whenever the returned stage differs from the previous step's."""
    if max_steps < 1 or stages < 1:
        raise ValueError(f"atat curriculum needs max_steps >= 1 and atat.stages >= 1, got {max_steps}, {stages}")
    if stages > max_steps:
        raise ValueError(
            f"atat.stages ({stages}) must not exceed max_steps ({max_steps}): the last stage, the "
            f"plain objective, would get no step"
        )
    if max_strength < 0:
        raise ValueError(f"atat.max_strength must be >= 0, got {max_strength}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    k = min(stages - 1, step * stages // max_steps)
    strength = 0.0 if stages == 1 else max_strength * (stages - 1 - k) / (stages - 1)
    return CurriculumStage(stage=k, stages=stages, start=-(-k * max_steps // stages), strength=float(strength))


# -- the objective in the trainer --------------------------------------------------------------------------
class AtatObjective(LikelihoodObjective):
    """Objective atat in train/trainer.py (module docstring, 4.): the MDLM objective's data, draws and validation,
    with atat_loss per micro-batch, the importance estimator trained beside the model and the curriculum."""

    metric_fields = tuple(ATAT_FIELDS)

    def __init__(self, settings):
        super().__init__(settings)
        self.atat = settings.atat
        self.estimator: ExtraModule | None = None
        self.frequency = self.unigram_logits = None
        self.stage = None  # the curriculum stage of the last step, so that a change is logged once
        self.strength = 0.0

    def build(self, policy) -> list[ExtraModule]:
        """The frequency importance z of the training targets (train/importance.py), the prior's logits
        log(c_v + 1) (the add-one unigram pi of atat_nelbo), and the learned importance estimator with its own
        AdamW (lr atat.estimator_lr, else the run's lr)."""
        from train.importance import ImportanceEstimator, frequency_importance, unigram_counts

        tr = self.trainer
        store, pad_id, chunk = tr.train_data.target, tr.pad_id, 4096

        def target_rows():
            for start in range(0, len(store), chunk):
                rows = store[torch.arange(start, min(start + chunk, len(store)))]
                yield rows[rows != pad_id] if pad_id is not None else rows

        counts = unigram_counts(target_rows(), tr.vocab_size, "training targets")
        self.frequency = frequency_importance(counts).to(tr.acc.device)
        self.unigram_logits = torch.log1p(torch.as_tensor(counts, dtype=torch.float64)).to(tr.acc.device)
        a = self.atat
        estimator = ImportanceEstimator(tr.vocab_size, a["estimator_dim"], a["estimator_kernel"], a["estimator_layers"])
        lr = a["estimator_lr"] or self.s.lr
        self.estimator = ExtraModule(estimator, torch.optim.AdamW(estimator.parameters(), lr=lr, weight_decay=0.0), lr)
        return [self.estimator]

    def begin_step(self, step: int) -> StepDraw:
        """The MDLM draws, and the curriculum's strength at `step` (a log line when its stage changes)."""
        draw = super().begin_step(step)
        stage = curriculum_stage(step, self.trainer.max_steps, self.atat["stages"], self.atat["max_strength"])
        if stage.stage != self.stage:
            self.trainer.say(stage.describe())
            self.stage = stage.stage
        self.strength = stage.strength
        return draw

    def micro_batch_loss(self, model, draw: StepDraw, sl: slice) -> MicroLoss:
        """atat_loss's diffusion loss, the estimator's loss as the auxiliary, and ATAT_FIELDS (NaN if absent)."""
        tr = self.trainer
        keys = None if draw.keys is None else draw.keys[sl]
        x0, prefix, _ = self.batch(tr.train_data, draw.rows[sl], keys)
        loss, est_loss, stats = atat_loss(
            model,
            self.estimator.module,
            x0,
            prefix,
            draw.t[sl].to(x0.device),
            draw.u[sl].to(x0.device),
            tr.noise,
            tr.mask_id,
            self.atat["importance"],
            self.strength,
            self.frequency,
            tr.pad_id,
            prior_logits=self.unigram_logits,
        )
        metrics = {
            k: torch.tensor(stats.get(k, float("nan")), dtype=torch.float64, device=tr.acc.device) for k in ATAT_FIELDS
        }
        return MicroLoss(loss, est_loss, metrics)

    def write_outputs(self, out) -> None:
        """importance.safetensors: the estimator's weights and the frequency importance (train/importance.py)."""
        from train.importance import save_importance

        save_importance(out, self.trainer.acc.unwrap_model(self.estimator.module), self.frequency)
