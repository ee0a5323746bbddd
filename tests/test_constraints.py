"""The exact versions: constraints.txt pins every dependency, the Makefile installs from it, and this
environment holds those versions (so a fresh machine gets what the tests and the README's figures used)."""

import re
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {
        normalized(name): version
        for name, version in (line.split("==") for line in lines if line and not line.startswith("#"))
    }


def project_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # what `make` installs: the dependencies and the test extra (the trackers extra's wandb is not installed
    # here, so there is no tested version of it to pin)
    names = project["dependencies"] + project["optional-dependencies"]["test"]
    return sorted({normalized(re.match(r"[A-Za-z0-9_.-]+", d).group()) for d in names})


def test_every_dependency_is_pinned_and_torch_is_pinned_by_the_makefile():
    pinned = pins()
    unpinned = [name for name in project_requirements() if name not in pinned and name != "torch"]
    assert not unpinned, f"constraints.txt has no version for {unpinned}"
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet torch==2.13.0" in makefile
    assert "uv pip install" in makefile and "-c constraints.txt -e '.[test]'" in makefile


def test_this_environment_holds_the_pinned_versions():
    wrong = {}
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"pinned vs installed: {wrong}"
