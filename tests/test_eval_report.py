"""The report on a hand-made pair of runs: table rows, values, and plots from hand-written JSON and CSV."""
import csv
import json

import pytest

from eval.report import build_report, read_training_log, smooth
from common.io import InputError


def metric(value):
    return {"value": value, "definition": "hand-made"}


def sample_json(path, run, kind, sampler, steps, gen_ppl, retention=None):
    metrics = {"gen_ppl": metric(gen_ppl), "unigram_entropy": metric(2.5), "distinct_1": metric(0.5),
               "distinct_2": metric(0.8), "distinct_3": metric(0.9), "seconds_per_sample": metric(0.25),
               "tokens_per_second": metric(448.0)}
    for pair, value in (retention or {}).items():
        metrics[f"prefix_retention_{pair}"] = metric(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run, "kind": kind, "method": "keybert", "objective": "mdlm",
                                "sampler": sampler, "steps": steps, "metrics": metrics}))
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
        sample_json(runs / "single/eval/ddpm_cache-64.json", "single", "single", "ddpm_cache", 64, 80.0),
        sample_json(runs / "cascade/eval/ddpm_cache-64.json", "cascade", "cascade", "ddpm_cache", 64, 50.0,
                    {"stage1_stage2": 0.9, "stage2_stage3": 0.7}),
        sample_json(runs / "cascade/eval/ddpm_cache-16.json", "cascade", "cascade", "ddpm_cache", 16, 70.0,
                    {"stage1_stage2": 0.8, "stage2_stage3": 0.6}),
    ]
    val = runs / "cascade/eval/val.json"
    val.write_text(json.dumps({"run": "cascade", "total": {"nelbo": 4.0, "ppl": 54.598},
                               "stages": {"stage1": {"nelbo": 5.0}, "stage2": {"nelbo": 4.5},
                                          "stage3": {"nelbo": 3.0}}}))
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
    assert rows[2]["val_nelbo"] == "" and rows[2]["retention"] == ""  # the single run has no val.json here
    md = (tables / "main.md").read_text().splitlines()
    assert md[0].startswith("| run | kind |") and "| single | single |" in md[4]
    assert md[4].split(" | ")[6] == "-"  # missing val NELBO is a dash, not a zero
    tex = (tables / "main.tex").read_text()
    assert "ddpm\\_cache" in tex and tex.count("\\\\") == 4  # header + 3 rows
    for name in ("loss.png", "gen_ppl_steps.png"):
        assert (plots / name).stat().st_size > 1000
    assert not list(tables.glob(".*tmp")) and not list(plots.glob(".*tmp"))


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
