"""The inserting-stage comparison (configs/insert.yaml): what its DAG plans (fast, dry run), the table on hand-made
run folders (fast), and its offline twin (configs/twins/insert.yaml) through the real DAG after the tiny config's,
whose corpus, tokenizer and stage shards it reuses (tests marked slow): the seed's cascade, the inserting cascades
with uniform and learned placement and the single model, two seeds each, and the table with mean and spread over
seeds."""

import csv
import json
from pathlib import Path

import pytest
from conftest import CONFIGS, dry_run_counts, merged_config, snakemake, twin
from test_atat_pipeline import fake_record

from common.io import InputError
from eval.insert import table_rows, write_table
from train.settings import compute_matched_steps

slow = pytest.mark.slow
VARIANTS = ("repredict", "insert-uniform", "insert-learned", "single")
TWIN_RUNS = "runs/insert-twin"
TABLE = "results/insert-twin/tables/insert.csv"


# -- the recipe -------------------------------------------------------------------------------------------------


def test_the_recipe_trains_every_variant_at_equal_compute():
    """Tokens read per batch row (docs/design.md, Inserting stages: Compute): the inserting cascades' steps give
    back what their cheaper stages save, to within one single-model step; the single models match their cascade."""
    config = merged_config((CONFIGS / "insert.yaml",))
    from common.workflow import Plan

    plan = Plan(config)
    lengths = config["stages"]["lengths"]
    tokens = {}
    for run, spec in config["runs"].items():
        if spec["kind"] == "ar":
            continue
        steps = [plan.train[(run, name)].max_steps for name in plan.model_names(run)]
        if spec["kind"] == "single":
            tokens[run] = steps[0] * lengths[-1]
        else:
            inserting = spec.get("stage_form") == "insert"
            tokens[run] = compute_matched_steps(steps, lengths, inserting=inserting) * lengths[-1]
    assert len(tokens) == 8 and {config["runs"][r]["seed"] for r in tokens} == {0, 1}
    assert max(tokens.values()) - min(tokens.values()) <= lengths[-1], tokens


def test_the_recipe_plans_placing_samplers_for_the_seeds_cascade_only(tmp_path):
    """{sampler}_placed: the re-predicting cascades only (an inserting stage refuses to place again); the table is
    part of the default target."""
    counts = dry_run_counts(tmp_path, (CONFIGS / "insert.yaml",))
    plain, placed, steps = 2, 2, 2  # ddpm_cache, confidence; their _placed; steps 16, 64
    assert counts["sample"] == 2 * (plain + placed) * steps + 6 * plain * steps + 1
    assert counts["train"] == 6 * 3 + 2 + 1
    assert counts["insert_report"] == 1 and counts["report"] == 1


# -- the table on hand-made runs ---------------------------------------------------------------------------------


def record(run: str, kind: str, stage: int, seed: int, form: str, placement) -> dict:
    """A model folder's config.json (test_atat_pipeline.fake_record of a plain mdlm run), with an inserting stage's
    stage_form and placement."""
    meta = fake_record(run, kind, stage, seed, "mdlm")
    if form == "insert" and stage > 1:
        meta.update(stage_form="insert", placement=placement)
    return meta


def fake_run(root: Path, variant: str, seed: int, nats: list[float], retention: float | None = None) -> list[Path]:
    """runs/{variant}-s{seed}/: model folders, val.json (a cascade: ``nats`` per stage, an inserting stage's split
    2 : 1 into placement : infill; a single model: one stage) over 10 stage-3 tokens, and ddpm_cache-4.json."""
    name = f"{variant}-s{seed}"
    kind = "single" if variant == "single" else "cascade"
    form, placement = ("insert", variant.split("-")[1]) if variant.startswith("insert") else ("repredict", None)
    folders = ["model"] if kind == "single" else ["stage1", "stage2", "stage3"]
    run, stages = root / "runs" / name, {}
    for k, (folder, n) in enumerate(zip(folders, nats), 1 if kind == "cascade" else 3):
        (run / folder).mkdir(parents=True)
        (run / folder / "model.safetensors").touch()
        (run / folder / "config.json").write_text(json.dumps(record(name, kind, k, seed, form, placement)))
        stages[folder] = {"nats": n, "tokens": 10 if k == 3 else 5 * k}
        if form == "insert" and k > 1:
            stages[folder].update(stage_form="insert", placement_nats=2 * n / 3, infill_nats=n / 3)
    provenance = {"settings_digest": f"{name}-digest", "seed": seed, "code_commit": "c0ffee"}
    total = {"nelbo": sum(nats) / 10, "tokens": 10}
    (run / "eval").mkdir()
    (run / "eval" / "val.json").write_text(json.dumps({"stages": stages, "total": total, "provenance": provenance}))
    metrics = {"unigram_entropy": {"value": 2.0 + seed}, "gen_ppl": {"value": 50.0 + seed}}
    if retention is not None:
        metrics |= {
            "prefix_retention_stage1_stage2": {"value": retention},
            "prefix_retention_stage2_stage3": {"value": 1},
        }
    sample = {"sampler": "ddpm_cache", "steps": 4, "metrics": metrics, "provenance": provenance}
    (run / "eval" / "ddpm_cache-4.json").write_text(json.dumps(sample))
    return [run / "eval" / "val.json", run / "eval" / "ddpm_cache-4.json"]


