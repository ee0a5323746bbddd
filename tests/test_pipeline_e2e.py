"""The real Snakemake DAG on configs/tiny.yaml, offline, end to end; then one shard rerun byte for byte."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def snakemake(workdir, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2",
           *args, "--configfile", str(ROOT / "configs" / "tiny.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(Path(workdir, "logs").rglob("*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the default target of the tiny config."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir)
    return workdir


def tiny():
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def test_preprocessing_outputs(demo):
    data = demo / "data" / "pydoc"
    raw_stats = json.loads((data / "raw" / "train" / "stats.json").read_text())
    assert raw_stats["documents_written"] == tiny()["corpus"]["max_docs"]
    raw_rows = sum(pq.read_table(p).num_rows for p in sorted((data / "raw" / "train").glob("shard_*.parquet")))
    assert raw_rows == raw_stats["documents_written"]
    l1, l2, l3 = tiny()["stages"]["lengths"]
    for method in ("constituency", "keybert", "keybert_no_stopword"):
        for split, n in (("train", 2), ("validation", 1)):
            for i in range(n):
                annot = data / "annot" / method / split / f"shard_{i:05d}.parquet"
                stats = json.loads(annot.with_name(f"shard_{i:05d}.stats.json").read_text())
                table = pq.read_table(annot)
                assert table.num_rows == stats["documents_written"] > 0
                for ids, prio in zip(table.column("input_ids").to_pylist(), table.column("priority").to_pylist()):
                    assert len(ids) == len(prio) > 0
                stage = data / "stages" / method / f"{l1}_{l2}_{l3}" / split / f"shard_{i:05d}.parquet"
                rows = pq.read_table(stage).to_pylist()
                assert rows, stage
                for row in rows:
                    assert [len(row[f"stage{k}_ids"]) for k in (1, 2, 3)] == [l1, l2, l3]
    assert (data / "tokenizer" / "tokenizer.json").exists()
    # every rule left a log and a benchmark
    assert list((demo / "logs").rglob("annotate/*/*/shard_00000.log"))
    assert list((demo / "benchmarks").rglob("annotate/*/*/shard_00000.tsv"))


def test_rerun_of_one_shard_is_byte_identical_and_alone(demo):
    target = "data/pydoc/annot/keybert/train/shard_00001.parquet"
    others = sorted(p for p in (demo / "data" / "pydoc" / "annot").rglob("*.parquet") if not str(p).endswith(target))
    before = {p: p.stat().st_mtime_ns for p in others}
    digest = hashlib.sha256((demo / target).read_bytes()).hexdigest()
    proc = snakemake(demo, target, "--forcerun", "annotate")
    assert hashlib.sha256((demo / target).read_bytes()).hexdigest() == digest
    assert {p: p.stat().st_mtime_ns for p in others} == before  # no other shard was touched
    assert "1 of 1 steps (100%) done" in proc.stdout + proc.stderr  # exactly one job ran


def test_training_sampling_and_report(demo):
    import csv

    l1, l2, l3 = tiny()["stages"]["lengths"]
    for stage_dir in ("runs/cascade/stage1", "runs/cascade/stage2", "runs/cascade/stage3", "runs/single/model", "runs/ar/model"):
        for name in ("model.safetensors", "config.json", "metrics.csv"):
            assert (demo / stage_dir / name).exists(), f"{stage_dir}/{name}"
    mask_id = json.loads((demo / "runs" / "cascade" / "stage3" / "config.json").read_text())["mask_id"]
    samples = [json.loads(line) for line in (demo / "runs/cascade/samples/ddpm_cache-4.jsonl").read_text().splitlines()]
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
