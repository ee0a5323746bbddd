"""The pipeline config: read, type-checked against schemas/config.schema.yaml, defaults filled in. One reader.

    config = load_config(".snakemake/cascade/config-<hash>.yaml")     # a job, or a command run by hand
    config["train"]["lr"]                                              # every key exists after reading

The Snakefile calls validate_config() on Snakemake's merged config (config.yaml + --configfile + --config),
writes the result to one file and hands that file to every job, which reads it with load_config(): the
same checks and the same defaults on both sides, from the schema alone.

Checks here are the ones about the config as a whole (a wrong key or type, stage lengths, which runs exist);
the checks about one run's training settings are in train/settings.py.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file (when there is one) and the key."""


# The dpo section's keys a dpo training reads, which a run may override (train/settings.py, rules/train.smk);
# the others make the preference shard (preprocess/preference.py) or the evaluation (eval/dpo.py).
DPO_TRAIN_KEYS = ("beta", "loss", "label_smoothing", "sft_weight", "time_samples", "reference")


def load_schema() -> dict:
    """The schema, with `train:` and every run entry given the one list of training keys.

    A run may override any training key; what it leaves out comes from `train:`, so the run copies carry no
    `default` (a default there would silently override the train: section).
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    keys = schema["definitions"]["train_properties"]
    schema["properties"]["train"]["properties"] = copy.deepcopy(keys)
    run = schema["properties"]["runs"]["additionalProperties"]["properties"]
    run.update({k: {kk: vv for kk, vv in v.items() if kk != "default"} for k, v in keys.items()})
    # runs.<run>.atat: the keys of the atat section a run overrides (an ablation's variant), merged over it by
    # train/settings.resolve; no defaults here either
    atat = copy.deepcopy(schema["properties"]["atat"])
    atat.pop("default", None)
    atat["properties"] = {k: {kk: vv for kk, vv in v.items() if kk != "default"}
                          for k, v in atat["properties"].items()}
    atat["description"] = "objective atat: keys of the atat section this run overrides (e.g. importance)"
    run["atat"] = atat
    # runs.<run>.dpo: the dpo section's training keys this run overrides (data and eval keys stay shared: one
    # preference shard, one evaluation setup)
    dpo = schema["properties"]["dpo"]["properties"]
    run["dpo"] = {"type": "object", "additionalProperties": False,
                  "description": "dpo runs: keys of the dpo section this run overrides (beta, loss, ...)",
                  "properties": {k: {kk: vv for kk, vv in dpo[k].items() if kk != "default"} for k in DPO_TRAIN_KEYS}}
    return schema


def _resolve_ref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _accepts_string(schema: dict, root: dict) -> bool:
    schema = _resolve_ref(schema, root)
    types = schema.get("type")
    if types is None:
        if "enum" in schema:
            return any(isinstance(v, str) for v in schema["enum"])
        return any(_accepts_string(s, root) for s in schema.get("anyOf", [])) or "anyOf" not in schema
    return "string" in (types if isinstance(types, list) else [types])


def _wants_number(schema: dict) -> bool:
    types = schema.get("type")
    return bool({"number", "integer"} & set(types if isinstance(types, list) else [types]))


def coerce_strings(value, schema: dict, root: dict):
    """Parse, as YAML, strings that sit where the schema wants no string.

    Snakemake reads a nested `--config 'train={lr: 0.002}'` with a loader that keeps every value a string
    ('0.002'); the schema would then refuse it. A string where a number, boolean, null, list or mapping is
    expected is read again as YAML, so `--config` means what the same text means in a config file.
    """
    schema = _resolve_ref(schema, root)
    misfit_enum = "enum" in schema and value not in schema["enum"]
    if isinstance(value, str) and (misfit_enum or not _accepts_string(schema, root)):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # the schema check names the key and the bad value
        if isinstance(parsed, str) and _wants_number(schema):
            try:  # YAML 1.1 reads 1e6 (no dot) as a string
                parsed = float(value)
            except ValueError:
                return value
        return value if isinstance(parsed, str) else coerce_strings(parsed, schema, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = coerce_strings(item, sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_strings(item, schema["items"], root) for item in value]
    return value


def _validator_with_defaults(schema: dict):
    """A jsonschema validator that fills in `default:` values as it descends (the jsonschema FAQ's recipe,
    also what snakemake.utils.validate(set_default=True) does)."""
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(config: dict, source: str = "config") -> dict:
    """Check ``config`` against the schema and fill in the defaults, in place; returns it.

    Raises ConfigError naming ``source`` (a file, or "config" for Snakemake's merged one), the key and the
    problem, e.g. "config: train: 'learning_rate' was unexpected".
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(config).__name__}")
    schema = load_schema()
    coerce_strings(config, schema, schema)
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  {_key_path(e)}: {e.message}" for e in errors)
        raise ConfigError(f"{source}: {len(errors)} problem(s) with the config (schema {SCHEMA_PATH.name}):\n{lines}")
    _check_whole(config, source)
    return config


