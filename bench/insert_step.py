"""A training step of an inserting cascade stage (stage_form insert, train/inserting.py) against a re-predicting
one (the seed's form) on the same batch, in one run: the ratio of their step times.

Both are the trainer's own step (train/trainer.py Trainer.train_step: the objective's draws, loss, backward,
clipping, AdamW, the EMA), on the same stage of the same toy stage shards (train/toydata.py, the contract's
columns) with the same settings, so the same rows, times and masks at each step: the re-predicting stage k is
train/objective.py's LikelihoodObjective on [stage{k-1}_ids clean ; stage{k}_ids noisy] (l_{k-1} + l_k tokens per
row), the inserting one InsertingObjective on the stage{k}_ids canvas with the stage k-1 tokens given at
stage{k-1}_pos (l_k tokens), with the uniform law and with the learned one (its placement network trained beside
the model: an ExtraModule with its own AdamW). The tiny DiT (train/model.py), fp32 on the CPU.

Timing: the variants' steps alternate (step s of each, then step s + 1 of each), so load drift on a shared machine
reaches them alike; the first --warmup steps are not timed; per variant the median step time over --steps steps,
and its ratio to the re-predicting step's median. A step reads tokens in proportion to l_k (insert) or l_{k-1} +
l_k (repredict), so at the demo's lengths stage 3 should take about 32 / 48 of the time.

    python bench/insert_step.py                     # the demo's stage 3: lengths 8 16 32, vocab 2048, batch 32
    python bench/insert_step.py --stage 2 --steps 60 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {  # name -> the run's keys (configs/insert.yaml's variants)
    "repredict": {},
    "insert-uniform": {"stage_form": "insert", "placement": "uniform"},
    "insert-learned": {"stage_form": "insert", "placement": "learned"},
}


def config(lengths: list[int], batch: int, steps: int) -> dict:
    """A validated config with one cascade run per variant, the demo's model and noise, batch ``batch``."""
    from common.config import validate_config

    spec = {"kind": "cascade", "method": "keybert_no_stopword", "objective": "mdlm"}
    return validate_config(
        {
            "stages": {"lengths": lengths},
            "annotate": {"check_models": False},
            "train": {
                "global_batch_size": batch,
                "micro_batch_size": batch,
                "max_steps": steps,
                "warmup_steps": 1,
                "eval_every": steps,
                "save_every": steps,
            },
            "runs": {name: {**spec, **keys} for name, keys in VARIANTS.items()},
        },
        "bench/insert_step.py",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs=3, default=[8, 16, 32], help="stage lengths l1 l2 l3")
    parser.add_argument("--stage", type=int, choices=(2, 3), default=3)
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (toy words + [EOS] + [MASK])")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from train.settings import resolve
    from train.toydata import write_stage_shards
    from train.trainer import Trainer

    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    cfg = config(args.lengths, args.batch, total)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_stage_shards(
            Path(tmp) / "data", rows=8 * args.batch, val_rows=args.batch, lengths=tuple(args.lengths),
            n_words=args.vocab - 2,
        )  # fmt: skip
        trainers = {
            name: Trainer(
                resolve(cfg, name, args.stage),
                [data["train"]],
                [data["validation"]],
                data["tokenizer"],
                str(Path(tmp) / name),
                run=name,
            )
            for name in VARIANTS
        }
        seconds = {name: [] for name in VARIANTS}
        for step in range(total):
            for name, trainer in trainers.items():
                began = time.perf_counter()
                trainer.train_step(step)
                if step >= args.warmup:
                    seconds[name].append(time.perf_counter() - began)
        reads = {name: trainer.tokens_per_step // args.batch for name, trainer in trainers.items()}
        params = {name: sum(p.numel() for p in t.model.parameters()) for name, t in trainers.items()}
        placement = {
            name: sum(p.numel() for e in t.extras for p in e.module.parameters()) for name, t in trainers.items()
        }
    median = {name: statistics.median(s) for name, s in seconds.items()}
    base = median["repredict"]
    l_prev, l_k = args.lengths[args.stage - 2], args.lengths[args.stage - 1]
    print(
        f"Training step of stage {args.stage} (l_(k-1) = {l_prev}, l_k = {l_k}), batch {args.batch}, vocab "
        f"{args.vocab}, tiny DiT ({params['repredict']:,} parameters), fp32, CPU, {args.threads} thread(s); "
        f"median of {args.steps} steps after {args.warmup} warm-up steps, variants alternating"
    )
    print("| stage form | tokens read per row | placement params | ms / step | vs repredict |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        print(
            f"| {name} | {reads[name]} | {placement[name]:,} | {median[name] * 1e3:.1f} | {median[name] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
