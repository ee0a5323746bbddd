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
    """Config files merged key by key, in order, the way Snakemake merges several --configfile."""
    def update(base, new):
        for k, v in new.items():
            base[k] = update(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base
    out = {}
    for n in names:
        update(out, load(n))
    return out


@pytest.mark.parametrize("name", ["config.yaml", "configs/tiny.yaml", "configs/paper.yaml", "configs/wikihow.yaml",
                                  "configs/wikihow-tiny.yaml"])
def test_shipped_configs_are_valid(name):
    """Each file is a whole config (a --configfile replaces config.yaml); the schema fills in the rest."""
    config = validate_config(merged(name))
    assert config["train"]["grad_clip"] == 1.0 and config["sample"]["seed"] == 0  # defaults filled in


@pytest.mark.parametrize("runs, named", [
    ({"c": {"kind": "cascade", "data": "wrap", "method": "keybert", "objective": "mdlm"}}, "runs.c.data"),
    ({"s": {"kind": "single", "objective": "mdlm"}}, "runs.s.method is missing"),
    ({"s": {"kind": "single", "data": "stages", "method": "tfidf", "objective": "mdlm"}}, "tfidf"),
])
def test_run_data_and_method_are_checked(runs, named):
    config = load("config.yaml")
    config["runs"] = runs
    with pytest.raises(ConfigError, match=named):
        validate_config(config)


def test_block_runs_need_no_stages_but_a_block_length():
    config = {"runs": {"s": {"kind": "single", "data": "wrap", "objective": "mdlm"}}}
    with pytest.raises(ConfigError, match="needs blocks.length"):
        validate_config(dict(config))
    config = validate_config({**config, "blocks": {"length": 64}})
    assert "method" not in config["runs"]["s"] and "stages" not in config
    cascade = {"runs": {"c": {"kind": "cascade", "method": "keybert", "objective": "mdlm"}}}
    with pytest.raises(ConfigError, match="no stages section"):
        validate_config(cascade)


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
    """`snakemake -n` on config.yaml with ``yaml_text`` read after it as a second config file, in an empty
    working directory (a --configfile replaces config.yaml; several are merged key by key)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(ROOT / "config.yaml"), str(bad)],
        capture_output=True, text=True,
    )


def test_a_config_file_replaces_config_yaml(tmp_path):
    """configs/wikihow-tiny.yaml plans its own runs only: none of the demo's (cascade, single) leaks in, and
    without a stages section nothing is annotated."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--quiet",
         "rules", "--configfile", str(ROOT / "configs" / "wikihow-tiny.yaml")],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = yaml.safe_load(next((tmp_path / ".snakemake" / "cascade").glob("config-*.yaml")).read_text())
    assert sorted(written["runs"]) == ["ar", "mdlm-doc", "mdlm-scratch"]
    planned = proc.stdout + proc.stderr
    assert "blocks" in planned and "annotate" not in planned and "stages" not in planned


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
