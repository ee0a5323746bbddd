r"""Validation likelihood of a run on its validation stage shards: NELBO per stage, perplexity, tokens counted.

Diffusion stage k is scored on the true stage-k block given the true stage k-1 block as its clean prefix
(teacher forcing, as in training). The number is the continuous-time NELBO of the model the samplers draw
from (eval/samplers.py, many steps): every target position masked at t = 1, a masked position unmasked at
rate lambda(t) = sigma'(t) / expm1(sigma(t)) into x0 ~ p_theta(x0 | x_t), the network told sigma = sigma_bar(t).
With move(t) = 1 - exp(-sigma_bar(t)) the schedule's mask probability and M = move(1),

    NELBO_k = (1 / N_k) sum_blocks [ int_0^1 E_{x_t ~ q_t}[ L(x0, x_t, t) ] dt + R(x0) ],
    q_t     each target token masked independently with probability move(t) / M,
    L       the training loss of the block's masked positions (train/objectives.diffusion_loss), summed:
            MDLM  lambda(t) * -log p_theta(x0_i | x_t)
            SEDD  sigma'(t) * [sum_y s_y - r log s_x0 + r (log r - 1)],  r = 1 / expm1(sigma)
    R       the final denoising at t = 0: the sum over the positions q_0 masks of -log p_theta(x0_i | x);
            0 when move(0) = 0 (loglinear, cosine), not for geometric (move(0) = 1 - exp(-sigma_min)),

estimated with K stratified times per block t_j = (j + 1 - u_j) / K in (0, 1], u_j ~ U[0, 1) from a fixed seed,
one x_t per time and one x for R; N_k = blocks * l_k target tokens. An AR run gets the exact NLL of [bos ; x0]
(every token predicted). Perplexity = exp(NELBO per token).

Why q_t and not the training noise: it is a strict bound. Dividing the mask probability by M changes neither
the unmask probability between two times, (move(t) - move(s)) / move(t), nor the rate lambda = move'/move, so
the reverse process, and with it L (for SEDD: the true reverse rate sigma' * r is lambda under both), is the
same; but q_1 masks everything, as the samplers' start does, so the prior term KL(q_1 || all masks) is 0. The
training process leaves a share 1 - M = eps clean at t = 1 (loglinear), whose prior term against the all-mask
start is infinite; the training loss, t ~ U[eps, 1] without that term, can fall below the NLL (for a one-token
block and a time-independent network it is exactly (1 - eps) * NLL), by a model-dependent amount that could
not be stated beside the number as a constant. Same loss function, same network calls: strictness costs nothing.

Because stage 1 and 2 are functions of the stage-3 block, -log p(x3) <= -log p(x1) - log p(x2|x1) - log p(x3|x2),
so the cascade's sum of stage NELBOs (nats per block) is an upper bound on the NLL of the stage-3 block and is
comparable with the single-stage and AR numbers. ``total`` reports it per stage-3 token.

    python -m eval.evaluate val --run-dir runs/cascade --val-shards data/.../validation/shard_*.parquet \
        --time-samples 4 --batch-size 32 --out runs/cascade/eval/val.json
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from common.io import InputError, read_parquet
from eval.runs import run_model_dirs
from eval.trained import Trained, load_trained

DEFINITION_STAGE = (
    "validation NELBO of stage k in nats per target token, a strict upper bound on -ln p of the true stage-k block "
    "given the true stage k-1 block (clean prefix) under the continuous-time sampler (all masks at t = 1): the "
    "training loss (train/objectives) of x_t, each target token masked with probability "
    "(1 - exp(-sigma_bar(t))) / (1 - exp(-sigma_bar(1))) and the network told sigma_bar(t), averaged over K "
    "stratified times per block t_j = (j + 1 - u_j)/K in (0, 1] (u_j ~ U[0,1) from a fixed seed), plus the final "
    "denoising term at t = 0 when the schedule masks there, summed over blocks and divided by tokens = blocks * l_k; "
    "for an AR model the exact NLL of [bos; x0] per token; ppl = exp(nelbo)")
DEFINITION_TOTAL = (
    "upper bound on the NLL of the stage-3 block in nats per stage-3 token: sum over the run's stages of "
    "(stage NELBO * stage tokens), divided by blocks * l3 (the same validation blocks for every stage); ppl = exp")


def read_stage_blocks(shards, stage: int, prefix_len: int, target_len: int, max_blocks: int | None):
    """(prefix Long[N, prefix_len], target Long[N, target_len]) of the first ``max_blocks`` blocks, shard order."""
    target_col = f"stage{stage}_ids"
    prefix_col = f"stage{stage - 1}_ids" if prefix_len else None
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
    prefix = torch.tensor(prefixes[:n], dtype=torch.long) if prefix_len else torch.zeros(n, 0, dtype=torch.long)
    return prefix, target


def stratified_times(batch: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[K, B] times, t_j = (j + 1 - u) / K in (0, 1] with one u ~ U[0,1) per (j, block); t = 0, where the
    weight lambda diverges, is never drawn."""
    u = torch.rand(k, batch, generator=generator, dtype=torch.float64)
    return (torch.arange(k, dtype=torch.float64)[:, None] + 1 - u) / k


