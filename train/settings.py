"""A run's training settings: the `train:` defaults overridden by the run's own keys (config `runs.{name}`).

Shared by rules/train.smk (resources, warm-start inputs) and the training command, so both read one truth.

Run kinds:
    cascade  stages 1, 2, 3; stage k > 1 sees [stage k-1 clean ; noisy stage k]
    single   the stage-3 blocks with no prefix, trained with the compute of the three cascade stages
    ar       a causal LM on the stage-3 blocks (objective ar, cross-entropy)

    python -m train.settings --config config.yaml --run cascade --stage 2     # prints the resolved settings
"""
from __future__ import annotations

import argparse
import copy
import json

import yaml

KINDS = ("cascade", "single", "ar")
RUN_ONLY_KEYS = ("kind", "method", "objective")


def compute_matched_steps(stage_steps: list[int], lengths: list[int]) -> int:
    """Steps for a single-stage model on l3-token blocks that costs what the cascade costs.

    Cascade stage k trains on sequences of prefix + target = l_{k-1} + l_k tokens (l_0 = 0), so with the
    same batch size its compute is proportional to steps_k * (l_{k-1} + l_k). The single-stage model sees
    l3 tokens per example, so it gets

        steps_single = ceil( sum_k steps_k * (l_{k-1} + l_k) / l3 ).

    Example (demo): 300 * (16 + 48 + 96) / 64 = 750 steps. (Tokens, not FLOPs: attention's quadratic
    term is ignored, which is small at these lengths.)
    """
    if len(stage_steps) != len(lengths):
        raise ValueError(f"one step count per stage: {stage_steps} vs lengths {lengths}")
    tokens, previous = 0, 0
    for steps, length in zip(stage_steps, lengths):
        tokens += steps * (previous + length)
        previous = length
    return -(-tokens // lengths[-1])


def resolve(config: dict, run: str, stage: int | None = None) -> dict:
    """Settings of `run` at `stage` (1..3 for cascade runs; 3 or None for single / ar runs).

    Adds: kind, method, objective, stage, prefix_len, target_len, and for single runs max_steps replaced by
    compute_matched_steps (the run's max_steps is read as the steps of each cascade stage it matches).
    """
    runs = config.get("runs") or {}
    if run not in runs:
        raise KeyError(f"run {run!r} is not in config runs (have {sorted(runs)})")
    spec = runs[run] or {}
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"runs.{run}.kind must be one of {KINDS}, got {kind!r}")
    settings = copy.deepcopy(config.get("train") or {})
    settings.update(copy.deepcopy({k: v for k, v in spec.items()}))
    lengths = list(config["stages"]["lengths"])
    if len(lengths) != 3 or sorted(set(lengths)) != lengths:
        raise ValueError(f"stages.lengths must be three increasing lengths, got {lengths}")
    objective = settings.get("objective")
    if kind == "ar" and objective not in (None, "ar"):
        raise ValueError(f"runs.{run}: kind ar trains objective ar, got {objective!r}")
    if kind != "ar" and objective not in ("mdlm", "sedd"):
        raise ValueError(f"runs.{run}.objective must be mdlm or sedd for kind {kind}, got {objective!r}")
    settings["objective"] = "ar" if kind == "ar" else objective

    if kind == "cascade":
        if stage not in (1, 2, 3):
            raise ValueError(f"run {run!r} is a cascade: stage must be 1, 2 or 3, got {stage!r}")
        settings["prefix_len"] = 0 if stage == 1 else lengths[stage - 2]
        settings["target_len"] = lengths[stage - 1]
    else:
        if stage not in (None, 3):
            raise ValueError(f"run {run!r} is kind {kind}: it models the stage-3 blocks (stage 3), got {stage!r}")
        stage = 3
        settings["prefix_len"], settings["target_len"] = 0, lengths[2]
        if kind == "single":
            settings["max_steps"] = compute_matched_steps([int(settings["max_steps"])] * 3, lengths)
    settings.update(kind=kind, stage=stage, lengths=lengths)
    settings.setdefault("method", None)
    settings.setdefault("pretrained", None)
    return settings


def accumulation_steps(settings: dict, num_processes: int) -> int:
    """global batch = micro batch x processes x accumulation; the division must be exact."""
    global_bs, micro = int(settings["global_batch_size"]), int(settings["micro_batch_size"])
    per_step = micro * num_processes
    if global_bs % per_step:
        raise ValueError(f"global_batch_size {global_bs} is not a multiple of micro_batch_size {micro} x "
                         f"{num_processes} processes")
    return global_bs // per_step


def load_config(path: str) -> dict:
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--run", required=True)
    parser.add_argument("--stage", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(resolve(load_config(args.config), args.run, args.stage), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
