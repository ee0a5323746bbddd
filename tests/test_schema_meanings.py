"""Every config key says what it means (schemas/config.schema.yaml), and config.yaml holds only the demo's own
choices, so that the schema's defaults are the demo's and changing one changes the demo."""

from pathlib import Path

import yaml

from common.config import load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
# Kept in config.yaml although equal to their default: what a reader of the demo should see first.
KEPT_AT_DEFAULT = {"profile"}


def resolve(node: dict, schema: dict) -> dict:
    """A schema node with its $ref followed (the node's own keys win, as in common/config.py)."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def described(schema: dict):
    """(dotted path, node) of every property of the loaded schema, nested ones and run entries included
    (runs.<run> is the schema of every run entry, which common.config.load_schema fills from
    definitions.train_properties and the atat / dpo sections)."""

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            where = f"{path}.{key}" if path else key
            yield where, sub
            yield from walk(resolve(sub, schema), where)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield f"{path}.<run>", extra
            yield from walk(extra, f"{path}.<run>")
        if isinstance(node.get("items"), dict):
            yield from walk(resolve(node["items"], schema), f"{path}[]")

    yield from walk(schema, "")


def test_every_key_has_a_meaning():
    """A key without a description is a key a user has to guess (units, what it changes, which job reads it)."""
    schema = load_schema()
    paths = dict(described(schema))
    missing = sorted(path for path, node in paths.items() if not str(node.get("description", "")).strip())
    assert not missing, f"schemas/config.schema.yaml: {len(missing)} key(s) without a description: {missing}"
    # the walk reaches the nested keys too, train keys under runs.<run> included
    assert {
        "train.lr",
        "train.noise.eps",
        "runs.<run>.warmup_steps",
        "runs.<run>.dpo.sft_weight",
        "runs.<run>.atat.importance",
        "corpus.shards.train",
        "sample.gpus",
    } <= set(paths)


def test_descriptions_are_text():
    """A description is a sentence, not a stray YAML value (a number, a list)."""
    bad = [
        path
        for path, node in described(load_schema())
        if "description" in node and not isinstance(node["description"], str)
    ]
    assert not bad


def redundant_keys(value, node: dict, schema: dict, path: str, config: dict):
    """The dotted keys under ``path`` of config.yaml that restate what the config would get anyway: their schema
    default, or (a run's training key) the train: section's value."""
    node = resolve(node, schema)
    if path not in KEPT_AT_DEFAULT and "default" in node and value == node["default"]:
        yield path
        return
    if not isinstance(value, dict):
        return
    props, extra = node.get("properties", {}), node.get("additionalProperties")
    for key, sub_value in value.items():
        sub = props.get(key, extra if isinstance(extra, dict) else None)
        assert sub is not None, f"config.yaml: {path}.{key} is not in the schema"
        where = f"{path}.{key}" if path else key
        yield from redundant_keys(sub_value, sub, schema, where, config)
        if (
            path.startswith("runs.")
            and path.count(".") == 1
            and key in config["train"]
            and sub_value == config["train"][key]
        ):
            yield f"{where} (equal to train.{key})"


def test_config_yaml_sets_only_the_demos_own_choices():
    """config.yaml keeps a key only where the demo differs from the schema's default (plus profile, which names
    where the demo's results go), so a default changed in the schema changes the demo instead of being silently
    overridden by a copy of the old value here."""
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    schema = load_schema()
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()), "config.yaml")
    redundant = sorted(redundant_keys(raw, schema, schema, "", config))
    assert not redundant, (
        f"config.yaml restates schema defaults: {redundant}; remove them (the schema's "
        f"default applies) or change the default in schemas/config.schema.yaml"
    )


def test_the_rule_catches_a_restated_default():
    """The check above is not vacuous: a restated default, nested or in a run, is named."""
    schema = load_schema()
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["train"] = {"lr": 0.001, "noise": {"type": "loglinear", "eps": 0.002}}
    raw["corpus"] = {"shards": {"train": 2, "validation": 3}}
    first = next(iter(raw["runs"]))
    raw["runs"][first]["lr"] = 0.001
    config = validate_config(yaml.safe_load(yaml.safe_dump(raw)))
    assert sorted(redundant_keys(raw, schema, schema, "", config)) == [
        "corpus.shards.train",
        f"runs.{first}.lr (equal to train.lr)",
        "train.lr",
    ]
