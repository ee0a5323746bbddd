r"""Validation likelihood of a run on its validation shards: NELBO per stage, perplexity, tokens counted.

Diffusion stage k is scored on the true stage-k block given the true stage k-1 block as its clean prefix
(teacher forcing, as in training). The number is the continuous-time NELBO of the model the samplers draw
from (eval/samplers.py, many steps): every target position masked at t = 1, a masked position unmasked at
rate lambda(t) = sigma'(t) / expm1(sigma(t)) into x0 ~ p_theta(x0 | x_t), the network told sigma = sigma_bar(t).
With move(t) = 1 - exp(-sigma_bar(t)) the schedule's mask probability and M = move(1),

    NELBO_k = (1 / N_k) sum_blocks [ int_0^1 E_{x_t ~ q_t}[ L(x0, x_t, t) ] dt + R(x0) ],
    q_t     each target token masked independently with probability m(t) = move(t) / M,
    L       the training loss of the block's masked positions (train/objectives mdlm_token_loss /
            sedd_token_loss, the terms diffusion_loss averages), summed:
            MDLM  lambda(t) * -log p_theta(x0_i | x_t)
            SEDD  sigma'(t) * [sum_y s_y - r log s_x0 + r (log r - 1)],  r = 1 / expm1(sigma)
    R       the final denoising at t = 0: the sum over the positions q_0 masks of -log p_theta(x0_i | x);
            0 when move(0) = 0 (loglinear, cosine), not for geometric (move(0) = 1 - exp(-sigma_min)),

estimated with K stratified times per block t_j = (j + 1 - u_j) / K in (0, 1], u_j ~ U[0, 1) from a fixed seed,
one x_t per time and one x for R; N_k = the block's target tokens (blocks * l_k when nothing is padded, below).
An AR run gets the exact NLL of [bos ; x0] (every token predicted). Perplexity = exp(NELBO per token).

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

R the continuous bound's final term (the same draw), the prior term 0 as m(1) = 1. It is estimated on the same K
stratified times and the same mask uniforms as the continuous bound (common random numbers): i_j = ceil(T t_j),
uniform on 1..T over a uniformly chosen stratum, so

    L_T ~= (T / K) sum_j w_{i_j} sum_{j' masked at t_{i_j}} -log p_theta(x0_j' | x_{t_{i_j}}) + R

is unbiased. Loglinear: m(t) = t, so T w_i = T (1/T) / (i/T) = 1 / t_i, which is MDLM's ``_d3pm_loss`` under SUBS
(x_theta(m) = 0 zeroes both log(alpha x_theta(m) / t + 1) terms and leaves T * (dt / t) * -log p_theta(x0),
dt = 1/T, t in {1/T, ..., 1}). As T -> inf, T w_i -> m'(t) / m(t) = lambda(t) and t_{i_j} -> t_j, so the discrete
estimate tends to the continuous one draw by draw. SEDD has no such bound here (its network is trained as a score
of the continuous-time chain): ``nelbo_discrete`` is null, the reason in its definition. AR: the exact NLL, the
same number for both.

Padding (config.json ``pad_id``, written for doc blocks: the end of a document's last block). A target position
whose x0 is the pad token is never masked (its mask uniform is set above every mask probability), carries no loss
and is not counted: N_k counts the other target tokens. The sums are taken from the token losses, so no
normaliser of the training loss is assumed. Which column a model reads: train.data.data_columns of its
config.json ``data`` (stages | wrap | doc; absent in older folders: stages).

Because stage 1 and 2 are functions of the stage-3 block, -log p(x3) <= -log p(x1) - log p(x2|x1) - log p(x3|x2),
so the cascade's sum of stage NELBOs (nats per block) is an upper bound on the NLL of the stage-3 block and is
comparable with the single-stage and AR numbers. ``total`` reports it per stage-3 token (continuous and discrete).

    python -m eval.evaluate val --run-dir runs/cascade --val-shards data/.../validation/shard_*.parquet \
        --time-samples 4 --batch-size 32 [--discrete-steps 1000] --out runs/cascade/eval/val.json
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
    "training loss terms (train/objectives) of x_t, each target token masked with probability "
    "(1 - exp(-sigma_bar(t))) / (1 - exp(-sigma_bar(1))) and the network told sigma_bar(t), averaged over K "
    "stratified times per block t_j = (j + 1 - u_j)/K in (0, 1] (u_j ~ U[0,1) from a fixed seed), plus the final "
    "denoising term at t = 0 when the schedule masks there, summed over blocks and divided by tokens = the target "
    "tokens that are not padding (pad_id of config.json: never masked, no loss; blocks * l_k without padding); "
    "for an AR model the exact NLL of [bos; x0] per (non-pad) token; ppl = exp(nelbo)")
DEFINITION_DISCRETE = (
    "discrete-time NELBO of stage k with T = {steps} steps in nats per target token (MDLM's T > 0 bound; the NELBO "
    "of the T-step ddpm sampler when m(0) = 0): sum over i = 1..T of E_{{x ~ q_(i/T)}}[w_i * sum over masked "
    "target positions of -ln p_theta(x0 | x), network told sigma_bar(i/T)], w_i = (m(i/T) - m((i-1)/T)) / "
    "m(i/T), m(t) = (1 - exp(-sigma_bar(t))) / (1 - exp(-sigma_bar(1))) (loglinear: T w_i = 1/t_i), plus the "
    "continuous bound's t = 0 term; estimated with i_j = ceil(T t_j) on the continuous bound's K stratified times "
    "and mask uniforms, times T/K; tokens as for nelbo; ppl_discrete = exp(nelbo_discrete)")
DEFINITION_DISCRETE_AR = "exact NLL of [bos; x0] per token, as nelbo (an AR model has no diffusion steps)"
DEFINITION_DISCRETE_SEDD = (
    "null: objective sedd has no discrete-T bound here. Its network is trained as a score of the continuous-time "
    "chain (score entropy); the T-step bound is MDLM's (SUBS, p_theta(x0 | x_t)), which eval/likelihood.py computes "
    "for mdlm only. nelbo is its continuous-time bound")
DEFINITION_TOTAL = (
    "upper bound on the NLL of the stage-3 block in nats per stage-3 token: sum over the run's stages of "
    "(stage NELBO * stage tokens), divided by the stage-3 tokens (blocks * l3 less padding; the same validation "
    "blocks for every stage); ppl = exp")
DEFINITION_TOTAL_DISCRETE = (
    "as total nelbo, from each stage's discrete-T NELBO (T = {steps} steps per stage); null when a stage has none "
    "(sedd: see its stage)")
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
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0
                               or (isinstance(vocab, int) and pad_id >= vocab)):
        raise InputError(f"{where}: key 'pad_id' should be an integer token id in [0, {vocab}), got {pad_id!r}")
    return data, pad_id


def read_stage_blocks(shards, stage: int, prefix_len: int, target_len: int, max_blocks: int | None,
                      data: str = "stages"):
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


def stratified_times(batch: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[K, B] times, t_j = (j + 1 - u) / K in (0, 1] with one u ~ U[0,1) per (j, block); t = 0, where the
    weight lambda diverges, is never drawn."""
    u = torch.rand(k, batch, generator=generator, dtype=torch.float64)
    return (torch.arange(k, dtype=torch.float64)[:, None] + 1 - u) / k


