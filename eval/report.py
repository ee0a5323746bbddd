r"""The paper tables and plots: one row per (run x sampler x steps), loss curves, gen ppl against steps.

Inputs are the files the evaluation leaves (docs/contracts.md):
    runs/{profile}/{run}/eval/{sampler}-{steps}.json     sample metrics (eval.evaluate samples)
    runs/{profile}/{run}/eval/val.json                   validation NELBO per stage (eval.evaluate val)
    runs/{profile}/{run}/{stage1..3|model}/metrics.csv   training log: step, split (train|val), loss, ...
Outputs:
    {tables}/main.md, main.csv, main.tex
                                one row per run x sampler x steps: who the run is (run, kind, data, method,
                                objective), val NELBO / ppl (continuous; the discrete-T ppl and T when a val.json
                                has them), the sample metrics, and where the row came from (settings digest,
                                seed, code commit of the run's config.json, from the eval JSONs' provenance)
    {plots}/loss.png            per stage: train loss smoothed (solid; EMA, see smooth()) over the raw per-step
                                loss (faint), and validation loss (dashed); one panel per run
    {plots}/gen_ppl_steps.png   generative perplexity (log axis) against sampling steps (log axis), one line per
                                run x sampler (AR baselines as horizontal reference lines)

    python -m eval.report --sample-metrics runs/{profile}/*/eval/*-*.json --val-metrics runs/{profile}/*/eval/val.json \
        --train-metrics runs/{profile}/*/*/metrics.csv --tables results/demo/tables --plots results/demo/plots
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from common.io import InputError, atomic_path
from eval.metrics import mean_retention
from eval.record import PROVENANCE, provenance_differs  # the keys of eval.record.ModelRecord.provenance

COLUMNS = {  # column -> header in the Markdown / LaTeX tables
    "run": "run",
    "kind": "kind",
    "data": "data",
    "method": "method",
    "objective": "objective",
    "sampler": "sampler",
    "steps": "steps",
    "val_nelbo": "val NELBO",
    "val_ppl": "val ppl",
    "val_ppl_discrete": "val ppl (T)",
    "discrete_steps": "T",
    "gen_ppl": "gen ppl",
    "retention": "retention",
    "entropy": "entropy",
    "distinct_1": "dist-1",
    "distinct_2": "dist-2",
    "distinct_3": "dist-3",
    "seconds_per_sample": "s/sample",
    "tokens_per_second": "tok/s",
    "settings_digest": "digest",
    "seed": "seed",
    "code_commit": "commit",
}
DISCRETE_COLUMNS = ("val_ppl_discrete", "discrete_steps")  # in the tables only when some val.json has them
TEXT_COLUMNS = ("run", "kind", "data", "method", "objective", "sampler", "settings_digest", "code_commit")
SHORT = {"settings_digest": 8, "code_commit": 7}  # md / tex show the first characters; main.csv the full value
NOTES = (
    "val NELBO: upper bound on the NLL of a stage-3 block, nats per stage-3 token (cascade: sum of the stage "
    "NELBOs; AR: exact NLL; continuous time); val ppl = exp(val NELBO). val ppl (T): the same from the T-step "
    "discrete bound (MDLM's T > 0; '-' for sedd, which has none). gen ppl: token-weighted perplexity of the final "
    "text under the scorer. retention: mean over consecutive stage pairs of the share of stage k-1 tokens kept in "
    "stage k ({sampler}_placed rows: 1 by construction, the prefix placed in the target first; constrained "
    "decoding, not draws from the model, so val NELBO does not describe their samples). entropy: mean per-sample "
    "unigram entropy (nats). dist-n: corpus-level distinct n-grams. data: what "
    "the run trained and is validated on (stages: stage shards; wrap: packed blocks across documents; doc: one "
    "document per block, padded, pads not counted), which changes what a perplexity means. digest, seed, commit: "
    "settings_digest, train.seed and code_commit of the run's last config.json (first characters; full in main.csv). "
    "Exact definitions: runs/{profile}/{run}/eval/*.json."
)


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not readable JSON ({err})") from err


def _value(metrics: dict, key: str):
    return metrics[key]["value"] if key in metrics else None


def _provenance(result: dict, path) -> dict:
    """settings_digest, seed, code_commit of an eval JSON's ``provenance`` (None each where absent: older files)."""
    prov = result.get("provenance") or {}
    if not isinstance(prov, dict):
        raise InputError(
            f"{path}: key 'provenance' should be an object {{settings_digest, seed, code_commit}}, got {prov!r}"
        )
    return {k: prov.get(k) for k in PROVENANCE}


