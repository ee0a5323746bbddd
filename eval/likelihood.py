r"""Validation likelihood of a run on its validation shards: NELBO per stage, perplexity, tokens counted.

Diffusion stage k is scored on the true stage-k block given the true stage k-1 block as its clean prefix
(teacher forcing, as in training). The number is the continuous-time NELBO of the model the samplers draw
from (eval/samplers.py, many steps): every target position masked at t = 1, a masked position unmasked at
rate lambda(t) = sigma'(t) / expm1(sigma(t)) into x0 ~ p_theta(x0 | x_t), the network told sigma = sigma_bar(t).
With move(t) = 1 - exp(-sigma_bar(t)) the schedule's mask probability and M = move(1),

    NELBO_k = (1 / N_k) sum_blocks [ D(x0) + R(x0) ],   D(x0) = int_0^1 E_{x_t ~ q_t}[ L(x0, x_t, t) ] dt,
    q_t     each target token masked independently with probability m(t) = move(t) / M,
    L       the training loss of the block's masked positions (train/objectives mdlm_token_loss /
            sedd_token_loss, the terms diffusion_loss averages), summed; each term is lambda(t) * g_i:
            MDLM  lambda(t) * g_i,  g_i = -log p_theta(x0_i | x_t)
            SEDD  sigma'(t) * [sum_y s_y - r log s_x0 + r (log r - 1)],  r = 1 / expm1(sigma),
                  so g_i = expm1(sigma) * [...] = sum_{y != m} a_y - log a_x0 - 1 with a_y = exp(logit_y) /
                  (V - 1) (scale_by_sigma: s_y = r a_y): bounded, sigma reaches it only through the network
    R       the final denoising at t = 0: the sum over the positions q_0 masks of -log p_theta(x0_i | x);
            0 when move(0) = 0 (loglinear, cosine), not for geometric (move(0) = 1 - exp(-sigma_min)),

N_k = the block's target tokens (blocks * l_k when nothing is padded, below). An AR run gets the exact NLL of
[bos ; x0] (every token predicted). Perplexity = exp(NELBO per token).

The estimator of D (unbiased, finite variance). A block has n counted target positions; S is the set masked,
k = |S|, q_t(S) = m^k (1 - m)^(n - k), G(S, t) = sum_{i in S} g_i. Substitute mu = m(t): lambda dt = (m'/m) dt
= dmu / mu (M cancels), so with m0 = m(0) and t(mu) = m^{-1}(mu) (the schedule's closed-form inverse,
eval.samplers.time_of_mask_share; loglinear t = mu, cosine t = (2/pi) arccos(1 - mu))

    D = int_{m0}^1 sum_{S nonempty} mu^(k-1) (1 - mu)^(n-k) G(S, t(mu)) dmu.

Per count: the patterns with k masks carry the weight c_k = C(n, k) int_{m0}^1 mu^(k-1) (1 - mu)^(n-k) dmu
= (1/k) P(Binomial(n, m0) < k), and given k, S is uniform among the C(n, k) sets and mu ~ Beta(k, n - k + 1)
restricted to (m0, 1], so D = sum_{k=1}^n c_k E[G(S, t(mu)) | k]:
    loglinear, cosine (m0 = 0): c_k = 1/k (summing to H_n); for a network that ignores t this is LLaDA's mask-count
            form, sum_k (1/k) E_{|S| = k}[G(S)] = E_{k ~ U{1..n}}[(n/k) G(S)];
    geometric (m0 = (1 - exp(-sigma_min)) / (1 - exp(-sigma_max))): c_k = (1/k) P(Binomial(n, m0) <= k - 1).
Sampling: mu ~ U(m0, 1], then S = {i*} + {i != i*: u_i < mu}, i* uniform on the n positions, u_i ~ U[0, 1).
Then P(S | mu) = (k/n) mu^(k-1) (1 - mu)^(n-k), the count k is 1 + Binomial(n - 1, mu) and, over mu,
P(k) = P(Binomial(n, m0) < k) / (n (1 - m0)) (uniform on 1..n when m0 = 0), so

    D = E_{mu, S}[ w(S) G(S, t(mu)) ],   w(S) = (1 - m0) n / |S| = c_k / P(k)       (0 < w <= (1 - m0) n),

the same for every schedule (the schedule enters through t(mu) and m0). Every draw masks at least one token and
carries a bounded weight, so the variance is finite (zero for a one-token block and a network that ignores t).
The estimator it replaces drew t ~ U(0, 1], S ~ q_t and scored lambda(t) G: at small t a single mask of
probability ~ n t carried the weight 1/t, so E[X^2] >= int n t (1 - t)^(n-1) (G_1 / t)^2 dt = infinity
(unbiased, but one block's spread over draw seeds was dominated by rare small-t draws). Both objectives take
the same estimator: SEDD's term is lambda(t) times the bounded g_i above, just as MDLM's.

Per block: K stratified draws mu_j = m0 + (1 - m0) v_j, v_j = (j + 1 - u_j) / K in (0, 1] (u_j ~ U[0, 1) from a
fixed seed; loglinear: the same stratified times as t_j = v_j), one S per draw (its own uniforms and i*),
D ~= (1/K) sum_j w(S_j) G(S_j, t(mu_j)); R from one x per block. v_j = 1 gives mu = 1, t = 1: every position
masked, as the samplers start.

Why q_t and not the training noise: it is a strict bound. Dividing the mask probability by M changes neither
the unmask probability between two times, (move(t) - move(s)) / move(t), nor the rate lambda = move'/move, so
the reverse process, and with it L (for SEDD: the true reverse rate sigma' * r is lambda under both), is the
same; but q_1 masks everything, as the samplers' start does, so the prior term KL(q_1 || all masks) is 0. The
training process leaves a share 1 - M = eps clean at t = 1 (loglinear), whose prior term against the all-mask
start is infinite; the training loss, t ~ U[eps, 1] without that term, can fall below the NLL (for a one-token
block and a time-independent network it is exactly (1 - eps) * NLL), by a model-dependent amount that could
not be stated beside the number as a constant. Same loss terms, same network calls: strictness costs nothing.

Discrete-T bound (``discrete_steps`` = T; MDLM's ``T > 0`` evaluation, objective mdlm). The T-step reverse chain
on the grid t_i = i / T with alpha(t) = 1 - m(t) unmasks a masked token from t_i to t_{i-1} with probability
(m(t_i) - m(t_{i-1})) / m(t_i) into x0 ~ p_theta(x0 | x_{t_i}), the network told sigma_bar(t_i), and carries a
clean one over (SUBS); when m(0) = 0 (loglinear, cosine) that is the ``ddpm`` sampler with T steps (its
expm1(sigma_t - sigma_s) / expm1(sigma_t) is the same ratio, and its last step unmasks everything, as w_1 = 1 does);
with m(0) > 0 (geometric) the chain ends with the share m(0) still masked and the t = 0 denoising R. The
posterior q(x_{t_{i-1}} | x_{t_i}, x0) unmasks with that same probability, into x0, so each step's KL is
w_i * -log p_theta(x0_j | x_{t_i}) per masked position and

    L_T = sum_{i=1}^T E_{x_{t_i} ~ q_{t_i}}[ w_i sum_{j masked} -log p_theta(x0_j | x_{t_i}) ] + R(x0),
    w_i = (m(t_i) - m(t_{i-1})) / m(t_i) = expm1(sigma_bar(t_i) - sigma_bar(t_{i-1})) / expm1(sigma_bar(t_i)),

R the continuous bound's final term (the same draw), the prior term 0 as m(1) = 1 (loglinear: T w_i = 1/t_i,
MDLM's ``_d3pm_loss`` under SUBS). With m_i = m(t_i) and G_T(S, i) = sum_{j in S} -log p_theta(x0_j | x_{t_i}),
the diffusion sum is sum_i (m_i - m_{i-1}) sum_S m_i^(k-1) (1 - m_i)^(n-k) G_T(S, i): the continuous integral's
Riemann-Stieltjes sum. It is estimated on the continuous bound's draws (common random numbers): step
i = ceil(T t(mu)), i.e. mu in (m_{i-1}, m_i], probability (m_i - m_{i-1}) / (1 - m0); S_i = {i*} + {u_i < m_i}
(the same i* and uniforms), probability (k/n) m_i^(k-1) (1 - m_i)^(n-k); so

    L_T = E[ (1 - m0) n / |S_i| * G_T(S_i, i) ] + R,

the continuous estimator's weight. As T -> inf, m_i -> mu and t_i -> t(mu), so the discrete estimate tends to
the continuous one draw by draw. SEDD has no such bound here (its network is trained as a score of the
continuous-time chain): ``nelbo_discrete`` is null, the reason in its definition. AR: the exact NLL, the same
number for both.

Padding (config.json ``pad_id``, written for doc blocks: the end of a document's last block). A target position
whose x0 is the pad token is never masked, carries no loss and is not counted: n and N_k count the other target
tokens (an SFT answer mask, ``scored``, restricts the same way). The sums are taken from the token losses, so no
normaliser of the training loss is assumed. Which column a model reads: train.data.data_columns of its
config.json ``data`` (stages | wrap | doc; absent in older folders: stages).

An inserting stage (stage_form insert, train/inserting.py) is scored on its canvas: placement NLL of the true
positions plus the NELBO above over the inserted positions only, with the given tokens clean and told to the
network (inserting_stage_nelbo); its `tokens` are blocks * l_k, as a re-predicting stage's.

Because stage 1 and 2 are functions of the stage-3 block, -log p(x3) <= -log p(x1) - log p(x2|x1) - log p(x3|x2),
so the cascade's sum of stage NELBOs (nats per block) is an upper bound on the NLL of the stage-3 block and is
comparable with the single-stage and AR numbers. ``total`` reports it per stage-3 token (continuous and discrete).

    python -m eval.evaluate val --run-dir runs/demo/cascade --val-shards data/.../validation/shard_*.parquet \
        --time-samples 4 --batch-size 32 [--discrete-steps 1000] --out runs/demo/cascade/eval/val.json
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from common.io import InputError, read_parquet
from eval.runs import run_model_dirs
from eval.trained import Trained, load_trained

DEFINITION_STAGE = (
    "validation NELBO of stage k in nats per target token, a strict upper bound on -ln p of the true stage-k block "
    "given the true stage k-1 block (clean prefix) under the continuous-time sampler (all masks at t = 1): the "
    "integral over t in (0, 1] of the training loss terms (train/objectives) of x_t, each target token masked with "
    "probability m(t) = (1 - exp(-sigma_bar(t))) / (1 - exp(-sigma_bar(1))) and the network told sigma_bar(t), plus "
    "the final denoising term at t = 0 when the schedule masks there (m0 = m(0) > 0), summed over blocks and divided "
    "by tokens = the target tokens that are not padding (pad_id of config.json: never masked, no loss; blocks * l_k "
    "without padding). Estimated per block (n counted tokens) from K stratified draws mu_j = m0 + (1 - m0)(j + 1 - "
    "u_j)/K in (m0, 1] (u_j ~ U[0,1) from a fixed seed), each masking one uniformly chosen target token and every "
    "other with probability mu_j, the network told sigma_bar(t) at m(t) = mu_j: the mean over draws of "
    "(1 - m0) n / (masked count) times the loss terms divided by lambda(t) = sigma'/expm1(sigma_bar) (unbiased, "
    "finite variance; eval/likelihood.py derives it). For an AR model the exact NLL of [bos; x0] per (non-pad) "
    "token; ppl = exp(nelbo)"
)
DEFINITION_DISCRETE = (
    "discrete-time NELBO of stage k with T = {steps} steps in nats per target token (MDLM's T > 0 bound; the NELBO "
    "of the T-step ddpm sampler when m(0) = 0): sum over i = 1..T of E_{{x ~ q_(i/T)}}[w_i * sum over masked "
    "target positions of -ln p_theta(x0 | x), network told sigma_bar(i/T)], w_i = (m(i/T) - m((i-1)/T)) / "
    "m(i/T), m(t) = (1 - exp(-sigma_bar(t))) / (1 - exp(-sigma_bar(1))) (loglinear: T w_i = 1/t_i), plus the "
    "continuous bound's t = 0 term; estimated on the continuous bound's K draws: step i = ceil(T t) (mu in "
    "(m(t_(i-1)), m(t_i)]), the same chosen token and uniforms masking the others with probability m(i/T), "
    "weight (1 - m0) n / (masked count); tokens as for nelbo; ppl_discrete = exp(nelbo_discrete)"
)
DEFINITION_DISCRETE_AR = "exact NLL of [bos; x0] per token, as nelbo (an AR model has no diffusion steps)"
DEFINITION_DISCRETE_SEDD = (
    "null: objective sedd has no discrete-T bound here. Its network is trained as a score of the continuous-time "
    "chain (score entropy); the T-step bound is MDLM's (SUBS, p_theta(x0 | x_t)), which eval/likelihood.py computes "
    "for mdlm only. nelbo is its continuous-time bound"
)
DEFINITION_TOTAL = (
    "upper bound on the NLL of the stage-3 block in nats per stage-3 token: sum over the run's stages of "
    "(stage NELBO * stage tokens), divided by the stage-3 tokens (blocks * l3 less padding; the same validation "
    "blocks for every stage); ppl = exp"
)
DEFINITION_TOTAL_DISCRETE = (
    "as total nelbo, from each stage's discrete-T NELBO (T = {steps} steps per stage); null when a stage has none "
    "(sedd: see its stage)"
)
DEFINITION_INSERT = (
    "bound of an inserting stage k in nats per canvas token (stage_form insert): (placement_nats + infill_nats) / "
    "tokens, tokens = blocks * l_k; placement_nats = sum over blocks of -ln p(P | y), the stage's placement law "
    "(uniform: ln C(l_k, l_(k-1)); learned: placement.safetensors) of the true positions P = stage(k-1)_pos of "
    "the true stage k-1 tokens y; infill_nats = the validation NELBO (definition_infill) of the l_k - l_(k-1) "
    "other tokens of the true stage-k block with y clean at P (never masked, not counted; infill_tokens, "
    "infill_nelbo per inserted token). An upper bound on -ln p(stage-k block, P | y)"
)
DATA = ("stages", "wrap", "doc")


def model_data(meta: dict, where) -> tuple[str, int | None]:
    """(data, pad_id) of a model's config.json ``where``: data stages | wrap | doc (absent in older folders:
    stages), pad_id a token id in [0, vocab_size) or absent (None); a doc model must have one."""
    data = meta.get("data", "stages")
    if data not in DATA:
        raise InputError(f"{where}: key 'data' should be one of {list(DATA)}, got {data!r}")
    pad_id = meta.get("pad_id")
    if pad_id is None and data == "doc":
        raise InputError(f"{where}: missing key 'pad_id' (expected the pad token id of the doc blocks, data: doc)")
    vocab = meta.get("vocab_size")
    if pad_id is not None and (
        isinstance(pad_id, bool)
        or not isinstance(pad_id, int)
        or pad_id < 0
        or (isinstance(vocab, int) and pad_id >= vocab)
    ):
        raise InputError(f"{where}: key 'pad_id' should be an integer token id in [0, {vocab}), got {pad_id!r}")
    return data, pad_id


def read_stage_blocks(
    shards, stage: int, prefix_len: int, target_len: int, max_blocks: int | None, data: str = "stages"
):
    """(prefix Long[N, prefix_len], target Long[N, target_len]) of the first ``max_blocks`` blocks, shard order;
    the columns are train.data.data_columns(data, stage, prefix_len): stage{k}_ids and stage{k-1}_ids of stage
    shards, ids of block shards (data: wrap | doc)."""
    from train.data import data_columns

    target_col, prefix_col = data_columns(data, stage, prefix_len)
    prefixes, targets = [], []
    for shard in shards:
        columns = [target_col] + ([prefix_col] if prefix_col else [])
        table = read_parquet(shard, columns)
        for col, length, out in ((target_col, target_len, targets), (prefix_col, prefix_len, prefixes)):
            if col is None:
                continue
            rows = table.column(col).to_pylist()
            bad = next((i for i, r in enumerate(rows) if len(r) != length), None)
            if bad is not None:
                raise InputError(f"{shard}: row {bad} of {col} has {len(rows[bad])} tokens, the model expects {length}")
            out.extend(rows)
        if max_blocks is not None and len(targets) >= max_blocks:
            break
    if not targets:
        raise InputError(f"no validation blocks in {list(shards)}")
    n = len(targets) if max_blocks is None else min(max_blocks, len(targets))
    target = torch.tensor(targets[:n], dtype=torch.long)
    prefix = torch.tensor(prefixes[:n], dtype=torch.long) if prefix_col else torch.zeros(n, 0, dtype=torch.long)
    return prefix, target


def stratified_levels(batch: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Float64 [K, B]: v_j = (j + 1 - u) / K in (0, 1] with one u ~ U[0,1) per (j, block): stratum j of (0, 1]
    for every block. The draws' mask shares are mu_j = m0 + (1 - m0) v_j (share_of_level)."""
    u = torch.rand(k, batch, generator=generator, dtype=torch.float64)
    return (torch.arange(k, dtype=torch.float64)[:, None] + 1 - u) / k


