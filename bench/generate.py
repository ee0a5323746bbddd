"""Benchmark of eval/generate.py: tokens/s and network calls per answer for each remasking strategy at the same
steps, semi-autoregressive blocks against one block, the EOS guard, and each of them stopping at the answer
against filling the canvas; figures also as ratios to the baseline (low_confidence, one block, stop at the
answer) of the same run.

The model is a tiny MDLM (the pipeline's DiffusionTransformer, tiny size, time-conditioned, the pipeline's
mdlm loss) trained here for --train-steps on rows shaped like SFT rows: a pydoc passage cut at a random length
and filled with EOS up to --row-len (LLaDA's EOS padding, so the model learns to stop), with a byte-level BPE
of 2,048 tokens trained here on pydoc_data.topics. --model-dir reuses a folder saved by --save-model.

Each configuration answers the same --n prompts (the first --prompt-len tokens of held-out passages, no chat
template: the model is not a chat model; all prompts have one length, so they form one batch) with the same
seed. tokens/s = n x gen_length canvas tokens / wall seconds (the ratio is then the inverse time ratio);
answer tokens/s counts the tokens before the first EOS. network calls per answer = forward passes that
computed that prompt's row; a step that commits nothing calls nothing, and a row whose answer is final leaves
the batch (see eval/generate.py). ms / batch call = wall time / forward passes of the batch: the cost of a step,
network plus the strategy's own work.

    python bench/generate.py --save-model /tmp/bench_generate_model --out /tmp/bench_generate.json
    python bench/generate.py --model-dir /tmp/bench_generate_model        # reuse the model, timing only
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.io import write_json  # noqa: E402
from eval.generate import generate  # noqa: E402
from eval.samplers import REMASKING  # noqa: E402
from eval.trained import load_trained  # noqa: E402
from train.checkpoint import save_model  # noqa: E402
from train.model import DiffusionTransformer, ModelConfig  # noqa: E402
from train.noise import get_noise, sample_times  # noqa: E402
from train.objectives import diffusion_loss  # noqa: E402

NOISE = {"type": "loglinear", "eps": 1e-3}


def pydoc_streams(folder: Path):
    """Token ids of every pydoc topic (tokenizer trained here, saved in ``folder``) and the tokenizer."""
    from pydoc_data.topics import topics

    from preprocess.tokenizer import train_bpe

    texts = [topics[k] for k in sorted(topics)]
    tokenizer = train_bpe([texts], vocab_size=2048, min_frequency=2)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    return [ids for ids in tokenizer(texts)["input_ids"] if len(ids) >= 64], tokenizer


def eos_rows(streams, n: int, row_len: int, min_keep: int, eos_id: int, rng: random.Random) -> torch.Tensor:
    """``n`` rows: a passage of a random stream from a random offset, cut after min_keep..row_len - 8 tokens,
    then EOS up to row_len."""
    rows = []
    for _ in range(n):
        ids = streams[rng.randrange(len(streams))]
        start = rng.randrange(max(1, len(ids) - row_len))
        keep = rng.randint(min_keep, row_len - 8)
        piece = ids[start : start + keep]
        rows.append(piece + [eos_id] * (row_len - len(piece)))
    return torch.tensor(rows)


def train_model(args, folder: Path) -> Path:
    streams, tokenizer = pydoc_streams(folder)
    vocab, mask_id, eos_id = len(tokenizer), tokenizer.mask_token_id, tokenizer.eos_token_id
    rng = random.Random(args.seed)
    train_streams = streams[: int(0.9 * len(streams))]
    torch.manual_seed(args.seed)
    model = DiffusionTransformer(ModelConfig.from_size("tiny", vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    noise = get_noise(NOISE)
    g = torch.Generator().manual_seed(args.seed)
    began = time.perf_counter()
    for step in range(args.train_steps):
        x0 = eos_rows(train_streams, args.batch, args.row_len, args.prompt_len + 4, eos_id, rng)
        t = sample_times(args.batch, g)
        u = torch.rand(x0.shape, generator=g)
        loss = diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.train_steps - 1:
            print(f"train step {step}: loss {loss.item():.3f} ({time.perf_counter() - began:.0f} s)", flush=True)
    out = folder / "model"
    meta = {
        "model": model.config.to_dict(),
        "objective": "mdlm",
        "noise": NOISE,
        "stage": 3,
        "prefix_len": 0,
        "target_len": args.row_len,
        "vocab_size": vocab,
        "mask_id": mask_id,
        "eos_id": eos_id,
        "bos_id": eos_id,
        "tokenizer": str(folder / "tokenizer"),
        "run": "bench_generate",
        "kind": "single",
    }
    save_model(out, model.eval().state_dict(), meta)
    return out


def held_out_prompts(trained, n: int, prompt_len: int, seed: int) -> list[list[int]]:
    """The first prompt_len tokens at random offsets of the last 10% of the pydoc topics (not trained on)."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    streams = [ids for ids in trained.tokenizer(texts)["input_ids"] if len(ids) >= 64]
    held = streams[int(0.9 * len(streams)) :]
    rng = random.Random(seed + 1)
    prompts = []
    for _ in range(n):
        ids = held[rng.randrange(len(held))]
        start = rng.randrange(len(ids) - prompt_len)
        prompts.append(ids[start : start + prompt_len])
    return prompts