def table_rows(sample_files, val_files) -> list[dict]:
    """One dict per sample-metrics file, joined with its run's val.json (matched on the run name). Both name the
    model they were computed from (provenance); a val.json of another training than the samples is an error."""
    vals = {}
    for path in val_files:
        val = _read_json(path)
        vals[val.get("run") or Path(path).parent.parent.name] = (val, path)
    rows = []
    for path in sample_files:
        result = _read_json(path)
        if "metrics" not in result or "sampler" not in result:
            raise InputError(f"{path}: not a sample-metrics file (no 'metrics' / 'sampler')")
        m = result["metrics"]
        row = {k: result.get(k) for k in ("run", "kind", "method", "objective", "sampler", "steps")}
        # eval JSONs older than block data have no 'data': they all come from stage shards
        row["data"] = result.get("data", "stages")
        row.update(_provenance(result, path))
        val, val_path = vals.get(result["run"], (None, None))
        if val is not None:
            val_prov = _provenance(val, val_path)
            sample_prov = {k: row[k] for k in PROVENANCE}
            if provenance_differs(sample_prov, val_prov):
                raise InputError(
                    f"{val_path}: provenance {val_prov} differs from {path}: {sample_prov}; "
                    f"the two were computed from different trainings of run {result['run']!r}: "
                    f"rerun the evaluation"
                )
            for k in PROVENANCE:
                row[k] = val_prov[k] if row[k] is None else row[k]
        total = (val or {}).get("total", {})
        row.update(
            {
                "val_nelbo": total.get("nelbo"),
                "val_ppl": total.get("ppl"),
                "val_nelbo_discrete": total.get("nelbo_discrete"),
                "val_ppl_discrete": total.get("ppl_discrete"),
                "discrete_steps": total.get("discrete_steps"),
                "gen_ppl": _value(m, "gen_ppl"),
                "retention": mean_retention(m),
                "entropy": _value(m, "unigram_entropy"),
                "distinct_1": _value(m, "distinct_1"),
                "distinct_2": _value(m, "distinct_2"),
                "distinct_3": _value(m, "distinct_3"),
                "seconds_per_sample": _value(m, "seconds_per_sample"),
                "tokens_per_second": _value(m, "tokens_per_second"),
            }
        )
        for stage, s in (val or {}).get("stages", {}).items():
            row[f"val_nelbo_{stage}"] = s["nelbo"]
        rows.append(row)
    rows.sort(key=lambda r: (str(r["run"]), str(r["sampler"]), int(r["steps"])))
    return rows


def _format(value, column: str | None = None) -> str:
    if value is None:
        return "-"
    if column in SHORT:
        return str(value)[: SHORT[column]]
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1000 or abs(value) < 0.01 else f"{value:.3f}"
    return str(value)


def table_columns(rows: list[dict]) -> list[str]:
    """The COLUMNS of the md / tex tables: the discrete-T ones only when some row has a discrete bound's T."""
    discrete = any(r.get("discrete_steps") is not None for r in rows)
    return [c for c in COLUMNS if discrete or c not in DISCRETE_COLUMNS]