def mask_share(noise, t: torch.Tensor) -> torch.Tensor:
    """Float64: m(t) = move(t) / M = expm1(-sigma_bar(t)) / expm1(-sigma_bar(1)), the q_t mask probability
    (m(1) = 1; m(0) = m0: 0 for loglinear and cosine, > 0 for geometric)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.expm1(-noise.total(t)) / torch.expm1(-noise.total(torch.ones((), dtype=torch.float64)))


def share_of_level(noise, v: torch.Tensor) -> torch.Tensor:
    """Float64: mu = m0 + (1 - m0) v, uniform on (m0, 1] for v uniform on (0, 1]."""
    start = float(mask_share(noise, 0.0))
    return start + (1 - start) * v


def time_of_share(noise, share: torch.Tensor) -> torch.Tensor:
    """Float64: t(mu) = m^{-1}(mu), the t in [0, 1] with m(t) = mu, i.e. move(t) = M mu (the schedule's closed form,
    eval.samplers.time_of_mask_share; loglinear t = mu)."""
    from eval.samplers import time_of_mask_share

    top = -torch.expm1(-noise.total(torch.ones((), dtype=torch.float64)))  # M
    return time_of_mask_share(noise, top * share.to(torch.float64))


def draw_masks(valid: torch.Tensor, share: torch.Tensor, uniform: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: S = {i*} + {i valid: u_i < mu}, mu = ``share`` [B] in (0, 1], u = ``uniform`` [B, L] in [0, 1),
    i* the valid position of rank floor(pick n) (``pick`` [B] in [0, 1): i* uniform over the n valid positions,
    row-major). Only ``valid`` positions (non-pad, scored) are ever masked; none when a row has none. Given mu,
    P(S) = (|S| / n) mu^(|S| - 1) (1 - mu)^(n - |S|) (module docstring); mu = 1 masks every valid position."""
    n = valid.sum(1)
    rank = torch.minimum((pick.to(valid.device, torch.float64) * n).floor().long(), n - 1)  # pick n may round up
    chosen = valid & (valid.cumsum(1) - 1 == rank[:, None])
    return valid & ((uniform < share.to(uniform.device, uniform.dtype)[:, None]) | chosen)


