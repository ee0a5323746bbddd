"""Benchmark: ddpm_cache against ddpm at 1,000 steps on the same model and seed, side by side.

The model is the pipeline's single-stage MDLM (runs/demo/single/model) scored by the pipeline's AR model
(runs/demo/ar/model) when a demo has left them; otherwise this trains both here, with the pipeline's model class
and losses (the tiny size, a few minutes on a laptop CPU), on the demo stage-3 blocks or, without them, on
the pydoc corpus cut into blocks by a BPE trained here. It samples ``--n``
blocks with each sampler from the same generator seed and reports tokens/s, network calls and generative
perplexity. Target: ddpm_cache >= 3x the tokens/s of ddpm with gen ppl within 2%.

    python bench/sample.py                                   # needs the demo stage shards (make demo)
    python bench/sample.py --steps 1000 --n 16 --train-steps 400 --threads 1 --out bench/sample.json
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.device import resolve_device  # noqa: E402
from common.layout import Layout, merge_configfiles  # noqa: E402

# where `make demo` (config.yaml) keeps its stage shards, tokenizer and runs
DEMO = Layout(merge_configfiles([Path(__file__).resolve().parent.parent / "config.yaml"]))
from common.io import read_parquet, write_json  # noqa: E402
from eval.sample import cascade_records  # noqa: E402
from eval.scorer import PipelineARScorer, generative_perplexity  # noqa: E402
from eval.trained import load_trained  # noqa: E402
from train.checkpoint import save_model  # noqa: E402
from train.model import DiffusionTransformer, ModelConfig  # noqa: E402
from train.noise import get_noise, sample_times  # noqa: E402
from train.objectives import ar_loss, diffusion_loss  # noqa: E402

NOISE = {"type": "loglinear", "eps": 1e-3}


def train_tiny(
    blocks: torch.Tensor,
    vocab: int,
    mask_id: int,
    bos_id: int,
    objective: str,
    steps: int,
    batch: int,
    seed: int,
    device,
) -> DiffusionTransformer:
    """A tiny model trained for ``steps`` AdamW steps on random batches of ``blocks``."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = DiffusionTransformer(ModelConfig.from_size("tiny", vocab, causal=objective == "ar")).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    noise = get_noise(NOISE)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc=f"train {objective}", unit="step")
    for step in bar:
        x0 = blocks[torch.randint(0, len(blocks), (batch,), generator=g)].to(device)
        if objective == "ar":
            loss = ar_loss(model, x0, bos_id)
        else:
            t = sample_times(batch, g).to(device)
            u = torch.rand(x0.shape, generator=g).to(device)
            loss = diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def load_blocks(args, folder: Path) -> tuple[torch.Tensor, str]:
    """Stage-3 blocks and their tokenizer folder: the demo stage shards when present, else the pydoc corpus
    (the Python reference manual shipped with CPython) cut into blocks of ``--block-len`` tokens by a BPE
    trained here."""
    shards = sorted(glob.glob(args.shards))
    if shards:
        rows = [row for s in shards for row in read_parquet(s, ["stage3_ids"]).column(0).to_pylist()]
        print(f"{len(rows)} blocks from {len(shards)} stage shard(s)")
        return torch.tensor(rows), args.tokenizer
    from pydoc_data.topics import topics

    from preprocess.tokenizer import train_bpe

    texts = [topics[k] for k in sorted(topics)]
    tokenizer = train_bpe([texts], vocab_size=2048, min_frequency=2)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    stream = [i for ids in tokenizer(texts)["input_ids"] for i in ids + [tokenizer.eos_token_id]]
    n = len(stream) // args.block_len
    print(f"no stage shards at {args.shards}: {n} blocks of {args.block_len} tokens from pydoc_data.topics")
    return torch.tensor(stream[: n * args.block_len]).view(n, args.block_len), str(folder / "tokenizer")


