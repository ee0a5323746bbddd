"""Training throughput of the diffusion transformer against a transformers BertForMaskedLM doing the same
masked-diffusion (MDLM) step on the same batch, in one run. Prints a table (tokens/s, speed-up).

The step, for both models: antithetic t, loglinear noise, mask each token with probability t, the MDLM
NELBO loss (1/t-weighted cross-entropy on the masked positions), backward, gradient clipping, AdamW.
Differences are the networks as each library ships them: ours projects onto the vocabulary only at masked
positions (the only ones with loss) and uses fused QKV + SDPA with rotary positions; BERT computes logits
at every position (BertForMaskedLM has no way to select them), with its own SDPA attention.

BERT sizes: "equal params" has our hidden size / heads / MLP width and the number of layers that brings its
parameter count closest to ours (our untied output matrix and adaLN weights count as parameters, so BERT
gets more layers); "equal shape" has our exact layer count, for context.

    python bench/train_step.py                          # tiny and small, CPU, all threads
    python bench/train_step.py --sizes small --device cuda --peak-tflops 989   # bf16 + MFU on an H100
    python bench/train_step.py --sizes tiny --fused both --skip-equal-shape    # train/fused.py on and off

--fused sets DiffusionTransformer(cfg, fused=...) and the loss's switch (train/fused.py): auto (the default:
fused on CPU, plain on CUDA), on, off, or both, which times our model fused and plain, interleaved with the
BERT rows on the same batches, so the plain row's "ours / this" is the fused / plain ratio. BERT's step
computes the same MDLM loss with the first of these settings (on for both).

MFU (CUDA only) = achieved FLOP/s / peak, with FLOPs per token = 6 N + 12 n_layers d L (PaLM appendix B;
N the non-embedding parameters plus the output projection).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.model import DiffusionTransformer, ModelConfig  # noqa: E402
from train.noise import get_noise, sample_times  # noqa: E402
from train.objectives import corrupt, diffusion_loss, mdlm_token_loss  # noqa: E402

FUSED_SETTINGS = {"auto": ["auto"], "on": [True], "off": [False], "both": [True, False]}
DEFAULTS = {"tiny": dict(vocab=2048, batch=32, length=96), "small": dict(vocab=50258, batch=8, length=128)}


def bert_for(cfg: ModelConfig, layers: int, length: int):
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(
        BertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.dim,
            num_hidden_layers=layers,
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.mlp_ratio * cfg.dim,
            max_position_embeddings=length,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="sdpa",
        )
    )


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def bert_equal_params(cfg: ModelConfig, target: int, length: int) -> tuple[int, int]:
    one, two = n_params(bert_for(cfg, 1, length)), n_params(bert_for(cfg, 2, length))
    per_layer, base = two - one, one - (two - one)
    layers = max(1, round((target - base) / per_layer))
    return layers, base + layers * per_layer


def bert_loss(model, x0, t, u, noise, mask_id, fused):
    sigma, dsigma = noise.total(t), noise.rate(t)
    x_t = corrupt(x0, sigma, mask_id, u)
    logits = model(input_ids=x_t).logits
    masked = x_t == mask_id
    rows = masked.nonzero(as_tuple=True)[0]
    return mdlm_token_loss(logits[masked], x0[masked], sigma[rows], dsigma[rows], mask_id, fused).sum() / x0.numel()


def make_stepper(model, loss_fn, device, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # same optimizer for every model
    model.train()

    def step(batch) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = loss_fn(model, *batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start

    return step


def time_interleaved(steppers: list, batches: list) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per step of each model: one warm-up step each, then the models take turns on every
    batch (so a busy machine slows all of them alike) and the median of each model's timed steps is kept.
    CPU seconds (process time) are the steadier figure on a shared machine."""
    times = [[] for _ in steppers]
    for i, batch in enumerate(batches):
        for k, step in enumerate(steppers):
            seconds = step(batch)
            if i > 0:
                times[k].append(seconds)
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return [(median([w for w, _ in t]), median([c for _, c in t])) for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(DEFAULTS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100 SXM)")
    parser.add_argument("--skip-equal-shape", action="store_true")
    parser.add_argument(
        "--fused",
        default="auto",
        choices=sorted(FUSED_SETTINGS),
        help="train/fused.py for our model and the loss: auto, on, off, or both (two rows)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    rows = []
    for size in args.sizes:
        d = DEFAULTS[size]
        cfg = ModelConfig.from_size(size, d["vocab"])
        settings = FUSED_SETTINGS[args.fused]
        ours = []
        for fused in settings:  # the same initial weights for each setting
            torch.manual_seed(0)
            ours.append(DiffusionTransformer(cfg, fused=fused).to(device))
        mask_id = d["vocab"] - 1
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(args.steps + 1):
            x0 = torch.randint(0, mask_id, (d["batch"], d["length"]), generator=g)
            t = sample_times(d["batch"], g)
            u = torch.rand(d["batch"], d["length"], generator=g)
            batches.append((x0.to(device), t.to(device), u.to(device)))
        tokens = d["batch"] * d["length"]
        p_ours = n_params(ours[0])
        layers, _ = bert_equal_params(cfg, p_ours, d["length"])
        variants = [("BERT equal params", layers)] + (
            [] if args.skip_equal_shape else [("BERT equal shape", cfg.n_layers)]
        )
        berts = []
        for _, n_layers in variants:
            torch.manual_seed(0)
            berts.append(bert_for(cfg, n_layers, d["length"]).to(device))
        steppers = [
            make_stepper(
                m,
                lambda m, x0, t, u, mask_id=mask_id: diffusion_loss(m, "mdlm", x0, None, t, u, noise, mask_id),
                device,
                bf16,
            )
            for m in ours
        ]
        steppers += [
            make_stepper(
                b,
                lambda m, x0, t, u, mask_id=mask_id, settings=settings: bert_loss(
                    m, x0, t, u, noise, mask_id, settings[0]
                ),
                device,
                bf16,
            )
            for b in berts
        ]
        seconds = time_interleaved(steppers, batches)
        flops_tok = 6 * (p_ours - cfg.vocab_size * cfg.dim) + 12 * cfg.n_layers * cfg.dim * d["length"]
        for fused, (wall, cpu) in zip(settings, seconds):
            mfu = flops_tok * tokens / wall / (args.peak_tflops * 1e12) if device.type == "cuda" else None
            rows.append(
                (
                    size,
                    f"ours (DiffusionTransformer, fused={fused})",
                    cfg.n_layers,
                    p_ours,
                    tokens / wall,
                    tokens / cpu,
                    mfu,
                )
            )
        for (name, n_layers), bert, (wall, cpu) in zip(variants, berts, seconds[len(ours) :]):
            rows.append((size, name, n_layers, n_params(bert), tokens / wall, tokens / cpu, None))
        del ours, berts, steppers
        print(
            f"[{size}] batch {d['batch']} x {d['length']} tokens, vocab {d['vocab']}, {args.steps} timed steps",
            flush=True,
        )

    print(
        f"\ndevice {device}, threads {torch.get_num_threads()}, torch {torch.__version__}"
        f"{', bf16 autocast' if bf16 else ', fp32'}"
    )
    print(
        "| size | model | layers | params | tokens/s (wall) | ours / this (wall) | tokens per CPU-s | "
        f"ours / this (CPU) |{' MFU |' if bf16 else ''}"
    )
    print(f"|---|---|---|---|---|---|---|---|{'---|' if bf16 else ''}")
    ours_row = {}  # the first of our rows of each size is the reference of the ratio columns
    for size, name, layers, params, wall_tps, cpu_tps, mfu in rows:
        if name.startswith("ours"):
            ours_row.setdefault(size, (wall_tps, cpu_tps))
        w, c = ours_row[size]
        extra = f" {mfu:.1%} |" if bf16 and mfu is not None else (" |" if bf16 else "")
        print(
            f"| {size} | {name} | {layers} | {params / 1e6:.1f}M | {wall_tps:,.0f} | {w / wall_tps:.2f}x | "
            f"{cpu_tps:,.0f} | {c / cpu_tps:.2f}x |{extra}"
        )


if __name__ == "__main__":
    main()
