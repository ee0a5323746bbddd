r"""The ATAT ablation table: every run of objective atat (and plain mdlm runs, as "mdlm"), grouped by importance
variant and kind (a cascade and a single run of the same variant are different rows), with mean and spread over
the seeds of each metric, and which differences from the uniform variant of the same kind exceed the seed spread.

Who a run is comes from its record (eval/record.py: run_record, the last model folder of the run, stage3 of a
cascade): variant = atat.importance (training objective atat) or the objective (plain runs), kind, and seed =
train.seed. Two runs of the same variant, kind and seed are an error naming both (the table would keep one of
them); an eval JSON whose provenance is not its run's record (another training) is an error too.

Per run (its runs/{profile}/{run}/eval/ JSON files, written by the existing rules):
    val_nelbo   the plain MDLM NELBO (uniform schedule, 1/t weights) of the EMA model on the validation blocks,
                nats per stage-3 token (val.json "total", eval/likelihood.py: the same blocks and draws for every
                run; of a cascade the sum of its stage NELBOs per stage-3 token, as in the main table), whatever
                the training objective: train/atat.py's own bounds are never what the table compares
    val_ppl     exp(val_nelbo)
    gen_ppl     per sampler and steps: generative perplexity of the samples under the AR scorer
    entropy     per sampler and steps: mean unigram entropy of the samples (nats; low = repetitive)

Per variant, kind and metric over its seeds: n, mean, sd (sample standard deviation, n - 1), min, max. A variant's
difference from the uniform variant of its kind on a metric "exceeds the seed spread" when Welch's two-sided t-test
of the two seed samples gives p < 0.05 (scipy.stats.ttest_ind, equal_var=False). With 2 seeds a side that needs a
difference of several standard deviations; non-overlapping [min, max] ranges alone would pass 1 in 3 equal pairs by
chance. Both sides without spread (sd 0) and different means count as exceeding it. The test is not run, and the
table says why (CSV column not_tested, and in words below the Markdown table), where a side has one seed (no spread
to compare a difference with) or there is no uniform run of its kind (no baseline): "no difference exceeds the seed
spread" is said only of differences that were tested.

    python -m eval.atat table --val-metrics runs/{profile}/*/eval/val.json \
        --sample-metrics runs/{profile}/*/eval/*-*.json \
        --tables results/atat/tables
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

from common.io import InputError, atomic_path
from eval.seeds import Runs, summary

VARIANT_ORDER = ("full", "learned", "frequency", "uniform", "mdlm")
BASELINE = "uniform"
VARIANT_KEYS = "atat.importance / objective"  # what a run's variant is read from (its config.json)
CSV_COLUMNS = [
    "variant",
    "kind",
    "metric",
    "sampler",
    "steps",
    "n_seeds",
    "seeds",
    "mean",
    "sd",
    "min",
    "max",
    "values",
    "diff_vs_uniform",
    "p_value",
    "exceeds_seed_spread",
    "not_tested",
]
ALPHA = 0.05


def no_baseline(kind: str) -> str:
    """Why a row has no test when its kind has no uniform run (its not_tested)."""
    return f"no {BASELINE} run of kind {kind} (atat.importance: {BASELINE}), so no baseline to compare with"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not readable JSON ({err})") from err


def collect(val_files, sample_files) -> dict:
    """{(variant, kind, metric, sampler, steps): {seed: value}} from the runs' val.json and sample metrics."""
    values: dict = defaultdict(dict)
    runs = Runs(variant_of=lambda record: record.atat_importance or record.objective, variant_keys=VARIANT_KEYS)
    for path in map(Path, val_files):
        result = _read_json(path)
        variant, kind, seed = runs.of(path, result)
        total = result.get("total")
        if not isinstance(total, dict) or not {"nelbo", "ppl"} <= set(total):
            raise InputError(
                f"{path}: key 'total' should be an object with nelbo and ppl (eval.evaluate val), got {total!r}"
            )
        for metric, value in (("val_nelbo", total["nelbo"]), ("val_ppl", total["ppl"])):
            values[(variant, kind, metric, "", "")][seed] = value
    for path in map(Path, sample_files):
        result = _read_json(path)
        variant, kind, seed = runs.of(path, result)
        metrics = result["metrics"]
        sampling = (result["sampler"], result["steps"])
        if (metrics.get("gen_ppl") or {}).get("value") is not None:  # evaluate.scorer: none scores nothing
            values[(variant, kind, "gen_ppl", *sampling)][seed] = metrics["gen_ppl"]["value"]
        values[(variant, kind, "entropy", *sampling)][seed] = metrics["unigram_entropy"]["value"]
    return values


