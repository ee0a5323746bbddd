"""The one-row-per-run tables of the post-training systems (results/{profile}/tables/{name}.{md,csv}): every column
in the csv at full precision, the markdown with floats to 3 decimals, the settings digest and code commit
shortened, and notes below it. eval/sft.py and eval/dpo.py build the rows; seed_summary_lines groups rows that differ
only by seed (mean ± sd over seeds, eval.seeds.summary) for the markdown below a table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from common.io import atomic_path
from eval.seeds import summary

PROVENANCE = ("settings_digest", "code_commit")  # the csv's names; the markdown shows them as digest, commit


def cell(value) -> str:
    """A markdown cell: — for a missing value, floats to 3 decimals."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_run_table(rows: list[dict], columns: list[str], tables, name: str, notes: list[str]) -> None:
    """{tables}/{name}.csv (all `columns`) and {tables}/{name}.md (the same, digest and commit shortened, then the
    `notes` lines), each written atomically."""
    tables = Path(tables)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(tables / f"{name}.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    shown = [c for c in columns if c not in PROVENANCE] + ["digest", "commit"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [cell(row[c]) for c in shown[:-2]]
        cells += [(row["settings_digest"] or "—")[:8], (row["code_commit"] or "—")[:7]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *notes]
    with atomic_path(tables / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def seed_summary_lines(rows: list[dict], group: list[str], metrics: list[str]) -> list[str]:
    """A markdown table of `rows` grouped by the `group` columns: per group its seeds (the rows' `seed`) and, per
    metric, mean ± sd over them (sample sd, eval.seeds.summary; one seed: the value and no spread). A metric
    missing (None) in a row is left out of that group's mean; none at all: —."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in group), []).append(row)
    lines = ["| " + " | ".join([*group, "seeds", *metrics]) + " |", "|" + "---|" * (len(group) + 1 + len(metrics))]
    for key, members in groups.items():
        cells = [cell(k) for k in key] + [" ".join(sorted(str(r["seed"]) for r in members))]
        for metric in metrics:
            values = {i: r[metric] for i, r in enumerate(members) if r[metric] is not None}
            if not values:
                cells.append("—")
                continue
            s = summary(values)
            cells.append(cell(s["mean"]) + ("" if s["n_seeds"] == 1 else f" ± {s['sd']:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