def mask_probability(noise, t: float) -> float:
    """move(t) = 1 - exp(-sigma_bar(t)) in float32, as train/objectives.corrupt computes it."""
    return float(-torch.expm1(-noise.total(torch.tensor([t], dtype=torch.float32))))


def valid_positions(x0: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Bool [B, L]: the target positions that count, x0 != pad_id (all of them without a pad id)."""
    return torch.ones_like(x0, dtype=torch.bool) if pad_id is None else x0 != pad_id


def _masked_logits(trained: Trained, x0, prefix, sigma, uniform, valid):
    """x_t = corrupt(x0, sigma, m, uniform) (masked where uniform < move(sigma)), a position outside ``valid``
    (a pad) never masked: its uniform set to 2, above every move <= 1. The network on [prefix ; x_t] told
    ``sigma`` [B], its head run on the masked target positions only, as in training. Returns (logits [N, V],
    x_t, masked Bool[B, L], rows [N]: the block of each masked position, row-major)."""
    from train.objectives import corrupt

    mask_id = trained.meta["mask_id"]
    if valid is not None:
        uniform = torch.where(valid, uniform, 2.0)
    x_t = corrupt(x0, sigma, mask_id, uniform)
    masked = x_t == mask_id
    prefix_len = 0 if prefix is None else prefix.shape[1]
    x_in = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    select = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), masked], 1) if prefix_len else masked
    logits = trained.model(x_in, sigma, prefix_len, select=select)
    return logits, x_t, masked, masked.nonzero(as_tuple=True)[0]


def _per_block(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Float64 [B]: the sum of ``values`` [N] over each block's positions (``rows`` [N] their blocks)."""
    return torch.zeros(batch, dtype=torch.float64, device=values.device).index_add_(0, rows, values.double())


def continuous_nats(trained: Trained, x0, prefix, t: torch.Tensor, uniform: torch.Tensor,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 [B]: L(x0, x_t, t) of each block (module docstring), the training loss terms summed over its
    masked positions. t [B] (float32, as training), uniform [B, L] masking where uniform < move(t): a uniform
    u ~ U[0,1) scaled by M = move(1) masks with probability m(t) = move(t) / M. Positions outside ``valid``
    (Bool [B, L], pads) stay clean whatever their uniform."""
    from train.objectives import mdlm_token_loss, sedd_log_score, sedd_token_loss

    noise, mask_id = trained.noise, trained.meta["mask_id"]
    sigma, dsigma = noise.total(t), noise.rate(t)
    logits, x_t, masked, rows = _masked_logits(trained, x0, prefix, sigma, uniform, valid)
    if trained.meta["objective"] == "mdlm":
        fused = getattr(trained.model, "fused", "auto")
        token_loss = mdlm_token_loss(logits, x0[masked], sigma[rows], dsigma[rows], mask_id, fused)
    else:
        log_score = sedd_log_score(logits, x_t[masked], sigma[rows], mask_id)
        token_loss = sedd_token_loss(log_score, x0[masked], sigma[rows], dsigma[rows], mask_id)
    return _per_block(token_loss, rows, len(x0))


def discrete_weights(noise, steps: int) -> torch.Tensor:
    """Float64 [T]: w_i = (m(t_i) - m(t_{i-1})) / m(t_i) at index i - 1, t_i = i / T, computed as
    expm1(sigma_bar(t_i) - sigma_bar(t_{i-1})) / expm1(sigma_bar(t_i)) (the normaliser M cancels; exact near
    t = 0). w_1 = 1 when m(0) = 0 (loglinear, cosine); loglinear: w_i = 1 / i."""
    sigma = noise.total(torch.arange(steps + 1, dtype=torch.float64) / steps)
    return torch.expm1(sigma[1:] - sigma[:-1]) / torch.expm1(sigma[1:])


def step_of_time(t: torch.Tensor, steps: int) -> torch.Tensor:
    """Long: i = ceil(T t) in 1..T, the grid point t_i = i / T at or above t (MDLM: floor(tT)/T + 1/T)."""
    return torch.ceil(t * steps).long().clamp(1, steps)


def discrete_nats(trained: Trained, x0, prefix, step: torch.Tensor, uniform: torch.Tensor, steps: int,
                  weights: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 [B]: T w_i * sum over the masked positions of -log p_theta(x0_j | x_{t_i}) for each block's step
    i = ``step`` [B] (1..T): x_{t_i} masked where uniform < move(t_i) (uniform = M u: probability m(t_i)),
    pads (outside ``valid``) never, the network told sigma_bar(t_i). Its mean over i uniform on 1..T is L_T's
    diffusion sum (module docstring). ``weights`` = discrete_weights(noise, T)."""
    from train.objectives import subs_nll

    t = (step.double() / steps).float()  # float32 as in training: t_T = 1 gives move(1) = M exactly
    sigma = trained.noise.total(t.to(x0.device))
    logits, _, masked, rows = _masked_logits(trained, x0, prefix, sigma, uniform, valid)
    nll = subs_nll(logits, x0[masked], trained.meta["mask_id"])
    return steps * weights.to(x0.device)[step.to(x0.device) - 1] * _per_block(nll, rows, len(x0))


def final_denoising_nats(trained: Trained, x0: torch.Tensor, prefix: torch.Tensor | None, share: float,
                         generator: torch.Generator, valid: torch.Tensor | None = None) -> float:
    """R summed over the blocks (module docstring): one x per block with each (non-pad) target token masked with
    probability ``share`` = move(0) / M, then sum over its masked positions of -log p_theta(x0_i | x) with the
    network told sigma_bar(0) (Denoiser.x0_log_probs, what the samplers' last step draws from)."""
    masked = torch.rand(x0.shape, generator=generator).to(x0.device) < share
    if valid is not None:
        masked &= valid
    x_t = torch.where(masked, torch.full_like(x0, trained.meta["mask_id"]), x0)
    x = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    sigma = trained.noise.total(torch.zeros(len(x0), device=x0.device))
    log_p = trained.denoiser.x0_log_probs(x, sigma)[:, x.shape[1] - x0.shape[1]:]
    return float(-log_p.gather(-1, x0[..., None]).squeeze(-1)[masked].sum())


def ar_nats(trained: Trained, x0: torch.Tensor, valid: torch.Tensor) -> float:
    """Exact NLL of the non-pad tokens of [bos ; x0]: sum over valid i of -log p_theta(x0_i | bos, x0_<i)."""
    from train.objectives import ar_token_loss

    x_in = torch.cat([torch.full_like(x0[:, :1], trained.meta["bos_id"]), x0[:, :-1]], dim=1)
    return float(ar_token_loss(trained.model(x_in), x0).double()[valid].sum())


@torch.no_grad()
def stage_nelbo(trained: Trained, prefix: torch.Tensor, target: torch.Tensor, time_samples: int,
                batch_size: int, seed: int = 0, device=torch.device("cpu"), desc: str = "val",
                discrete_steps: int | None = None, scored: torch.Tensor | None = None) -> dict:
    """Summed NELBO (nats) and token count of one model over the given blocks (see module docstring); with
    ``discrete_steps`` = T also the discrete-T bound on the same draws (``nats_discrete`` ... ; None for sedd).
    Pad positions (config.json pad_id, trained.meta) are never masked and not counted. ``scored`` (Bool, the
    shape of ``target``; SFT: the answer tokens) restricts the same way: only those positions are masked and
    counted, everything else is clean context, so the number is the NELBO of the answers given the prompts."""
    if discrete_steps is not None and (isinstance(discrete_steps, bool) or not isinstance(discrete_steps, int)
                                       or discrete_steps < 1):
        raise ValueError(f"discrete_steps should be an integer >= 1 or None, got {discrete_steps!r}")
    generator = torch.Generator().manual_seed(seed)
    meta, noise, nats, tokens = trained.meta, trained.noise, 0.0, 0
    pad_id = meta.get("pad_id")
    discrete = discrete_steps is not None and meta["objective"] == "mdlm"
    nats_discrete = 0.0
    top = None if trained.is_ar else mask_probability(noise, 1.0)  # M
    start_share = None if trained.is_ar else mask_probability(noise, 0.0) / top  # move(0) / M: R's masks
    weights = discrete_weights(noise, discrete_steps) if discrete else None
    for start in tqdm(range(0, len(target), batch_size), desc=desc, unit="batch"):
        x0 = target[start:start + batch_size].to(device)
        pre = prefix[start:start + batch_size].to(device) if prefix.shape[1] else None
        valid = valid_positions(x0, pad_id)
        if scored is not None:
            valid = valid & scored[start:start + batch_size].to(device)
        tokens += int(valid.sum())
        if trained.is_ar:
            nats += ar_nats(trained, x0, valid)
            continue
        for t in stratified_times(len(x0), time_samples, generator):
            # M u < move(t) masks with probability move(t) / M (q_t); pads never (valid)
            uniform = top * torch.rand(x0.shape, generator=generator).to(device)
            nats += float(continuous_nats(trained, x0, pre, t.float().to(device), uniform, valid).sum()) / time_samples
            if discrete:  # the same time (as its step) and the same uniforms: common random numbers
                step = step_of_time(t, discrete_steps)
                nats_discrete += float(discrete_nats(trained, x0, pre, step, uniform, discrete_steps, weights,
                                                     valid).sum()) / time_samples
        if start_share > 0:
            final = final_denoising_nats(trained, x0, pre, start_share, generator, valid)
            nats += final
            nats_discrete += final
    if tokens == 0:
        raise InputError(f"{desc}: every validation target token is the pad token {pad_id}: nothing to score")
    result = {"nats": nats, "tokens": tokens, "blocks": len(target), "nelbo": nats / tokens,
              "ppl": math.exp(nats / tokens), "time_samples": None if trained.is_ar else time_samples,
              "objective": meta["objective"], "definition": DEFINITION_STAGE}
    if discrete_steps is not None:
        if trained.is_ar:
            value, definition = nats, DEFINITION_DISCRETE_AR
        elif discrete:
            value, definition = nats_discrete, DEFINITION_DISCRETE.format(steps=discrete_steps)
        else:
            value, definition = None, DEFINITION_DISCRETE_SEDD
        result.update(_discrete_keys(value, tokens, discrete_steps, definition))
    return result


def _discrete_keys(nats: float | None, tokens: int, steps: int, definition: str) -> dict:
    """nats_discrete, nelbo_discrete, ppl_discrete (None when there is no bound), discrete_steps, its definition."""
    nelbo = None if nats is None else nats / tokens
    return {"nats_discrete": nats, "nelbo_discrete": nelbo, "ppl_discrete": None if nelbo is None else
            math.exp(nelbo), "discrete_steps": steps, "definition_discrete": definition}


def run_validation(run_dir, val_shards, time_samples: int, batch_size: int, max_batches: int | None,
                   seed: int = 0, device=torch.device("cpu"), discrete_steps: int | None = None) -> dict:
    """val.json of a run: every stage's NELBO and the total per stage-3 token; with ``discrete_steps`` also the
    discrete-T bound of each stage and of the total."""
    max_blocks = None if max_batches is None else max_batches * batch_size
    stages = {}
    for model_dir in run_model_dirs(run_dir):
        trained = load_trained(model_dir, device)
        meta = trained.meta
        data, _ = model_data(meta, Path(model_dir) / "config.json")
        prefix, target = read_stage_blocks(val_shards, meta["stage"], meta["prefix_len"], meta["target_len"],
                                           max_blocks, data)
        stages[trained.name] = stage_nelbo(trained, prefix, target, time_samples, batch_size, seed, device,
                                           desc=f"val {trained.name}", discrete_steps=discrete_steps)
    last = list(stages.values())[-1]
    tokens = last["tokens"]  # the stage-3 tokens (non-pad) of the same blocks
    per_token = sum(s["nats"] for s in stages.values()) / tokens
    total = {"nelbo": per_token, "ppl": math.exp(per_token), "tokens": tokens, "blocks": last["blocks"],
             "definition": DEFINITION_TOTAL}
    if discrete_steps is not None:
        parts = [s["nats_discrete"] for s in stages.values()]
        total.update(_discrete_keys(None if None in parts else sum(parts), tokens, discrete_steps,
                                    DEFINITION_TOTAL_DISCRETE.format(steps=discrete_steps)))
    return {"run_dir": str(run_dir), "stages": stages, "total": total}
