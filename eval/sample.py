r"""Cascade sampling: stage 1 from nothing, stage 2 after the stage-1 sample, stage 3 after stage 2.

An inserting stage (stage_form insert, train/inserting.py) draws the positions of the previous stage's tokens from
its placement law, puts them there and fills the rest of the canvas with the sampler; the given tokens are never
edited, so their retention is 1. A single-stage diffusion run samples its one model with no prefix; an
autoregressive run samples left to right (sampler ``ar``). The output is JSONL, one object per sample
(docs/contracts.md):

    {"sample": 0, "sampler": "ddpm_cache", "steps": 64, "temperature": 1.0, "seed": 0,
     "stage1_ids": [...], "stage1_text": "...", "stage2_ids": ..., "stage3_ids": ..., "stage3_text": ...,
     "seconds": 0.41, "stage_seconds": {"stage1": 0.1, ...}, "generated_tokens": 112}

``seconds`` is the wall time of the sample's batch (all stages) divided by the batch size;
``generated_tokens`` counts the tokens sampled over all stages (prefixes are not regenerated; an inserting
stage counts its whole canvas, as a re-predicting one does).
``--sampler {sampler}_placed`` (cascade runs only) places stage k-1's tokens in stage k's target before sampling
the rest (eval/placement.py): constrained decoding, not draws from the model's distribution.

    python -m eval.sample --run-dir runs/demo/cascade --n 16 --sampler ddpm_cache --steps 64 \
        --out runs/demo/cascade/samples/ddpm_cache-64.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch
from tqdm import tqdm

from common.device import add_device_arguments, device_from_arguments
from common.io import atomic_path, jsonl_objects
from eval.runs import run_model_dirs
from eval.samplers import NATIVE_OBJECTIVE, PLACED, PLACING_SAMPLERS, SAMPLERS, autoregressive, placing, sample
from eval.trained import Trained, load_trained


@functools.cache
def stage_importance(model_dir: str, prefix_len: int, device: str):
    """The uncertainty sampler's importance estimate of a model folder trained with objective atat (its
    importance.safetensors, train/importance.py), loaded once per folder."""
    from train.importance import estimator_importance, load_importance

    estimator, _ = load_importance(model_dir, device)
    return estimator_importance(estimator, prefix_len)


@functools.cache
def stage_placement(model_dir: str, kind: str, length: int, given: int, device: str):
    """The placement law of an inserting stage (train/placement.py): uniform, or its placement.safetensors."""
    from train.placement import placement_law

    return placement_law(kind, 0, length, given, model_dir if kind == "learned" else None, device)


def insert_canvas(stage: Trained, prefix: torch.Tensor, generator: torch.Generator):
    """(given Bool[B, L], canvas Long[B, L]) of an inserting stage: positions drawn from its placement law given
    the previous stage's tokens, which are put there (the rest of the canvas is filled by the sampler)."""
    from train.inserting import given_mask

    length = stage.meta["target_len"]
    law = stage_placement(str(stage.model_dir), stage.meta["placement"], length, prefix.shape[1], str(prefix.device))
    positions = law.sample(prefix, generator).to(prefix.device)
    canvas = torch.zeros(len(prefix), length, dtype=torch.long, device=prefix.device).scatter(1, positions, prefix)
    return given_mask(positions, length), canvas


