"""Benchmark: the spread of the validation NELBO estimate of one block, the estimator of eval/likelihood.py against
the one it replaced, on the same model, the same blocks and the same number of network calls.

    after   eval.likelihood.block_nats: K stratified mask shares mu ~ U(m0, 1], one chosen position masked plus
            every other with probability mu, weight (1 - m0) n / |S| on the loss terms divided by lambda(t)
    before  re-implemented here only for this comparison (it is gone from eval/likelihood.py): K stratified times
            t ~ U(0, 1], every position masked with probability m(t), weight lambda(t) on the same terms (the
            discrete-T bound: the step ceil(T t), weight T w_i); its variance is infinite (module docstring)

Both estimate the same bound with the same R (t = 0) term and K network calls per block and time sample. For each
of ``--blocks`` validation blocks the bench draws ``--seeds`` independent estimates (each of K = ``--time-samples``
draws) with each estimator and reports, per block, the mean and the variance over seeds and the ratio
variance(before) / variance(after); the whole-set row is the variance of the summed nats of all blocks (blocks draw
independently: the sum of the per-block variances). The two means must agree within their standard errors (both
are unbiased); the table gives z = (mean before - mean after) / its standard error.

Models: a model folder (``--model-dir``, blocks from ``--val-shards``), or tiny DiTs trained here for
``--train-steps`` AdamW steps (0: random weights), objective mdlm and sedd, on the pydoc corpus cut into
``--block-len``-token blocks by a 2,048-token BPE trained here; the last ``--blocks`` blocks are held out.

    python bench/val_estimator.py --train-steps 300 --blocks 8 --seeds 200 --time-samples 4 \
        --out /tmp/val_estimator.json
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.device import resolve_device  # noqa: E402
from common.io import write_json  # noqa: E402
from eval.likelihood import (  # noqa: E402
    block_nats,
    continuous_nats,
    discrete_nats,
    final_denoising_nats,
    mask_share,
    model_data,
    read_stage_blocks,
    step_of_time,
    stratified_levels,
    valid_positions,
)
from eval.trained import load_trained  # noqa: E402
from train.checkpoint import save_model  # noqa: E402
from train.model import DiffusionTransformer, ModelConfig  # noqa: E402
from train.noise import get_noise, sample_times  # noqa: E402
from train.objectives import diffusion_loss  # noqa: E402

NOISE = {"type": "loglinear", "eps": 1e-3}


@torch.no_grad()
def block_nats_before(
    trained, x0, prefix, valid, time_samples: int, generator: torch.Generator, discrete_steps: int | None = None
):
    """The replaced estimator, per block: (1/K) sum_j lambda(t_j) G(S_j, t_j) + R with t_j = (j + 1 - u_j)/K and
    S_j = {i valid: u_i < m(t_j)}; discrete: (1/K) sum_j T w_i G_T(S, i) + R, i = ceil(T t_j), S = {u_i < m(t_i)}
    on the same uniforms, w_i = expm1(sigma_bar(t_i) - sigma_bar(t_{i-1})) / expm1(sigma_bar(t_i)).
    lambda G = the training terms L (continuous_nats returns G = L / lambda)."""
    noise, device, batch = trained.noise, x0.device, len(x0)
    start = float(mask_share(noise, 0.0))
    continuous = torch.zeros(batch, dtype=torch.float64, device=device)
    discrete = None if discrete_steps is None else torch.zeros_like(continuous)
    if discrete_steps is not None:
        sigma = noise.total(torch.arange(discrete_steps + 1, dtype=torch.float64) / discrete_steps)
        weights = torch.expm1(sigma[1:] - sigma[:-1]) / torch.expm1(sigma[1:])
    for t in stratified_levels(batch, time_samples, generator):
        uniform = torch.rand(x0.shape, generator=generator, dtype=torch.float64).to(device)
        masked = valid & (uniform < mask_share(noise, t).to(device)[:, None])
        t32 = t.float()
        rate = (noise.rate(t32) / torch.expm1(noise.total(t32))).double().to(device)  # lambda(t)
        continuous += rate * continuous_nats(trained, x0, prefix, t32.to(device), masked) / time_samples
        if discrete is not None:
            step = step_of_time(t, discrete_steps)
            masked_step = valid & (uniform < mask_share(noise, step.double() / discrete_steps).to(device)[:, None])
            g = discrete_nats(trained, x0, prefix, step, masked_step, discrete_steps)
            discrete += discrete_steps * weights[step - 1].to(device) * g / time_samples
    if start > 0:
        final = final_denoising_nats(trained, x0, prefix, start, generator, valid)
        continuous += final
        if discrete is not None:
            discrete += final
    return continuous, discrete


def pydoc_blocks(block_len: int, folder: Path):
    """The pydoc corpus (the Python reference manual shipped with CPython) as blocks of ``block_len`` tokens of a
    2,048-token BPE trained here; returns (blocks Long[N, L], tokenizer folder)."""
    from pydoc_data.topics import topics

    from preprocess.tokenizer import train_bpe

    texts = [topics[k] for k in sorted(topics)]
    tokenizer = train_bpe([texts], vocab_size=2048, min_frequency=2)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    stream = [i for ids in tokenizer(texts)["input_ids"] for i in ids + [tokenizer.eos_token_id]]
    n = len(stream) // block_len
    return torch.tensor(stream[: n * block_len]).view(n, block_len), folder / "tokenizer", tokenizer


def train_here(args, folder: Path, device) -> tuple[list[Path], torch.Tensor]:
    """Tiny mdlm and sedd DiTs trained on all but the last ``--blocks`` pydoc blocks (saved as model folders), and
    the held-out blocks."""
    from tqdm import tqdm

    blocks, tokenizer_dir, tokenizer = pydoc_blocks(args.block_len, folder)
    train, held_out = blocks[: -args.blocks], blocks[-args.blocks :]
    vocab, mask_id, eos = len(tokenizer), tokenizer.mask_token_id, tokenizer.eos_token_id
    print(f"{len(blocks)} pydoc blocks of {args.block_len} tokens, vocab {vocab}; {args.blocks} held out")
    noise = get_noise(NOISE)
    dirs = []
    for objective in ("mdlm", "sedd"):
        torch.manual_seed(args.seed)
        model = DiffusionTransformer(ModelConfig.from_size("tiny", vocab)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(args.seed)
        bar = tqdm(range(args.train_steps), desc=f"train {objective}", unit="step")
        for _ in bar:
            x0 = train[torch.randint(0, len(train), (args.batch,), generator=g)].to(device)
            t = sample_times(args.batch, g).to(device)
            u = torch.rand(x0.shape, generator=g).to(device)
            loss = diffusion_loss(model, objective, x0, None, t, u, noise, mask_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        meta = {
            "noise": NOISE,
            "stage": 3,
            "prefix_len": 0,
            "target_len": args.block_len,
            "vocab_size": vocab,
            "mask_id": mask_id,
            "eos_id": eos,
            "bos_id": eos,
            "tokenizer": str(tokenizer_dir),
            "model": model.config.to_dict(),
            "objective": objective,
        }
        save_model(folder / objective, model.eval().state_dict(), meta)
        dirs.append(folder / objective)
    return dirs, held_out


def spread(estimator, trained, x0, prefix, valid, args, discrete_steps):
    """[seeds, B] estimates of each block (continuous and, with discrete_steps, discrete), seconds per draw set."""
    runs_c, runs_d, seconds = [], [], 0.0
    for seed in range(args.seeds):
        start = time.perf_counter()
        c, d = estimator(
            trained, x0, prefix, valid, args.time_samples, torch.Generator().manual_seed(seed), discrete_steps
        )
        seconds += time.perf_counter() - start
        runs_c.append(c.cpu())
        if d is not None:
            runs_d.append(d.cpu())
    return torch.stack(runs_c), (torch.stack(runs_d) if runs_d else None), seconds / args.seeds


def compare(before: torch.Tensor, after: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Per block and for the whole set (sum over blocks): means (nats), variances over seeds, ratio, z."""
    rows = []
    for name, b, a in [(str(i), before[:, i], after[:, i]) for i in range(before.shape[1])] + [
        ("all", before.sum(1), after.sum(1))
    ]:
        n = len(b)
        var_b, var_a = float(b.var()), float(a.var())
        z = (float(b.mean()) - float(a.mean())) / math.sqrt((var_b + var_a) / n)
        rows.append(
            {
                "block": name,
                "tokens": int(tokens.sum()) if name == "all" else int(tokens[int(name)]),
                "mean_before": float(b.mean()),
                "mean_after": float(a.mean()),
                "var_before": var_b,
                "var_after": var_a,
                "ratio": var_b / var_a if var_a > 0 else math.inf,
                "max_before": float(b.max()),
                "max_after": float(a.max()),
                "z": z,
            }
        )
    return {"rows": rows}


