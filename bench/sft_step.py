"""SFT training step of a BERT-style masked LM (train/backbones.py, the MaskedLMDenoiser the pipeline trains)
against our DiffusionTransformer of about the same parameter count, on the same batch: tokens/s and peak
resident memory, in one run, as ratios.

The step is the trainer's SFT step: antithetic t, loglinear noise, only answer positions masked (half of each
canvas here, the second half, like a prompt followed by its answer), the MDLM NELBO over answer tokens
(train/objectives.diffusion_loss with maskable = answer mask), backward, clipping, AdamW. Each model runs in a
subprocess of its own, so its peak RSS (ru_maxrss) is its alone; the subprocesses alternate, `--rounds` times,
and the table keeps each model's median tokens/s.

    python bench/sft_step.py                      # tiny DiT (128 x 4 x 4) vs a BERT of about its size, CPU
    python bench/sft_step.py --batch 16 --length 256 --steps 10
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

BERT_LAYERS = 6  # hidden 128, 4 heads, MLP 512: 1.49M parameters against the tiny DiT's 1.55M (vocab 2048)


def spec(backbone: str, length: int) -> dict:
    if backbone == "dit":
        return {"kind": "dit"}
    return {
        "kind": "masked_lm",
        "config": {
            "model_type": "bert",
            "hidden_size": 128,
            "num_hidden_layers": BERT_LAYERS,
            "num_attention_heads": 4,
            "intermediate_size": 512,
            "max_position_embeddings": length,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
    }


def one(backbone: str, vocab: int, batch: int, length: int, steps: int, threads: int) -> dict:
    """Time `steps` SFT steps (after 2 warm-up steps) of one backbone in this process."""
    import torch

    from train.backbones import build_backbone
    from train.noise import get_noise, sample_times
    from train.objectives import diffusion_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_backbone(spec(backbone, length), vocab, "tiny", 0.0, causal=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, vocab - 1, (batch, length), generator=gen)
    answer = torch.zeros(batch, length, dtype=torch.bool)
    answer[:, length // 2 :] = True
    mask_id = vocab - 1

    def step():
        t = sample_times(batch, gen, antithetic=True)
        u = torch.rand(batch, length, generator=gen)
        loss = diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id, maskable=answer)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - began
    return {
        "backbone": backbone,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": batch * length * steps / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=["dit", "bert"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.vocab, args.batch, args.length, args.steps, args.threads)))
        return
    results = {"dit": [], "bert": []}
    for _ in range(args.rounds):
        for backbone in results:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    backbone,
                    "--vocab",
                    str(args.vocab),
                    "--batch",
                    str(args.batch),
                    "--length",
                    str(args.length),
                    "--steps",
                    str(args.steps),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[backbone].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"SFT step, batch {args.batch} x {args.length} tokens (answers: the second half), vocab {args.vocab}, "
        f"{args.threads} thread(s), median of {args.rounds} rounds of {args.steps} steps"
    )
    print("| backbone | parameters | tokens/s | peak RSS (MB) | tokens/s vs DiT | RSS vs DiT |")
    print("|---|---|---|---|---|---|")
    base = {k: statistics.median(r[k] for r in results["dit"]) for k in ("tokens_per_s", "peak_rss_mb")}
    for backbone, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        name = "DiffusionTransformer tiny" if backbone == "dit" else f"BERT {BERT_LAYERS} x 128 (MaskedLMDenoiser)"
        print(
            f"| {name} | {runs[0]['params']:,} | {tps:,.0f} | {rss:,.0f} | {tps / base['tokens_per_s']:.2f}x | "
            f"{rss / base['peak_rss_mb']:.2f}x |"
        )


if __name__ == "__main__":
    main()