def seed_test(a: list[float], b: list[float]) -> tuple[float | str, bool | str]:
    """(p, p < ALPHA) of Welch's two-sided t-test of two seed samples (module docstring); ("", "") with fewer than
    2 seeds on a side (no spread to compare with)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return "", ""
    if max(a) == min(a) and max(b) == min(b):
        return (1.0, False) if a[0] == b[0] else (0.0, True)
    with warnings.catch_warnings():  # nearly equal seeds: scipy warns of precision loss, the p it gives is still ~1
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return p, p < ALPHA


def table_rows(val_files, sample_files) -> list[dict]:
    """One row per (variant, kind, metric, sampler, steps): the seed summary, and against the uniform variant's row
    of the same kind and metric the difference of means, Welch's p and whether it exceeds the seed spread;
    `not_tested` says why a variant other than uniform has no p: no_baseline(kind), or a side with one seed."""
    values = collect(val_files, sample_files)
    rows = []
    for key in sorted(values, key=lambda k: (k[2], str(k[3]), str(k[4]), k[1], _order(k[0]))):
        variant, kind, metric, sampler, steps = key
        row = {
            "variant": variant,
            "kind": kind,
            "metric": metric,
            "sampler": sampler,
            "steps": steps,
            **summary(values[key]),
        }
        base = values.get((BASELINE, kind, metric, sampler, steps))
        row["diff_vs_uniform"], row["p_value"], row["exceeds_seed_spread"], row["not_tested"] = "", "", "", ""
        if variant != BASELINE and base is None:
            row["not_tested"] = no_baseline(kind)
        elif variant != BASELINE:
            row["diff_vs_uniform"] = row["mean"] - summary(base)["mean"]
            row["p_value"], row["exceeds_seed_spread"] = seed_test(list(values[key].values()), list(base.values()))
            if row["p_value"] == "":
                row["not_tested"] = (
                    f"one seed, no spread ({variant}: {_seeds(len(values[key]))}, {BASELINE}: {_seeds(len(base))})"
                )
        rows.append(row)
    return rows


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _label(row: dict) -> str:
    return row["metric"] + (f" {row['sampler']}-{row['steps']}" if row["sampler"] else "")


def _group(row: dict) -> str:
    return f"{row['variant']} ({row['kind']})"


def _order(variant: str) -> int:
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def _cell(row: dict) -> str:
    sd = "" if math.isnan(row["sd"]) else f" ± {row['sd']:.3g}"
    mark = " *" if row["exceeds_seed_spread"] is True else ""
    return f"{row['mean']:.4g}{sd}{mark}"


def write_table(rows: list[dict], tables) -> None:
    """results/{profile}/tables/atat.{md,csv}: csv one row per (variant, kind, metric, sampler, steps); md one row
    per variant and kind, one column per metric (mean ± sd over seeds, * where the difference from uniform of the same
    kind exceeds the seed spread), then each such difference in words, and each that could not be tested with why
    (seed_test_verdict)."""
    tables = Path(tables)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(tables / "atat.csv") as tmp:
        tmp.write_text(buffer.getvalue())

    columns = []
    for row in rows:
        column = (row["metric"], row["sampler"], row["steps"])
        if column not in columns:
            columns.append(column)
    groups = sorted({(r["variant"], r["kind"]) for r in rows}, key=lambda g: (g[1], _order(g[0])))
    cells = {(r["variant"], r["kind"], r["metric"], r["sampler"], r["steps"]): r for r in rows}
    seeds = {(r["variant"], r["kind"]): r["n_seeds"] for r in rows if r["metric"] == "val_nelbo"}
    header = ["variant", "kind", "seeds"] + [m if not s else f"{m} {s}-{n}" for m, s, n in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        out = [*group, str(seeds.get(group, "—"))]
        out += [_cell(cells[(*group, *c)]) if (*group, *c) in cells else "—" for c in columns]
        lines.append("| " + " | ".join(out) + " |")
    lines += [
        "",
        "mean ± sd over seeds. val_nelbo: the plain MDLM NELBO (uniform schedule, 1/t weights) on the same "
        "validation blocks, nats per stage-3 token (a cascade: the sum over its stages), whatever the training "
        "objective; gen_ppl / entropy: per sampler and steps. * = the difference from uniform of the same kind "
        f"exceeds the seed spread (Welch's t-test over seeds, p < {ALPHA}).",
    ]
    lines += ["", *seed_test_verdict(rows)]
    with atomic_path(tables / "atat.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def seed_test_verdict(rows: list[dict]) -> list[str]:
    """The Markdown lines under the table: the differences from uniform beyond the seed spread, or that none of
    the tested ones is; and every difference that could not be tested, with why (row["not_tested"])."""
    compared = [r for r in rows if r["variant"] != BASELINE]
    if not compared:
        return [
            f"The seed-spread test was not run: every run is of the {BASELINE} variant, there is no other "
            f"variant to compare with it."
        ]
    tested = [r for r in compared if not r["not_tested"]]
    untested = [r for r in compared if r["not_tested"]]
    beyond = [r for r in tested if r["exceeds_seed_spread"] is True]
    lines = []
    if beyond:
        lines += ["Differences from uniform beyond the seed spread:"]
        lines += [
            f"- {_group(r)} {_label(r)}: {r['diff_vs_uniform']:+.4g} (p = {r['p_value']:.3g}; seeds {r['values']})"
            for r in beyond
        ]
    elif tested:
        lines += [
            "No tested difference from uniform exceeds the seed spread."
            if untested
            else "No difference from uniform exceeds the seed spread."
        ]
    if untested:
        if lines:
            lines += [""]
        lines += [
            "The seed-spread test could not be run for "
            + ("any difference from uniform:" if not tested else "these differences from uniform:")
        ]
        reasons: dict = {}
        for r in untested:
            reasons.setdefault((_group(r), r["not_tested"]), []).append(_label(r))
        lines += [f"- {group} ({', '.join(labels)}): {reason}" for (group, reason), labels in reasons.items()]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.atat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table", help="results/{profile}/tables/atat.{md,csv} from the ablation runs' metrics")
    t.add_argument(
        "--val-metrics", nargs="+", required=True, help="runs/{profile}/{run}/eval/val.json of every ablation run"
    )
    t.add_argument("--sample-metrics", nargs="*", default=[], help="runs/{profile}/{run}/eval/{sampler}-{steps}.json")
    t.add_argument("--tables", required=True, help="results/{profile}/tables")
    args = parser.parse_args(argv)
    write_table(table_rows(args.val_metrics, args.sample_metrics), args.tables)
    print((Path(args.tables) / "atat.md").read_text())


if __name__ == "__main__":
    main()