def fake_table(root: Path, seeds=(0, 1)) -> list[dict]:
    """repredict (bound 10 + seed), insert-uniform (7 + seed) over seeds; single (5), one seed."""
    files = []
    for seed in seeds:
        files += fake_run(root, "repredict", seed, [20, 30, 50 + 10 * seed], retention=0.5)
        files += fake_run(root, "insert-uniform", seed, [20, 30, 20 + 10 * seed], retention=1.0)
    files += fake_run(root, "single", 0, [50])
    rows = table_rows([f for f in files if f.name == "val.json"], [f for f in files if f.name != "val.json"])
    write_table(rows, root / "tables")
    return rows


def test_table_rows_have_mean_spread_split_and_gap(tmp_path):
    rows = {r["variant"]: r for r in fake_table(tmp_path)}
    assert list(rows) == ["repredict", "insert-uniform", "single"]
    seed_cascade, insert, single = rows["repredict"], rows["insert-uniform"], rows["single"]
    assert seed_cascade["n_seeds"] == 2 and seed_cascade["seeds"] == "0 1"
    assert seed_cascade["bound_mean"] == pytest.approx(10.5) and seed_cascade["bound_sd"] == pytest.approx(1 / 2**0.5)
    assert seed_cascade["stage3_placement_mean"] is None and seed_cascade["stage3_infill_mean"] == pytest.approx(5.5)
    assert insert["stage3_placement_mean"] == pytest.approx(2.5 * 2 / 3)
    assert insert["stage1_infill_mean"] == pytest.approx(2.0) and insert["stage2_placement_mean"] == pytest.approx(2.0)
    for row in (seed_cascade, insert):
        split = [row[f"{m}_mean"] for m in ("stage1_infill", "stage2_placement", "stage2_infill")]
        split += [row[f"{m}_mean"] for m in ("stage3_placement", "stage3_infill")]
        assert sum(v for v in split if v is not None) == pytest.approx(row["bound_mean"])
    assert insert["retention_mean"] == 1.0 and seed_cascade["retention_mean"] == 0.75
    assert single["retention_mean"] is None and single["stage1_infill_mean"] is None
    assert insert["gap_closed"] == pytest.approx((10.5 - 7.5) / (10.5 - 5.0)) and seed_cascade["gap_closed"] is None
    assert single["n_seeds"] == 1 and single["bound_sd"] is None
    assert insert["runs"] == "insert-uniform-s0 insert-uniform-s1" and insert["code_commit"] == "c0ffee"
    md = (tmp_path / "tables" / "insert.md").read_text()
    assert "| single | ddpm_cache-4 | 1 (no spread) | 5.000 |" in md
    assert "| repredict | ddpm_cache-4 | 2 | 10.500 ± 0.707 |" in md
    assert "insert-uniform closes 55% of the bound gap" in md and "- single: 1 seed (0), no spread" in md
    with (tmp_path / "tables" / "insert.csv").open() as f:
        written = list(csv.DictReader(f))
    assert written[2]["bound_sd"] == "" and float(written[1]["gap_closed"]) == pytest.approx(3 / 5.5)


def test_a_val_json_whose_stages_do_not_sum_to_its_total_is_refused(tmp_path):
    files = fake_run(tmp_path, "repredict", 0, [1, 2, 3])
    val = json.loads(files[0].read_text())
    val["total"]["nelbo"] += 0.1
    files[0].write_text(json.dumps(val))
    with pytest.raises(InputError, match=r"val.json: the stages' nats per stage-3 token sum to 0.6, total.nelbo"):
        table_rows(files[:1], [])


def test_two_runs_of_one_variant_and_seed_are_refused(tmp_path):
    first = fake_run(tmp_path, "insert-learned", 0, [1, 2, 3])
    second = fake_run(tmp_path / "other", "insert-learned", 0, [1, 2, 3])
    with pytest.raises(InputError, match=r"both variant insert-learned, kind cascade, seed 0 .*stage_form / placement"):
        table_rows([first[0], second[0]], [])


# -- the twin through the real DAG -------------------------------------------------------------------------------