def _check_whole(config: dict, source: str) -> None:
    """What a schema cannot say: increasing stage lengths, runs that refer to what exists, a block length for
    block runs."""
    stages = config.get("stages")
    if stages is not None:
        lengths = stages["lengths"]
        if not lengths[0] < lengths[1] < lengths[2]:
            raise ConfigError(f"{source}: stages.lengths must be increasing (l1 < l2 < l3), got {lengths}")
    methods = config["annotate"]["methods"]
    for name, run in config["runs"].items():
        if run["kind"] in ("sft", "dpo") or run.get("init_from") is not None:
            _check_post_training_run(config, name, run, source)
            continue
        data = run_data(run)
        if run["kind"] == "cascade" and run["data"] != "stages":
            raise ConfigError(f"{source}: runs.{name}.data = {run['data']!r}: a cascade trains on the stage "
                              f"datasets (data: stages)")
        if data == "stages":
            if stages is None:
                raise ConfigError(f"{source}: runs.{name} reads stage shards (kind {run['kind']}, data: stages) but "
                                  f"the config has no stages section (stages: {{lengths: [l1, l2, l3]}})")
            if run.get("method") is None:
                raise ConfigError(f"{source}: runs.{name}.method is missing: a run with data: stages names the "
                                  f"priority method of its stage shards, one of {methods}")
            if run["method"] not in methods:
                raise ConfigError(f"{source}: runs.{name}.method = {run['method']!r} is not among annotate.methods "
                                  f"{methods}")
        elif block_length(config) is None:
            raise ConfigError(f"{source}: runs.{name}.data = {data!r} needs blocks.length (or a stages section, "
                              f"whose l3 it defaults to)")
        target = run.get("match_compute")
        if target is not None and config["runs"].get(target, {}).get("kind") != "cascade":
            cascades = sorted(r for r, spec in config["runs"].items() if spec["kind"] == "cascade")
            raise ConfigError(f"{source}: runs.{name}.match_compute = {target!r} must name a cascade run, one of "
                              f"{cascades}")


def _check_post_training_run(config: dict, name: str, run: dict, source: str) -> None:
    """An sft run reads the sft section's data and may start from another run's model folder; a dpo run reads the
    preference pairs and must start from one (its policy and, by default, its frozen reference)."""
    if run["kind"] not in ("sft", "dpo"):
        raise ConfigError(f"{source}: runs.{name}.init_from applies to sft and dpo runs, this run is kind "
                          f"{run['kind']}")
    target = run.get("init_from")
    if target is None:
        if run["kind"] == "dpo":
            raise ConfigError(f"{source}: runs.{name}.init_from is missing: a dpo run starts from another run's "
                              f"model folder (usually an sft run), which is also its reference unless "
                              f"dpo.reference names one")
        return
    kinds = {r: spec["kind"] for r, spec in config["runs"].items()}
    starts_from = ("single", "sft", "dpo")
    if target == name or kinds.get(target) not in starts_from:
        starts = sorted(r for r, kind in kinds.items() if kind in starts_from and r != name)
        raise ConfigError(f"{source}: runs.{name}.init_from = {target!r} must name another run of kind single, sft "
                          f"or dpo (its runs/<run>/model folder), one of {starts}")


def run_data(spec: dict) -> str:
    """What a run trains on: the stage datasets for a cascade, the SFT canvases for an sft run, the preference
    pairs for a dpo run, else its `data` (stages | wrap | doc)."""
    return {"cascade": "stages", "sft": "sft", "dpo": "preference"}.get(spec["kind"], spec.get("data", "stages"))


def block_length(config: dict) -> int | None:
    """Tokens per block of the unannotated block shards: blocks.length, else the stage-3 length l3."""
    if config["blocks"]["length"] is not None:
        return config["blocks"]["length"]
    stages = config.get("stages")
    return None if stages is None else stages["lengths"][2]


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return data


def load_config(path: str | os.PathLike) -> dict:
    """Read a config file, check it and fill in the defaults (the one way any command reads a config)."""
    return validate_config(read_yaml(path), str(path))


def ar_scorer_run(config: dict) -> str:
    """The run whose model is the `evaluate.scorer: ar` scorer: the config's first run of kind ar."""
    for name, run in config["runs"].items():
        if run["kind"] == "ar":
            return name
    raise ConfigError("evaluate.scorer is 'ar' (the config's own AR run) but no run in runs has kind: ar; "
                      "add one, or set evaluate.scorer to a causal LM (hub id or folder)")
