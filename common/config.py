"""The pipeline config: read, type-checked against schemas/config.schema.yaml, defaults filled in. One reader.

    config = load_config(".snakemake/cascade/config-<hash>.yaml")     # a job, or a command run by hand
    config["train"]["lr"]                                              # every key exists after reading

The Snakefile calls validate_config() on Snakemake's merged config (config.yaml + --configfile + --config),
writes the result to one file and hands that file to every job, which reads it with load_config(): the
same checks and the same defaults on both sides, from the schema alone.

Checks here are the ones about the config as a whole (a wrong key or type, a number that is NaN or infinite,
stage lengths, which runs exist, which runs start from which and with what network, a dpo run's reference, a
pretrained backbone's tokenizer); the checks about one run's training settings are in train/settings.py. Files
on local disk that the config names (a backbone folder, a dpo.reference folder) are read; hub ids are not looked
up (no network).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file (when there is one) and the key."""


# The dpo section's keys a dpo training reads, which a run may override (train/settings.py, rules/train.smk);
# the others make the preference shard (preprocess/preference.py) or the evaluation (eval/dpo.py).
DPO_TRAIN_KEYS = ("beta", "loss", "label_smoothing", "sft_weight", "time_samples", "reference")
# The suffix of the placing samplers (eval.samplers.PLACING_SAMPLERS; defined here, where no torch is loaded):
# {sampler}_placed places stage k-1's tokens in stage k's target first, so it samples re-predicting cascade runs
# only (places_prefix).
PLACED = "_placed"


def places_prefix(spec: dict) -> bool:
    """Whether a run is sampled by the placing samplers ({sampler}_placed): a cascade whose stages re-predict the
    previous stage's tokens (stage_form repredict). An inserting cascade (stage_form insert) already keeps them at
    positions drawn from its placement law (eval/sample.py), and eval.samplers.sample refuses to place them again;
    a single-stage run has no previous stage."""
    return spec["kind"] == "cascade" and (spec.get("stage_form") or "repredict") == "repredict"


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
    atat["properties"] = {k: {kk: vv for kk, vv in v.items() if kk != "default"} for k, v in atat["properties"].items()}
    atat["description"] = "objective atat: keys of the atat section this run overrides (e.g. importance)"
    run["atat"] = atat
    # runs.<run>.dpo: the dpo section's training keys this run overrides (data and eval keys stay shared: one
    # preference shard, one evaluation setup)
    dpo = schema["properties"]["dpo"]["properties"]
    run["dpo"] = {
        "type": "object",
        "additionalProperties": False,
        "description": "dpo runs: keys of the dpo section this run overrides (beta, loss, ...)",
        "properties": {k: {kk: vv for kk, vv in dpo[k].items() if kk != "default"} for k in DPO_TRAIN_KEYS},
    }
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


def _non_finite(value, key: str = "") -> Iterator[tuple[str, float]]:
    """(key, value) of every float in ``value`` (a config or part of one) that is NaN or +-infinity; keys dotted,
    list items as key[i]."""
    if isinstance(value, float) and not math.isfinite(value):
        yield key or "(top level)", value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}[{i}]")


