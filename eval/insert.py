r"""The inserting-stage comparison table (results/{profile}/tables/insert.{md,csv}): the seed's re-predicting cascade,
the inserting cascades (stage_form insert, per placement law) and the single model, each over its seeds, with the
bound split per stage and the sample metrics of every sampler (configs/insert.yaml; docs/design.md, "The
inserting comparison").

Who a run is comes from its record (eval/record.py, via eval/seeds.py's Runs: the last model folder, stage3 of a
cascade): its variant (variant_of), kind and train.seed. Two runs of the same variant and seed are an error naming
both; an eval JSON of another training than its run's record is an error too.

Per run, from its val.json (eval/likelihood.py run_validation; T3 = total.tokens, the stage-3 tokens of the
validation blocks), every number in nats per stage-3 token:
    bound              total.nelbo = sum_k nats_k / T3, an upper bound on -log p(stage-3 block) / l3
    stage{k}_placement inserting stage k (2, 3): placement_nats_k / T3, -log p(P | y) of the true positions
    stage{k}_infill    inserting stage k: infill_nats_k / T3, the infill NELBO of the l_k - l_{k-1} inserted tokens;
                       a re-predicting stage k, and stage 1 of every cascade: nats_k / T3, the stage's whole NELBO
                       (it writes all l_k tokens; no placement term: stage{k}_placement is empty)
so that, per run, bound = the sum of the stage columns present (checked to 1e-6 relative). A single model has no
stages: only the bound. And per (run, sampler, steps), from its sample metrics (eval/evaluate.py samples):
    gen_ppl            generative perplexity of the final stage under the scorer (empty with evaluate.scorer none)
    retention          mean over consecutive stage pairs of the share of stage k-1 tokens kept in stage k
                       (eval.metrics.mean_retention; empty for a single model). 1 by construction for an inserting
                       cascade and for the placing samplers ({sampler}_placed) of a re-predicting one
    entropy            mean unigram entropy of the final stage (nats)

One row per (variant, sampler, steps): every metric's mean and sd over the variant's seeds (eval.seeds.summary: the
sample standard deviation, n - 1; two seeds a, b give |a - b| / sqrt(2); empty for one seed, and the Markdown says
so); the bound columns are the variant's, repeated on each of its sampler rows. gap_closed, on the rows of an
inserting variant:

    gap_closed = (bound(repredict) - bound(insert)) / (bound(repredict) - bound(single))      (means over seeds)

the share of the re-predicting cascade's gap to the single model that the inserting cascade closes (1: all of it;
above 1: it beats the single model); empty without both baselines or when the re-predicting cascade is not behind.
Provenance per row: the runs, their seeds and code commits (config.json code_commit).

    python -m eval.insert table --val-metrics runs/insert/*/eval/val.json \
        --sample-metrics runs/insert/*/eval/*-*.json --tables results/insert/tables
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

from common.io import InputError, atomic_path
from eval.metrics import mean_retention
from eval.record import ModelRecord
from eval.seeds import Runs, summary

REPREDICT, SINGLE = "repredict", "single"
VARIANT_ORDER = (REPREDICT, "insert-uniform", "insert-learned", SINGLE)
VARIANT_KEYS = "kind / stage_form / placement"  # what a run's variant is read from (its config.json)
STAGES = (1, 2, 3)
SPLIT = ("stage1_infill", "stage2_placement", "stage2_infill", "stage3_placement", "stage3_infill")
BOUND_METRICS = ("bound", *SPLIT)  # from val.json: one value per run
SAMPLE_METRICS = ("gen_ppl", "retention", "entropy")  # from the sample metrics: one value per run and sampling
METRICS = BOUND_METRICS + SAMPLE_METRICS
CSV_COLUMNS = (
    ["variant", "kind", "sampler", "steps", "n_seeds", "seeds"]
    + [f"{m}_{s}" for m in METRICS for s in ("mean", "sd")]
    + ["gap_closed", "runs", "code_commit"]
)
HEADERS = {  # metric -> Markdown header
    "bound": "bound",
    "stage1_infill": "s1",
    "stage2_placement": "s2 place",
    "stage2_infill": "s2 infill",
    "stage3_placement": "s3 place",
    "stage3_infill": "s3 infill",
    "gen_ppl": "gen ppl",
    "retention": "retention",
    "entropy": "entropy",
}
WITH_SPREAD = ("bound", *SAMPLE_METRICS)  # shown as mean ± sd in the Markdown (the split: means; sd in the csv)
TOLERANCE = 1e-6


def variant_of(record: ModelRecord) -> str:
    """repredict (the seed's cascade), insert-{placement} (stage_form insert), or the run's kind (single, ...)."""
    if record.kind != "cascade":
        return record.kind
    return REPREDICT if record.stage_form == "repredict" else f"insert-{record.placement}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not readable JSON ({err})") from err


def bound_split(val: dict, path) -> dict[str, float]:
    """{metric: nats per stage-3 token} of one val.json (module docstring): bound and, for a cascade, its stages'
    placement and infill columns; checked to sum to the bound."""
    total, stages = val.get("total"), val.get("stages")
    if not isinstance(total, dict) or not {"nelbo", "tokens"} <= set(total) or not isinstance(stages, dict):
        raise InputError(
            f"{path}: expected 'total' with nelbo and tokens and 'stages' (eval.evaluate val), got keys {sorted(val)}"
        )
    out = {"bound": total["nelbo"]}
    if set(stages) != {f"stage{k}" for k in STAGES}:
        return out  # a single model: one NELBO, no split
    tokens = total["tokens"]
    for k in STAGES:
        stage = stages[f"stage{k}"]
        if stage.get("stage_form") == "insert":
            out[f"stage{k}_placement"] = stage["placement_nats"] / tokens
            out[f"stage{k}_infill"] = stage["infill_nats"] / tokens
        else:
            out[f"stage{k}_infill"] = stage["nats"] / tokens
    parts = sum(v for m, v in out.items() if m != "bound")
    if not math.isclose(parts, out["bound"], rel_tol=TOLERANCE, abs_tol=TOLERANCE):
        raise InputError(
            f"{path}: the stages' nats per stage-3 token sum to {parts:.6g}, total.nelbo is {out['bound']:.6g}: "
            f"expected equal (total = sum_k nats_k / total.tokens); the file was not written by one eval.evaluate val"
        )
    return out


def collect(val_files, sample_files) -> tuple[dict, dict]:
    """({(variant, kind, metric, sampler, steps): {seed: value}}, {(variant, kind): {seed: record}}) from the runs'
    val.json (sampler and steps "") and sample metrics."""
    values: dict = defaultdict(dict)
    records: dict = defaultdict(dict)
    runs = Runs(variant_of=variant_of, variant_keys=VARIANT_KEYS)
    for path in map(Path, val_files):
        val = _read_json(path)
        variant, kind, seed = runs.of(path, val)
        records[(variant, kind)][seed] = runs.record(path)
        for metric, value in bound_split(val, path).items():
            values[(variant, kind, metric, "", "")][seed] = value
    for path in map(Path, sample_files):
        result = _read_json(path)
        if "metrics" not in result or "sampler" not in result:
            raise InputError(f"{path}: not a sample-metrics file (no 'metrics' / 'sampler'; eval.evaluate samples)")
        variant, kind, seed = runs.of(path, result)
        records[(variant, kind)][seed] = runs.record(path)
        m, sampling = result["metrics"], (result["sampler"], result["steps"])
        found = {
            "gen_ppl": (m.get("gen_ppl") or {}).get("value"),  # evaluate.scorer none: no gen ppl
            "retention": mean_retention(m),
            "entropy": m["unigram_entropy"]["value"],
        }
        for metric, value in found.items():
            if value is not None:
                values[(variant, kind, metric, *sampling)][seed] = value
    return values, records


def _order(variant: str) -> int:
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def _mean(values: dict, variant: str, kind: str) -> float | None:
    by_seed = values.get((variant, kind, "bound", "", ""))
    return summary(by_seed)["mean"] if by_seed else None


def gap_closed(values: dict, variant: str) -> float | None:
    """(bound(repredict) - bound(variant)) / (bound(repredict) - bound(single)) of the means, for an inserting
    variant; None without both baselines or where the re-predicting cascade is not behind the single model."""
    if not variant.startswith("insert-"):
        return None
    seed_cascade, single, mine = (
        _mean(values, REPREDICT, "cascade"),
        _mean(values, SINGLE, "single"),
        _mean(values, variant, "cascade"),
    )
    if None in (seed_cascade, single, mine) or seed_cascade <= single:
        return None
    return (seed_cascade - mine) / (seed_cascade - single)


def table_rows(val_files, sample_files) -> list[dict]:
    """One row per (variant, sampler, steps) (module docstring); a variant with no sample metrics gets one row with
    the bound alone (sampler and steps empty)."""
    values, records = collect(val_files, sample_files)
    groups = sorted(records, key=lambda g: (_order(g[0]), g[0], g[1]))
    rows = []
    for variant, kind in groups:
        samplings = sorted(
            {(s, n) for (v, k, _, s, n) in values if (v, k) == (variant, kind) and s != ""},
            key=lambda sn: (sn[0], int(sn[1])),
        ) or [("", "")]
        by_seed = records[(variant, kind)]
        for sampler, steps in samplings:
            row = {"variant": variant, "kind": kind, "sampler": sampler, "steps": steps}
            seeds = set()
            for metric in METRICS:
                source = ("", "") if metric in BOUND_METRICS else (sampler, steps)
                found = values.get((variant, kind, metric, *source))
                stats = summary(found) if found else None
                seeds |= set(found or ())
                row[f"{metric}_mean"] = stats["mean"] if stats else None
                row[f"{metric}_sd"] = stats["sd"] if stats and not math.isnan(stats["sd"]) else None
            row["n_seeds"], row["seeds"] = len(seeds), " ".join(map(str, sorted(seeds)))
            row["gap_closed"] = gap_closed(values, variant)
            row["runs"] = " ".join(by_seed[s].run for s in sorted(by_seed))
            row["code_commit"] = " ".join(sorted({by_seed[s].provenance["code_commit"] or "-" for s in by_seed}))
            rows.append(row)
    return rows


def _cell(row: dict, metric: str) -> str:
    mean, sd = row[f"{metric}_mean"], row[f"{metric}_sd"]
    if mean is None:
        return "—"
    digits, sd_digits = (".4g", ".3g") if metric == "gen_ppl" else (".3f", ".3f")
    if metric not in WITH_SPREAD or sd is None:
        return f"{mean:{digits}}"
    return f"{mean:{digits}} ± {sd:{sd_digits}}"


def notes(rows: list[dict]) -> list[str]:
    """The Markdown lines under the table: what the columns are, the gap closed, the variants without a spread."""
    lines = [
        "Per row: mean ± sd over the variant's seeds (sd: sample standard deviation, n - 1; with 2 seeds "
        "|a - b| / sqrt(2)). bound: the validation NELBO, nats per stage-3 token (an upper bound on the NLL of a "
        "stage-3 block per token; a cascade: the sum over its stages). s1, s2, s3: the bound's split per stage, "
        "nats per stage-3 token (means; sd in insert.csv): place = -log p(P | y), the placement law's NLL of the "
        "true positions of the stage k-1 tokens (inserting stages only), infill = the NELBO of the inserted tokens "
        "(inserting stages) or of the whole stage (re-predicting stages and stage 1, which model every token "
        "and have no placement term); the stage columns of a cascade sum to its bound. gen ppl: generative "
        "perplexity of the final stage under the scorer; retention: share of stage k-1 tokens kept in stage k, "
        "mean over stage pairs (1 by construction for inserting cascades and the {sampler}_placed rows); "
        "entropy: mean unigram entropy of the final stage (nats). The bound columns are the variant's, repeated "
        "on each of its sampler rows.",
    ]
    gaps = {r["variant"]: r["gap_closed"] for r in rows if r["variant"].startswith("insert-")}
    bounds = {r["variant"]: r["bound_mean"] for r in rows}
    if gaps:
        lines += [""]
        for variant, gap in gaps.items():
            if gap is None:
                lines += [
                    f"- {variant}: gap closed not computed (needs the {REPREDICT} and {SINGLE} variants, with the "
                    f"{REPREDICT} cascade's bound above the single model's)."
                ]
            else:
                lines += [
                    f"- {variant} closes {gap:.0%} of the bound gap between the {REPREDICT} cascade "
                    f"({bounds[REPREDICT]:.3f}) and the {SINGLE} model ({bounds[SINGLE]:.3f}): "
                    f"{bounds[variant]:.3f} nats per stage-3 token."
                ]
    few = {r["variant"]: r for r in rows if r["n_seeds"] < 2}
    if few:
        lines += [""]
        lines += [
            f"- {v}: {r['n_seeds']} seed{'' if r['n_seeds'] == 1 else 's'} ({r['seeds'] or 'none'}), no spread over "
            f"seeds."
            for v, r in few.items()
        ]
    commits = sorted(
        {c[:7] + ("+dirty" if c.endswith("+dirty") else "") for r in rows for c in r["code_commit"].split()}
    )
    lines += [
        "",
        f"Runs and seeds per row: insert.csv (runs, seeds, full commits); code commit(s): {', '.join(commits)}.",
    ]
    return lines


def write_table(rows: list[dict], tables) -> None:
    """results/{profile}/tables/insert.csv (CSV_COLUMNS, full precision; empty = not applicable or one seed) and
    insert.md (one line per row, the notes below)."""
    tables = Path(tables)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    with atomic_path(tables / "insert.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    header = ["variant", "sampler", "seeds", *(HEADERS[m] for m in METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        sampling = f"{row['sampler']}-{row['steps']}" if row["sampler"] else "—"
        seeds = str(row["n_seeds"]) + (" (no spread)" if row["n_seeds"] < 2 else "")
        lines.append("| " + " | ".join([row["variant"], sampling, seeds, *(_cell(row, m) for m in METRICS)]) + " |")
    lines += ["", *notes(rows)]
    with atomic_path(tables / "insert.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.insert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table", help="results/{profile}/tables/insert.{md,csv} from the compared runs' metrics")
    t.add_argument(
        "--val-metrics", nargs="+", required=True, help="runs/{profile}/{run}/eval/val.json of every compared run"
    )
    t.add_argument("--sample-metrics", nargs="*", default=[], help="runs/{profile}/{run}/eval/{sampler}-{steps}.json")
    t.add_argument("--tables", required=True, help="results/{profile}/tables")
    args = parser.parse_args(argv)
    write_table(table_rows(args.val_metrics, args.sample_metrics), args.tables)
    print((Path(args.tables) / "insert.md").read_text())


if __name__ == "__main__":
    main()
