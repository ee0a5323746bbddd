"""The one-row-per-run tables of the post-training systems (results/{profile}/tables/{name}.{md,csv}): every column
in the csv at full precision, the markdown with floats to 3 decimals, the settings digest and code commit
shortened, and notes below it. eval/sft.py and eval/dpo.py build the rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from common.io import atomic_path

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
    `notes` lines), each written atomically. A table of groups of runs (a mean over seeds) has no provenance
    columns: its markdown then shows `columns` as they are."""
    tables = Path(tables)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(tables / f"{name}.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    provenance = set(PROVENANCE) <= set(columns)
    shown = [c for c in columns if c not in PROVENANCE] + (["digest", "commit"] if provenance else [])
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [cell(row[c]) for c in columns if c not in PROVENANCE]
        if provenance:
            cells += [(row["settings_digest"] or "—")[:8], (row["code_commit"] or "—")[:7]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *notes]
    with atomic_path(tables / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