def train_both(args, folder: Path, device) -> tuple[Path, Path]:
    """Train the tiny mdlm and AR models on stage-3 blocks; save them as pipeline model folders."""
    from transformers import AutoTokenizer

    blocks, tokenizer_dir = load_blocks(args, folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab, mask_id, bos_id = len(tokenizer), tokenizer.mask_token_id, tokenizer.eos_token_id
    base = {
        "noise": NOISE,
        "stage": 3,
        "prefix_len": 0,
        "target_len": blocks.shape[1],
        "vocab_size": vocab,
        "mask_id": mask_id,
        "eos_id": bos_id,
        "bos_id": bos_id,
        "tokenizer": tokenizer_dir,
    }
    for objective in ("mdlm", "ar"):
        model = train_tiny(blocks, vocab, mask_id, bos_id, objective, args.train_steps, args.batch, args.seed, device)
        save_model(
            folder / objective, model.state_dict(), {**base, "model": model.config.to_dict(), "objective": objective}
        )
    return folder / "mdlm", folder / "ar"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model-dir", default="runs/demo/single/model", help="an mdlm model folder (trained here if absent)"
    )
    parser.add_argument(
        "--scorer-dir", default="runs/demo/ar/model", help="an AR model folder (trained here if absent)"
    )
    parser.add_argument(
        "--shards",
        default=f"{DEMO.stages('keybert_no_stopword', 'train')}/shard_*.parquet",
        help="stage shards to train on when the model folders are absent",
    )
    parser.add_argument("--tokenizer", default=DEMO.tokenizer, help="the stage shards' tokenizer (the demo's)")
    parser.add_argument("--block-len", type=int, default=64, help="block length without stage shards")
    parser.add_argument("--steps", type=int, default=1000, help="sampling steps")
    parser.add_argument("--n", type=int, default=16, help="samples (one batch)")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--save-models",
        default=None,
        help="keep the models trained here in this folder (reuse: --model-dir F/mdlm --scorer-dir F/ar)",
    )
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, scorer_dir = Path(args.model_dir), Path(args.scorer_dir)
        if not (model_dir / "config.json").exists() or not (scorer_dir / "config.json").exists():
            model_dir, scorer_dir = train_both(args, Path(args.save_models or tmp), device)
        stage = load_trained(model_dir, device)
        if stage.meta["objective"] != "mdlm" or stage.meta["prefix_len"]:
            raise SystemExit(
                f"{model_dir}: need an unconditional mdlm model, got {stage.meta['objective']} "
                f"with prefix_len {stage.meta['prefix_len']}"
            )
        scorer = PipelineARScorer(scorer_dir, device)
        print(f"model {model_dir} (time_conditioning={stage.model.config.time_conditioning}), scorer {scorer_dir}")
        for sampler in ("ddpm", "ddpm_cache"):
            stage.denoiser.calls = stage.denoiser.rows = 0
            start = time.perf_counter()
            records = cascade_records([stage], args.n, args.n, sampler, args.steps, seed=args.seed, device=device)
            seconds = time.perf_counter() - start
            ppl = generative_perplexity(records, scorer, stage.name, stage.tokenizer_sha256)
            tokens = sum(r["generated_tokens"] for r in records)
            results[sampler] = {
                "tokens_per_second": tokens / seconds,
                "seconds": seconds,
                "network_calls": stage.denoiser.calls,
                "rows_evaluated": stage.denoiser.rows,
                "gen_ppl": ppl["value"],
                "ids": [r[f"{stage.name}_ids"] for r in records],
            }
    same = results["ddpm"].pop("ids") == results["ddpm_cache"].pop("ids")
    speedup = results["ddpm_cache"]["tokens_per_second"] / results["ddpm"]["tokens_per_second"]
    ppl_diff = abs(results["ddpm_cache"]["gen_ppl"] / results["ddpm"]["gen_ppl"] - 1)
    block_len = stage.meta["target_len"]
    print(
        f"\n{args.n} samples x {block_len} tokens, {args.steps} steps, seed {args.seed}, "
        f"{args.threads} thread(s), {device}\n"
    )
    print("| sampler | tokens/s | seconds | network calls | rows evaluated | gen ppl |\n|---|---|---|---|---|---|")
    for sampler, r in results.items():
        print(
            f"| {sampler} | {r['tokens_per_second']:.1f} | {r['seconds']:.2f} | {r['network_calls']} | "
            f"{r['rows_evaluated']} | {r['gen_ppl']:.2f} |"
        )
    print(f"\nspeed-up {speedup:.2f}x, gen ppl difference {100 * ppl_diff:.2f}%, identical samples: {same}")
    summary = {
        "samplers": results,
        "speedup": speedup,
        "gen_ppl_relative_difference": ppl_diff,
        "identical_samples": same,
        "steps": args.steps,
        "n": args.n,
        "block_len": block_len,
        "model_dir": str(model_dir) if model_dir == Path(args.model_dir) else "trained in the bench",
        "train_steps": args.train_steps,
        "threads": args.threads,
        "device": str(device),
    }
    if args.out:
        write_json(summary, args.out)
    return 0 if speedup >= 3 and ppl_diff <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