def validate_config(config: dict, source: str = "config") -> dict:
    """Check ``config`` against the schema and fill in the defaults, in place; returns it.

    Raises ConfigError naming ``source`` (a file, or "config" for Snakemake's merged one), the key and the
    problem, e.g. "config: train: 'learning_rate' was unexpected". No setting accepts NaN or infinity (YAML .nan /
    .inf, or nan / inf where a number is expected, which coerce_strings reads as a float): a schema's minimum /
    maximum cannot refuse NaN (every comparison with it is false), so every number of the config is checked here,
    free-form sections (backbone.config) included.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(config).__name__}")
    schema = load_schema()
    coerce_strings(config, schema, schema)
    bad = list(_non_finite(config))
    if bad:
        lines = "\n".join(f"  {key}: {value}" for key, value in bad)
        raise ConfigError(
            f"{source}: {len(bad)} setting(s) not a finite number; no setting accepts NaN or infinity "
            f"(expected a finite number):\n{lines}"
        )
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
    for name in config["runs"]:
        _check_backbone_tokenizer(config, name, source)
    for name, run in config["runs"].items():
        _check_stage_form(name, run, source)
        if run["pairs"] != "source" and run["kind"] != "dpo":
            raise ConfigError(
                f"{source}: runs.{name}.pairs = {run['pairs']!r} chooses a dpo run's training pairs; this run is "
                f"kind {run['kind']}: leave pairs out"
            )
        if run["kind"] in ("sft", "dpo") or run.get("init_from") is not None:
            _check_post_training_run(config, name, run, source)
            continue
        data = run_data(run)
        if run["kind"] == "cascade" and run["data"] != "stages":
            raise ConfigError(
                f"{source}: runs.{name}.data = {run['data']!r}: a cascade trains on the stage datasets (data: stages)"
            )
        if data == "stages":
            if stages is None:
                raise ConfigError(
                    f"{source}: runs.{name} reads stage shards (kind {run['kind']}, data: stages) but "
                    f"the config has no stages section (stages: {{lengths: [l1, l2, l3]}})"
                )
            if run.get("method") is None:
                raise ConfigError(
                    f"{source}: runs.{name}.method is missing: a run with data: stages names the "
                    f"priority method of its stage shards, one of {methods}"
                )
            if run["method"] not in methods:
                raise ConfigError(
                    f"{source}: runs.{name}.method = {run['method']!r} is not among annotate.methods {methods}"
                )
        elif block_length(config) is None:
            raise ConfigError(
                f"{source}: runs.{name}.data = {data!r} needs blocks.length (or a stages section, "
                f"whose l3 it defaults to)"
            )
        target = run.get("match_compute")
        if target is not None and config["runs"].get(target, {}).get("kind") != "cascade":
            cascades = sorted(r for r, spec in config["runs"].items() if spec["kind"] == "cascade")
            raise ConfigError(
                f"{source}: runs.{name}.match_compute = {target!r} must name a cascade run, one of {cascades}"
            )
    _check_samplers(config, source)
    _check_zero_shot(config, source)


def _check_zero_shot(config: dict, source: str) -> None:
    """zero_shot.runs names single or AR runs: the zero-shot rules score one model folder per run."""
    scorable = sorted(name for name, run in config["runs"].items() if run["kind"] in ("single", "ar"))
    for name in config["zero_shot"]["runs"] or []:
        if name not in scorable:
            raise ConfigError(
                f"{source}: zero_shot.runs: {name!r} is not a single or ar run of this config; those are {scorable}"
            )


def _check_samplers(config: dict, source: str) -> None:
    """Placing samplers sample re-predicting cascade runs only (places_prefix; common.workflow.Plan.run_samplings):
    a single-stage run or an inserting cascade needs a plain sampler too, or it would get no samples."""
    samplers = config["sample"]["samplers"]
    unplaced = sorted(
        name for name, run in config["runs"].items() if run["kind"] in ("single", "cascade") and not places_prefix(run)
    )
    if unplaced and all(s.endswith(PLACED) for s in samplers):
        raise ConfigError(
            f"{source}: sample.samplers = {samplers}: only placing samplers ({{sampler}}{PLACED}), which sample "
            f"re-predicting cascade runs only, so the single-stage runs and inserting cascades {unplaced} would get "
            f"no samples; expected a plain sampler as well (e.g. {samplers[0].removesuffix(PLACED)!r})"
        )


def _check_stage_form(name: str, run: dict, source: str) -> None:
    """stage_form insert only for cascades, and placement only with stage_form insert."""
    form = run.get("stage_form", "repredict")
    if form == "insert" and run["kind"] != "cascade":
        raise ConfigError(
            f"{source}: runs.{name}.stage_form = insert applies to cascade runs (expected repredict for kind "
            f"{run['kind']}), got insert"
        )
    if run.get("placement") is not None and form != "insert":
        raise ConfigError(
            f"{source}: runs.{name}.placement = {run['placement']!r} is the placement law of inserting stages: "
            f"expected stage_form: insert, got stage_form: {form}"
        )


def _check_post_training_run(config: dict, name: str, run: dict, source: str) -> None:
    """An sft run reads the sft section's data and may start from another run's model folder; a dpo run reads the
    preference pairs and must start from one (its policy and, by default, its frozen reference)."""
    if run["kind"] not in ("sft", "dpo"):
        raise ConfigError(
            f"{source}: runs.{name}.init_from applies to sft and dpo runs, this run is kind {run['kind']}"
        )
    if run["kind"] == "dpo":
        _check_dpo_loss(config, name, source)
    target = run.get("init_from")
    if target is None:
        if run["kind"] == "dpo":
            raise ConfigError(
                f"{source}: runs.{name}.init_from is missing: a dpo run starts from another run's "
                f"model folder (usually an sft run), which is also its reference unless "
                f"dpo.reference names one"
            )
        return
    kinds = {r: spec["kind"] for r, spec in config["runs"].items()}
    starts_from = ("single", "sft", "dpo")
    if target == name or kinds.get(target) not in starts_from:
        starts = sorted(r for r, kind in kinds.items() if kind in starts_from and r != name)
        raise ConfigError(
            f"{source}: runs.{name}.init_from = {target!r} must name another run of kind single, sft "
            f"or dpo (its runs/<profile>/<run>/model folder), one of {starts}"
        )
    mine, theirs = run_backbone(config, name), run_backbone(config, target)
    if mine != theirs:
        raise ConfigError(
            f"{source}: runs.{name} (kind {run['kind']}) builds backbone {_describe(mine)} but starts "
            f"from runs.{target} (init_from), whose backbone is {_describe(theirs)}; its weights fit "
            f"only the same network: give runs.{name} the backbone (and model size) of {target}"
        )
    if run["kind"] == "dpo":
        _check_dpo_reference(config, name, source)


def _check_dpo_loss(config: dict, name: str, source: str) -> None:
    """dpo.loss and dpo.label_smoothing of dpo run ``name`` (runs.<name>.dpo over the dpo section, as
    train/settings.resolve merges them): label smoothing is the sigmoid loss's (cDPO,
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)); IPO's (h - 1 / (2 beta))^2 has none, so ipo with
    label_smoothing > 0 would train without the smoothing the config asks for."""
    own = config["runs"][name].get("dpo", {})
    merged = {**config["dpo"], **own}
    if merged["loss"] == "ipo" and merged["label_smoothing"] > 0:
        key = {k: f"runs.{name}.dpo.{k}" if k in own else f"dpo.{k}" for k in ("loss", "label_smoothing")}
        raise ConfigError(
            f"{source}: runs.{name} (kind dpo): {key['loss']} is 'ipo' and {key['label_smoothing']} "
            f"is {merged['label_smoothing']}; label smoothing applies to the sigmoid loss only "
            f"(IPO's (h - 1/(2 beta))^2 has none): expected label_smoothing 0 with loss ipo, or "
            f"loss sigmoid"
        )


# backbone.weights of a masked_lm by name: the first is the default (train/backbones.py checks a spec with it)
MASKED_LM_WEIGHTS = ("pretrained", "random")


def run_backbone(config: dict, name: str) -> dict:
    """The network run ``name`` builds (train/backbones.build_backbone), from its keys over the train: section:
    {kind: dit, model: size} or {kind: masked_lm, name, config, weights}. Two runs whose results are equal build
    networks with the same parameter names and shapes (the vocabulary is the config's one tokenizer for both), so
    one can start from the other's weights (init_from), and their records name the same start (a run on a random
    MiniLM's weights is not recorded as the pretrained one)."""
    run = config["runs"][name]
    spec = run.get("backbone", config["train"]["backbone"])
    if spec["kind"] == "dit":
        return {"kind": "dit", "model": run.get("model", config["train"]["model"])}
    named = spec.get("name") is not None
    weights = spec.get("weights", MASKED_LM_WEIGHTS[0]) if named else None
    return {"kind": spec["kind"], "name": spec.get("name"), "config": spec.get("config"), "weights": weights}


def _describe(backbone: dict) -> str:
    if backbone["kind"] == "dit":
        return f"dit (model: {backbone['model']})"
    if backbone.get("name") is not None:
        return f"masked_lm (name: {backbone['name']}, weights: {backbone['weights']})"
    return f"masked_lm (config: {backbone['config']})"


# --------------------------------------------------------------------------------------------------------
# A dpo run's reference


def _dpo_reference_setting(config: dict, name: str) -> str | None:
    """runs.<name>.dpo.reference, else dpo.reference (train/settings.resolve merges them alike)."""
    return {**config["dpo"], **config["runs"][name].get("dpo", {})}["reference"]


def _reference_key(config: dict, name: str) -> str:
    return f"runs.{name}.dpo.reference" if "reference" in config["runs"][name].get("dpo", {}) else "dpo.reference"


def dpo_reference(config: dict, run: str, run_dir: Callable[[str], str]) -> str:
    """The frozen reference model folder of dpo run ``run`` of a validated config (validate_config has checked it):

        dpo.reference (runs.<run>.dpo.reference over the dpo section's)
          null                  ->  run_dir(init_from) + "/model"     the policy's start (train/dpo.py's default)
          the name of a run     ->  run_dir(name) + "/model"          that run's model folder (a run name is taken
                                                                      first, even where a folder of that name exists)
          anything else         ->  the string as given               a model folder on disk (it exists)

    ``run_dir`` maps a run name to its runs folder, the same function the rules use for every run's outputs
    (rules/common.smk's run_dir, e.g. common.layout.Layout(config).run), so the path is the one the train rule
    writes that run's model.safetensors / config.json under. A run name therefore resolves to an output of the
    workflow, to be declared as a job input; a folder, to a file on disk.

    Where the policy's start is already trained (run_dir(init_from)/model/config.json exists) and the reference
    is a folder, their config.json vocab_size must agree (else ConfigError naming both); before the start exists,
    train/dpo.py checks it when the job loads both.
    """
    spec = config["runs"][run]
    if spec["kind"] != "dpo":
        raise ConfigError(f"runs.{run} is kind {spec['kind']}: only a dpo run has a reference model")
    reference = _dpo_reference_setting(config, run)
    if reference is None:
        return f"{run_dir(spec['init_from'])}/model"
    if reference in config["runs"]:
        return f"{run_dir(reference)}/model"
    start = Path(run_dir(spec["init_from"])) / "model" / "config.json"
    if start.is_file():
        theirs = _read_model_meta(Path(reference).expanduser() / "config.json", _reference_key(config, run)).get(
            "vocab_size"
        )
        mine = _read_model_meta(start, f"runs.{spec['init_from']}").get("vocab_size")
        if mine != theirs:
            raise ConfigError(
                f"{_reference_key(config, run)} = {reference!r}: its config.json has vocab_size "
                f"{theirs}, the policy's start {start} has vocab_size {mine}; the reference scores the "
                f"policy's answers token by token, so it must share the policy's tokenizer"
            )
    return reference


def _read_model_meta(path: Path, key: str) -> dict:
    """config.json of a model folder written by python -m train (it has an ``objective``), or ConfigError naming
    the config key that named the folder."""
    try:
        meta = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot read {path} ({err.strerror}); expected a model folder written by "
            f"python -m train (config.json, model.safetensors)"
        ) from None
    except ValueError as err:
        raise ConfigError(f"{key}: {path} is not JSON ({err})") from None
    if not isinstance(meta, dict) or "objective" not in meta:
        raise ConfigError(
            f"{key}: {path} is not the config.json of a model folder written by python -m train (no "
            f"'objective'); a transformers model folder cannot be the reference"
        )
    return meta


