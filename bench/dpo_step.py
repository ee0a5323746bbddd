"""Diffusion-DPO (train/dpo.py) on a trained model and real preference pairs: what a DPO step costs against an SFT
step on the same canvases, and how noisy the preference score h is under the draw schemes train/dpo.py could use.

Step cost. One batch of `--batch` pairs from the shard, every configuration on it, each in a subprocess of its
own (peak RSS = the child's ru_maxrss; "step memory" = that peak minus the child's VmHWM just before the first
step, i.e. what the steps added on top of Python, torch, the model and the data). The baseline is the SFT step
on the same 2B canvases (chosen and rejected rows, answers only masked: train/objectives.diffusion_loss, mdlm,
antithetic t). A DPO step is the trainer's (DPOObjective.pair_losses in Trainer.train_step): pair_draws (n times,
one mask each), pair_scores of the policy (one network call of 2B x n rows), the reference's scores either read from a
cache (dpo.cache_reference) or computed under no_grad on the same draws, the sigmoid loss, backward, clipping,
AdamW. Gradient checkpointing on and off (DiffusionTransformer.gradient_checkpointing). Every step draws anew
(the trainer's epoch index = the step's); the cached scores are computed before the timed steps, one pair at a
time, in every child alike (the SFT baseline's too), so that the setups match. The SFT baseline runs again
between every two configurations, and each time ratio is against the mean of the two baseline runs beside it:
on a shared machine the load drifts over the minutes a sweep takes.

Score variance. Policy = the model (or `--policy DIR`), reference = the model with each weight tensor perturbed
by `--perturb` x its std of Gaussian noise (or, with --policy, the model itself). For `--var-pairs` pairs and
`--draw-sets` independent draw sets per pair, at n = `--var-n` network calls per answer:
  shared       policy and reference on the same draws, chosen and rejected sharing them (train/dpo.py);
  ref. indep.  the reference on a draw set of its own (chosen and rejected still share within each model);
  all indep.   each of the four scores on a draw set of its own;
  VRPO         n stratified times, one mask each (train.dpo.pair_draws);
  few times    one time repeated n times, n independent masks.
Independent draw sets cost nothing extra: draw set r of the policy is paired with set r+1 (r+2, r+3) of the
reference (mod R), so every score is used once and the R values of h stay independent.

    python bench/dpo_step.py --model runs/sft/sft/model \
        --pairs $(python -m common.layout preference validation --configfile configs/sft.yaml)/shard_00000.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 2.5  # the target: a DPO step with cached reference scores costs at most 2.5x an SFT step
WARMUP = 2


def configurations(ns_cached, ns_uncached) -> list[dict]:
    out = [{"kind": "sft", "n": 1, "cache": None, "ckpt": False}, {"kind": "sft", "n": 1, "cache": None, "ckpt": True}]
    for cache, ns in ((True, ns_cached), (False, ns_uncached)):
        for n in ns:
            for ckpt in (False, True):
                out.append({"kind": "dpo", "n": n, "cache": cache, "ckpt": ckpt})
    return out


def label(c: dict) -> str:
    if c["kind"] == "sft":
        return "SFT step (baseline)" if not c["ckpt"] else "SFT step"
    return "DPO, cached reference" if c["cache"] else "DPO, reference forward"


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_batch(pairs_path: str, batch: int, offset: int = 0):
    """(chosen, chosen answer mask, rejected, rejected answer mask) of pairs offset .. offset + batch of a shard,
    the columns train/dpo.py reads (preprocess/preference.py writes them)."""
    import pyarrow.parquet as pq
    import torch

    from train.dpo import PAIR_COLUMNS

    table = pq.read_table(pairs_path, columns=list(PAIR_COLUMNS))
    if table.num_rows < offset + batch:
        raise SystemExit(f"{pairs_path}: {table.num_rows} pairs, {offset + batch} needed")
    pairs = table.slice(offset, batch).to_pydict()
    get = lambda c: torch.tensor(pairs[c])  # noqa: E731
    return get("chosen_ids").long(), get("chosen_mask") > 0, get("rejected_ids").long(), get("rejected_mask") > 0


def one(
    cfg: dict, model_dir: str, pairs_path: str, batch: int, steps: int, threads: int, seed: int, beta: float
) -> dict:
    """Time `steps` steps (after WARMUP) of one configuration in this process."""
    import torch

    from train.checkpoint import load_model
    from train.dpo import disable_dropout, pair_draws, pair_scores, preference_loss
    from train.noise import get_noise, sample_times
    from train.objectives import diffusion_loss

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, meta = load_model(model_dir)
    disable_dropout(model)
    model.gradient_checkpointing = cfg["ckpt"]
    model.train()
    noise, mask_id = get_noise(meta["noise"]), meta["mask_id"]
    chosen, chosen_mask, rejected, rejected_mask = load_batch(pairs_path, batch)
    length, n = chosen.shape[1], cfg["n"]
    rows = torch.arange(batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    total = WARMUP + steps

    # every configuration, the SFT baseline included, has the same setup, so that "step memory" compares alike:
    # the reference loaded and every step's reference scores computed one pair at a time (a small peak); then the
    # reference is dropped unless the configuration runs it in its steps
    reference, _ = load_model(model_dir)
    reference.fused = model.fused
    disable_dropout(reference)
    reference.requires_grad_(False).eval()
    cache = torch.zeros(total, 2, batch)
    with torch.no_grad():
        for step in range(total):
            for p in range(batch):
                sl = slice(p, p + 1)
                t, u = pair_draws(seed, rows[sl], torch.tensor([step]), n, length)
                w, l_ = pair_scores(
                    reference, chosen[sl], chosen_mask[sl], rejected[sl], rejected_mask[sl], t, u, noise, mask_id
                )
                cache[step, 0, p], cache[step, 1, p] = w[0], l_[0]
    if cfg["cache"] is False:
        cache = None
    else:
        reference = None

    x0, answer = torch.cat([chosen, rejected]), torch.cat([chosen_mask, rejected_mask])

    def sft_step(step):
        t = sample_times(2 * batch, gen, antithetic=True)
        u = torch.rand(2 * batch, length, generator=gen)
        return diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id, maskable=answer)

    def dpo_step(step):
        epochs = torch.full((batch,), step)
        t, u = pair_draws(seed, rows, epochs, n, length)
        policy_w, policy_l = pair_scores(model, chosen, chosen_mask, rejected, rejected_mask, t, u, noise, mask_id)
        if cache is not None:
            ref_w, ref_l = cache[step, 0], cache[step, 1]
        else:
            with torch.no_grad():
                ref_w, ref_l = pair_scores(
                    reference, chosen, chosen_mask, rejected, rejected_mask, t, u, noise, mask_id
                )
        h = (policy_w - ref_w) - (policy_l - ref_l)
        return preference_loss(h, beta, "sigmoid").mean()

    loss_of = sft_step if cfg["kind"] == "sft" else dpo_step
    setup_peak = vm_hwm_mb()
    wall, cpu = [], []
    for step in range(total):
        w0, c0 = time.perf_counter(), time.process_time()
        loss = loss_of(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **cfg,
        "wall_ms": 1e3 * statistics.median(wall),
        "cpu_ms": 1e3 * statistics.median(cpu),
        "peak_rss_mb": peak,
        "step_mb": peak - setup_peak,
        "answer_tokens": float(answer.sum(1).float().mean()),
        "loss": float(loss),
    }


# ----------------------------------------------------------------------------------------------------------
# Variance of the preference score


def few_time_draws(seed: int, pairs, sets: int, n: int, length: int):
    """One time per pair (uniform on [eps, 1]) repeated n times, n independent masks: t [m, n], u [m, n, L]."""
    import torch

    from train.dpo import SAMPLING_EPS

    times, uniforms = [], []
    for pair in pairs.tolist():
        gen = torch.Generator().manual_seed((((seed * 1_000_003 + pair) * 1_000_033 + sets) * 4 + 3) % (2**63))
        v = torch.rand(1, generator=gen)
        times.append((SAMPLING_EPS + (1 - SAMPLING_EPS) * v).expand(n))
        uniforms.append(torch.rand(n, length, generator=gen))
    return torch.stack(times), torch.stack(uniforms)


def score_variance(
    model_dir: str,
    policy_dir: str | None,
    pairs_path: str,
    n_pairs: int,
    sets: int,
    n: int,
    perturb: float,
    threads: int,
    seed: int,
    chunk: int,
) -> dict:
    import torch

    from train.checkpoint import load_model
    from train.dpo import disable_dropout, pair_draws, pair_scores
    from train.noise import get_noise

    torch.set_num_threads(threads)
    reference, meta = load_model(model_dir)
    if policy_dir:
        policy, _ = load_model(policy_dir)
    else:
        policy, _ = load_model(model_dir)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in reference.parameters():
                scale = float(p.std()) if p.numel() > 1 else 0.0
                p.add_(perturb * scale * torch.randn(p.shape, generator=gen))
    for m in (policy, reference):
        disable_dropout(m)
        m.requires_grad_(False).eval()
    reference.fused = policy.fused
    noise, mask_id = get_noise(meta["noise"]), meta["mask_id"]
    chosen, chosen_mask, rejected, rejected_mask = load_batch(pairs_path, n_pairs)
    length, rows = chosen.shape[1], torch.arange(n_pairs)

    def scores(model, t, u):  # [2, m]: B(y_w), B(y_l), chunks of `chunk` pairs per network call
        out = []
        for s in range(0, n_pairs, chunk):
            sl = slice(s, s + chunk)
            out.append(
                torch.stack(
                    pair_scores(
                        model,
                        chosen[sl],
                        chosen_mask[sl],
                        rejected[sl],
                        rejected_mask[sl],
                        t[sl],
                        u[sl],
                        noise,
                        mask_id,
                    )
                )
            )
        return torch.cat(out, 1).double()

    began = time.perf_counter()
    got = {k: [] for k in ("P_vrpo", "Q_vrpo", "P_few", "Q_few")}  # each [sets] of [2, m]
    with torch.no_grad():
        for r in range(sets):
            t, u = pair_draws(seed, rows, torch.full((n_pairs,), r), n, length)
            got["P_vrpo"].append(scores(policy, t, u))
            got["Q_vrpo"].append(scores(reference, t, u))
            t, u = few_time_draws(seed, rows, r, n, length)
            got["P_few"].append(scores(policy, t, u))
            got["Q_few"].append(scores(reference, t, u))
    seconds = time.perf_counter() - began
    S = {k: torch.stack(v) for k, v in got.items()}  # [R, 2, m]
    shift = lambda x, k: torch.roll(x, -k, dims=0)  # noqa: E731  set r -> set r + k (mod R)
    P, Q = S["P_vrpo"], S["Q_vrpo"]
    h = {
        "shared": (P[:, 0] - Q[:, 0]) - (P[:, 1] - Q[:, 1]),
        "ref_indep": (P[:, 0] - shift(Q, 1)[:, 0]) - (P[:, 1] - shift(Q, 1)[:, 1]),
        "all_indep": (P[:, 0] - shift(Q, 1)[:, 0]) - (shift(P, 2)[:, 1] - shift(Q, 3)[:, 1]),
        "few_shared": (S["P_few"][:, 0] - S["Q_few"][:, 0]) - (S["P_few"][:, 1] - S["Q_few"][:, 1]),
    }
    var = lambda x: float(x.var(0, unbiased=True).mean())  # noqa: E731  mean over pairs of Var over draw sets
    return {
        "seconds": seconds,
        "pairs": n_pairs,
        "sets": sets,
        "n": n,
        "answer_tokens": float(chosen_mask.sum(1).float().mean()),
        "var_h": {k: var(v) for k, v in h.items()},
        "mean_h": {k: float(v.mean()) for k, v in h.items()},
        "spread_h": float(h["shared"].mean(0).std()),  # std over pairs of each pair's mean h: the signal
        "var_B": {"vrpo": var(P[:, 0]), "few": var(S["P_few"][:, 0])},
        "var_B_l": {"vrpo": var(P[:, 1]), "few": var(S["P_few"][:, 1])},
        "mean_B": float(P[:, 0].mean()),
        "mean_B_l": float(P[:, 1].mean()),
    }


# ----------------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="SFT model folder (the reference; the policy's start)")
    parser.add_argument("--pairs", required=True, help="a preference shard (preprocess/preference.py)")
    parser.add_argument(
        "--policy",
        help="a different policy model folder for the variance (default: --model, against a perturbed copy of it)",
    )
    parser.add_argument("--batch", type=int, default=16, help="pairs per step (configs/sft.yaml's DPO run: 16)")
    parser.add_argument("--steps", type=int, default=5, help=f"timed steps per configuration (after {WARMUP})")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every configuration this many times; the table keeps medians"
    )
    parser.add_argument("--cached-n", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--uncached-n", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--var-pairs", type=int, default=32)
    parser.add_argument("--draw-sets", type=int, default=16)
    parser.add_argument("--var-n", type=int, default=4, help="network calls per answer in the variance part")
    parser.add_argument("--perturb", type=float, default=0.01)
    parser.add_argument("--chunk", type=int, default=16, help="pairs per network call in the variance part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-variance", action="store_true")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(
            json.dumps(
                one(
                    json.loads(args.one),
                    args.model,
                    args.pairs,
                    args.batch,
                    args.steps,
                    args.threads,
                    args.seed,
                    args.beta,
                )
            )
        )
        return
    began = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    report = {"args": {k: v for k, v in vars(args).items() if k != "one"}}
    if not args.skip_steps:
        configs = configurations(args.cached_n, args.uncached_n)
        base_cfg, others = configs[0], configs[1:]
        # the baseline runs between every two configurations (B C1 B C2 ... Ck B), and each configuration's ratio is
        # against the mean of its two neighbours: the load of a shared machine drifts over minutes
        order = [base_cfg] + [c for cfg in others for c in (cfg, base_cfg)]
        runs, ratios = [], {json.dumps(c): [] for c in configs}
        for _ in range(args.rounds):
            mine = []
            for cfg in order:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        json.dumps(cfg),
                        "--model",
                        args.model,
                        "--pairs",
                        args.pairs,
                        "--batch",
                        str(args.batch),
                        "--steps",
                        str(args.steps),
                        "--threads",
                        str(args.threads),
                        "--seed",
                        str(args.seed),
                        "--beta",
                        str(args.beta),
                    ],
                    capture_output=True,
                    text=True,
                )
                if out.returncode:
                    raise SystemExit(f"{cfg}: child failed\n{out.stderr}")
                mine.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(
                    f"  {label(cfg)}, n={cfg['n']}, checkpointing {'on' if cfg['ckpt'] else 'off'}: "
                    f"{mine[-1]['wall_ms']:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
            for i in range(1, len(order), 2):
                near = (mine[i - 1], mine[i + 1])
                ratios[json.dumps(order[i])].append(
                    {k: mine[i][k] / statistics.mean(b[k] for b in near) for k in ("wall_ms", "cpu_ms")}
                )
            runs += mine
        report["step_runs"] = runs
        results = []
        for cfg in configs:
            same = [r for r in runs if all(r[k] == cfg[k] for k in cfg)]
            row = {
                **same[0],
                **{k: statistics.median(r[k] for r in same) for k in ("wall_ms", "cpu_ms", "peak_rss_mb", "step_mb")},
            }
            for k in ("wall_ms", "cpu_ms"):
                got = ratios[json.dumps(cfg)]
                row[f"{k}_ratio"] = statistics.median(x[k] for x in got) if got else 1.0
            results.append(row)
        report["steps"] = results
        base = results[0]
        print(
            f"\nStep cost: {args.batch} pairs = {2 * args.batch} canvases x {len_of(args.pairs)} tokens "
            f"(answer tokens per canvas: {base['answer_tokens']:.1f} on average), {args.threads} thread(s), "
            f"median of {args.steps} steps after {WARMUP}, {args.rounds} round(s). Times: against the mean of the "
            f"SFT baseline runs just before and after (baseline row: median of its {len(order) // 2 + 1} runs per "
            f"round); memory: against the baseline's median\n"
        )
        print(
            "| step | n | grad ckpt | rows / forward | ms (wall) | x SFT | ms (CPU) | x SFT | peak RSS MB | x SFT "
            "| step memory MB | x SFT |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            rows = 2 * args.batch * r["n"]
            print(
                f"| {label(r)} | {r['n'] if r['kind'] == 'dpo' else '-'} | {'on' if r['ckpt'] else 'off'} | "
                f"{rows}{' + ' + str(rows) + ' no-grad' if r['cache'] is False else ''} | "
                f"{r['wall_ms']:,.0f} | {r['wall_ms_ratio']:.2f}x | {r['cpu_ms']:,.0f} | "
                f"{r['cpu_ms_ratio']:.2f}x | {r['peak_rss_mb']:,.0f} | "
                f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | {r['step_mb']:,.0f} | "
                f"{r['step_mb'] / base['step_mb']:.2f}x |"
            )
        print()
        for r in results:
            if r["kind"] == "dpo" and r["cache"]:
                ratio = r["wall_ms_ratio"]
                print(
                    f"target (cached reference, n={r['n']}, checkpointing {'on' if r['ckpt'] else 'off'}): "
                    f"{ratio:.2f}x an SFT step (wall), {r['cpu_ms_ratio']:.2f}x (CPU): "
                    f"{'met' if ratio <= TARGET else 'NOT met'} (<= {TARGET}x)"
                )
    if not args.skip_variance:
        v = score_variance(
            args.model,
            args.policy,
            args.pairs,
            args.var_pairs,
            args.draw_sets,
            args.var_n,
            args.perturb,
            args.threads,
            args.seed,
            args.chunk,
        )
        report["variance"] = v
        who = (
            f"policy {args.policy}, reference {args.model}"
            if args.policy
            else f"policy = the model, reference = the model + N(0, ({args.perturb:g} std)^2) per weight tensor"
        )
        print(
            f"\nPreference score h = (B_w - B_w_ref) - (B_l - B_l_ref): {who}; {v['pairs']} pairs x "
            f"{v['sets']} draw sets, n = {v['n']} network calls per answer and model ({v['seconds']:.0f} s). "
            f"Var = mean over pairs of the variance over draw sets. Signal: std over pairs of the mean h "
            f"{v['spread_h']:.4f}; mean B_w {v['mean_B']:.2f}, B_l {v['mean_B_l']:.2f} nats "
            f"({v['answer_tokens']:.1f} answer tokens)\n"
        )
        vh, vb = v["var_h"], v["var_B"]
        print("| draws | allocation | Var(h) | x shared VRPO | mean h |")
        print("|---|---|---|---|---|")
        rows = [
            ("shared (policy = reference draws, chosen = rejected draws)", "VRPO: n times x 1 mask", "shared"),
            ("reference independent", "VRPO: n times x 1 mask", "ref_indep"),
            ("all four scores independent", "VRPO: n times x 1 mask", "all_indep"),
            ("shared", "1 time x n masks", "few_shared"),
        ]
        for name, alloc, key in rows:
            print(f"| {name} | {alloc} | {vh[key]:.4g} | {vh[key] / vh['shared']:.2f}x | {v['mean_h'][key]:.4f} |")
        print("\n| estimate | allocation | Var | x VRPO |")
        print("|---|---|---|---|")
        print(f"| B_w (policy's ELBO of the chosen answer, nats) | VRPO: n times x 1 mask | {vb['vrpo']:.4g} | 1.00x |")
        print(f"| B_w | 1 time x n masks | {vb['few']:.4g} | {vb['few'] / vb['vrpo']:.2f}x |")
        vl = v["var_B_l"]
        print(
            f"| B_l (policy's ELBO of the rejected answer, nats) | VRPO: n times x 1 mask | {vl['vrpo']:.4g} | 1.00x |"
        )
        print(f"| B_l | 1 time x n masks | {vl['few']:.4g} | {vl['few'] / vl['vrpo']:.2f}x |")
    print(
        f"\ntotal {time.perf_counter() - began:.0f} s, load average at the end: {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def len_of(pairs_path: str) -> int:
    return len(load_batch(pairs_path, 1)[0][0])


if __name__ == "__main__":
    main()
