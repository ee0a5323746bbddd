"""The cluster profiles without a cluster: what Snakemake would submit (dry runs), and the preemption stand-in.

The live-SLURM proof is tests/cluster/test_slurm_e2e.sh; these run in seconds anywhere, so a broken profile
(a key Snakemake 9 rejects, a set-resources entry naming a rule that no longer exists) fails `make test`.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "tests" / "cluster" / "smoke"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(workdir, *args, snakefile=SMOKE / "Snakefile"):
    """`snakemake -n` in workdir; returns its output (stdout + stderr), failing the test on a non-zero exit."""
    proc = subprocess.run(
        [*SNAKEMAKE, "-n", "-s", str(snakefile), "-d", str(workdir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def job_resources(out, rule):
    """The `resources:` line of every job of `rule` in a dry run, as dicts."""
    blocks = re.findall(rf"^rule {rule}:\n(.*?)(?=^\S|\Z)", out, flags=re.M | re.S)
    found = []
    for block in blocks:
        line = re.search(r"^\s+resources: (.*)$", block, flags=re.M).group(1)
        found.append(dict(item.split("=", 1) for item in line.split(", ")))
    return found


def test_slurm_profile_submits_to_its_partition_and_account(tmp_path):
    out = dry_run(tmp_path, "--profile", str(ROOT / "profiles" / "slurm"))
    shards = job_resources(out, "shard")
    assert len(shards) == 3
    for res in shards:
        assert res["slurm_partition"] == "debug" and res["slurm_account"] == "cascade"
    (gpus,) = job_resources(out, "gpus")
    assert gpus["gpu"] == "2"


def test_partition_and_account_are_overridden_on_the_command_line(tmp_path):
    out = dry_run(
        tmp_path,
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "--default-resources",
        "slurm_partition=gpu",
        "slurm_account=mylab",
    )
    for res in job_resources(out, "shard") + job_resources(out, "gpus"):
        assert res["slurm_partition"] == "gpu" and res["slurm_account"] == "mylab"


def test_local_profile_runs_the_same_workflow(tmp_path):
    out = dry_run(tmp_path, "--profile", str(ROOT / "profiles" / "local"))
    assert len(job_resources(out, "shard")) == 3
    assert "slurm_partition" not in out


@pytest.mark.skipif(
    not (ROOT / "Snakefile").exists() or not (ROOT / "configs" / "paper.yaml").exists(),
    reason="the pipeline's Snakefile / configs/paper.yaml are not in this checkout",
)
def test_paper_training_jobs_get_gpus_and_the_preemption_signal(tmp_path):
    """The profile's set-resources must name the real training rules, or no job gets the signal."""
    out = dry_run(
        tmp_path,
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "--configfile",
        str(ROOT / "configs" / "paper.yaml"),
        snakefile=ROOT / "Snakefile",
    )
    train = job_resources(out, "train")
    assert train, "no training job in the paper DAG"
    for res in train:
        assert res["slurm_extra"].strip("'") == "--signal=USR1@120"
        assert int(res["gpu"]) >= 1
    for res in job_resources(out, "annotate"):
        assert "slurm_extra" not in res  # CPU shards are not signalled before their limit


def run_preemptible(tmp_path, steps, signal_after=None):
    """Run the stand-in trainer; with signal_after, send SIGUSR1 once it has counted that many seconds."""
    cmd = [
        sys.executable,
        str(SMOKE / "preemptible.py"),
        "--steps",
        str(steps),
        "--step-seconds",
        "0.1",
        "--checkpoint",
        str(tmp_path / "ckpt.json"),
        "--out",
        str(tmp_path / "done.json"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if signal_after is not None:
        proc.stdout.readline()  # "starting at step ...": the handler is installed right after
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=60)
    return proc.returncode


def test_preemptible_checkpoints_on_sigusr1_and_resumes(tmp_path):
    assert run_preemptible(tmp_path, steps=30, signal_after=0.5) == 1
    state = json.loads((tmp_path / "ckpt.json").read_text())
    assert 0 < state["step"] < 30 and state["signals"] == ["SIGUSR1"]
    assert not (tmp_path / "done.json").exists()
    assert run_preemptible(tmp_path, steps=30) == 0
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["step"] == 30 and done["attempt_starts"] == [0, state["step"]]