def _check_dpo_reference(config: dict, name: str, source: str) -> None:
    """dpo.reference of dpo run ``name``: null; another run's name, of a run with one model folder that scores
    answers by the masked-diffusion ELBO (kind single, sft or dpo, not objective ar); or an existing model folder
    whose config.json is not objective ar and whose vocabulary can be the policy's (for tokenizer.kind bpe at most
    tokenizer.vocab_size tokens; the exact check against the trained start is dpo_reference's)."""
    reference = _dpo_reference_setting(config, name)
    if reference is None:
        return
    key = _reference_key(config, name)
    runs = config["runs"]
    if reference in runs:
        other = runs[reference]
        if reference == name or other["kind"] not in ("single", "sft", "dpo") or other["objective"] == "ar":
            usable = sorted(
                r
                for r, spec in runs.items()
                if r != name and spec["kind"] in ("single", "sft", "dpo") and spec["objective"] != "ar"
            )
            raise ConfigError(
                f"{source}: {key} = {reference!r} names runs.{reference} (kind {other['kind']}, "
                f"objective {other['objective']}), which cannot score runs.{name}'s answers: the "
                f"reference is one masked-diffusion model folder (a run of kind single, sft or dpo, not "
                f"objective ar, not the run itself), one of {usable}, or a model folder path"
            )
        return
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{source}: {key} = {reference!r} is neither a run of the config ({sorted(runs)}) nor an "
            f"existing folder ({'a file' if folder.exists() else 'no such path'} from "
            f"{Path.cwd()}); expected a model folder written by python -m train"
        )
    meta = _read_model_meta(folder / "config.json", f"{source}: {key}")
    if meta["objective"] == "ar":
        raise ConfigError(
            f"{source}: {key} = {reference!r} is an AR model (objective ar in its config.json), which "
            f"cannot score runs.{name}'s answers by the masked-diffusion ELBO; expected a diffusion "
            f"model folder"
        )
    vocab, tokenizer = meta.get("vocab_size"), config["tokenizer"]
    if tokenizer["kind"] == "bpe" and isinstance(vocab, int) and vocab > tokenizer["vocab_size"]:
        raise ConfigError(
            f"{source}: {key} = {reference!r} has vocab_size {vocab} (its config.json), more than the "
            f"config's tokenizer can have (tokenizer.vocab_size {tokenizer['vocab_size']}, kind bpe), "
            f"so it cannot share the policy's tokenizer and cannot score its answers"
        )


