"""Objective atat (train/atat.py) against the plain MDLM step on the same batch: step time and peak memory, then
the spread of the NELBO estimates under importance-aware masking against uniform masking.

1. Step cost. Each variant runs the trainer's step on a tiny DiT (train/model.py) in a subprocess of its own
   (so its peak RSS, ru_maxrss, is its alone): antithetic t, loglinear noise, the loss, backward, clipping,
   AdamW. mdlm is train/objectives.diffusion_loss; the atat variants are atat_loss at strength --strength with
   the importance estimator (train/importance.py) trained beside the model in a second parameter group.
   The subprocesses alternate, --rounds times; the table keeps each variant's median tokens/s, its peak RSS and
   the peak growth over the RSS just before the first step (what the step itself adds).
2. Estimator spread. The tiny DiT is first trained --train-steps plain MDLM steps on the toy data (so its
   surprisal varies from token to token), then scores one fixed batch under --draws draws of (t, masks) each,
   the same draws for every row of the table (common random numbers). Per draw the number is a per-token
   estimate; the table gives the mean and variance over draws of:
     uniform masking, plain NELBO          what MDLM trains on: unbiased for the plain NELBO
     frequency masking, its own NELBO      what variant frequency trains on: unbiased for ITS bound (another number)
     frequency masking, plain NELBO (IS)   the plain NELBO from frequency-masked draws, reweighted by
                                           q_1(x_t|x0) / q_w(x_t|x0) (train.atat.log_mask_ratio): unbiased for
                                           the plain NELBO, the same number as the first row in expectation

Toy data: tokens from a Zipf(1.1) unigram distribution over the vocabulary (the mask excluded), with every
second token a fixed function of the one before, so that frequency importance and context both matter.

    python bench/atat_step.py                      # tiny DiT (128 x 4 x 4), vocab 2048, batch 32 x 128, CPU
    python bench/atat_step.py --batch 16 --length 256 --steps 10 --draws 128
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("mdlm", "uniform", "learned", "frequency", "full")


def toy_data(vocab: int, rows: int, length: int, seed: int):
    """Long [rows, length] over ids 0..vocab-2 (vocab-1 is the mask): Zipf draws at even positions, each odd
    position (7 x + 3) mod (vocab - 1) of its left neighbour."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab, dtype=torch.float64)
    zipf = ranks**-1.1
    x = torch.multinomial(zipf / zipf.sum(), rows * length, replacement=True, generator=g).view(rows, length)
    x[:, 1::2] = (7 * x[:, 0::2] + 3) % (vocab - 1)
    return x


def build(vocab: int, seed: int = 0):
    import torch

    from train.model import DiffusionTransformer, ModelConfig

    torch.manual_seed(seed)
    return DiffusionTransformer(ModelConfig.from_size("tiny", vocab))


def one(variant: str, vocab: int, batch: int, length: int, steps: int, threads: int, strength: float) -> dict:
    """Time `steps` training steps (after 2 warm-up steps) of one variant in this process."""
    import torch

    from train.atat import atat_loss
    from train.importance import ImportanceEstimator, frequency_importance, unigram_counts
    from train.noise import get_noise, sample_times
    from train.objectives import diffusion_loss

    torch.set_num_threads(threads)
    model = build(vocab)
    estimator = ImportanceEstimator(vocab) if variant != "mdlm" else None
    groups = [{"params": model.parameters()}] + ([{"params": estimator.parameters()}] if estimator else [])
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    gen = torch.Generator().manual_seed(0)
    x0 = toy_data(vocab, batch, length, seed=1)
    frequency = frequency_importance(unigram_counts([x0], vocab))
    mask_id = vocab - 1

    def step():
        t = sample_times(batch, gen, antithetic=True)
        u = torch.rand(batch, length, generator=gen)
        if variant == "mdlm":
            loss = diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id)
        else:
            loss, est_loss, _ = atat_loss(
                model, estimator, x0, None, t, u, noise, mask_id, variant, strength, frequency
            )
            loss = loss + est_loss  # disjoint parameters: one backward gives both their own gradients
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(2):
        step()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "params": sum(p.numel() for p in model.parameters()),
        "estimator_params": estimator.num_params() if estimator else 0,
        "tokens_per_s": batch * length * steps / seconds,
        "peak_rss_mb": peak,
        "step_rss_mb": peak - before,
    }