def data_files(root: Path) -> dict[str, int]:
    """{path: mtime_ns} of every file under data/."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted((root / "data").rglob("*")) if p.is_file()}


SEED0 = [f"{variant}-s0" for variant in VARIANTS[:3]]  # what the twin runs for real: seed 0 of each cascade form
SAMPLES = "samples/ddpm_cache-4.jsonl"


@pytest.fixture(scope="module")
def comparison(demo):
    """Seed 0 of every cascade form of the twin through the real DAG, in the session's workspace after the tiny
    config's (whose corpus, tokenizer and stage shards it reads): the seed's cascade sampled with the placing
    sampler, both inserting cascades sampled and validated (their bound split). The rest is planned, not run (as
    for the paper's twin: more of the same jobs, minutes of CPU): the other seed, the single models (tiny runs one
    with match_compute), the AR scorer and sample metrics, the table (tested on hand-made runs above).
    Returns (workspace, data/ before, data/ after)."""
    before = data_files(demo)
    targets = [f"{TWIN_RUNS}/{run}/eval/val.json" for run in SEED0[1:]]
    targets += [f"{TWIN_RUNS}/{run}/{SAMPLES}" for run in SEED0[1:]]
    targets += [f"{TWIN_RUNS}/repredict-s0/samples/ddpm_cache_placed-4.jsonl"]
    snakemake(demo, *targets, configfiles=twin("insert"))
    return demo, before, data_files(demo)


def kept_in_order(given: list[int], sample: list[int]) -> bool:
    """Whether ``given`` is a subsequence of ``sample`` (every given token kept, in order)."""
    rest = iter(sample)
    return all(token in rest for token in given)


@slow
def test_the_twin_reuses_the_tiny_configs_data_and_trains_every_form(comparison):
    comparison, before, after = comparison
    assert after == before, "the twin built or rebuilt a data folder: its data settings are not tiny's"
    for placement in ("uniform", "learned"):
        stage3 = comparison / TWIN_RUNS / f"insert-{placement}-s0" / "stage3"
        meta = json.loads((stage3 / "config.json").read_text())
        assert (meta["stage_form"], meta["placement"], meta["train"]["seed"]) == ("insert", placement, 0)
        assert (stage3 / "placement.safetensors").is_file() == (placement == "learned")
    repredict = comparison / TWIN_RUNS / "repredict-s0"
    assert "stage_form" not in json.loads((repredict / "stage3" / "config.json").read_text())
    # the rest of the comparison is planned: seed 1's cascades, both single models, the AR scorer, the table
    counts = dry_run_counts(comparison, twin("insert"))
    assert counts["train"] == 3 * 3 + 2 + 1 and counts["insert_report"] == 1 and "annotate" not in counts
    assert counts["sample"] == 2 + 1 + 1 + 2 + 1 + 1  # seed 1: plain and placing, 2 inserting; 2 single; AR; s0 plain


@slow
def test_every_given_token_is_kept_by_inserting_and_placing_samples(comparison):
    """Retention 1 by construction: in every sample of an inserting cascade, and of the seed's cascade under the
    placing sampler, each stage's tokens are in the next stage's, in order."""
    runs = comparison[0] / TWIN_RUNS
    files = [runs / run / SAMPLES for run in SEED0[1:]] + [runs / "repredict-s0/samples/ddpm_cache_placed-4.jsonl"]
    for path in files:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 4, path
        for row in rows:
            assert kept_in_order(row["stage1_ids"], row["stage2_ids"]), path
            assert kept_in_order(row["stage2_ids"], row["stage3_ids"]), path


@slow
def test_an_inserting_runs_bound_is_its_placement_and_infill_nats(comparison):
    """val.json of an inserting cascade (eval.insert.bound_split): per stage, nats = placement + infill, and the
    table's split of the real run sums to its bound per stage-3 token."""
    runs = comparison[0] / TWIN_RUNS
    rows = table_rows([runs / run / "eval" / "val.json" for run in SEED0[1:]], [])
    assert {r["variant"] for r in rows} == {"insert-uniform", "insert-learned"}
    for row in rows:
        val = json.loads((runs / f"{row['variant']}-s0" / "eval" / "val.json").read_text())
        for name in ("stage2", "stage3"):
            stage = val["stages"][name]
            assert stage["nats"] == pytest.approx(stage["placement_nats"] + stage["infill_nats"])
            assert stage["placement_nats"] > 0
        assert row["n_seeds"] == 1 and row["bound_mean"] == pytest.approx(val["total"]["nelbo"])
        split = [row[f"{m}_mean"] for m in ("stage1_infill", "stage2_placement", "stage2_infill")]
        split += [row[f"{m}_mean"] for m in ("stage3_placement", "stage3_infill")]
        assert sum(split) == pytest.approx(row["bound_mean"])
