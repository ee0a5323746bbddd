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

from common.io import InputError
from eval.atat import seed_test, table_rows, write_table
from train.importance import IMPORTANCE_FILE

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow
VARIANTS = ("full", "learned", "frequency", "uniform")


@pytest.fixture(scope="module")
def ablation(recipe_workspace):
    """The ablation table of the twin and what it needs, in the recipes' workspace (tests/conftest.py)."""
    snakemake(recipe_workspace, "results/atat-twin/tables/atat.md", configfiles=twin("atat"))
    return recipe_workspace


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
    assert "| full | single | 2 |" in md and "| uniform | single | 2 |" in md and "Welch" in md


def test_seed_test_is_a_welch_t_test():
    p, exceeds = seed_test([1.0, 1.1], [2.0, 2.1])
    assert exceeds and p < 0.05
    p, exceeds = seed_test([1.0, 2.0], [1.2, 2.2])
    assert not exceeds and p > 0.5
    assert seed_test([1.0], [1.0, 2.0]) == ("", "")
    assert seed_test([1.0, 1.0], [1.0, 1.0]) == (1.0, False)


def fake_record(run: str, kind: str, stage: int, seed: int, variant: str) -> dict:
    """A model folder's config.json as the trainer writes it for a run of objective atat (variant = its
    atat.importance) or, for variant "mdlm", a plain mdlm run: every key read_meta requires and the record's."""
    atat = variant != "mdlm"
    return {
        "model": {},
        "objective": "mdlm",
        "noise": {"type": "loglinear"},
        "stage": stage,
        "prefix_len": 0,
        "target_len": 8,
        "vocab_size": 16,
        "mask_id": 15,
        "eos_id": 0,
        "bos_id": 0,
        "tokenizer": "tokenizer",
        "training_objective": "atat" if atat else "mdlm",
        "atat": {"importance": variant} if atat else None,
        "run": run,
        "kind": kind,
        "settings_digest": f"{run}-digest",
        "code_commit": "c0ffee",
        "train": {"seed": seed},
    }


def fake_run(root: Path, name: str, variant: str, seed: int, stage_nelbos: list[float], kind: str = "single") -> Path:
    """runs/{name}/ with the model folders (config.json, an empty model.safetensors) and the eval/val.json the table
    reads: a single run's model/ and one stage, a cascade's stage1..3/ with ``stage_nelbos`` per stage (nats per
    stage token; stage k has k * 4 tokens) and their total per stage-3 token, as eval.likelihood.run_validation
    writes it. Returns the val.json path."""
    run = root / "runs" / name
    folders = ["model"] if kind == "single" else [f"stage{k}" for k in range(1, len(stage_nelbos) + 1)]
    stages, nats = {}, 0.0
    for k, (folder, nelbo) in enumerate(zip(folders, stage_nelbos), 1 if kind == "cascade" else 3):
        (run / folder).mkdir(parents=True)
        (run / folder / "model.safetensors").touch()
        (run / folder / "config.json").write_text(json.dumps(fake_record(name, kind, k, seed, variant)))
        tokens = 4 * k
        stages[f"stage{k}"] = {"nelbo": nelbo, "ppl": math.exp(nelbo), "tokens": tokens, "nats": nelbo * tokens}
        nats += nelbo * tokens
    total = nats / 12  # the stage-3 tokens
    val = {
        "run": name,
        "stages": stages,
        "total": {"nelbo": total, "ppl": math.exp(total), "tokens": 12},
        "provenance": {"settings_digest": f"{name}-digest", "seed": seed, "code_commit": "c0ffee"},
    }
    (run / "eval").mkdir()
    (run / "eval" / "val.json").write_text(json.dumps(val))
    return run / "eval" / "val.json"


def fake_runs(root: Path, nelbo: dict, kind: str = "single") -> list[Path]:
    """runs/{variant}-s{seed}/ (fake_run), one per (variant, seed) of ``nelbo`` = {variant: [val NELBO of seed 0,
    seed 1, ...]} (a cascade: that NELBO at every stage); returns the val.json paths."""
    return [
        fake_run(root, f"{variant}-s{seed}", variant, seed, [value] * (3 if kind == "cascade" else 1), kind)
        for variant, values in nelbo.items()
        for seed, value in enumerate(values)
    ]


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
            "no uniform run of kind single (atat.importance: uniform), so no baseline to compare with",
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