def write_tables(rows: list[dict], out_dir) -> list[Path]:
    """main.csv (all columns, full precision and full digest / commit), main.md and main.tex (table_columns(),
    3 decimals, digest and commit shortened)."""
    out_dir = Path(out_dir)
    stage_cols = sorted({k for r in rows for k in r if k.startswith("val_nelbo_stage")})
    columns = table_columns(rows)
    extra = ["val_nelbo_discrete"] if "discrete_steps" in columns else []
    csv_cols = columns + extra + stage_cols
    with atomic_path(out_dir / "main.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=csv_cols)
            writer.writeheader()
            writer.writerows([{k: r.get(k) for k in csv_cols} for r in rows])
    headers = [COLUMNS[c] for c in columns]
    body = [[_format(r.get(k), k) for k in columns] for r in rows]
    md = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    md += ["| " + " | ".join(cells) + " |" for cells in body]
    with atomic_path(out_dir / "main.md") as tmp:
        tmp.write_text("\n".join(md) + "\n\n" + NOTES + "\n")

    def tex(s: str) -> str:
        return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")

    align = "".join("l" if c in TEXT_COLUMNS else "r" for c in columns)
    lines = ["\\begin{tabular}{" + align + "}", "\\toprule", " & ".join(tex(h) for h in headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(tex(c) for c in cells) + " \\\\" for cells in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    with atomic_path(out_dir / "main.tex") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return [out_dir / f"main.{ext}" for ext in ("md", "csv", "tex")]


def read_training_log(path) -> dict:
    """{'train': [(step, loss)], 'val': [(step, loss)]} from a trainer metrics.csv."""
    curves = {"train": [], "val": []}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", "split", "loss"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"{path}: metrics.csv lacks column(s) {sorted(missing)}")
        for number, row in enumerate(reader, 2):
            if row["split"] in curves and row["loss"] not in ("", None):
                try:
                    curves[row["split"]].append((int(row["step"]), float(row["loss"])))
                except ValueError as err:
                    raise InputError(f"{path}:{number}: bad step or loss ({err})") from err
    return curves


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


SMOOTH_SHARE = 0.03  # EMA time constant as a share of the logged step range: 24 steps of an 800-step stage


def smooth(points: list[tuple[int, float]], tau: float) -> list[float]:
    """Bias-corrected exponential moving average over steps with time constant ``tau`` steps:

        ema_i = sum_{j <= i} w_ij loss_j / sum_{j <= i} w_ij,   w_ij = exp(-(step_i - step_j) / tau),

    computed recursively; the normalisation keeps the first points from being pulled toward 0, and weighting
    by the step gap keeps it right when the log skips steps. Trailing (no look-ahead), like the run itself."""
    out, num, den, last = [], 0.0, 0.0, None
    for step, loss in points:
        decay = 1.0 if last is None else math.exp(-(step - last) / tau)
        num, den, last = num * decay + loss, den * decay + 1.0, step
        out.append(num / den)
    return out


def plot_losses(train_files, out_path) -> None:
    """One panel per run; per stage the smoothed train loss (solid, EMA), the raw per-step train loss (faint)
    and the validation loss (dashed, markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_run: dict[str, list] = {}
    for path in sorted(map(Path, train_files)):
        by_run.setdefault(path.parent.parent.name, []).append((path.parent.name, read_training_log(path)))
    fig, axes = plt.subplots(1, max(1, len(by_run)), figsize=(4.5 * max(1, len(by_run)), 3.5), squeeze=False)
    for ax, (run, stages) in zip(axes[0], sorted(by_run.items())):
        for i, (stage, curves) in enumerate(stages):
            color = f"C{i}"
            if curves["train"]:
                steps = [step for step, _ in curves["train"]]
                tau = max(1.0, SMOOTH_SHARE * (steps[-1] - steps[0]))
                ax.plot(*zip(*curves["train"]), color=color, lw=0.6, alpha=0.25)
                ax.plot(
                    steps,
                    smooth(curves["train"], tau),
                    color=color,
                    lw=1.5,
                    label=f"{stage} train: EMA {tau:.0f} steps, raw faint",
                )
            if curves["val"]:
                ax.plot(*zip(*curves["val"]), color=color, ls="--", marker="o", ms=3, label=f"{stage} val")
        ax.set(title=run, xlabel="step", ylabel="loss (nats / target token)")
        ax.legend(fontsize=7)
    _save_figure(fig, Path(out_path))


def plot_gen_ppl(rows: list[dict], out_path) -> None:
    """Gen ppl against steps (log x), one line per diffusion (run, sampler); AR runs, whose step count is
    just their length, as dashed horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(5, 3.5))
    lines: dict[tuple, list] = {}
    for r in rows:
        if r["gen_ppl"] is not None:
            lines.setdefault((r["run"], r["sampler"]), []).append((int(r["steps"]), r["gen_ppl"]))
    steps = sorted({s for (_, sampler), points in lines.items() if sampler != "ar" for s, _ in points})
    for i, ((run, sampler), points) in enumerate(sorted(lines.items())):
        if sampler == "ar":
            ax.axhline(points[0][1], color=f"C{i}", ls="--", lw=1, label=f"{run} (autoregressive)")
        else:
            ax.plot(*zip(*sorted(points)), color=f"C{i}", marker="o", label=f"{run} / {sampler}")
    if steps:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(steps))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(s) for s in steps])
    # gen ppl spans orders of magnitude (AR near 20, few-step samplers in the thousands): log axis
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set(xlabel="sampling steps per stage", ylabel="generative perplexity (log scale)")
    if lines:
        ax.legend(fontsize=7)
    _save_figure(fig, Path(out_path))


def build_report(sample_files, val_files, train_files, tables_dir, plots_dir) -> list[dict]:
    rows = table_rows(sample_files, val_files)
    if not rows:
        raise InputError("no sample-metrics files given: nothing to report")
    write_tables(rows, tables_dir)
    plot_losses(train_files, Path(plots_dir) / "loss.png")
    plot_gen_ppl(rows, Path(plots_dir) / "gen_ppl_steps.png")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample-metrics", nargs="+", required=True)
    parser.add_argument("--val-metrics", nargs="*", default=[])
    parser.add_argument("--train-metrics", nargs="*", default=[])
    parser.add_argument("--tables", required=True, help="results/{profile}/tables")
    parser.add_argument("--plots", required=True, help="results/{profile}/plots")
    args = parser.parse_args(argv)
    rows = build_report(args.sample_metrics, args.val_metrics, args.train_metrics, args.tables, args.plots)
    print((Path(args.tables) / "main.md").read_text())
    print(f"{len(rows)} rows -> {args.tables}, plots -> {args.plots}")


if __name__ == "__main__":
    main()