def measure(trained, prompts, args, repeats: int, **options) -> dict:
    """Best-of-``repeats`` wall time of one generate() call over all prompts (one batch), and its counts."""
    best, results = None, None
    for _ in range(repeats):
        began = time.perf_counter()
        options = {"temperature": args.temperature, **options}
        results = generate(trained, prompts, args.gen_length, args.steps, seed=args.seed, **options)
        seconds = time.perf_counter() - began
        best = seconds if best is None else min(best, seconds)
    n = len(prompts)
    answer_tokens = sum(len(r["answer_ids"]) for r in results)
    return {
        "seconds": best,
        "tokens_per_second": n * args.gen_length / best,
        "answer_tokens_per_second": answer_tokens / best,
        "calls_per_answer": sum(r["network_calls"] for r in results) / n,
        "batch_calls": results[0]["batch_calls"],
        "mean_answer_tokens": answer_tokens / n,
        "answers": [r["answer"] for r in results],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="a model folder saved by --save-model (else trained here)")
    parser.add_argument("--save-model", default=None, help="keep the trained model and tokenizer in this folder")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="training batch")
    parser.add_argument("--row-len", type=int, default=64, help="training row length (passage + EOS fill)")
    parser.add_argument("--n", type=int, default=16, help="prompts (one batch)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--gen-length", type=int, default=48)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--block-length", type=int, default=12, help="the semi-AR rows' block length")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=5, help="timings per configuration (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else train_model(args, Path(args.save_model or tmp))
        trained = load_trained(model_dir)
        prompts = held_out_prompts(trained, args.n, args.prompt_len, args.seed)
        b = args.block_length
        configs = [(r, dict(remasking=r)) for r in sorted(REMASKING, key=lambda r: r != "low_confidence")]
        configs += [
            ("low_confidence + eos_guard", dict(remasking="low_confidence", eos_guard=True)),
            (f"low_confidence, blocks of {b}", dict(remasking="low_confidence", block_length=b)),
            (f"random, blocks of {b}", dict(remasking="random", block_length=b)),
            (
                f"low_confidence + eos_guard, blocks of {b}",
                dict(remasking="low_confidence", eos_guard=True, block_length=b),
            ),
            ("low_confidence, temperature 1", dict(remasking="low_confidence", temperature=1.0)),
        ]
        configs = [(name, {**options, "stop_at_answer": stop}) for name, options in configs for stop in (True, False)]
        generate(trained, prompts[:2], args.gen_length, args.steps)  # warm-up
        rows = {(name, o["stop_at_answer"]): measure(trained, prompts, args, args.repeats, **o) for name, o in configs}
    base = rows[("low_confidence", True)]
    print(
        f"\n{args.n} prompts x {args.prompt_len} tokens, gen_length {args.gen_length}, {args.steps} steps, "
        f"temperature {args.temperature} unless named, seed {args.seed}, {args.threads} thread(s), CPU, one batch; "
        f"best of {args.repeats}; baseline: low_confidence, one block, stop at answer\n"
    )
    print(
        "| configuration | stop at answer | tokens/s | x baseline | calls / answer | x baseline | ms / batch call "
        "| mean answer tokens |\n|---|---|---|---|---|---|---|---|"
    )
    for (name, stop), r in rows.items():
        print(
            f"| {name} | {'yes' if stop else 'no (fill canvas)'} | {r['tokens_per_second']:.0f} "
            f"| {r['tokens_per_second'] / base['tokens_per_second']:.2f} | {r['calls_per_answer']:.1f} "
            f"| {r['calls_per_answer'] / base['calls_per_answer']:.2f} "
            f"| {1000 * r['seconds'] / r['batch_calls']:.1f} | {r['mean_answer_tokens']:.1f} |"
        )
    same = all(rows[(name, True)]["answers"] == rows[(name, False)]["answers"] for name, _ in configs)
    print(f"\nstopping at the answer gives the fill-canvas answers in every configuration: {same}")
    print("first answers:")
    for name in (
        "low_confidence",
        "low_confidence + eos_guard",
        f"low_confidence, blocks of {b}",
        f"low_confidence + eos_guard, blocks of {b}",
    ):
        print(f"  {name}: {rows[(name, True)]['answers'][0][:100]!r}")
    if args.out:
        write_json(
            {
                "rows": {f"{name} | {'stop' if stop else 'fill'}": r for (name, stop), r in rows.items()},
                "baseline": "low_confidence | stop",
                "stop_equals_fill": same,
                "args": vars(args),
                "model_dir": str(model_dir) if args.model_dir else "trained in the bench",
            },
            args.out,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
