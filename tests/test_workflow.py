"""What a user of the plain `snakemake` command sees, without running the pipeline's jobs."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_jobs_own_error_reaches_the_console(tmp_path):
    """`snakemake --cores 2` as the README prints it (no profile): the job's message, not just "check log"."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "--cores",
            "1",
            "corpus_train",
            "--config",
            "corpus={name: local, path: /nonexistent}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "/nonexistent: corpus path does not exist" in proc.stdout + proc.stderr
    assert not list((tmp_path / "data").rglob("*.parquet"))


def run_snakemake(workdir, *args):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "1", *args],
        capture_output=True,
        text=True,
    )


def test_a_missing_spacy_model_stops_the_run_before_any_job(tmp_path):
    """The model names are checked when the run starts, not by the first annotate job after corpus and tokenizer."""
    proc = run_snakemake(tmp_path, "--config", "annotate={spacy_model: en_core_web_xx}")
    assert proc.returncode != 0
    assert "annotate.spacy_model: 'en_core_web_xx' cannot be loaded here" in proc.stdout + proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "logs").exists()  # no job ran
    # a dry run plans without the models
    assert run_snakemake(tmp_path, "-n", "--config", "annotate={spacy_model: en_core_web_xx}").returncode == 0


def test_check_models_false_skips_the_check(tmp_path):
    """On a login node without the models: the corpus job runs (it needs no spaCy model)."""
    proc = run_snakemake(
        tmp_path, "corpus_validation", "--config", "annotate={spacy_model: en_core_web_xx, check_models: false}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "data" / "pydoc").glob("raw-*/validation/shard_00000.parquet"))


def planned_jobs(stdout: str) -> dict[str, list[dict]]:
    """rule -> the wildcards of each job a dry run (`snakemake -n`) prints."""
    jobs, rule = {}, None
    for line in stdout.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":"):
            rule = line.split()[1].rstrip(":")
            jobs.setdefault(rule, []).append({})
        elif rule is not None and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            jobs[rule][-1].update(p.strip().split("=", 1) for p in pairs)
    return jobs


def test_paper_config_plans_the_source_grid_of_cascades(tmp_path):
    """configs/paper.yaml holds the source's grid: small / small_shuffle x from scratch / fine-tuned from
    louaaron/sedd-small x the three priority methods (objective sedd), and a dry run of that file alone plans
    the three stage trainings and the evaluation of each. Only paper.yaml's own runs are read, so the test
    holds whether a --configfile replaces config.yaml or is merged into it."""
    from common.config import load_config
    from train.settings import resolve

    config = load_config(ROOT / "configs" / "paper.yaml")
    runs = config["runs"]
    assert {"cascade", "single", "ar"} <= set(runs) and runs["single"]["match_compute"] == "cascade"
    # sedd-small's vocabulary: GPT-2 + mask = 50258
    assert (config["tokenizer"]["kind"], config["tokenizer"]["name"]) == ("pretrained", "gpt2")

    grid = {}
    for run, spec in runs.items():
        if spec["kind"] != "cascade" or spec["objective"] != "sedd":
            continue
        stages = [resolve(config, run, k) for k in (1, 2, 3)]
        cell = {(s.method, s.shuffle_prefix, s.pretrained, s.pretrained_format, s.model) for s in stages}
        assert len(cell) == 1, f"{run}: stages differ in {cell}"
        grid.setdefault(cell.pop(), []).append(run)
    expected = {
        (method, shuffle, pretrained, fmt, "small")
        for method in ("constituency", "keybert", "keybert_no_stopword")
        for shuffle in (False, True)
        for pretrained, fmt in ((None, None), ("louaaron/sedd-small", "sedd"))
    }
    assert set(grid) == expected, f"missing {expected - set(grid)}, extra {set(grid) - expected}"
    assert all(len(names) == 1 for names in grid.values()), grid  # one table row per variant
    variants = {names[0]: cell for cell, names in grid.items()}
    for run, (_, shuffle, pretrained, _, _) in variants.items():
        assert ("-shuffle" in run) == shuffle and ("-finetune" in run) == (pretrained is not None), run

    proc = run_snakemake(tmp_path, "-n", "--configfile", str(ROOT / "configs" / "paper.yaml"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    trained = {(j["run"], j["model"]) for j in jobs.get("train", [])}
    for run in variants:
        assert {(run, f"stage{k}") for k in (1, 2, 3)} <= trained, f"{run}: stage trainings not all planned"
    assert set(variants) <= {j["run"] for j in jobs.get("evaluate_val", [])}
    assert len(jobs.get("report", [])) == 1


def test_placing_samplers_are_planned_for_cascade_runs_only(tmp_path):
    """sample.samplers with a placing sampler: its own sample and evaluate files ({sampler}_placed-{steps}) for the
    cascade, beside the plain sampler's; the single-stage run gets the plain sampler alone."""
    proc = run_snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(ROOT / "configs" / "tiny.yaml"),
        "--config",
        "sample={samplers: [confidence, confidence_placed], steps: [4]}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    for rule in ("sample", "evaluate"):
        planned = {(j["run"], j["sampler"], j["steps"]) for j in jobs[rule]}
        assert planned == {
            ("cascade", "confidence", "4"),
            ("cascade", "confidence_placed", "4"),
            ("single", "confidence", "4"),
            ("ar", "ar", "32"),
        }, rule
    assert "runs/tiny/cascade/samples/confidence_placed-4.jsonl" in proc.stdout
    assert "runs/tiny/cascade/eval/confidence_placed-4.json" in proc.stdout