# --------------------------------------------------------------------------------------------------------
# A masked LM backbone and the tokenizer


def _local_folder(name: str) -> Path | None:
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else None


def _same_source(a: str, b: str) -> bool:
    """Two hub ids / folder paths name the same thing: equal resolved folders on this disk, else equal strings."""
    fa, fb = _local_folder(a), _local_folder(b)
    if fa is not None and fb is not None:
        return fa.resolve() == fb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def _check_backbone_tokenizer(config: dict, name: str, source: str) -> None:
    """A masked_lm backbone and the config's tokenizer agree (train/backbones.build_masked_lm otherwise resizes
    the network to the tokenizer, silently):

    - backbone.name (pretrained weights, a local folder or a hub id): its token ids mean its own tokenizer's
      tokens, so the config needs tokenizer {kind: pretrained, name: the same folder or id} (equal strings, or the
      same folder on this disk). A local folder must hold config.json; its vocab_size is named in the error.
    - backbone.config with an explicit vocab_size and tokenizer.kind bpe: equal to tokenizer.vocab_size.

    Only local disk is read (a folder's config.json); a hub id is compared by name, never downloaded.
    """
    run = config["runs"][name]
    spec = run.get("backbone", config["train"]["backbone"])
    if spec["kind"] != "masked_lm":
        return
    key = f"runs.{name}.backbone" if "backbone" in run else "train.backbone"
    tokenizer = config["tokenizer"]
    have = (
        f"tokenizer: {{kind: {tokenizer['kind']}, name: {tokenizer['name']}}}"
        if tokenizer["kind"] == "pretrained"
        else f"tokenizer: {{kind: bpe, vocab_size: {tokenizer['vocab_size']}}}"
    )
    pretrained = spec.get("name")
    if pretrained is not None:
        folder, vocab = _local_folder(pretrained), None
        if folder is not None:
            meta_path = folder / "config.json"
            if not meta_path.is_file():
                raise ConfigError(
                    f"{source}: {key}.name = {pretrained!r} is a local folder without config.json; "
                    f"expected a transformers masked LM folder (config.json and its weights)"
                )
            try:
                vocab = json.loads(meta_path.read_text()).get("vocab_size")
            except (OSError, ValueError, AttributeError) as err:
                raise ConfigError(f"{source}: {key}.name: cannot read {meta_path} as a JSON object ({err})") from None
        if tokenizer["kind"] != "pretrained" or not _same_source(tokenizer["name"] or "", pretrained):
            size = f", vocab_size {vocab} in its config.json" if vocab is not None else ""
            raise ConfigError(
                f"{source}: {key}.name = {pretrained!r} (run {name}: a pretrained masked LM{size}) "
                f"needs its own tokenizer, tokenizer: {{kind: pretrained, name: {pretrained}}}; the "
                f"config has {have}, whose token ids are not the backbone's"
            )
        return
    vocab = (spec.get("config") or {}).get("vocab_size")
    if vocab is not None and tokenizer["kind"] == "bpe" and vocab != tokenizer["vocab_size"]:
        raise ConfigError(
            f"{source}: {key}.config.vocab_size = {vocab} (run {name}) differs from the tokenizer's "
            f"{tokenizer['vocab_size']} ({have}); the network is built with the tokenizer's "
            f"vocabulary: drop backbone.config.vocab_size or make the two equal"
        )


