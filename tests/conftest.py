"""Fixtures shared by the slow tests: two working directories in which the real Snakemake DAG runs every config's
offline twin (configs/twins/), so that what twins build alike (the corpus, a tokenizer, annotated shards, packed
blocks: data folders are named by their settings, common/layout.py) is built once for the whole session, and each
config's runs stay under runs/{profile}/.

    workspace          configs/tiny.yaml and the twins that share its data folders (sft, insert)
    recipe_workspace   the cluster recipes' twins (paper, atat, wikihow, atat-wikitext103) and the hub folders they
                       name (tests/hub_layouts.py), and sft-minilm's (hub/minilm, a tiny MiniLM): no data folder in
                       common with tiny's

Under `make test` (pytest -n 2 --dist loadgroup) each workspace's tests run on one worker, in order, so its DAG
fixtures are built once, and the two workspaces fill the two workers side by side with the unit tests.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TWINS = CONFIGS / "twins"
TINY = (CONFIGS / "tiny.yaml",)


WORKSPACES = ("workspace", "recipe_workspace")  # the session's DAG working directories, one xdist group each


def workspace_of(item) -> str | None:
    """The DAG workspace a test uses (through any of its fixtures), None for a unit test; one at most."""
    used = [name for name in WORKSPACES if name in getattr(item, "fixturenames", ())]
    if len(used) > 1:
        raise pytest.UsageError(f"{item.nodeid} uses both {used}: a test builds in one workspace")
    return used[0] if used else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under `pytest -n 2 --dist loadgroup` (make test), every test of a workspace runs on one worker, so its DAG
    fixtures are built once. tryfirst: xdist's own hook reads the xdist_group marks into the test ids, so they
    must be there before it runs."""
    for item in items:
        name = workspace_of(item)
        if name is not None:
            item.add_marker(pytest.mark.xdist_group(name))


def pytest_runtest_setup(item):
    """Under --dist loadgroup, fail a workspace test that xdist did not group, before its fixtures build anything:
    pytest 9.2 moved the test id out of the attribute that pytest-xdist 3.8 rewrites, and the suite then silently
    built every DAG fixture on both workers (twice the time). constraints.txt pins a pair that works."""
    name = workspace_of(item)
    if getattr(item.config.option, "loadgroup", False) and name and not item.nodeid.endswith(f"@{name}"):
        pytest.fail(
            f"pytest-xdist did not put {item.nodeid} in the {name} group: pytest {pytest.__version__} and this "
            f"pytest-xdist disagree on test ids; install the versions of constraints.txt",
            pytrace=False,
        )


OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# what Snakemake's shell adds to the environment of a job of 1 thread with the default tmpdir resource
# (snakemake/shell.py); the warm interpreter and the tests' `snakemake` calls run in it, so that such jobs match it
ONE_THREAD_JOB = {
    **{key: "1" for key in ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    **{key: "1" for key in ("VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")},
    **{key: tempfile.gettempdir() for key in ("TMPDIR", "TMP", "TEMPDIR", "TEMP")},
}
WARM_BIN: list[Path] = []  # the warm interpreter's `python` folder once a DAG workspace has started it (warm_python)


def offline_env() -> dict:
    """The environment of the Makefile's targets: offline, and this venv's executables first on PATH (behind the
    warm interpreter's `python`, tests/warm_python.py, while one runs)."""
    env = {**os.environ, **OFFLINE}
    env["PATH"] = os.pathsep.join([*map(str, WARM_BIN), str(Path(sys.executable).parent), env["PATH"]])
    return env


def python() -> str:
    """The interpreter for a test's `python -m` subprocess: the warm one while it runs, else this venv's."""
    return str(WARM_BIN[0] / "python") if WARM_BIN else sys.executable


@pytest.fixture(scope="session")
def warm_python(tmp_path_factory):
    """Start tests/warm_python.py for this worker's DAG tests (WARM_PYTHON=0: run every job on a fresh interpreter),
    and stop it when the session ends. A server that cannot start leaves the jobs on fresh interpreters, with a
    warning that quotes its log: slower, never a different result."""
    if os.environ.get("WARM_PYTHON", "1") == "0":
        yield None
        return
    from warm_python import start

    folder = tmp_path_factory.mktemp("warm-python")
    sockets = Path(tempfile.mkdtemp(prefix="warm-"))
    server = start(folder, sockets, env={**offline_env(), **ONE_THREAD_JOB})
    if server is not None:
        WARM_BIN.append(folder / "bin")
    yield folder if server is not None else None
    WARM_BIN.clear()
    if server is not None:
        server.terminate()
        server.wait(timeout=30)
    shutil.rmtree(sockets, ignore_errors=True)


def twin(name: str) -> tuple[Path, Path]:
    """The configfiles of a config's offline twin: configs/{name}.yaml, then configs/twins/{name}.yaml over it."""
    return CONFIGS / f"{name}.yaml", TWINS / f"{name}.yaml"


def snakemake(workdir, *args, configfiles=TINY):
    """Snakemake on the tiny config (or ``configfiles``, merged in order) in ``workdir``; on failure, fail the
    test with the run's output and logs."""
    cmd = [
        python(),
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        *args,
        "--configfile",
        *map(str, configfiles),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**offline_env(), **ONE_THREAD_JOB})
    if proc.returncode != 0:
        newest = sorted(Path(workdir, "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-8:]
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in newest)
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


def merged_config(configfiles=TINY) -> dict:
    """The config Snakemake builds from ``configfiles`` (merged key by key, in order, as --configfile does) with
    the schema's defaults filled in."""
    from common.layout import merge_configfiles

    return merge_configfiles(configfiles)


def layout(configfiles=TINY):
    """The output paths of a config (common/layout.py), relative to the working directory."""
    from common.layout import Layout

    return Layout(merged_config(configfiles))


def dry_run_counts(workdir, configfiles, *targets) -> dict:
    """{rule: jobs} that `snakemake -n` plans for ``targets`` (the default target when none)."""
    proc = snakemake(workdir, "-n", *targets, "--quiet", "rules", configfiles=configfiles)
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in proc.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    counts.pop("total", None)
    counts.pop("all", None)
    return counts


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, warm_python):
    """The working directory of tiny's DAG and of the twins that share its data folders."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def recipe_workspace(tmp_path_factory, warm_python):
    """The working directory of the cluster recipes' twins (module docstring)."""
    return tmp_path_factory.mktemp("recipe-workspace")


@pytest.fixture(scope="session")
def hub(recipe_workspace):
    """Local folders in the hub's layouts (tests/hub_layouts.py) under workspace/hub, which the twins of the
    cluster recipes name instead of the hub's tokenizer and models."""
    from hub_layouts import build_hub

    return build_hub(recipe_workspace / "hub")


@pytest.fixture(scope="session")
def demo(workspace):
    """One run of the default target of the tiny config (shared by every test that needs trained runs)."""
    snakemake(workspace)
    return workspace


def tree_digest(root: Path, *folders: str) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folders`` of ``root``."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def generate(model_dir: Path, cwd: Path, *args: str) -> list[dict]:
    """`python -m eval.generate` on a model folder from another working directory: its records (prompt and answer
    ids and text), the wall-clock `seconds` left out."""
    import json

    cmd = [sys.executable, "-m", "eval.generate", "--model-dir", str(model_dir), "--seed", "0", "--threads", "1", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**offline_env(), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records and all(r["prompt_ids"] and r["ids"] for r in records)
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# sampled at temperature 1 from a fixed seed: the ids depend on the weights, the tokenizer and the seed alone
TINY_GENERATE = ("--raw-prompt", "--prompt", "The", "--gen-length", "8", "--steps", "4", "--temperature", "1")


@pytest.fixture(scope="session")
def sft_twin(demo, tmp_path_factory):
    """The whole DAG of configs/sft.yaml's twin, run in the workspace after the tiny config's, with what the tiny
    config had built just before it: (workspace, {file: sha256} of runs/tiny and results/tiny, and the text
    eval.generate gives for tiny's single model from another directory)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    before = {
        "files": tree_digest(demo, "runs/tiny", "results/tiny"),
        "generate": generate(demo / "runs/tiny/single/model", elsewhere, *TINY_GENERATE),
    }
    snakemake(demo, configfiles=twin("sft"))
    return demo, before
