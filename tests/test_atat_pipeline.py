"""The ATAT ablation through the real DAG (configs/atat.yaml's offline twin, configs/twins/atat.yaml, tests marked
slow): four importance variants x two seeds of objective atat on packed pydoc blocks, each model folder with its
importance estimator, samples from the uncertainty sampler, the plain validation NELBO, and the ablation table with
mean and spread over seeds. The cluster recipe's twin (configs/twins/atat-wikitext103.yaml) runs in
tests/test_twins.py. The table's seed test and its verdict in words are
also checked on hand-made run folders (fast)."""

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import snakemake, twin

from eval.atat import seed_test, table_rows, write_table
from train.importance import IMPORTANCE_FILE

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow
VARIANTS = ("full", "learned", "frequency", "uniform")


@pytest.fixture(scope="module")
def ablation(workspace):
    """The ablation table of the twin and what it needs, in the session's workspace (the corpus, tokenizer and
    blocks are those of the other pydoc twins)."""
    snakemake(workspace, "results/atat-twin/tables/atat.md", configfiles=twin("atat"))
    return workspace


@slow
def test_every_run_keeps_its_estimator_and_reports_the_plain_nelbo(ablation):
    for variant in VARIANTS:
        for seed in (0, 1):
            run = ablation / "runs" / "atat-twin" / f"atat-{variant}-s{seed}"
            meta = json.loads((run / "model" / "config.json").read_text())
            assert meta["objective"] == "mdlm" and meta["training_objective"] == "atat"
            assert meta["atat"]["importance"] == variant and meta["train"]["seed"] == seed
            assert (run / "model" / IMPORTANCE_FILE).is_file()
            val = json.loads((run / "eval" / "val.json").read_text())["stages"]["stage3"]
            assert val["objective"] == "mdlm" and math.isfinite(val["nelbo"])
            samples = (run / "samples" / "uncertainty-4.jsonl").read_text().splitlines()
            assert len(samples) == 4


@slow
def test_table_has_mean_and_spread_per_variant(ablation):
    rows = list(csv.DictReader((ablation / "results" / "atat-twin" / "tables" / "atat.csv").open()))
    nelbo = {r["variant"]: r for r in rows if r["metric"] == "val_nelbo"}
    assert set(nelbo) == set(VARIANTS)
    for variant, row in nelbo.items():
        values = [
            json.loads((ablation / "runs" / "atat-twin" / f"atat-{variant}-s{s}" / "eval" / "val.json").read_text())[
                "stages"
            ]["stage3"]["nelbo"]
            for s in (0, 1)
        ]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        assert float(row["mean"]) == pytest.approx(sum(values) / 2)
        assert float(row["sd"]) == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert nelbo["uniform"]["diff_vs_uniform"] == ""
    assert float(nelbo["full"]["diff_vs_uniform"]) == pytest.approx(
        float(nelbo["full"]["mean"]) - float(nelbo["uniform"]["mean"])
    )
    assert {r["sampler"] for r in rows if r["metric"] == "entropy"} == {"uncertainty"}
    md = (ablation / "results" / "atat-twin" / "tables" / "atat.md").read_text()
    assert "| full | 2 |" in md and "| uniform | 2 |" in md and "Welch" in md


def test_seed_test_is_a_welch_t_test():
    p, exceeds = seed_test([1.0, 1.1], [2.0, 2.1])
    assert exceeds and p < 0.05
    p, exceeds = seed_test([1.0, 2.0], [1.2, 2.2])
    assert not exceeds and p > 0.5
    assert seed_test([1.0], [1.0, 2.0]) == ("", "")
    assert seed_test([1.0, 1.0], [1.0, 1.0]) == (1.0, False)


def fake_runs(root: Path, nelbo: dict) -> list[Path]:
    """runs/{variant}-s{seed}/ with the model folder's config.json and eval/val.json the table reads, one per
    (variant, seed) of ``nelbo`` = {variant: [val NELBO of seed 0, seed 1, ...]}; returns the val.json paths."""
    paths = []
    for variant, values in nelbo.items():
        for seed, value in enumerate(values):
            run = root / "runs" / f"{variant}-s{seed}"
            (run / "model").mkdir(parents=True)
            (run / "eval").mkdir()
            (run / "model" / "config.json").write_text(
                json.dumps({"objective": "mdlm", "training_objective": "atat", "atat": {"importance": variant}})
            )
            val = {"stages": {"stage3": {"nelbo": value, "ppl": math.exp(value)}}, "provenance": {"seed": seed}}
            (run / "eval" / "val.json").write_text(json.dumps(val))
            paths.append(run / "eval" / "val.json")
    return paths


@pytest.mark.parametrize(
    "nelbo, says, why",
    [
        (
            {"full": [3.0], "uniform": [3.5]},
            "could not be run for any difference",
            "one seed, no spread (full: 1 seed, uniform: 1 seed)",
        ),
        (
            {"full": [3.0, 3.1], "frequency": [3.2, 3.3]},
            "could not be run for any difference",
            "no uniform run (atat.importance: uniform), so no baseline to compare with",
        ),
        (
            {"full": [3.0, 3.1], "learned": [3.0], "uniform": [3.02, 3.12]},
            "No tested difference from uniform exceeds",
            "one seed, no spread (learned: 1 seed, uniform: 2 seeds)",
        ),
        ({"full": [3.0, 3.1], "uniform": [3.02, 3.12]}, "No difference from uniform exceeds the seed spread.", None),
    ],
)
def test_table_says_when_the_seed_test_could_not_be_run(tmp_path, nelbo, says, why):
    """ "No difference exceeds the seed spread" only of differences tested: a side with one seed has no spread and a
    table without a uniform run no baseline, and the table says so (in words and the CSV's not_tested)."""
    rows = table_rows(fake_runs(tmp_path, nelbo), [])
    write_table(rows, tmp_path / "tables")
    md = (tmp_path / "tables" / "atat.md").read_text()
    csv_rows = list(csv.DictReader((tmp_path / "tables" / "atat.csv").open()))
    assert says in md
    untested = {r["not_tested"] for r in csv_rows if r["not_tested"]}
    if why is None:
        assert "could not be run" not in md and not untested
        assert all(r["p_value"] != "" for r in csv_rows if r["variant"] != "uniform")
    else:
        assert why in md and untested == {why}
        assert "No difference from uniform exceeds" not in md
        assert all(r["p_value"] == "" and r["exceeds_seed_spread"] == "" for r in csv_rows if r["not_tested"])
