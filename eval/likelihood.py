"""Validation likelihood of a run on its validation stage shards: NELBO per stage, perplexity, tokens counted.

Diffusion stage k is scored on the true stage-k block given the true stage k-1 block as its clean prefix
(teacher forcing, as in training), with the training loss itself (train/objectives.diffusion_loss), i.e. the
continuous-time NELBO estimated with a fixed number K of time samples per block, stratified:

    NELBO_k = (1 / N_k) sum_blocks (1 / K) sum_{j<K} L(x0, t_j),   t_j = eps + (1 - eps) (j + u_j) / K,

where L is the summed per-token loss of the block (MDLM: sigma'/expm1(sigma) * -log p_theta(x0 | x_t) over
masked positions; SEDD: score entropy), u_j ~ U[0, 1) from a fixed seed, and N_k = blocks * l_k target tokens.
An AR run gets the exact NLL of [bos ; x0] (every token predicted). Perplexity = exp(NELBO per token).

Because stage 1 and 2 are functions of the stage-3 block, -log p(x3) <= -log p(x1) - log p(x2|x1) - log p(x3|x2),
so the cascade's sum of stage NELBOs (nats per block) is an upper bound on the NLL of the stage-3 block and is
comparable with the single-stage and AR numbers. ``total`` reports it per stage-3 token.

    python -m eval.likelihood --run-dir runs/cascade --val-shards data/.../validation/shard_*.parquet \
        --out runs/cascade/eval/val.json
"""
from __future__ import annotations

import argparse
import json
import math

import torch
from tqdm import tqdm

from common.device import resolve_device
from eval.runs import read_model_config, run_model_dirs, stage_name
from common.io import InputError, read_parquet, write_json

SAMPLING_EPS = 1e-3  # as train/noise.sample_times: the MDLM weight diverges at t = 0

DEFINITION_STAGE = (
    "validation NELBO of stage k in nats per target token: the training loss (train/objectives) of the true stage-k "
    "block given the true stage k-1 block as clean prefix, averaged over K stratified time samples per block "
    "t_j = eps + (1 - eps)(j + u_j)/K (eps = 1e-3, u_j ~ U[0,1) from a fixed seed) and summed over blocks, divided by "
    "tokens = blocks * l_k; for an AR model the exact NLL of [bos; x0] per token; ppl = exp(nelbo)")
DEFINITION_TOTAL = (
    "upper bound on the NLL of the stage-3 block in nats per stage-3 token: sum over the run's stages of "
    "(stage NELBO * stage tokens), divided by blocks * l3 (the same validation blocks for every stage); ppl = exp")


class _ZeroSigma(torch.nn.Module):
    """A model fed sigma = 0, for denoisers trained without time conditioning (MDLM's default for SUBS)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sigma=None, prefix_len=0, select=None):
        return self.model(x, torch.zeros_like(sigma), prefix_len, select=select)


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
    """[K, B] times, t_j = eps + (1 - eps) (j + u) / K with one u ~ U[0,1) per (j, block)."""
    u = torch.rand(k, batch, generator=generator, dtype=torch.float64)
    return SAMPLING_EPS + (1 - SAMPLING_EPS) * (torch.arange(k, dtype=torch.float64)[:, None] + u) / k


@torch.no_grad()
def stage_nelbo(model, meta: dict, prefix: torch.Tensor, target: torch.Tensor, time_samples: int,
                batch_size: int, seed: int = 0, device=torch.device("cpu"), desc: str = "val") -> dict:
    """Summed NELBO (nats) and token count of one model over the given blocks (see module docstring)."""
    from train.noise import get_noise
    from train.objectives import ar_loss, diffusion_loss

    generator = torch.Generator().manual_seed(seed)
    nats = 0.0
    objective = "mdlm" if meta["objective"] == "atat" else meta["objective"]
    if objective != "ar" and not meta.get("time_conditioning", True):
        model = _ZeroSigma(model)
    noise = None if objective == "ar" else get_noise(meta["noise"])
    for start in tqdm(range(0, len(target), batch_size), desc=desc, unit="batch"):
        x0 = target[start:start + batch_size].to(device)
        pre = prefix[start:start + batch_size].to(device) if prefix.shape[1] else None
        if objective == "ar":
            bos = int(meta.get("bos_id", meta["eos_id"]))
            nats += float(ar_loss(model, x0, bos)) * x0.numel()
            continue
        times = stratified_times(len(x0), time_samples, generator)
        for t in times:
            uniform = torch.rand(x0.shape, generator=generator).to(device)
            loss = diffusion_loss(model, objective, x0, pre, t.float().to(device), uniform, noise, meta["mask_id"])
            nats += float(loss) * x0.numel() / time_samples
    tokens = target.numel()
    return {"nats": nats, "tokens": tokens, "blocks": len(target), "nelbo": nats / tokens,
            "ppl": math.exp(nats / tokens), "time_samples": None if objective == "ar" else time_samples,
            "objective": meta["objective"], "definition": DEFINITION_STAGE}


def run_validation(run_dir, val_shards, time_samples: int, batch_size: int, max_batches: int | None,
                   seed: int = 0, device=torch.device("cpu")) -> dict:
    """val.json of a run: every stage's NELBO and the total per stage-3 token."""
    from train.checkpoint import load_model

    max_blocks = None if max_batches is None else max_batches * batch_size
    stages, total_nats, blocks, l_final = {}, 0.0, None, None
    for model_dir in run_model_dirs(run_dir):
        meta = read_model_config(model_dir)
        name = stage_name(model_dir, meta)
        prefix, target = read_stage_blocks(val_shards, int(name[len("stage"):]), meta["prefix_len"],
                                           meta["target_len"], max_blocks)
        model, meta = load_model(str(model_dir), device=device)
        stages[name] = stage_nelbo(model, meta, prefix, target, time_samples, batch_size, seed, device,
                                   desc=f"val {name}")
        total_nats += stages[name]["nats"]
        blocks, l_final = stages[name]["blocks"], meta["target_len"]
    per_token = total_nats / (blocks * l_final)
    return {"run_dir": str(run_dir), "stages": stages,
            "total": {"nelbo": per_token, "ppl": math.exp(per_token), "tokens": blocks * l_final,
                      "blocks": blocks, "definition": DEFINITION_TOTAL}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m eval.likelihood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--val-shards", nargs="+", required=True, help="validation stage shards of the run's method")
    parser.add_argument("--time-samples", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batches", type=int, default=None, help="score only the first batches (None = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True, help="runs/{run}/eval/val.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_validation(args.run_dir, args.val_shards, args.time_samples, args.batch_size, args.max_batches,
                            args.seed, resolve_device(args.device))
    write_json(result, args.out)
    print(json.dumps({k: v["nelbo"] for k, v in result["stages"].items()} | {"total": result["total"]["nelbo"]}))


if __name__ == "__main__":
    main()