def sample_batch(
    stages: list[Trained],
    batch: int,
    sampler: str,
    steps: int,
    temperature: float,
    block_size: int | None,
    generator: torch.Generator,
    device,
) -> tuple[dict, dict]:
    """Run the cascade once for ``batch`` samples: ({stage: Long[batch, len]}, {stage: seconds}).

    A placing sampler (``{sampler}_placed``) places each stage's prefix in its target before sampling; stage 1,
    which has no prefix, is sampled by the plain sampler. A run of one model (single-stage, AR) has no prefix to
    place: an error."""
    base, placed = placing(sampler)
    if placed and len(stages) < 2:
        kind = stages[0].record.kind or ("ar" if stages[0].is_ar else "single")
        raise ValueError(
            f"{stages[0].model_dir}: sampler {sampler!r} places the previous stage's tokens in a cascade stage's "
            f"target, and this {kind} run has one model and no previous stage; sample it with {base!r}"
        )
    prefix = torch.zeros(batch, 0, dtype=torch.long, device=device)
    ids, seconds = {}, {}
    for stage in stages:
        start = time.perf_counter()
        if stage.is_ar:
            if sampler != "ar":
                raise ValueError(f"{stage.name} is autoregressive: use --sampler ar, not {sampler!r}")
            out = autoregressive(
                stage.model,
                stage.meta["bos_id"],
                stage.meta["mask_id"],
                batch,
                stage.meta["target_len"],
                temperature,
                generator,
                device,
            )
        else:
            if sampler == "ar":
                raise ValueError(f"{stage.name} is a diffusion model: sampler 'ar' applies to AR runs only")
            if prefix.shape[1] != stage.meta["prefix_len"]:
                raise ValueError(
                    f"{stage.name} expects a prefix of {stage.meta['prefix_len']} tokens, "
                    f"the previous stage gives {prefix.shape[1]}"
                )
            importance = (
                stage_importance(str(stage.model_dir), stage.meta["prefix_len"], str(device))
                if base == "uncertainty"
                else None
            )
            given = canvas = None
            if stage.meta.get("stage_form") == "insert":
                # the given tokens go into the canvas at drawn positions: the network reads no prefix
                given, canvas = insert_canvas(stage, prefix, generator)
                prefix = prefix[:, :0]
            out = sample(
                stage.denoiser,
                stage.noise,
                prefix,
                stage.meta["target_len"],
                sampler,
                steps,
                temperature,
                block_size,
                generator,
                importance=importance,
                given=given,
                canvas=canvas,
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[stage.name] = time.perf_counter() - start
        ids[stage.name] = out
        prefix = out
    return ids, seconds


def cascade_records(
    stages: list[Trained],
    n: int,
    batch_size: int,
    sampler: str,
    steps: int,
    temperature: float = 1.0,
    block_size: int | None = None,
    seed: int = 0,
    device=torch.device("cpu"),
    progress: bool = True,
) -> list[dict]:
    """``n`` JSON-ready samples of the run, in batches, with a progress bar over samples; each stage's tokens
    decoded with its own tokenizer."""
    generator = torch.Generator(device=device).manual_seed(seed)
    tokenizers = {stage.name: stage.tokenizer for stage in stages}
    records = []
    bar = tqdm(total=n, desc=f"sample {sampler}-{steps}", unit="sample", disable=not progress)
    with torch.no_grad():
        while len(records) < n:
            batch = min(batch_size, n - len(records))
            ids, seconds = sample_batch(stages, batch, sampler, steps, temperature, block_size, generator, device)
            total = sum(seconds.values())
            for row in range(batch):
                record = {
                    "sample": len(records),
                    "sampler": sampler,
                    "steps": steps,
                    "temperature": temperature,
                    "seed": seed,
                }
                for name, out in ids.items():
                    tokens = out[row].tolist()
                    record[f"{name}_ids"] = tokens
                    record[f"{name}_text"] = tokenizers[name].decode(tokens)
                record["seconds"] = total / batch
                record["stage_seconds"] = {name: s / batch for name, s in seconds.items()}
                record["generated_tokens"] = sum(out.shape[1] for out in ids.values())
                records.append(record)
            bar.update(batch)
    bar.close()
    return records


def write_jsonl(records: list[dict], path) -> None:
    """One JSON object per line, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def read_jsonl(path) -> list[dict]:
    """Read a samples file; a line that is not JSON is an error naming the file and line."""
    records = [record for _, record in jsonl_objects(path)]
    if not records:
        raise ValueError(f"{path}: no samples")
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", required=True, help="runs/{profile}/{run}: stage1..3/ or model/ inside")
    parser.add_argument(
        "--sampler",
        required=True,
        choices=SAMPLERS + PLACING_SAMPLERS + ("ar",),
        help="written for: "
        + ", ".join(f"{k} ({v})" for k, v in NATIVE_OBJECTIVE.items())
        + ", ar (AR runs); every diffusion sampler also runs on the other objective. "
        f"{{sampler}}{PLACED} (cascade runs): places stage k-1's tokens in stage k's target first, where the model "
        "finds them most likely in order, then samples the rest: constrained decoding, retention 1",
    )
    parser.add_argument("--steps", type=int, required=True, help="denoising steps per stage (ignored by ar)")
    parser.add_argument("--n", type=int, required=True, help="number of samples")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per batch (default: --n, one batch)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="semi-autoregressive blocks of this many tokens (ddpm, ddpm_cache, confidence, ...)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_device_arguments(parser)
    parser.add_argument(
        "--out", required=True, help="samples JSONL, e.g. runs/{profile}/{run}/samples/{sampler}-{steps}.jsonl"
    )
    args = parser.parse_args(argv)
    device = device_from_arguments(args)
    stages = [load_trained(d, device) for d in run_model_dirs(args.run_dir)]
    records = cascade_records(
        stages,
        args.n,
        args.batch_size or args.n,
        args.sampler,
        args.steps,
        args.temperature,
        args.block_size,
        args.seed,
        device,
    )
    write_jsonl(records, args.out)
    mean = sum(r["seconds"] for r in records) / len(records)
    print(f"{args.out}: {len(records)} samples, {mean:.3f} s/sample")


if __name__ == "__main__":
    main()
