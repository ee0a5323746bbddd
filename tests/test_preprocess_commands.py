"""The preprocessing front doors: the DAG steps are commands, no other preprocess module is."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_STEPS = {
    "corpus",
    "tokenizer",
    "annotate",
    "stages",
    "blocks",
    "sft",
    "preference",
    "zero_shot",
}  # the commands rules/preprocess.smk runs


def test_only_the_dag_steps_are_commands():
    commands = {p.stem for p in (ROOT / "preprocess").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()}
    assert commands == DAG_STEPS


@pytest.mark.parametrize("step", sorted(DAG_STEPS))
def test_dag_step_help(step):
    done = subprocess.run(
        [sys.executable, "-m", f"preprocess.{step}", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout or step in ("stages", "blocks")
    assert "--out" in done.stdout
