"""Every shell command in the README's code blocks runs as printed: the README cannot drift from the code.

A command that would start real work runs as a dry run (`snakemake -n`, `make -n`); the README's sampling
command runs for real, in the workdir of the tiny DAG (tests/conftest.py; slow). A line that is a pattern to
adapt (it has `...` or a placeholder) is listed in PATTERNS; any other command the README gains must be runnable
here, or this test fails and says which.

"As printed" includes what the reader has set up: each command runs in a fresh $HOME with only what the earlier
lines of its own code block did (`make slurm-profile` links the short profile name `--profile slurm` there), so a
command that needs a step the README prints elsewhere, or nowhere, fails here as it would for the reader.
"""

import os
import re
import subprocess

import pytest
from conftest import ROOT, offline_env

PATTERNS = {  # not commands: the README shows them as shapes to fill in
    "accelerate launch --multi_gpu --num_processes N --num_machines 1 -m train ...",
}
REAL_WORK_IN_DEMO = ("python -m eval.sample --run-dir",)  # runs for real on the tiny DAG's trained runs


LINK_PROFILE = "make slurm-profile"  # links profiles/slurm into $HOME/.config/snakemake/slurm


def readme_blocks() -> list[list[str]]:
    """The README's ```bash blocks, each as its lines, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands = []
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
        blocks.append(commands)
    return blocks


def readme_commands() -> list[str]:
    return [command for block in readme_blocks() for command in block]


def commands_with_setup() -> list[tuple[str, bool]]:
    """(command, whether `make slurm-profile` comes before it in its own code block)."""
    out = []
    for block in readme_blocks():
        for i, command in enumerate(block):
            out.append((command, LINK_PROFILE in block[:i]))
    return out


def bare_profile(command: str) -> str | None:
    """The profile a command names by a bare name (`--profile slurm`), which Snakemake looks up in the working
    directory, then ~/.config/snakemake/ and /etc/xdg/snakemake/; None for a path (profiles/slurm) or none."""
    match = re.search(r"--profile[ =](\S+)", command)
    if match is None or "/" in match.group(1) or os.path.isdir(ROOT / match.group(1)):
        return None
    return match.group(1)


def as_run(command: str) -> str:
    """The command with a dry-run flag where it would start real work."""
    if command.startswith("snakemake") and not re.search(r"(^| )-n( |$)", command):
        return "snakemake -n" + command[len("snakemake") :]
    if command.startswith("make ") and command != "make slurm-profile":
        return "make -n" + command[len("make") :]
    return command


RUNNABLE = [(c, linked) for c, linked in commands_with_setup() if c not in PATTERNS]
# a command the README prints in several places, or as a run and as its dry run, runs once: with the same setup
# the same command line has the same outcome
FIRST_OF_EACH_RUN: dict = {}
for command, linked in RUNNABLE:
    FIRST_OF_EACH_RUN.setdefault((as_run(command), linked), (command, linked))
DISTINCT = list(FIRST_OF_EACH_RUN.values())


def run_as_printed(command: str, linked: bool, demo, home) -> subprocess.CompletedProcess:
    cwd = demo if command.startswith(REAL_WORK_IN_DEMO) else ROOT
    env = {**offline_env(), "HOME": str(home)}  # a fresh $HOME: no profile linked unless the block does it
    if linked:
        subprocess.run(LINK_PROFILE.split(), cwd=ROOT, env=env, check=True, capture_output=True)
    return subprocess.run(["bash", "-c", as_run(command)], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def outcomes(demo, tmp_path_factory):
    """Every runnable README command, run two at a time (each is one mostly single-threaded process, and this
    machine has two cores): {command: CompletedProcess}."""
    from concurrent.futures import ThreadPoolExecutor

    homes = [tmp_path_factory.mktemp("home") for _ in DISTINCT]
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = pool.map(lambda item: run_as_printed(*item[0], demo, item[1]), zip(DISTINCT, homes))
        return {item: proc for item, proc in zip(DISTINCT, procs)}


@pytest.mark.slow
@pytest.mark.parametrize("command, linked", DISTINCT, ids=[c for c, _ in DISTINCT])
def test_readme_command_runs_as_printed(command, linked, outcomes):
    proc = outcomes[(command, linked)]
    assert proc.returncode == 0, (
        f"README command failed: {as_run(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def test_a_short_profile_name_is_linked_in_its_own_block():
    """`--profile slurm` works only after `make slurm-profile` (or from a checkout with ./slurm): a command that
    uses it must follow that line in its own code block, or print --profile profiles/slurm."""
    unlinked = [c for c, linked in commands_with_setup() if bare_profile(c) and not linked and c not in PATTERNS]
    assert not unlinked, (
        f"README commands name a profile by a bare name without `{LINK_PROFILE}` before them in "
        f"their code block (print --profile profiles/slurm instead): {unlinked}"
    )


def test_every_pattern_is_still_in_the_readme():
    assert PATTERNS <= set(readme_commands())
