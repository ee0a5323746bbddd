"""The report on a hand-made pair of runs: table rows, values, and plots from hand-written JSON and CSV."""

import csv
import json

import pytest

from common.io import InputError
from eval.report import build_report, read_training_log, smooth


def metric(value):
    return {"value": value, "definition": "hand-made"}


CASCADE = {"settings_digest": "0123456789abcdef", "seed": 7, "code_commit": "89ab" * 10}
SINGLE = {"settings_digest": "fedcba9876543210", "seed": 11, "code_commit": None}


def sample_json(path, run, kind, sampler, steps, gen_ppl, retention=None, provenance=None, data=None):
    """A sample-metrics file as eval.evaluate writes it; without provenance / data as older ones were."""
    metrics = {
        "gen_ppl": metric(gen_ppl),
        "unigram_entropy": metric(2.5),
        "distinct_1": metric(0.5),
        "distinct_2": metric(0.8),
        "distinct_3": metric(0.9),
        "seconds_per_sample": metric(0.25),
        "tokens_per_second": metric(448.0),
    }
    for pair, value in (retention or {}).items():
        metrics[f"prefix_retention_{pair}"] = metric(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "run": run,
        "kind": kind,
        "method": "keybert",
        "objective": "mdlm",
        "sampler": sampler,
        "steps": steps,
        "metrics": metrics,
    }
    if provenance is not None:
        result["provenance"] = provenance
    if data is not None:
        result["data"] = data
    path.write_text(json.dumps(result))
    return path


def training_log(path, losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "split", "loss", "lr", "tokens", "seconds", "grad_norm"])
        for step, (train, val) in enumerate(losses, 1):
            writer.writerow([step, "train", train, 0.001, step * 8, step, 1.0])
            if val is not None:
                writer.writerow([step, "val", val, "", step * 8, step, ""])
    return path


def test_report_of_two_runs(tmp_path):
    runs = tmp_path / "runs"
    samples = [
        sample_json(
            runs / "single/eval/ddpm_cache-64.json",
            "single",
            "single",
            "ddpm_cache",
            64,
            80.0,
            provenance=SINGLE,
            data="doc",
        ),
        sample_json(
            runs / "cascade/eval/ddpm_cache-64.json",
            "cascade",
            "cascade",
            "ddpm_cache",
            64,
            50.0,
            {"stage1_stage2": 0.9, "stage2_stage3": 0.7},
            provenance=CASCADE,
            data="stages",
        ),
        sample_json(
            runs / "cascade/eval/ddpm_cache-16.json",
            "cascade",
            "cascade",
            "ddpm_cache",
            16,
            70.0,
            {"stage1_stage2": 0.8, "stage2_stage3": 0.6},
            provenance=CASCADE,
            data="stages",
        ),
    ]
    val = runs / "cascade/eval/val.json"
    val.write_text(
        json.dumps(
            {
                "run": "cascade",
                "data": "stages",
                "provenance": CASCADE,
                "total": {
                    "nelbo": 4.0,
                    "ppl": 54.598,
                    "nelbo_discrete": 4.25,
                    "ppl_discrete": 70.105,
                    "discrete_steps": 1000,
                },
                "stages": {"stage1": {"nelbo": 5.0}, "stage2": {"nelbo": 4.5}, "stage3": {"nelbo": 3.0}},
            }
        )
    )
    logs = [training_log(runs / f"cascade/stage{k}/metrics.csv", [(6 - k, None), (5 - k, 5.5 - k)]) for k in (1, 2, 3)]
    logs.append(training_log(runs / "single/model/metrics.csv", [(6, 6.5), (5, 5.2)]))
    tables, plots = tmp_path / "tables", tmp_path / "plots"
    build_report(samples, [val], logs, tables, plots)

    rows = list(csv.DictReader(open(tables / "main.csv")))
    assert [(r["run"], r["steps"]) for r in rows] == [("cascade", "16"), ("cascade", "64"), ("single", "64")]
    cascade64 = rows[1]
    assert float(cascade64["gen_ppl"]) == 50.0
    assert float(cascade64["retention"]) == pytest.approx((0.9 + 0.7) / 2)
    assert float(cascade64["val_nelbo"]) == 4.0 and float(cascade64["val_nelbo_stage2"]) == 4.5
    assert float(cascade64["val_ppl_discrete"]) == 70.105 and float(cascade64["val_nelbo_discrete"]) == 4.25
    assert cascade64["discrete_steps"] == "1000"
    assert rows[2]["val_nelbo"] == "" and rows[2]["retention"] == ""  # the single run has no val.json here
    assert rows[2]["val_ppl_discrete"] == ""
    # every row says what it read and where it came from: the full values in main.csv
    assert [(r["data"], r["settings_digest"], r["seed"], r["code_commit"]) for r in rows] == [
        ("stages", CASCADE["settings_digest"], "7", CASCADE["code_commit"]),
        ("stages", CASCADE["settings_digest"], "7", CASCADE["code_commit"]),
        ("doc", SINGLE["settings_digest"], "11", ""),
    ]
    md = (tables / "main.md").read_text().splitlines()
    header = md[0].split(" | ")
    assert md[0].startswith("| run | kind | data |") and "| single | single | doc |" in md[4]
    assert header[-3:] == ["digest", "seed", "commit |"] and "val ppl (T)" in header and "T" in header
    single = dict(zip(header, md[4].split(" | ")))
    assert single["val NELBO"] == single["val ppl (T)"] == "-"  # missing values are a dash, not a zero
    cascade = dict(zip(header, md[3].split(" | ")))
    assert (cascade["val ppl (T)"], cascade["T"], cascade["digest"], cascade["seed"]) == (
        "70.105",
        "1000",
        "01234567",
        "7",
    )
    assert md[3].endswith("| 89ab89a |") and md[4].endswith("| fedcba98 | 11 | - |")
    tex = (tables / "main.tex").read_text()
    assert "ddpm\\_cache" in tex and tex.count("\\\\") == 4  # header + 3 rows
    assert "\\begin{tabular}{llllll" + "r" * 13 + "lrl}" in tex and "01234567 & 7 & 89ab89a" in tex
    for name in ("loss.png", "gen_ppl_steps.png"):
        assert (plots / name).stat().st_size > 1000
    assert not list(tables.glob(".*tmp")) and not list(plots.glob(".*tmp"))


