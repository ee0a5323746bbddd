"""The ATAT ablation through the real DAG (configs/atat-tiny.yaml): two importance variants x two seeds of objective
atat on packed pydoc blocks, each model folder with its importance estimator, samples from the uncertainty sampler,
the plain validation NELBO, and the ablation table with mean and spread over seeds. The cluster recipe
(configs/atat-wikitext103.yaml) is planned with a dry run."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import offline_env, snakemake
from eval.atat import seed_test
from train.importance import IMPORTANCE_FILE

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "atat-tiny.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    work = tmp_path_factory.mktemp("atat")
    snakemake(work, "results/atat-tiny/tables/atat.md", configfiles=(CONFIG,))
    return work


def test_every_run_keeps_its_estimator_and_reports_the_plain_nelbo(ablation):
    for variant in ("full", "uniform"):
        for seed in (0, 1):
            run = ablation / "runs" / f"atat-{variant}-s{seed}"
            meta = json.loads((run / "model" / "config.json").read_text())
            assert meta["objective"] == "mdlm" and meta["training_objective"] == "atat"
            assert meta["atat"]["importance"] == variant and meta["train"]["seed"] == seed
            assert (run / "model" / IMPORTANCE_FILE).is_file()
            val = json.loads((run / "eval" / "val.json").read_text())["stages"]["stage3"]
            assert val["objective"] == "mdlm" and math.isfinite(val["nelbo"])
            samples = (run / "samples" / "uncertainty-4.jsonl").read_text().splitlines()
            assert len(samples) == 4


def test_table_has_mean_and_spread_per_variant(ablation):
    rows = list(csv.DictReader((ablation / "results" / "atat-tiny" / "tables" / "atat.csv").open()))
    nelbo = {r["variant"]: r for r in rows if r["metric"] == "val_nelbo"}
    assert set(nelbo) == {"full", "uniform"}
    for variant, row in nelbo.items():
        values = [json.loads((ablation / "runs" / f"atat-{variant}-s{s}" / "eval" / "val.json").read_text())
                  ["stages"]["stage3"]["nelbo"] for s in (0, 1)]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        assert float(row["mean"]) == pytest.approx(sum(values) / 2)
        assert float(row["sd"]) == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert nelbo["uniform"]["diff_vs_uniform"] == ""
    assert float(nelbo["full"]["diff_vs_uniform"]) == pytest.approx(float(nelbo["full"]["mean"]) - float(nelbo["uniform"]["mean"]))
    assert {r["sampler"] for r in rows if r["metric"] == "entropy"} == {"uncertainty"}
    md = (ablation / "results" / "atat-tiny" / "tables" / "atat.md").read_text()
    assert "| full | 2 |" in md and "| uniform | 2 |" in md and "Welch" in md


def test_seed_test_is_a_welch_t_test():
    p, exceeds = seed_test([1.0, 1.1], [2.0, 2.1])
    assert exceeds and p < 0.05
    p, exceeds = seed_test([1.0, 2.0], [1.2, 2.2])
    assert not exceeds and p > 0.5
    assert seed_test([1.0], [1.0, 2.0]) == ("", "")
    assert seed_test([1.0, 1.0], [1.0, 1.0]) == (1.0, False)


def test_wikitext103_recipe_plans_the_same_ablation(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "--quiet",
         "rules", "--configfile", str(ROOT / "configs" / "atat-wikitext103.yaml")],
        capture_output=True, text=True, env=offline_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = {parts[0]: int(parts[1]) for parts in (line.split() for line in proc.stdout.splitlines())
              if len(parts) == 2 and parts[1].isdigit()}
    assert counts["train"] == 4 * 3 + 1  # four variants x three seeds, and the AR scorer
    assert counts["atat_report"] == 1 and "annotate" not in counts
    assert counts["sample"] == 4 * 3 * 3 + 1  # each diffusion run x three samplers, the AR run once
