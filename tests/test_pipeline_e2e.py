"""The real Snakemake DAG on configs/tiny.yaml, offline, end to end (the `demo` fixture, tests/conftest.py);
then one shard rerun byte for byte, and the exact jobs a changed setting reruns."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import layout, snakemake

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tiny():
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def test_preprocessing_outputs(demo):
    paths = layout()
    raw_stats = json.loads((demo / paths.raw("train") / "stats.json").read_text())
    assert raw_stats["documents_written"] == tiny()["corpus"]["max_docs"]
    raw_rows = sum(pq.read_table(p).num_rows for p in sorted((demo / paths.raw("train")).glob("shard_*.parquet")))
    assert raw_rows == raw_stats["documents_written"]
    l1, l2, l3 = tiny()["stages"]["lengths"]
    for method in ("constituency", "keybert", "keybert_no_stopword"):
        for split, n in (("train", 2), ("validation", 1)):
            for i in range(n):
                annot = demo / paths.annot(method, split) / f"shard_{i:05d}.parquet"
                stats = json.loads(annot.with_name(f"shard_{i:05d}.stats.json").read_text())
                table = pq.read_table(annot)
                assert table.num_rows == stats["documents_written"] > 0
                for ids, prio in zip(table.column("input_ids").to_pylist(), table.column("priority").to_pylist()):
                    assert len(ids) == len(prio) > 0
                stage = demo / paths.stages(method, split) / f"shard_{i:05d}.parquet"
                assert f"{l1}_{l2}_{l3}" in str(stage)
                rows = pq.read_table(stage).to_pylist()
                assert rows, stage
                for row in rows:
                    assert [len(row[f"stage{k}_ids"]) for k in (1, 2, 3)] == [l1, l2, l3]
    assert (demo / paths.tokenizer / "tokenizer.json").exists()
    # every rule left a log and a benchmark
    annot_log = paths.annot("keybert", "train").replace("data/", "", 1)
    assert (demo / "logs" / annot_log / "shard_00000.log").is_file()
    assert (demo / "benchmarks" / annot_log / "shard_00000.tsv").is_file()


def test_rerun_of_one_shard_is_byte_identical_and_alone(demo):
    target = f"{layout().annot('constituency', 'train')}/shard_00001.parquet"  # the cheapest method to rerun
    others = sorted(p for p in (demo / "data" / "pydoc").rglob("annot-*/**/*.parquet") if not str(p).endswith(target))
    assert others
    before = {p: p.stat().st_mtime_ns for p in others}
    digest = hashlib.sha256((demo / target).read_bytes()).hexdigest()
    proc = snakemake(demo, target, "--forcerun", "annotate")
    assert hashlib.sha256((demo / target).read_bytes()).hexdigest() == digest
    assert {p: p.stat().st_mtime_ns for p in others} == before  # no other shard was touched
    assert "1 of 1 steps (100%) done" in proc.stdout + proc.stderr  # exactly one job ran


def test_training_sampling_and_report(demo):
    import csv

    l1, l2, l3 = tiny()["stages"]["lengths"]
    for stage_dir in ("cascade/stage1", "cascade/stage2", "cascade/stage3", "single/model", "ar/model"):
        stage_dir = f"runs/tiny/{stage_dir}"
        for name in ("model.safetensors", "config.json", "metrics.csv"):
            assert (demo / stage_dir / name).exists(), f"{stage_dir}/{name}"
    mask_id = json.loads((demo / "runs/tiny/cascade/stage3/config.json").read_text())["mask_id"]
    samples = [
        json.loads(line) for line in (demo / "runs/tiny/cascade/samples/ddpm_cache-4.jsonl").read_text().splitlines()
    ]
    assert len(samples) == tiny()["sample"]["n"]
    for s in samples:
        assert [len(s[f"stage{k}_ids"]) for k in (1, 2, 3)] == [l1, l2, l3]
        assert all(mask_id not in s[f"stage{k}_ids"] for k in (1, 2, 3))
        assert isinstance(s["stage3_text"], str)
    with open(demo / "results" / "tiny" / "tables" / "main.csv") as f:
        rows = {(r["run"], r["sampler"], r["steps"]) for r in csv.DictReader(f)}
    assert rows == {("ar", "ar", str(l3)), ("cascade", "ddpm_cache", "4"), ("single", "ddpm_cache", "4")}
    for name in ("main.md", "main.tex"):
        assert (demo / "results" / "tiny" / "tables" / name).stat().st_size > 0
    for name in ("loss.png", "gen_ppl_steps.png"):
        assert (demo / "results" / "tiny" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def planned_jobs(workdir, *args) -> dict[str, int]:
    """{rule: jobs} that `snakemake -n` plans in ``workdir`` (the target `all`, so `all` itself is left out)."""
    proc = snakemake(workdir, "-n", "--quiet", "rules", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text[text.index("Job stats:") :].split("\n\n")[0].splitlines()[3:]
    jobs = {line.split()[0]: int(line.split()[1]) for line in stats}
    jobs.pop("all", None)
    jobs.pop("total", None)
    return jobs


@pytest.fixture(scope="module")
def up_to_date(demo):
    """The tiny workdir with nothing left to do. The forced shard rerun above rewrote one annotated shard byte for
    byte, which leaves what follows it older than its input: --touch marks those outputs current (their content
    is what a rerun would compute) instead of retraining them."""
    snakemake(demo, "--touch")
    assert planned_jobs(demo) == {}
    return demo


DOWNSTREAM_OF_TRAIN = {"evaluate_val": 3, "sample": 3, "evaluate": 3, "report": 1}
DOWNSTREAM_OF_ANNOTATE = {"annotate": 9, "stages": 9, "train": 5, **DOWNSTREAM_OF_TRAIN}


@pytest.mark.parametrize(
    "override, reruns",
    [
        # (setting changed on top of configs/tiny.yaml, the jobs that must rerun: exactly these)
        (
            "corpus={max_docs: 150}",
            {"corpus_train": 1, "corpus_validation": 1, "tokenizer": 1, **DOWNSTREAM_OF_ANNOTATE},
        ),
        ("tokenizer={vocab_size: 480}", {"tokenizer": 1, **DOWNSTREAM_OF_ANNOTATE}),
        ("annotate={max_doc_chars: 2000}", DOWNSTREAM_OF_ANNOTATE),
        ("annotate={threads: 2, batch_size: 8}", {}),  # speed only
        ("train={lr: 0.002}", {"train": 5, **DOWNSTREAM_OF_TRAIN}),
        ("runs={cascade: {lr: 0.002}}", {"train": 3, "evaluate_val": 1, "sample": 1, "evaluate": 1, "report": 1}),
        ("runs={ar: {max_steps: 10}}", {"train": 1, "evaluate_val": 1, "sample": 1, "evaluate": 3, "report": 1}),
        ("train={cpus: 2, mem_mb: 4000, log_with: [tensorboard]}", {}),  # where and how a job runs, not what
        ("sample={temperature: 0.9}", {"sample": 3, "evaluate": 3, "report": 1}),
        ("evaluate={val_batches: 2}", {"evaluate_val": 3, "report": 1}),
    ],
)
def test_a_changed_setting_reruns_exactly_the_jobs_it_affects(up_to_date, override, reruns):
    assert planned_jobs(up_to_date, "--config", override) == reruns