def print_table(title: str, result: dict):
    print(f"\n{title}\n")
    print(
        "| block | tokens | mean before | mean after | var before | var after | var ratio | max before | "
        "max after | z |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in result["rows"]:
        print(
            f"| {r['block']} | {r['tokens']} | {r['mean_before']:.2f} | {r['mean_after']:.2f} | "
            f"{r['var_before']:.3g} | {r['var_after']:.3g} | {r['ratio']:.1f}x | {r['max_before']:.1f} | "
            f"{r['max_after']:.1f} | {r['z']:+.2f} |"
        )
    print(
        f"\nseconds per draw set: before {result['seconds_before']:.3f}, after {result['seconds_after']:.3f} "
        f"({result['seconds_after'] / result['seconds_before']:.2f}x)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir",
        action="append",
        default=None,
        help="a diffusion model folder (repeatable); without it tiny mdlm and sedd DiTs are trained",
    )
    parser.add_argument("--val-shards", nargs="*", default=[], help="validation shards, with --model-dir")
    parser.add_argument("--block-len", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=8, help="validation blocks")
    parser.add_argument("--seeds", type=int, default=200, help="independent estimates per block and estimator")
    parser.add_argument("--time-samples", type=int, default=4, help="K draws per estimate")
    parser.add_argument("--discrete-steps", type=int, default=1000, help="T of the discrete bound (mdlm); 0: none")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps without --model-dir (0: random)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    summary = {"args": vars(args), "device": str(device), "torch": torch.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            dirs, held_out = [Path(d) for d in args.model_dir], None
        else:
            dirs, held_out = train_here(args, Path(tmp), device)
        for model_dir in dirs:
            trained = load_trained(model_dir, device)
            meta = trained.meta
            if trained.is_ar:
                raise SystemExit(f"{model_dir}: an AR model has no diffusion estimator to compare")
            if held_out is None:
                data, _ = model_data(meta, model_dir / "config.json")
                prefix, target = read_stage_blocks(
                    args.val_shards, meta["stage"], meta["prefix_len"], meta["target_len"], args.blocks, data
                )
            else:
                prefix, target = torch.zeros(len(held_out), 0, dtype=torch.long), held_out
            x0 = target.to(device)
            pre = prefix.to(device) if prefix.shape[1] else None
            valid = valid_positions(x0, meta.get("pad_id"))
            steps = args.discrete_steps if args.discrete_steps and meta["objective"] == "mdlm" else None
            before_c, before_d, sec_b = spread(block_nats_before, trained, x0, pre, valid, args, steps)
            after_c, after_d, sec_a = spread(block_nats, trained, x0, pre, valid, args, steps)
            tokens = valid.sum(1).cpu()
            name = f"{model_dir.name} ({meta['objective']}, {meta['noise']['type']})"
            results = {"continuous": compare(before_c, after_c, tokens)}
            if steps:
                results[f"discrete T={steps}"] = compare(before_d, after_d, tokens)
            for kind, result in results.items():
                result.update(seconds_before=sec_b, seconds_after=sec_a)
                print_table(f"{name}, {kind}: {args.seeds} seeds x K = {args.time_samples}", result)
            summary["models"][name] = results
    if args.out:
        write_json(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
