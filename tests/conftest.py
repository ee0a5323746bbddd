"""Fixtures shared by the slow tests: one run of the real Snakemake DAG on configs/tiny.yaml."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def offline_env() -> dict:
    """The environment of the Makefile's targets: offline, and this venv's executables first on PATH."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def snakemake(workdir, *args, configfiles=(ROOT / "configs" / "tiny.yaml",)):
    """Snakemake on the tiny config (or ``configfiles``, merged in order) in ``workdir``; on failure, fail the
    test with the run's output and logs."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2",
           *args, "--configfile", *map(str, configfiles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=offline_env())
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(Path(workdir, "logs").rglob("*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """One run of the default target of the tiny config (shared by every test that needs trained runs)."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir)
    return workdir