def mask_probability(noise, t: float) -> float:
    """move(t) = 1 - exp(-sigma_bar(t)) in float32, as train/objectives.corrupt computes it."""
    return float(-torch.expm1(-noise.total(torch.tensor([t], dtype=torch.float32))))


def final_denoising_nats(trained: Trained, x0: torch.Tensor, prefix: torch.Tensor | None, share: float,
                         generator: torch.Generator) -> float:
    """R summed over the blocks (module docstring): one x per block with each target token masked with
    probability ``share`` = move(0) / M, then sum over its masked positions of -log p_theta(x0_i | x) with the
    network told sigma_bar(0) (Denoiser.x0_log_probs, what the samplers' last step draws from)."""
    masked = torch.rand(x0.shape, generator=generator).to(x0.device) < share
    x_t = torch.where(masked, torch.full_like(x0, trained.meta["mask_id"]), x0)
    x = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    sigma = trained.noise.total(torch.zeros(len(x0), device=x0.device))
    log_p = trained.denoiser.x0_log_probs(x, sigma)[:, x.shape[1] - x0.shape[1]:]
    return float(-log_p.gather(-1, x0[..., None]).squeeze(-1)[masked].sum())


@torch.no_grad()
def stage_nelbo(trained: Trained, prefix: torch.Tensor, target: torch.Tensor, time_samples: int,
                batch_size: int, seed: int = 0, device=torch.device("cpu"), desc: str = "val") -> dict:
    """Summed NELBO (nats) and token count of one model over the given blocks (see module docstring)."""
    from train.objectives import ar_loss, diffusion_loss

    generator = torch.Generator().manual_seed(seed)
    meta, noise, nats = trained.meta, trained.noise, 0.0
    top = None if trained.is_ar else mask_probability(noise, 1.0)  # M
    start_share = None if trained.is_ar else mask_probability(noise, 0.0) / top  # move(0) / M: R's masks
    for start in tqdm(range(0, len(target), batch_size), desc=desc, unit="batch"):
        x0 = target[start:start + batch_size].to(device)
        pre = prefix[start:start + batch_size].to(device) if prefix.shape[1] else None
        if trained.is_ar:
            nats += float(ar_loss(trained.model, x0, meta["bos_id"])) * x0.numel()
            continue
        for t in stratified_times(len(x0), time_samples, generator):
            # corrupt() masks where uniform < move(t): u * M < move(t) masks with probability move(t) / M (q_t)
            uniform = top * torch.rand(x0.shape, generator=generator).to(device)
            loss = diffusion_loss(trained.model, meta["objective"], x0, pre, t.float().to(device), uniform, noise,
                                  meta["mask_id"])
            nats += float(loss) * x0.numel() / time_samples
        if start_share > 0:
            nats += final_denoising_nats(trained, x0, pre, start_share, generator)
    tokens = target.numel()
    return {"nats": nats, "tokens": tokens, "blocks": len(target), "nelbo": nats / tokens,
            "ppl": math.exp(nats / tokens), "time_samples": None if trained.is_ar else time_samples,
            "objective": meta["objective"], "definition": DEFINITION_STAGE}


def run_validation(run_dir, val_shards, time_samples: int, batch_size: int, max_batches: int | None,
                   seed: int = 0, device=torch.device("cpu")) -> dict:
    """val.json of a run: every stage's NELBO and the total per stage-3 token."""
    max_blocks = None if max_batches is None else max_batches * batch_size
    stages, total_nats, blocks, l_final = {}, 0.0, None, None
    for model_dir in run_model_dirs(run_dir):
        trained = load_trained(model_dir, device)
        meta = trained.meta
        prefix, target = read_stage_blocks(val_shards, meta["stage"], meta["prefix_len"], meta["target_len"],
                                           max_blocks)
        stages[trained.name] = stage_nelbo(trained, prefix, target, time_samples, batch_size, seed, device,
                                           desc=f"val {trained.name}")
        total_nats += stages[trained.name]["nats"]
        blocks, l_final = stages[trained.name]["blocks"], meta["target_len"]
    per_token = total_nats / (blocks * l_final)
    return {"run_dir": str(run_dir), "stages": stages,
            "total": {"nelbo": per_token, "ppl": math.exp(per_token), "tokens": blocks * l_final,
                      "blocks": blocks, "definition": DEFINITION_TOTAL}}