def draw_weights(masked: torch.Tensor, valid: torch.Tensor, start: float) -> torch.Tensor:
    """Float64 [B]: w(S) = (1 - m0) n / |S| (n valid positions, |S| masked, m0 = ``start`` = m(0)); 0 for a row
    with nothing to score (n = 0), whose term is empty anyway."""
    n = valid.sum(1).double()
    k = masked.sum(1).double()
    return torch.where(k > 0, (1 - start) * n / k.clamp(min=1), torch.zeros_like(k))


def valid_positions(x0: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Bool [B, L]: the target positions that count, x0 != pad_id (all of them without a pad id)."""
    return torch.ones_like(x0, dtype=torch.bool) if pad_id is None else x0 != pad_id


def _per_block(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Float64 [B]: the sum of ``values`` [N] over each block's positions (``rows`` [N] their blocks)."""
    return torch.zeros(batch, dtype=torch.float64, device=values.device).index_add_(0, rows, values.double())


def continuous_nats(
    trained: Trained, x0, prefix, t: torch.Tensor, masked: torch.Tensor, given=None, counted=None
) -> torch.Tensor:
    """Float64 [B]: G(S, t) = sum over each block's ``masked`` positions of g_i = L_i / lambda(t) (module
    docstring): the training loss terms (train/objectives mdlm_token_loss, sedd_token_loss) with the rate
    sigma'(t) replaced by expm1(sigma_bar(t)), i.e. divided by lambda = sigma' / expm1(sigma_bar):
    MDLM -log p_theta(x0_i | x_t), SEDD expm1(sigma_bar) [sum_y s_y - r log s_x0 + r (log r - 1)].
    t [B] float32 (as training); x_t = x0 with the ``masked`` positions (Bool [B, L]) set to the mask token, the
    prefix clean, the network told sigma_bar(t) and its head run on the masked positions only
    (train.objectives.masked_forward, as in training); ``given`` (Bool [B, L]): an inserting canvas's given tokens;
    ``counted`` (Bool [B, L]): only the terms of these positions are summed (stage_nelbo's counted)."""
    from train.objectives import fused_switch, masked_forward, mdlm_token_loss, sedd_log_score, sedd_token_loss

    mask_id = trained.meta["mask_id"]
    sigma = trained.noise.total(t)
    scale = torch.expm1(sigma)  # in place of sigma': L_i / lambda(t)
    out = masked_forward(trained.model, x0, prefix, masked, sigma, mask_id, given)
    rows = out.rows
    if trained.meta["objective"] == "mdlm":
        fused = fused_switch(trained.model)
        token_loss = mdlm_token_loss(out.logits, out.targets, sigma[rows], scale[rows], mask_id, fused)
    else:
        x_t = torch.full_like(out.targets, mask_id)  # x_t = m at every masked position
        log_score = sedd_log_score(out.logits, x_t, sigma[rows], mask_id)
        token_loss = sedd_token_loss(log_score, out.targets, sigma[rows], scale[rows], mask_id)
    if counted is not None:
        token_loss = token_loss * counted[masked]  # the same order as out.rows: row-major masked positions
    return _per_block(token_loss, rows, len(x0))


def step_of_time(t: torch.Tensor, steps: int) -> torch.Tensor:
    """Long: i = ceil(T t) in 1..T, the grid point t_i = i / T at or above t (MDLM: floor(tT)/T + 1/T); for t = t(mu)
    the step with m(t_{i-1}) < mu <= m(t_i)."""
    return torch.ceil(t * steps).long().clamp(1, steps)


def discrete_nats(
    trained: Trained, x0, prefix, step: torch.Tensor, masked: torch.Tensor, steps: int, given=None, counted=None
) -> torch.Tensor:
    """Float64 [B]: G_T(S, i) = sum over each block's ``masked`` positions of -log p_theta(x0_j | x_{t_i}) at its
    step i = ``step`` [B] (1..T), the network told sigma_bar(t_i), t_i = i / T (module docstring; the call:
    train.objectives.masked_forward); ``counted`` as in continuous_nats."""
    from train.objectives import masked_forward, subs_nll

    t = (step.double() / steps).float()  # float32 as in training
    sigma = trained.noise.total(t.to(x0.device))
    mask_id = trained.meta["mask_id"]
    out = masked_forward(trained.model, x0, prefix, masked, sigma, mask_id, given)
    nll = subs_nll(out.logits, out.targets, mask_id)
    return _per_block(nll if counted is None else nll * counted[masked], out.rows, len(x0))


def final_denoising_nats(
    trained: Trained,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    share: float,
    generator: torch.Generator,
    valid: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
    uniform: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float64 [B], R of each block (module docstring): one x per block with each (non-pad) target token masked
    with probability ``share`` = m0 = move(0) / M, then the sum over its masked positions of -log p_theta(x0_i | x)
    with the network told sigma_bar(0) (Denoiser.x0_log_probs, what the samplers' last step draws from).
    ``uniform`` [B, L] in [0, 1): the masks' uniforms (u_i < m0), else drawn from ``generator``. ``counted``: only
    these masked positions' terms are summed (the masks are drawn over all valid positions all the same)."""
    if uniform is None:
        uniform = torch.rand(x0.shape, generator=generator)
    masked = uniform.to(x0.device) < share
    if valid is not None:
        masked &= valid
    x_t = torch.where(masked, torch.full_like(x0, trained.meta["mask_id"]), x0)
    x = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    sigma = trained.noise.total(torch.zeros(len(x0), device=x0.device))
    told = {} if given is None else {"given": given}
    log_p = trained.denoiser.x0_log_probs(x, sigma, **told)[:, x.shape[1] - x0.shape[1] :]
    nll = -log_p.gather(-1, x0[..., None]).squeeze(-1).double()
    summed = masked if counted is None else masked & counted
    return torch.where(summed, nll, torch.zeros_like(nll)).sum(1)


def ar_nats(trained: Trained, x0: torch.Tensor, valid: torch.Tensor) -> float:
    """Exact NLL of the non-pad tokens of [bos ; x0]: sum over valid i of -log p_theta(x0_i | bos, x0_<i)."""
    from train.objectives import ar_token_loss

    x_in = torch.cat([torch.full_like(x0[:, :1], trained.meta["bos_id"]), x0[:, :-1]], dim=1)
    return float(ar_token_loss(trained.model(x_in), x0).double()[valid].sum())


def draw_term(
    trained: Trained,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    valid: torch.Tensor,
    level: torch.Tensor,
    uniform: torch.Tensor,
    pick: torch.Tensor,
    given: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Float64 [B], Float64 [B]): one draw's term X = w(S) G(S, t(mu)) per block and its time t(mu) (module
    docstring): mu = m0 + (1 - m0) ``level`` (v [B] in (0, 1]), S = draw_masks(valid, mu, ``uniform`` [B, L],
    ``pick`` [B]), w(S) = (1 - m0) n / |S|. E[X] = D over v ~ U(0, 1], u, i*; the mean of K such terms over the
    stratified levels is block_nats' estimate of D (eval/harness.py draws its own, shared between choices).
    ``counted``: G sums only these positions' terms (stage_nelbo's counted), S and w(S) unchanged."""
    noise = trained.noise
    share = share_of_level(noise, level)  # mu ~ U(m0, 1], stratified
    t = time_of_share(noise, share)
    masked = draw_masks(valid, share, uniform, pick)
    told = {} if given is None else {"given": given}
    g = continuous_nats(trained, x0, prefix, t.float().to(x0.device), masked, counted=counted, **told)
    return draw_weights(masked, valid, float(mask_share(noise, 0.0))) * g, t


@torch.no_grad()
def block_nats(
    trained: Trained,
    x0: torch.Tensor,
    prefix: torch.Tensor | None,
    valid: torch.Tensor,
    time_samples: int,
    generator: torch.Generator,
    discrete_steps: int | None = None,
    given: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
):
    """(Float64 [B], Float64 [B] or None): one estimate per block of D + R (module docstring) from K =
    ``time_samples`` stratified draws and one R draw, and with ``discrete_steps`` = T (mdlm) the discrete-T
    bound's estimate on the same draws. Per draw j: mu_j = m0 + (1 - m0) v_j, t_j = t(mu_j),
    S_j = draw_masks(valid, mu_j, u, pick), term w(S_j) G(S_j, t_j) / K; discrete: step i = ceil(T t_j),
    S = draw_masks(valid, m(t_i), u, pick) with the same u and pick, term w(S) G_T(S, i) / K. ``counted``: every
    G sums only these positions' terms (stage_nelbo's counted)."""
    noise, device, batch = trained.noise, x0.device, len(x0)
    start = float(mask_share(noise, 0.0))  # m0
    told = {} if given is None else {"given": given}  # the seed's calls exactly when there are none
    continuous = torch.zeros(batch, dtype=torch.float64, device=device)
    discrete = None if discrete_steps is None else torch.zeros_like(continuous)
    for v in stratified_levels(batch, time_samples, generator):
        uniform = torch.rand(x0.shape, generator=generator, dtype=torch.float64).to(device)
        pick = torch.rand(batch, generator=generator, dtype=torch.float64)
        term, t = draw_term(trained, x0, prefix, valid, v, uniform, pick, counted=counted, **told)
        continuous += term / time_samples
        if discrete is not None:  # the same mu (as its step), u and i*: common random numbers
            step = step_of_time(t, discrete_steps)
            masked_step = draw_masks(valid, mask_share(noise, step.double() / discrete_steps), uniform, pick)
            g_step = discrete_nats(trained, x0, prefix, step, masked_step, discrete_steps, counted=counted, **told)
            discrete += draw_weights(masked_step, valid, start) * g_step / time_samples
    if start > 0:
        final = final_denoising_nats(trained, x0, prefix, start, generator, valid, counted=counted, **told)
        continuous += final
        if discrete is not None:
            discrete += final
    return continuous, discrete


@torch.no_grad()
def stage_nelbo(
    trained: Trained,
    prefix: torch.Tensor,
    target: torch.Tensor,
    time_samples: int,
    batch_size: int,
    seed: int = 0,
    device=torch.device("cpu"),
    desc: str = "val",
    discrete_steps: int | None = None,
    scored: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> dict:
    """Summed NELBO (nats) and token count of one model over the given blocks (see module docstring; per block
    block_nats); with ``discrete_steps`` = T also the discrete-T bound on the same draws (``nats_discrete`` ... ;
    None for sedd). Pad positions (config.json pad_id, trained.meta) are never masked and not counted. ``scored``
    (Bool, the shape of ``target``; SFT: the answer tokens) restricts the same way: only those positions are
    masked and counted, everything else is clean context, so the number is the NELBO of the answers given the
    prompts. ``given`` (Bool, the shape of ``target``; inserting stages): the given tokens, never masked nor
    counted and told to the network (the infill NELBO, inserting_stage_nelbo). ``counted`` (Bool, the shape of
    ``target``; SFT: an answer's own tokens and its first EOS, eval.sft.answer_content): the masks are drawn over
    the scored positions as without it, the same draws, but only the terms of counted positions are summed and only
    they are counted, so the number is that part of the NELBO per counted token. Masking the rest all the same
    keeps the answer's length hidden from the network (a clean fill would tell it where the answer ends)."""
    if isinstance(time_samples, bool) or not isinstance(time_samples, int) or time_samples < 1:
        raise ValueError(f"time_samples should be an integer >= 1, got {time_samples!r}")
    if discrete_steps is not None and (
        isinstance(discrete_steps, bool) or not isinstance(discrete_steps, int) or discrete_steps < 1
    ):
        raise ValueError(f"discrete_steps should be an integer >= 1 or None, got {discrete_steps!r}")
    generator = torch.Generator().manual_seed(seed)
    meta, nats, tokens = trained.meta, 0.0, 0
    pad_id = meta.get("pad_id")
    discrete = discrete_steps is not None and meta["objective"] == "mdlm"
    nats_discrete = 0.0
    for start in tqdm(range(0, len(target), batch_size), desc=desc, unit="batch"):
        x0 = target[start : start + batch_size].to(device)
        pre = prefix[start : start + batch_size].to(device) if prefix.shape[1] else None
        valid = valid_positions(x0, pad_id)
        if scored is not None:
            valid = valid & scored[start : start + batch_size].to(device)
        block_given = None if given is None else given[start : start + batch_size].to(device)
        if block_given is not None:
            valid = valid & ~block_given
        block_counted = None if counted is None else counted[start : start + batch_size].to(device) & valid
        tokens += int(valid.sum() if block_counted is None else block_counted.sum())
        if trained.is_ar:
            nats += ar_nats(trained, x0, valid if block_counted is None else block_counted)
            continue
        continuous, discrete_part = block_nats(
            trained,
            x0,
            pre,
            valid,
            time_samples,
            generator,
            discrete_steps if discrete else None,
            block_given,
            counted=block_counted,
        )
        nats += float(continuous.sum())
        if discrete:
            nats_discrete += float(discrete_part.sum())
    if tokens == 0:
        raise InputError(f"{desc}: every validation target token is the pad token {pad_id}: nothing to score")
    result = {
        "nats": nats,
        "tokens": tokens,
        "blocks": len(target),
        "nelbo": nats / tokens,
        "ppl": math.exp(nats / tokens),
        "time_samples": None if trained.is_ar else time_samples,
        "objective": meta["objective"],
        "definition": DEFINITION_STAGE,
    }
    if discrete_steps is not None:
        if trained.is_ar:
            value, definition = nats, DEFINITION_DISCRETE_AR
        elif discrete:
            value, definition = nats_discrete, DEFINITION_DISCRETE.format(steps=discrete_steps)
        else:
            value, definition = None, DEFINITION_DISCRETE_SEDD
        result.update(_discrete_keys(value, tokens, discrete_steps, definition))
    return result


def inserting_stage_nelbo(
    trained: Trained,
    shards,
    time_samples: int,
    batch_size: int,
    max_blocks: int | None,
    seed: int = 0,
    device=torch.device("cpu"),
    discrete_steps: int | None = None,
) -> dict:
    """val.json entry of an inserting stage (train/inserting.py): on the true stage-k canvas x0 = stage{k}_ids with
    the given tokens y at their true positions P = stage{k-1}_pos,

        nats = placement_nats + infill_nats,   placement_nats = sum_blocks -log p(P | y) (the stage's law),
        infill_nats = stage_nelbo's NELBO of the other l_k - l_{k-1} tokens given the canvas (given = P),

    an upper bound on -log p(x0, P | y); ``tokens`` = blocks * l_k (what nelbo is per, so the run's total adds
    it to the other stages as it adds a re-predicting stage), infill_tokens the inserted ones."""
    from train.inserting import given_mask
    from train.placement import placement_law

    meta, k = trained.meta, trained.meta["stage"]
    length, given_len = meta["target_len"], meta["prefix_len"]
    target, positions = read_columns(shards, {f"stage{k}_ids": length, f"stage{k - 1}_pos": given_len}, max_blocks)
    given = given_mask(positions, length)
    infill = stage_nelbo(
        trained,
        target[:, :0],
        target,
        time_samples,
        batch_size,
        seed,
        device,
        f"val {trained.name}",
        discrete_steps,
        given=given,
    )
    law = placement_law(meta["placement"], meta["vocab_size"], length, given_len, trained.model_dir, device)
    with torch.no_grad():
        placement = float(-law.log_prob(target.gather(1, positions).to(device), positions.to(device)).double().sum())
    tokens = target.numel()
    nats = placement + infill["nats"]
    result = {
        **infill,
        "nats": nats,
        "tokens": tokens,
        "nelbo": nats / tokens,
        "ppl": math.exp(nats / tokens),
        "stage_form": "insert",
        "placement": meta["placement"],
        "placement_nats": placement,
        "infill_nats": infill["nats"],
        "infill_tokens": infill["tokens"],
        "infill_nelbo": infill["nelbo"],
        "definition": DEFINITION_INSERT,
        "definition_infill": infill["definition"],
    }
    if discrete_steps is not None and infill.get("nats_discrete") is not None:
        result.update(_discrete_keys(placement + infill["nats_discrete"], tokens, discrete_steps, DEFINITION_INSERT))
    return result


def read_columns(shards, columns: dict[str, int], max_blocks: int | None) -> list[torch.Tensor]:
    """Long[N, length] per column {name: length} of the first ``max_blocks`` rows, shard order; lengths checked."""
    out = {c: [] for c in columns}
    for shard in shards:
        table = read_parquet(shard, list(columns))
        for col, length in columns.items():
            rows = table.column(col).to_pylist()
            bad = next((i for i, r in enumerate(rows) if len(r) != length), None)
            if bad is not None:
                raise InputError(f"{shard}: row {bad} of {col} has {len(rows[bad])} values, the model expects {length}")
            out[col].extend(rows)
        if max_blocks is not None and len(out[next(iter(columns))]) >= max_blocks:
            break
    first = out[next(iter(columns))]
    if not first:
        raise InputError(f"no validation blocks in {list(shards)}")
    n = len(first) if max_blocks is None else min(max_blocks, len(first))
    return [torch.tensor(out[c][:n], dtype=torch.long) for c in columns]


def _discrete_keys(nats: float | None, tokens: int, steps: int, definition: str) -> dict:
    """nats_discrete, nelbo_discrete, ppl_discrete (None when there is no bound), discrete_steps, its definition."""
    nelbo = None if nats is None else nats / tokens
    return {
        "nats_discrete": nats,
        "nelbo_discrete": nelbo,
        "ppl_discrete": None if nelbo is None else math.exp(nelbo),
        "discrete_steps": steps,
        "definition_discrete": definition,
    }


def run_validation(
    run_dir,
    val_shards,
    time_samples: int,
    batch_size: int,
    max_batches: int | None,
    seed: int = 0,
    device=torch.device("cpu"),
    discrete_steps: int | None = None,
    blocks: bool = False,
) -> dict:
    """val.json of a run: every stage's NELBO and the total per stage-3 token; with ``discrete_steps`` also the
    discrete-T bound of each stage and of the total.

    ``blocks``: the shards are unannotated block shards (preprocess/blocks.py, column ids) of the model's target
    length, scored as its own x0 whatever data it trained on (a single-stage or AR model only: the zero-shot
    table, rule evaluate_zero_shot); a stage-trained single model reads stage3_ids otherwise."""
    max_blocks = None if max_batches is None else max_batches * batch_size
    model_dirs = run_model_dirs(run_dir)
    if blocks and len(model_dirs) != 1:
        raise InputError(
            f"{run_dir}: block shards score a single-stage or AR run, this one has {len(model_dirs)} models"
        )
    stages = {}
    for model_dir in model_dirs:
        trained = load_trained(model_dir, device)
        meta = trained.meta
        data, _ = model_data(meta, Path(model_dir) / "config.json")
        if blocks:
            if meta["prefix_len"] or meta.get("stage_form") == "insert":
                raise InputError(f"{model_dir}: block shards have no prefix; this model reads a prefix or a canvas")
            data = "wrap"
        if meta.get("stage_form") == "insert":
            stages[trained.name] = inserting_stage_nelbo(
                trained, val_shards, time_samples, batch_size, max_blocks, seed, device, discrete_steps
            )
            continue
        prefix, target = read_stage_blocks(
            val_shards, meta["stage"], meta["prefix_len"], meta["target_len"], max_blocks, data
        )
        stages[trained.name] = stage_nelbo(
            trained,
            prefix,
            target,
            time_samples,
            batch_size,
            seed,
            device,
            desc=f"val {trained.name}",
            discrete_steps=discrete_steps,
        )
    last = list(stages.values())[-1]
    tokens = last["tokens"]  # the stage-3 tokens (non-pad) of the same blocks
    per_token = sum(s["nats"] for s in stages.values()) / tokens
    total = {
        "nelbo": per_token,
        "ppl": math.exp(per_token),
        "tokens": tokens,
        "blocks": last["blocks"],
        "definition": DEFINITION_TOTAL,
    }
    if discrete_steps is not None:
        parts = [s["nats_discrete"] for s in stages.values()]
        total.update(
            _discrete_keys(
                None if None in parts else sum(parts),
                tokens,
                discrete_steps,
                DEFINITION_TOTAL_DISCRETE.format(steps=discrete_steps),
            )
        )
    return {"run_dir": str(run_dir), "stages": stages, "total": total}
