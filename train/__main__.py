"""Train one model of a run: a cascade stage, a single-stage model, the AR baseline, an SFT or a DPO run.

    python -m train --config config.yaml --run cascade --stage 2 \\
        --train-shards data/pydoc/stages-<tag>/keybert_no_stopword/8_16_32/train/shard_*.parquet \\
        --val-shards data/pydoc/stages-<tag>/keybert_no_stopword/8_16_32/validation/shard_*.parquet \\
        --tokenizer data/pydoc/tokenizer-<tag> --out runs/demo/cascade/stage2 [--init runs/demo/cascade/stage1]

Multi-process: `accelerate launch --num_processes N -m train ...` (N GPUs; `--cpu` for gloo on CPU).
Exit status: 0 when finished, 75 when a SIGTERM / SIGUSR1 made it checkpoint and stop (rerun to resume),
1 when training diverged (non-finite loss or gradient norm; the message names the step and the quantity).
"""

from __future__ import annotations

import argparse
import sys

from common.config import load_config, validate_config
from train.settings import resolve


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="pipeline config (config.yaml)")
    parser.add_argument("--run", required=True, help="a name under config runs:")
    parser.add_argument("--stage", type=int, default=None, help="1, 2 or 3 (cascade); 3 or omitted otherwise")
    parser.add_argument("--train-shards", nargs="+", required=True)
    parser.add_argument("--val-shards", nargs="+", required=True)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (PreTrainedTokenizerFast)")
    parser.add_argument(
        "--out", required=True, help="output folder (runs/{profile}/{run}/stage{k} or runs/{profile}/{run}/model)"
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="a dpo run's frozen reference model folder (rules: "
        "common.config.dpo_reference; default: dpo.reference as a folder, else --init)",
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this model folder (a cascade with warm_start: true; an sft or dpo run's init_from)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training key of this run, checked by the config schema (e.g. --set max_steps=20)",
    )
    return parser.parse_args(argv)


def generation_meta(config: dict) -> dict:
    """config.json's "generation" of an sft / dpo model folder: the answer settings of the pipeline's SFT
    evaluation (sft.gen_length, eval_steps, remasking, eos_guard; rule evaluate_sft) as eval.generate's options,
    which it takes as its defaults for this folder. Not a rerun trigger of train: the config at training time."""
    sft = config["sft"]
    return {
        "gen_length": sft["gen_length"],
        "steps": sft["eval_steps"],
        "remasking": sft["remasking"],
        "eos_guard": sft["eos_guard"],
    }


def main(argv=None, on_step=None) -> int:
    """Run the command; on_step(step) is called after every step (used by tests to interrupt a run)."""
    args = parse_args(argv)
    config = load_config(args.config)
    if args.overrides:
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set max_steps=20")
            config["runs"][args.run][key] = value  # a string: the schema check gives it the key's type
        config = validate_config(config, f"{args.config} with --set {' '.join(args.overrides)}")
    settings = resolve(config, args.run, args.stage)
    if args.init and not (settings.warm_start or settings.init_from):
        raise SystemExit(
            f"--init {args.init} given but runs.{args.run} has neither warm_start: true (cascade) nor "
            f"init_from (sft, dpo)"
        )
    import train.trainer

    if args.reference and settings.kind != "dpo":
        raise SystemExit(f"--reference {args.reference} given but runs.{args.run} is kind {settings.kind}, not dpo")
    extra = {"reference_dir": args.reference} if settings.kind == "dpo" else {}
    # one trainer for every kind; the objective (train/objective.objective_for) is chosen by the settings
    trainer = train.trainer.Trainer(
        settings,
        args.train_shards,
        args.val_shards,
        args.tokenizer,
        args.out,
        init_dir=args.init,
        run=args.run,
        **extra,
    )
    if settings.kind in ("sft", "dpo"):  # config.json (written at the end) records how the pipeline answers
        trainer.meta["generation"] = generation_meta(config)
    try:
        return trainer.run(on_step=on_step)
    except train.trainer.TrainingDiverged as err:  # the message says it all; a traceback into the loop would bury it
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
