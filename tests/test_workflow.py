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
