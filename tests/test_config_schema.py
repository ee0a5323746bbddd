"""A wrong key or value stops the run before any job and names it."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "schemas" / "config.schema.yaml")


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def merged(*names):
    """config.yaml overridden by other files, merged the way Snakemake merges --configfile."""
    def update(base, new):
        for k, v in new.items():
            base[k] = update(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base
    out = {}
    for n in names:
        update(out, load(n))
    return out


@pytest.mark.parametrize("files", [["config.yaml"], ["config.yaml", "configs/tiny.yaml"], ["config.yaml", "configs/paper.yaml"]])
def test_shipped_configs_are_valid(files):
    validate(merged(*files), SCHEMA)


@pytest.mark.parametrize(
    "patch, named",
    [
        ({"corpus": {"nmae": "pydoc"}}, "nmae"),
        ({"train": {"lr": -1}}, "lr"),
        ({"runs": {"cascade": {"kind": "cascade", "method": "keybert", "objective": "mdml"}}}, "mdml"),
        ({"annotate": {"methods": ["constituency", "tfidf"]}}, "tfidf"),
        ({"stages": {"lengths": [8, 16]}}, "lengths"),
    ],
)
def test_wrong_key_or_value_is_named(patch, named):
    config = load("config.yaml")
    for section, value in patch.items():
        if isinstance(config.get(section), dict) and section != "runs":
            config[section] = {**config[section], **value}
        else:
            config[section] = value
    with pytest.raises(Exception, match=named):
        validate(config, SCHEMA)


def dry_run_with(tmp_path, yaml_text):
    """`snakemake -n` on config.yaml overridden by ``yaml_text``, in an empty working directory."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(bad)],
        capture_output=True, text=True,
    )


def test_snakemake_stops_before_any_job(tmp_path):
    proc = dry_run_with(tmp_path, "train:\n  learning_rate: 0.1\n")
    assert proc.returncode != 0
    assert "learning_rate" in proc.stdout + proc.stderr
    assert not (tmp_path / "data").exists()


def test_decreasing_lengths_are_refused(tmp_path):
    proc = dry_run_with(tmp_path, "stages:\n  lengths: [16, 8, 32]\n")
    assert proc.returncode != 0 and "stages.lengths" in proc.stdout + proc.stderr
