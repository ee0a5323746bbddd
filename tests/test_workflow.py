"""What a user of the plain `snakemake` command sees, without running the pipeline's jobs."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_jobs_own_error_reaches_the_console(tmp_path):
    """`snakemake --cores 2` as the README prints it (no profile): the job's message, not just "check log"."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1",
         "data/local/raw/train/shard_00000.parquet", "--config", "corpus={name: local, path: /nonexistent}"],
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert "/nonexistent: corpus path does not exist" in proc.stdout + proc.stderr
    assert not (tmp_path / "data" / "local" / "raw" / "train" / "shard_00000.parquet").exists()


def run_snakemake(workdir, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                           "--cores", "1", *args], capture_output=True, text=True)


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
    proc = run_snakemake(tmp_path, "data/pydoc/raw/validation/shard_00000.parquet", "--config",
                         "annotate={spacy_model: en_core_web_xx, check_models: false}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "data" / "pydoc" / "raw" / "validation" / "shard_00000.parquet").exists()
