"""Every shell command in the README's code blocks runs as printed: the README cannot drift from the code.

A command that would start real work runs as a dry run (`snakemake -n`, `make -n`); the README's sampling
command runs for real, in the workdir of the tiny DAG (tests/conftest.py). A line that is a pattern to adapt
(it has `...` or a placeholder) is listed in PATTERNS; any other command the README gains must be runnable
here, or this test fails and says which.
"""
import re
import subprocess

import pytest

from conftest import ROOT, offline_env

pytestmark = pytest.mark.slow

PATTERNS = {  # not commands: the README shows them as shapes to fill in
    "accelerate launch --multi_gpu --num_processes N --num_machines 1 -m train ...",
}
REAL_WORK_IN_DEMO = ("python -m eval.sample --run-dir",)  # runs for real on the tiny DAG's trained runs


def readme_commands() -> list[str]:
    """The lines of the README's ```bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def as_run(command: str) -> str:
    """The command with a dry-run flag where it would start real work."""
    if command.startswith("snakemake") and not re.search(r"(^| )-n( |$)", command):
        return "snakemake -n" + command[len("snakemake"):]
    if command.startswith("make ") and command != "make slurm-profile":
        return "make -n" + command[len("make"):]
    return command


@pytest.mark.parametrize("command", [c for c in readme_commands() if c not in PATTERNS])
def test_readme_command_runs_as_printed(command, demo, tmp_path):
    cwd = demo if command.startswith(REAL_WORK_IN_DEMO) else ROOT
    env = {**offline_env(), "HOME": str(tmp_path)}  # make slurm-profile links into $HOME/.config/snakemake
    if "--profile slurm " in command + " ":
        subprocess.run(["make", "slurm-profile"], cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.run(["bash", "-c", as_run(command)], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"README command failed: {as_run(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_every_pattern_is_still_in_the_readme():
    assert PATTERNS <= set(readme_commands())
