"""Runs grouped into a comparison table's rows: which variant, kind and seed an eval file belongs to (from the record
of its run, eval/record.py), and the mean and spread over the seeds of a variant. The ATAT table (eval/atat.py) and
the inserting-stage comparison (eval/insert.py) group their runs with it; each says what a variant is.

    runs = Runs(variant_of=lambda record: record.objective, variant_keys="objective")
    variant, kind, seed = runs.of(path, result)      # path: runs/{profile}/{run}/eval/*.json, result: its JSON
    runs.record(path)                                 # the run's ModelRecord (run, provenance, ...)
    summary({0: 3.1, 1: 3.3})                         # n_seeds, seeds, mean, sd, min, max, values

Spread: sd is the sample standard deviation over seeds (n - 1 in the denominator), NaN for one seed; with two
seeds a and b, sd = |a - b| / sqrt(2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from common.io import InputError
from eval.record import ModelRecord, provenance_differs, run_record


class Runs:
    """The runs of a table's eval files, each read once through its record (eval.record.run_record): the row group
    (variant, kind) and seed of an eval file, every (variant, kind, seed) from one run only.

    ``variant_of(record)`` names a run's variant; ``variant_keys`` says which config.json keys it reads (for the
    error when two runs share a variant, kind and seed)."""

    def __init__(self, variant_of: Callable[[ModelRecord], str], variant_keys: str):
        self.variant_of, self.variant_keys = variant_of, variant_keys
        self.records: dict[Path, ModelRecord] = {}
        self.owners: dict[tuple, Path] = {}

    def record(self, path) -> ModelRecord:
        """The record of the run whose eval file ``path`` (runs/{profile}/{run}/eval/*.json) is."""
        run_dir = Path(path).parents[1].resolve()
        if run_dir not in self.records:
            self.records[run_dir] = run_record(run_dir)
        return self.records[run_dir]

    def of(self, path, result: dict) -> tuple[str, str, int]:
        """(variant, kind, seed) of the run whose eval file ``path`` is; its provenance must be the run's."""
        path = Path(path)
        run_dir = path.parents[1]
        record = self.record(path)
        if record.kind is None:
            raise InputError(f"{record.config}: no key 'kind' (expected cascade or single): the table groups by kind")
        if record.seed is None:
            raise InputError(f"{record.config}: no key 'train.seed' (expected an integer): the table groups by seed")
        prov = result.get("provenance")
        if isinstance(prov, dict) and provenance_differs(prov, record.provenance):
            raise InputError(
                f"{path}: provenance {prov} differs from the record of its run, {record.config}: "
                f"{record.provenance}; computed from another training: rerun the evaluation"
            )
        variant = self.variant_of(record)
        key = (variant, record.kind, record.seed)
        owner = self.owners.setdefault(key, run_dir)
        if owner.resolve() != run_dir.resolve():
            raise InputError(
                f"runs {owner} and {run_dir} are both variant {variant}, kind {record.kind}, seed {record.seed} "
                f"(their config.json {self.variant_keys}, kind, train.seed): the table has one value per "
                f"seed and would keep only one of them; give one of the runs another train.seed"
            )
        return key


def summary(by_seed: dict) -> dict:
    """{seed: value} -> n_seeds, seeds ("0 1"), mean, sd (sample standard deviation; NaN for one seed), min, max,
    values (in seed order)."""
    xs = [by_seed[s] for s in sorted(by_seed)]
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return {
        "n_seeds": len(xs),
        "seeds": " ".join(map(str, sorted(by_seed))),
        "mean": mean,
        "sd": sd,
        "min": min(xs),
        "max": max(xs),
        "values": " ".join(f"{x:.6g}" for x in xs),
    }