def spread(vocab: int, batch: int, length: int, threads: int, strength: float, train_steps: int, draws: int):
    """Mean and variance over `draws` of the three per-token estimates (module docstring) on one batch."""
    import torch

    from train.atat import atat_token_terms, log_mask_ratio, schedule_exponents
    from train.importance import frequency_importance, unigram_counts
    from train.noise import get_noise, sample_times
    from train.objectives import diffusion_loss

    torch.set_num_threads(threads)
    mask_id = vocab - 1
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    model = build(vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    train = toy_data(vocab, 512, length, seed=2)
    for _ in range(train_steps):
        rows = torch.randint(0, len(train), (batch,), generator=gen)
        t, u = sample_times(batch, gen), torch.rand(batch, length, generator=gen)
        loss = diffusion_loss(model, "mdlm", train[rows], None, t, u, noise, mask_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    x0 = toy_data(vocab, batch, length, seed=3)
    exponents = schedule_exponents(frequency_importance(unigram_counts([train], vocab)), strength)
    numbers = {"uniform": [], "frequency": [], "importance_sampled": []}
    log_ratios = []
    draw_gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _ in range(draws):
            t, u = sample_times(batch, draw_gen), torch.rand(batch, length, generator=draw_gen)
            numbers["uniform"].append(float(diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id)))
            terms = atat_token_terms(model, x0, None, t, u, noise, mask_id, exponents)
            numbers["frequency"].append(float(terms.loss.sum()) / x0.numel())
            sigma, dsigma = noise.total(t), noise.rate(t)
            plain_terms = (dsigma / torch.expm1(sigma))[terms.rows] * terms.nll
            per_row = torch.zeros(batch, dtype=torch.float64).index_add(0, terms.rows, plain_terms.double())
            log_ratio = log_mask_ratio(x0, terms.masked, sigma, exponents)
            log_ratios += log_ratio.tolist()
            numbers["importance_sampled"].append(float((log_ratio.exp() * per_row).sum()) / x0.numel())
    out = {k: {"mean": statistics.fmean(v), "var": statistics.pvariance(v)} for k, v in numbers.items()}
    out["log_ratio_sd"] = statistics.pstdev(log_ratios)
    out["exponent_range"] = [float(exponents[:mask_id].min()), float(exponents[:mask_id].max())]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strength", type=float, default=1.0, help="atat importance strength (curriculum stage 1)")
    parser.add_argument("--train-steps", type=int, default=60, help="plain MDLM steps before the spread table")
    parser.add_argument("--draws", type=int, default=64, help="(t, mask) draws per estimate in the spread table")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = [
        str(v)
        for v in (
            "--vocab",
            args.vocab,
            "--batch",
            args.batch,
            "--length",
            args.length,
            "--steps",
            args.steps,
            "--threads",
            args.threads,
            "--strength",
            args.strength,
        )
    ]
    if args.one:
        print(json.dumps(one(args.one, args.vocab, args.batch, args.length, args.steps, args.threads, args.strength)))
        return
    results = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", variant, *shape], capture_output=True, text=True, check=True
            )
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"Training step, batch {args.batch} x {args.length} tokens, vocab {args.vocab}, tiny DiT, {args.threads} "
        f"thread(s), atat strength {args.strength:g}, median of {args.rounds} rounds of {args.steps} steps"
    )
    print(
        "| step | estimator params | tokens/s | peak RSS (MB) | step RSS growth (MB) | time vs mdlm | "
        "RSS growth vs mdlm |"
    )
    print("|---|---|---|---|---|---|---|")
    median = {
        v: {k: statistics.median(r[k] for r in runs) for k in ("tokens_per_s", "peak_rss_mb", "step_rss_mb")}
        for v, runs in results.items()
    }
    base = median["mdlm"]
    for variant, m in median.items():
        name = "mdlm (diffusion_loss)" if variant == "mdlm" else f"atat {variant}"
        print(
            f"| {name} | {results[variant][0]['estimator_params']:,} | {m['tokens_per_s']:,.0f} | "
            f"{m['peak_rss_mb']:,.0f} | {m['step_rss_mb']:,.0f} | "
            f"{base['tokens_per_s'] / m['tokens_per_s']:.2f}x | {m['step_rss_mb'] / base['step_rss_mb']:.2f}x |"
        )

    table = spread(args.vocab, args.batch, args.length, args.threads, args.strength, args.train_steps, args.draws)
    low, high = table["exponent_range"]
    print(
        f"\nNELBO estimates on one batch of {args.batch} x {args.length} after {args.train_steps} plain MDLM steps, "
        f"{args.draws} draws of (t, masks) shared by the rows; frequency schedule at strength {args.strength:g} "
        f"(exponents w_v from {low:.2f} to {high:.2f})"
    )
    print("| masking | estimate of | mean (nats/token) | variance | variance vs uniform |")
    print("|---|---|---|---|---|")
    rows = [
        ("uniform", "uniform", "the plain NELBO"),
        ("frequency", "frequency", "its own NELBO (a different bound)"),
        ("frequency", "importance_sampled", "the plain NELBO (importance-sampled)"),
    ]
    for masking, key, what in rows:
        m, v = table[key]["mean"], table[key]["var"]
        print(f"| {masking} | {what} | {m:.4f} | {v:.3g} | {v / table['uniform']['var']:.3g}x |")
    print(f"sd of the per-row log importance ratio log q_1(x_t|x0) - log q_w(x_t|x0): {table['log_ratio_sd']:.2f}")


if __name__ == "__main__":
    main()
