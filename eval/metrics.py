"""Metrics of generated samples, each paired with the exact definition written next to its value.

Every function returns ``{"value": float, "definition": str, ...counts}`` so an eval JSON says how each
number was computed. Token-level metrics work on token ids of the tokenizer the run was trained with.
Likelihood metrics live in eval/likelihood.py (validation NELBO) and eval/scorer.py (generative perplexity).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

DEFINITIONS = {
    "prefix_retention": (
        "share of stage k-1 tokens present in the stage k output of the same sample, counted as multisets: "
        "sum over samples of sum_t min(count_{k-1}(t), count_k(t)), divided by the total number of stage k-1 "
        "tokens (token-weighted over samples)"
    ),
    "unigram_entropy": (
        "mean over samples of the entropy (nats) of the sample's unigram distribution of final-stage token ids: "
        "H = -sum_t p(t) ln p(t), p(t) = count(t) / length"
    ),
    "distinct_n": (
        "corpus-level distinct-n (Li et al., 2016) of final-stage token ids: number of distinct n-grams over all "
        "samples divided by the total number of n-grams (n-grams do not cross samples)"
    ),
    "seconds_per_sample": (
        "mean over samples of the wall time of the sample's batch through every stage divided by the batch size"
    ),
    "tokens_per_second": (
        "tokens generated over all stages (prefixes not counted twice), summed over samples, divided by the "
        "summed seconds of the samples"
    ),
}


def prefix_retention(previous: Sequence[Sequence[int]], following: Sequence[Sequence[int]]) -> dict:
    """retention = sum_samples sum_t min(c_prev(t), c_next(t)) / sum_samples len(prev)."""
    if len(previous) != len(following):
        raise ValueError(f"{len(previous)} stage k-1 samples but {len(following)} stage k samples")
    kept = total = 0
    for prev, nxt in zip(previous, following):
        kept += sum((Counter(prev) & Counter(nxt)).values())
        total += len(prev)
    if total == 0:
        raise ValueError("prefix retention of empty stage k-1 samples")
    return {
        "value": kept / total,
        "retained_tokens": kept,
        "prefix_tokens": total,
        "definition": DEFINITIONS["prefix_retention"],
    }


def unigram_entropy(samples: Sequence[Sequence[int]]) -> dict:
    """mean_samples -sum_t p(t) ln p(t), p(t) = count(t) / len(sample)."""
    entropies = []
    for tokens in samples:
        if not tokens:
            raise ValueError("unigram entropy of an empty sample")
        n = len(tokens)
        entropies.append(-sum(c / n * math.log(c / n) for c in Counter(tokens).values()))
    return {
        "value": sum(entropies) / len(entropies),
        "samples": len(entropies),
        "definition": DEFINITIONS["unigram_entropy"],
    }


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> dict:
    """|distinct n-grams| / |n-grams| over all samples."""
    grams = [tuple(tokens[i : i + n]) for tokens in samples for i in range(len(tokens) - n + 1)]
    if not grams:
        raise ValueError(f"no {n}-grams in the samples")
    return {
        "value": len(set(grams)) / len(grams),
        "distinct": len(set(grams)),
        "total": len(grams),
        "n": n,
        "definition": DEFINITIONS["distinct_n"],
    }


def speed(records: Sequence[dict]) -> dict:
    """seconds per sample and tokens per second from the ``seconds`` and ``generated_tokens`` of each sample."""
    seconds = [float(r["seconds"]) for r in records]
    tokens = sum(int(r["generated_tokens"]) for r in records)
    return {
        "seconds_per_sample": {
            "value": sum(seconds) / len(seconds),
            "samples": len(seconds),
            "definition": DEFINITIONS["seconds_per_sample"],
        },
        "tokens_per_second": {
            "value": tokens / sum(seconds) if sum(seconds) > 0 else float("nan"),
            "tokens": tokens,
            "seconds": sum(seconds),
            "definition": DEFINITIONS["tokens_per_second"],
        },
    }


def mean_retention(metrics: dict) -> float | None:
    """The tables' retention of a sample-metrics dict (sample_metrics' output): the mean over consecutive stage
    pairs of prefix_retention_{k-1}_{k}; None for a run of one stage (nothing to retain)."""
    values = [v["value"] for k, v in metrics.items() if k.startswith("prefix_retention_")]
    return sum(values) / len(values) if values else None


def stage_names(record: dict) -> list[str]:
    """The stages of a sample record in cascade order, e.g. ['stage1', 'stage2', 'stage3']."""
    names = [key[: -len("_ids")] for key in record if key.startswith("stage") and key.endswith("_ids")]
    return sorted(names, key=lambda name: int(name[len("stage") :]))


def sample_metrics(records: Sequence[dict]) -> dict:
    """Every text metric of a samples file: retention between consecutive stages, and entropy, distinct-1/2/3
    and speed of the final stage."""
    stages = stage_names(records[0])
    final = [r[f"{stages[-1]}_ids"] for r in records]
    metrics = {"final_stage": stages[-1], "samples": len(records)}
    for prev, nxt in zip(stages, stages[1:]):
        metrics[f"prefix_retention_{prev}_{nxt}"] = prefix_retention(
            [r[f"{prev}_ids"] for r in records], [r[f"{nxt}_ids"] for r in records]
        )
    metrics["unigram_entropy"] = unigram_entropy(final)
    for n in (1, 2, 3):
        metrics[f"distinct_{n}"] = distinct_n(final, n)
    metrics.update(speed(records))
    return metrics