def run_data(spec: dict) -> str:
    """What a run trains on: the stage datasets for a cascade, the SFT canvases for an sft run, the preference
    pairs for a dpo run (dpo.source's, or own_pairs: made from its start model's answers, pairs: own_answers),
    else its `data` (stages | wrap | doc)."""
    if spec["kind"] == "dpo":
        return "own_pairs" if spec.get("pairs", "source") == "own_answers" else "preference"
    return {"cascade": "stages", "sft": "sft"}.get(spec["kind"], spec.get("data", "stages"))


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


# What a config file is called (configs/*.yaml); and the folders of the working directory the pipeline writes,
# where a target lies
CONFIG_SUFFIXES = (".yaml", ".yml")
OUTPUT_FOLDERS = ("data", "runs", "results", "logs")


def check_configfiles(paths, workdir: str | os.PathLike = ".") -> None:
    """Refuse a --configfile that is not a config, most likely a target written after --configfile (Snakemake's
    --configfile takes every word after it as one more config file, so `snakemake --configfile C.yaml runs/x/...`
    merges the target into the config).

    A file is taken for a target when it does not read as a config (not a mapping, or a top-level key that is no
    section of the schema) and either its name does not end in .yaml / .yml or it lies in a folder the pipeline
    writes (data/, runs/, results/, logs/ of ``workdir``). A .yaml file elsewhere with an unknown key is left to
    validate_config, which names the key. Raises ConfigError naming the file, what it holds and what probably
    happened.

    Snakemake reads every --configfile before the Snakefile runs, so a file it cannot read at all stops it before
    this check: a binary file (UnicodeDecodeError), a missing one ("Config file ... not found"), a YAML scalar or
    list ("Config file must be given as JSON or YAML with keys at top level").
    """
    sections = sorted(load_schema()["properties"])
    roots = [Path(workdir).resolve() / folder for folder in OUTPUT_FOLDERS]
    for path in map(Path, paths):
        data, what = None, "it reads as neither JSON nor YAML text"
        try:
            text = path.read_bytes().decode("utf-8")
            try:
                data = json.loads(text)
            except ValueError:
                data = yaml.safe_load(text)
        except (UnicodeDecodeError, yaml.YAMLError):
            pass
        else:
            what = f"it holds a {type(data).__name__}, not a mapping of config sections"
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in sections)
            if not unknown:
                continue
            what = f"its top-level keys {unknown[:8]} are not config sections (expected some of {sections})"
        resolved = path.resolve()
        in_outputs = any(resolved.is_relative_to(root) for root in roots)
        if path.suffix in CONFIG_SUFFIXES and not in_outputs:
            continue
        where = "a file the pipeline writes" if in_outputs else f"a {path.suffix or 'suffix-less'} file, not .yaml"
        raise ConfigError(
            f"--configfile {path} is not a config: {where}, and {what}. It looks like a target written "
            f"after --configfile, which reads every word after it as a config file: put targets before "
            f"--configfile (snakemake TARGET ... --configfile FILE)"
        )


def load_config(path: str | os.PathLike) -> dict:
    """Read a config file, check it and fill in the defaults (the one way any command reads a config)."""
    return validate_config(read_yaml(path), str(path))


def ar_scorer_run(config: dict) -> str:
    """The run whose model is the `evaluate.scorer: ar` scorer: the config's first run of kind ar."""
    for name, run in config["runs"].items():
        if run["kind"] == "ar":
            return name
    raise ConfigError(
        "evaluate.scorer is 'ar' (the config's own AR run) but no run in runs has kind: ar; "
        "add one, or set evaluate.scorer to a causal LM (hub id or folder)"
    )
