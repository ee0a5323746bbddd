r"""Evaluate a run: metrics of a samples file, or the validation NELBO of its stages. Writes JSON in which every
number sits beside the exact definition used to compute it.

    # sample metrics: retention, entropy, distinct-1/2/3, speed, generative perplexity under a scorer
    python -m eval.evaluate samples --run-dir runs/demo/cascade \
        --samples runs/demo/cascade/samples/ddpm_cache-64.jsonl \
        --scorer runs/demo/ar/model --out runs/demo/cascade/eval/ddpm_cache-64.json
    # validation NELBO / perplexity per stage (eval/likelihood.py); --discrete-steps T adds the T-step bound
    python -m eval.evaluate val --run-dir runs/demo/cascade \
        --val-shards data/pydoc/stages-<tag>/.../validation/*.parquet \
        --time-samples 4 --batch-size 32 --discrete-steps 1000 --out runs/demo/cascade/eval/val.json

SFT and DPO runs are scored by their own modules: python -m eval.sft score, python -m eval.dpo score.

Both outputs carry who the run is (run_info: run, kind, data, method, objective, stages, tokenizer) and its
``provenance``, read from the record of the run's last model (eval.record.ModelRecord.provenance):

    provenance = {"settings_digest": config.json settings_digest (sha256 of the computing settings, 16 hex),
                  "seed": config.json train.seed, "code_commit": config.json code_commit (git commit or null)}

each null where an older model folder lacks it. ``data`` is what the run trained on: stages (stage shards) |
wrap | doc (unannotated block shards); absent in older folders, which all read stage shards: stages.
"""

from __future__ import annotations

import argparse
import json

from common.device import add_device_arguments, device_from_arguments
from common.io import write_json
from eval.likelihood import model_data, run_validation
from eval.metrics import sample_metrics, stage_names
from eval.record import run_record
from eval.sample import read_jsonl
from train.checkpoint import model_tokenizer_digest


def run_info(run_dir) -> dict:
    """Who the run is, from the record of its last model (eval.record.run_record): name, kind, data, method,
    objective, stages, tokenizer digest, provenance."""
    record = run_record(run_dir)
    meta = record.meta
    data, _ = model_data(meta, record.config)
    return {
        "run": record.run,
        "kind": record.kind,
        "data": data,
        "method": record.method,
        "objective": record.objective,
        "stages": record.stages,
        "tokenizer_sha256": model_tokenizer_digest(record.path, meta),
        "provenance": record.provenance,
    }


def evaluate_samples(run_dir, samples_path, scorer=None) -> dict:
    """Every sample metric of one samples file, plus gen ppl when a scorer is given."""
    from eval.scorer import generative_perplexity

    records = read_jsonl(samples_path)
    info = run_info(run_dir)
    result = {
        **info,
        "samples_file": str(samples_path),
        "sampler": records[0]["sampler"],
        "steps": records[0]["steps"],
        "temperature": records[0].get("temperature"),
        "metrics": sample_metrics(records),
    }
    if scorer is not None:
        final = stage_names(records[0])[-1]
        result["metrics"]["gen_ppl"] = generative_perplexity(records, scorer, final, info["tokenizer_sha256"])
    return result


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("samples", help="metrics of a samples JSONL")
    s.add_argument("--run-dir", required=True, help="runs/{profile}/{run}: stage1..3/ or model/ inside")
    s.add_argument("--samples", required=True, help="samples JSONL written by eval.sample")
    s.add_argument(
        "--scorer",
        required=True,
        help="gen ppl scorer: a pipeline AR model folder (runs/demo/ar/model) | a hub id or local folder of a "
        "causal LM (gpt2-large) | none (no gen ppl)",
    )
    v = sub.add_parser("val", help="validation NELBO and perplexity per stage")
    v.add_argument("--run-dir", required=True, help="runs/{profile}/{run}: stage1..3/ or model/ inside")
    v.add_argument("--val-shards", nargs="+", required=True, help="validation stage shards of the run's method")
    v.add_argument("--time-samples", type=int, required=True, help="stratified time samples per block (K)")
    v.add_argument("--batch-size", type=int, required=True, help="blocks per batch")
    v.add_argument("--max-batches", type=int, default=None, help="score only the first batches (default: all)")
    v.add_argument(
        "--discrete-steps",
        type=positive_int,
        default=None,
        metavar="T",
        help="also the discrete-T bound with T steps (MDLM's T > 0; mdlm runs, AR exact, sedd null); "
        "default: only the continuous-time bound",
    )
    v.add_argument(
        "--blocks",
        action="store_true",
        help="the shards are block shards (preprocess/blocks.py, column ids) of the model's target length, scored "
        "as its x0 whatever it trained on: zero-shot evaluation of a single-stage or AR run",
    )
    v.add_argument("--seed", type=int, default=0)
    for p in (s, v):
        add_device_arguments(p)
        p.add_argument(
            "--out",
            required=True,
            help="runs/{profile}/{run}/eval/{sampler}-{steps}.json or val.json",
        )
    args = parser.parse_args(argv)
    device = device_from_arguments(args)
    if args.what == "samples":
        from eval.scorer import load_scorer

        scorer = None if args.scorer == "none" else load_scorer(args.scorer, device)
        result = evaluate_samples(args.run_dir, args.samples, scorer)
    else:
        result = {
            **run_info(args.run_dir),
            **run_validation(
                args.run_dir,
                args.val_shards,
                args.time_samples,
                args.batch_size,
                args.max_batches,
                args.seed,
                device,
                args.discrete_steps,
                blocks=args.blocks,
            ),
            **({"block_shards": list(args.val_shards)} if args.blocks else {}),
        }
    write_json(result, args.out)
    print(json.dumps(result, indent=2)[:2000])


if __name__ == "__main__":
    main()
