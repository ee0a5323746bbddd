"""A wrong key or value stops the run before any job and names it."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]


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
    config = validate_config(merged(*files))
    assert config["train"]["grad_clip"] == 1.0 and config["sample"]["seed"] == 0  # defaults filled in


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
    with pytest.raises(ConfigError, match=named):
        validate_config(config)


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


def test_a_run_inherits_train_keys_it_does_not_set():
    """Run entries get no schema defaults: a default there would silently override the train: section."""
    config = merged("config.yaml")
    config["train"]["lr"] = 0.005
    config["runs"]["ar"]["warmup_steps"] = 7
    config = validate_config(config)
    assert "lr" not in config["runs"]["ar"] and config["runs"]["ar"]["warmup_steps"] == 7


@pytest.mark.parametrize("override, key, want", [
    ("train={lr: 0.002}", ("train", "lr"), 0.002),
    ("train={antithetic: false, log_with: [tensorboard]}", ("train", "antithetic"), False),
    ("sample={steps: [8, 32]}", ("sample", "steps"), [8, 32]),
    ("corpus={shards: {train: 4}}", ("corpus", "shards"), {"train": 4, "validation": 1}),
])
def test_nested_config_values_from_the_command_line_get_their_types(tmp_path, override, key, want):
    """`--config section={key: value}` reaches the jobs with the type the schema asks for (Snakemake itself
    keeps nested values as strings)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--quiet",
         "rules", "--config", override],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = list((tmp_path / ".snakemake" / "cascade").glob("config-*.yaml"))
    assert len(written) == 1
    value = yaml.safe_load(written[0].read_text())[key[0]][key[1]]
    assert value == want and type(value) is type(want)


def test_a_string_that_is_not_a_number_is_still_refused_by_name():
    config = merged("config.yaml")
    config["train"]["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"train.lr: 'fast' is not of type 'number'"):
        validate_config(config)