def test_rows_of_older_eval_files_and_runs_without_a_discrete_bound(tmp_path):
    """Eval JSONs from before provenance and data (stage shards then): dashes for provenance, data stages; and no
    discrete-T columns when no val.json has the bound."""
    sample = sample_json(tmp_path / "runs/old/eval/ddpm-8.json", "old", "single", "ddpm", 8, 90.0)
    val = tmp_path / "runs/old/eval/val.json"
    val.write_text(
        json.dumps({"run": "old", "total": {"nelbo": 3.5, "ppl": 33.1}, "stages": {"stage3": {"nelbo": 3.5}}})
    )
    build_report([sample], [val], [], tmp_path / "t", tmp_path / "p")
    row = next(csv.DictReader(open(tmp_path / "t" / "main.csv")))
    assert row["data"] == "stages" and row["settings_digest"] == row["seed"] == row["code_commit"] == ""
    assert "val_ppl_discrete" not in row and "discrete_steps" not in row
    md = (tmp_path / "t" / "main.md").read_text().splitlines()
    assert "val ppl (T)" not in md[0] and md[2].endswith("| - | - | - |")


def test_samples_and_val_of_different_trainings_are_refused(tmp_path):
    """A row joins a samples file with its run's val.json; if they name different models (another settings
    digest), the row would mix two trainings: an error naming both files."""
    sample = sample_json(
        tmp_path / "runs/cascade/eval/ddpm-8.json", "cascade", "cascade", "ddpm", 8, 60.0, provenance=CASCADE
    )
    val = tmp_path / "runs/cascade/eval/val.json"
    val.write_text(
        json.dumps(
            {
                "run": "cascade",
                "provenance": {**CASCADE, "settings_digest": "ffff" * 4},
                "total": {"nelbo": 4.0, "ppl": 54.6},
                "stages": {},
            }
        )
    )
    with pytest.raises(InputError, match="val.json: provenance .*ffffffff.* differs from .*ddpm-8.json.*0123456789"):
        build_report([sample], [val], [], tmp_path / "t", tmp_path / "p")


def test_training_log_and_bad_inputs_are_named(tmp_path):
    log = training_log(tmp_path / "r/stage1/metrics.csv", [(3.0, 2.5), (2.0, None)])
    assert read_training_log(log) == {"train": [(1, 3.0), (2, 2.0)], "val": [(1, 2.5)]}
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,2\n")
    with pytest.raises(InputError, match="bad.csv.*split"):
        read_training_log(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="broken.json"):
        build_report([broken], [], [], tmp_path / "t", tmp_path / "p")


def test_smooth_is_a_bias_corrected_ema_over_steps():
    from math import exp

    assert smooth([(10, 4.0)], tau=5) == [4.0]  # no pull toward 0 at the start
    got = smooth([(1, 1.0), (2, 3.0), (4, 5.0)], tau=2.0)
    w1, w2 = exp(-0.5), exp(-1.0)  # one step, then a two-step gap in the log
    assert got[1] == pytest.approx((w1 * 1 + 3) / (w1 + 1))
    assert got[2] == pytest.approx((w2 * (w1 * 1 + 3) + 5) / (w2 * (w1 + 1) + 1))


def test_plots_read_well(tmp_path, monkeypatch):
    """gen ppl on a log axis (it spans AR ~20 to few-step samplers ~10^4); the loss panel draws each stage's raw
    train loss faint under a smoothed curve named in the legend."""
    from eval import report

    figures = {}
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: figures.__setitem__(path.name, fig))
    rows = [{"run": "cascade", "sampler": "ddpm_cache", "steps": s, "gen_ppl": p} for s, p in ((16, 7e4), (64, 900))]
    rows.append({"run": "ar", "sampler": "ar", "steps": 64, "gen_ppl": 20.0})
    report.plot_gen_ppl(rows, tmp_path / "gen_ppl_steps.png")
    assert figures["gen_ppl_steps.png"].axes[0].get_yscale() == "log"
    log = training_log(tmp_path / "r/stage1/metrics.csv", [(5.0 - step / 100, None) for step in range(200)])
    report.plot_losses([log], tmp_path / "loss.png")
    lines = figures["loss.png"].axes[0].get_lines()
    raw = [line for line in lines if line.get_alpha() is not None and line.get_alpha() < 0.5]
    smoothed = [line for line in lines if "EMA" in line.get_label()]
    assert len(raw) == 1 and len(smoothed) == 1 and len(raw[0].get_xdata()) == len(smoothed[0].get_xdata()) == 200
    # a falling curve: the trailing average lags above the raw loss, but never by more than the steps it averages
    assert all(0 <= s - r <= 0.1 for r, s in zip(raw[0].get_ydata(), smoothed[0].get_ydata()))
    import matplotlib.pyplot as plt

    plt.close("all")