def test_a_cascade_atat_run_is_its_own_row_with_the_cascade_nelbo(tmp_path):
    """A cascade of objective atat is read through its record (stage3's config.json: there is no model/), its
    val_nelbo is the cascade's total (the stage NELBOs summed per stage-3 token, as the main table), and it is a row
    of its own beside the single runs of the same variant, compared with the uniform cascade, not the single one."""
    paths = fake_runs(tmp_path / "single", {"full": [3.0, 3.1], "uniform": [3.02, 3.12]})
    paths += [
        fake_run(tmp_path / "cascade", "cascade-full-s0", "full", 0, [1.0, 2.0, 4.0], kind="cascade"),
        fake_run(tmp_path / "cascade", "cascade-full-s1", "full", 1, [1.0, 2.0, 4.2], kind="cascade"),
        fake_run(tmp_path / "cascade", "cascade-uniform-s0", "uniform", 0, [1.5, 2.5, 4.5], kind="cascade"),
    ]
    rows = table_rows(paths, [])
    nelbo = {(r["variant"], r["kind"]): r for r in rows if r["metric"] == "val_nelbo"}
    assert set(nelbo) == {("full", "single"), ("uniform", "single"), ("full", "cascade"), ("uniform", "cascade")}
    # (1 * 4 + 2 * 8 + 4 * 12) / 12 nats per stage-3 token, not stage 3's 4.0
    s0, s1 = (4 + 16 + 48) / 12, (4 + 16 + 4.2 * 12) / 12
    assert nelbo[("full", "cascade")]["values"] == f"{s0:.6g} {s1:.6g}"
    assert nelbo[("full", "cascade")]["mean"] == pytest.approx((s0 + s1) / 2)
    assert nelbo[("full", "cascade")]["diff_vs_uniform"] == pytest.approx((s0 + s1) / 2 - (6 + 20 + 54) / 12)
    assert nelbo[("full", "cascade")]["not_tested"] == "one seed, no spread (full: 2 seeds, uniform: 1 seed)"
    assert nelbo[("full", "single")]["diff_vs_uniform"] == pytest.approx(3.05 - 3.07)
    assert nelbo[("full", "single")]["p_value"] != ""
    write_table(rows, tmp_path / "tables")
    md = (tmp_path / "tables" / "atat.md").read_text()
    assert "| full | cascade | 2 |" in md and "| uniform | cascade | 1 |" in md and "| full | single | 2 |" in md
    assert "- full (cascade) (val_nelbo, val_ppl): one seed, no spread" in md
    csv_rows = list(csv.DictReader((tmp_path / "tables" / "atat.csv").open()))
    assert {(r["variant"], r["kind"]) for r in csv_rows} == set(nelbo)


def test_two_runs_of_one_variant_kind_and_seed_are_an_error_naming_both(tmp_path):
    """Two runs the table would file under the same (variant, kind, seed) are refused, not one silently dropped;
    the same variant and seed as a cascade and as a single run are two rows, not a clash."""
    paths = fake_runs(tmp_path, {"full": [3.0], "uniform": [3.5]})
    paths.append(fake_run(tmp_path, "full-again", "full", 0, [2.9]))
    a, b = tmp_path / "runs" / "full-s0", tmp_path / "runs" / "full-again"
    with pytest.raises(InputError, match=f"runs {a} and {b} are both variant full, kind single, seed 0"):
        table_rows(paths, [])
    cascade = fake_run(tmp_path / "c", "full-cascade", "full", 0, [1.0, 1.0, 1.0], kind="cascade")
    rows = table_rows([*paths[:2], cascade], [])
    assert {(r["variant"], r["kind"], r["seeds"]) for r in rows if r["metric"] == "val_nelbo"} == {
        ("full", "single", "0"),
        ("uniform", "single", "0"),
        ("full", "cascade", "0"),
    }


def test_an_eval_file_of_another_training_is_an_error(tmp_path):
    """A val.json whose provenance is not its run's record (the run was retrained since) is refused."""
    (path,) = fake_runs(tmp_path, {"full": [3.0]})
    val = json.loads(path.read_text())
    val["provenance"]["settings_digest"] = "another"
    path.write_text(json.dumps(val))
    with pytest.raises(InputError, match=r"val.json: provenance .*another.* differs from the record of its run"):
        table_rows([path], [])


def test_sample_metrics_of_a_cascade_are_filed_under_its_variant_and_kind(tmp_path):
    """A cascade's sample-metrics files go to the cascade's rows, with the seed of its record."""
    val = fake_run(tmp_path, "casc-full", "full", 3, [1.0, 1.0, 1.0], kind="cascade")
    sample = val.with_name("uncertainty-4.json")
    sample.write_text(
        json.dumps(
            {
                "sampler": "uncertainty",
                "steps": 4,
                "metrics": {"gen_ppl": {"value": 50.0}, "unigram_entropy": {"value": 2.5}},
                "provenance": {"settings_digest": "casc-full-digest", "seed": 3, "code_commit": "c0ffee"},
            }
        )
    )
    rows = {(r["variant"], r["kind"], r["metric"]): r for r in table_rows([val], [sample])}
    assert rows[("full", "cascade", "gen_ppl")]["mean"] == 50.0 and rows[("full", "cascade", "gen_ppl")]["seeds"] == "3"
    assert rows[("full", "cascade", "entropy")]["steps"] == 4
