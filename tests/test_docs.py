"""The lists in docs/design.md and docs/contracts.md that name code say what the code says: samplers, objectives,
run kinds, rules, each rule's rerun-trigger keys and declared outputs, config.json's keys, modules and commands.

A list that names a constant is written `Label (`module.CONSTANT`): `a`, `b`, `c`` and is compared with that
constant wherever it appears. The rules are read the way Snakemake reads them: a small script loads the workflow
(no DAG, no job) for a config with a run of every kind and prints each rule's output patterns and
`params: settings`.
"""

import ast
import importlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from common.config import load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "design.md").read_text()
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()
DOCS = {"docs/design.md": DESIGN, "docs/contracts.md": CONTRACTS}
SECTIONS = set(load_schema()["properties"])
TARGET_RULES = {"all", "preprocess"}

# A config with a run of every kind, objective and kind of data, so every rule has jobs.
RICH = {
    "profile": "docs",
    "stages": {"lengths": [8, 16, 32]},
    "blocks": {"length": 24},
    "runs": {
        "cascade": {"kind": "cascade", "method": "keybert", "objective": "mdlm"},
        "insert": {"kind": "cascade", "method": "keybert", "objective": "mdlm", "stage_form": "insert"},
        "single": {"kind": "single", "method": "constituency", "objective": "mdlm", "match_compute": "cascade"},
        "wrap": {"kind": "single", "data": "wrap", "objective": "sedd"},
        "ar": {"kind": "ar", "method": "keybert_no_stopword", "objective": "ar"},
        "doc": {"kind": "ar", "data": "doc", "objective": "ar"},
        "atat": {"kind": "single", "method": "keybert", "objective": "atat"},
        "sft": {"kind": "sft", "objective": "mdlm", "init_from": "single"},
        "dpo": {"kind": "dpo", "objective": "mdlm", "init_from": "sft"},
        "dpo-own": {"kind": "dpo", "objective": "mdlm", "init_from": "sft", "pairs": "own_answers"},
    },
    "zero_shot": {"corpora": {"ptb": {"name": "ptb"}}},
}


# ------------------------------------------------------------------------------------------------------------
# Reading the docs


def labelled_lists(text: str) -> list[tuple[str, list[str]]]:
    """(`module.CONSTANT`, [items]) of every "(`module.CONSTANT`...): `a`, `b`, `c`" in ``text``."""
    found = []
    pattern = r"\(`((?:[a-z_]+\.)+[A-Z][A-Z_]*)`[^)]*\):\s*((?:`[^`]+`(?:,\s*|\s+and\s+)?)+)"
    for match in re.finditer(pattern, text):
        found.append((match.group(1), re.findall(r"`([^`]+)`", match.group(2))))
    return found


def constant(ref: str):
    module, name = ref.rsplit(".", 1)
    value = getattr(importlib.import_module(module), name)
    return list(value)  # a dict: its keys


def code_block_after(text: str, heading: str) -> list[str]:
    """The lines of the first ``` block after ``heading``."""
    rest = text[text.index(heading) :]
    start = rest.index("```\n") + 4
    return rest[start : rest.index("```", start)].splitlines()


def sentence(text: str, start: str) -> str:
    """From ``start`` to the end of its sentence."""
    rest = text[text.index(start) :]
    return rest[: re.search(r"\.(\s|$)", rest).start()]


def table_after(text: str, marker: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table after ``marker``."""
    rows, seen = [], False
    for line in text[text.index(marker) :].splitlines():
        if line.strip().startswith("|"):
            seen = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif seen:
            break
    return rows[1:]  # the header


def config_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) of every backticked config key in ``text``: `sft.length`, `sft.{a, b}`, `train.*`."""
    keys = set()
    for token in re.findall(r"`([^`]+)`", text):
        section, _, rest = token.partition(".")
        if section not in SECTIONS or section == "runs" or not re.fullmatch(r"\*|[a-z_]+|\{[a-z_, ]+\}", rest):
            continue
        if rest.startswith("{"):
            keys |= {(section, k.strip()) for k in rest.strip("{}").split(",")}
        else:
            keys.add((section, rest))
    return keys


# ------------------------------------------------------------------------------------------------------------
# Reading the code


def smk_rules() -> set[str]:
    """Rule names of the Snakefile and rules/*.smk; a rule named in a loop over splits is `name_{split}`."""
    names = set()
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = path.read_text()
        names |= set(re.findall(r"^rule (\w+):", text, re.MULTILINE))
        names |= {f"{a}_{{{b}}}" for a, b in re.findall(r'name:\s*f"(\w+)_\{_(\w+)\}"', text)}
    return names


def doc_rule(name: str) -> str:
    """The docs' name of a rule: corpus_train and corpus_validation are one, corpus_{split}."""
    return "corpus_{split}" if name.startswith("corpus_") else name


PROBE = textwrap.dedent('''
    """Load the workflow for one config (no DAG, no job) and print every rule's outputs and settings."""
    import itertools, json, sys, types
    from pathlib import Path
    from snakemake.api import SnakemakeApi
    from snakemake.io import strip_wildcard_constraints
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    root, configfile, workdir, out = map(Path, sys.argv[1:5])
    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        workflow = api.workflow(snakefile=root / "Snakefile", workdir=workdir, resource_settings=ResourceSettings(),
                                config_settings=ConfigSettings(configfiles=[configfile]))._workflow
        config = workflow.config
        # the wildcards a settings function reads (annotate: method; sft_data, preference_data: split; own_pairs:
        # run, a dpo run with pairs: own_answers)
        own = [name for name, run in config["runs"].items() if run.get("pairs") == "own_answers"]
        wildcards = [types.SimpleNamespace(method=m, split=s, run=own[0] if own else None)
                     for m, s in itertools.product(config["annotate"]["methods"], ["train", "validation"])]
        rules = {}
        for rule in workflow.rules:
            settings = None
            if "settings" in rule.params.keys():
                value = rule.params["settings"]
                if rule.name == "train":
                    settings = "TrainSettings.computing()"  # checked in-process (test_train_triggers)
                elif callable(value):
                    settings = [value(w) for w in wildcards]
                else:
                    settings = [value]
            rules[rule.name] = {"output": [strip_wildcard_constraints(str(o)) for o in rule.output],
                                "settings": settings}
    out.write_text(json.dumps({"config": config, "rules": rules}, default=list))
''')


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """{"config": the validated config, "rules": {rule: {"output": [patterns], "settings": [dicts] | None}}}."""
    tmp = tmp_path_factory.mktemp("docs-workflow")
    (tmp / "probe.py").write_text(PROBE)
    (tmp / "rich.yaml").write_text(yaml.safe_dump(RICH))
    (tmp / "work").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp / "probe.py"),
            str(ROOT),
            str(tmp / "rich.yaml"),
            str(tmp / "work"),
            str(tmp / "out.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


# ------------------------------------------------------------------------------------------------------------
# Lists that name a constant


def test_every_labelled_list_matches_its_constant():
    lists = [(doc, ref, items) for doc, text in DOCS.items() for ref, items in labelled_lists(text)]
    wrong = [
        f"{doc}: ({ref}): {items} but the code has {constant(ref)}"
        for doc, ref, items in lists
        if sorted(items) != sorted(constant(ref))
    ]
    assert not wrong, "\n".join(wrong)
    named = {ref for _, ref, _ in lists}
    assert {
        "eval.samplers.SAMPLERS",
        "eval.samplers.PLACING_SAMPLERS",
        "train.objectives.OBJECTIVES",
        "train.settings.KINDS",
        "train.settings.DIFFUSION_OBJECTIVES",
        "train.trainer.METRIC_FIELDS",
        "train.atat.ATAT_FIELDS",
        "train.dpo.DPO_FIELDS",
    } <= named, f"a checked list is gone from the docs: have {sorted(named)}"


def doc_list(ref: str) -> list[str]:
    return next(items for ref_, items in labelled_lists(DESIGN) if ref_ == ref)


def test_samplers_objectives_and_kinds_are_the_schemas():
    """The values a config may name are the ones the docs list (and the code implements)."""
    schema = load_schema()
    run = schema["properties"]["runs"]["additionalProperties"]["properties"]
    assert sorted(doc_list("eval.samplers.SAMPLERS") + doc_list("eval.samplers.PLACING_SAMPLERS")) == sorted(
        schema["properties"]["sample"]["properties"]["samplers"]["items"]["enum"]
    )
    assert sorted(doc_list("train.settings.KINDS")) == sorted(run["kind"]["enum"])
    # a run's objective: the saved parameterizations, and atat (which saves mdlm)
    assert sorted(run["objective"]["enum"]) == sorted([*doc_list("train.objectives.OBJECTIVES"), "atat"])
    objectives = DESIGN.index("Objectives (`train.objectives.OBJECTIVES`)")
    assert "`atat`" in DESIGN[objectives : objectives + 300]


def test_labelled_lists_read_wrapped_lists():
    """labelled_lists reads lists that wrap lines and end at a semicolon or prose."""
    text = "Samplers (`eval.samplers.SAMPLERS`, and more): `a`, `b`,\n  `c` and `d`; then `e` is not in it."
    assert labelled_lists(text) == [("eval.samplers.SAMPLERS", ["a", "b", "c", "d"])]


# ------------------------------------------------------------------------------------------------------------
# Rules, their outputs and their rerun triggers


def dag_lines() -> dict[str, str]:
    """rule -> its outputs as docs/design.md's DAG block writes them."""
    lines = {}
    for line in code_block_after(DESIGN, "## The DAG"):
        match = re.match(r"^(\S+)\s+->\s+(.*)$", line)
        assert match, f"docs/design.md, The DAG: not 'rule -> outputs': {line!r}"
        lines[match.group(1)] = re.split(r"\s{2,}", match.group(2).strip())[0]
    return lines


def test_the_docs_name_every_rule():
    rules = smk_rules()
    in_dag = set(dag_lines())
    targets = set(re.findall(r"`(\w+)`", sentence(DESIGN, "Target rules")))
    assert in_dag | targets == rules and not in_dag & targets, (
        f"docs/design.md names {sorted(in_dag | targets)}, the rules are {sorted(rules)}"
    )
    assert targets == TARGET_RULES
    triggers = {name.strip() for cells in table_after(DESIGN, "Rerun triggers") for name in cells[0].split(",")}
    assert triggers == rules - TARGET_RULES, f"the rerun-trigger table's rules {sorted(triggers)}"


def expand_braces(path: str) -> list[str]:
    """a.{md,csv} -> a.md, a.csv (a brace with a comma; a wildcard has none)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if not match:
        return [path]
    return [
        p for alt in match.group(1).split(",") for p in expand_braces(path[: match.start()] + alt + path[match.end() :])
    ]


def doc_outputs(text: str) -> set[str]:
    """The paths of one DAG line: `X + .stats.json` is X's sibling .stats.json, `X, name` a file beside X."""
    paths = []
    for token in re.split(r", | \+ ", text):
        token = token.strip()
        if token.startswith("."):
            previous = paths[-1]
            token = previous[: previous.rindex(".")] + token
        elif "/" not in token:
            token = paths[-1][: paths[-1].rindex("/") + 1] + token
        paths.append(token)
    return {p for path in paths for p in expand_braces(path)}


def normalized(path: str, config: dict | None = None, split: str | None = None) -> str:
    """One spelling for a doc path and a rule's output pattern."""
    path = path.rstrip("/")
    path = path.replace("shard_{i:05d}", "{shard}").replace("{l1}_{l2}_{l3}", "{lengths}")
    path = path.replace("{wrap|doc}", "{packing}").replace("{sft_length}", "{L}").replace("{block_length}", "{L}")
    path = re.sub(r"shard_\d{5}", "{shard}", path)
    if config is not None:  # a rule's output: this config's corpus, tags and profile
        path = re.sub(rf"^data/{re.escape(config['corpus']['name'])}/", "data/{corpus}/", path)
        path = re.sub(r"/(raw|tokenizer|annot|stages|blocks)-[0-9a-f]{8}", r"/\1-{tag}", path)
        path = re.sub(rf"^(runs|results)/{re.escape(config['profile'])}/", r"\1/{profile}/", path)
    if split is not None:
        path = path.replace(f"/{split}/", "/{split}/")
    return path


def test_the_dag_block_lists_every_rules_declared_outputs(workflow):
    config, rules = workflow["config"], workflow["rules"]
    lines = dag_lines()
    wrong = []
    for name, rule in rules.items():
        if name in TARGET_RULES:
            continue
        split = name.removeprefix("corpus_") if name.startswith("corpus_") else None
        have = {normalized(p, config, split) for p in rule["output"]}
        documented = {normalized(p) for p in doc_outputs(lines[doc_rule(name)])}
        if have != documented:
            wrong.append(f"{name}: the rule declares {sorted(have)}, docs/design.md says {sorted(documented)}")
    assert not wrong, "\n".join(wrong)


def test_the_train_outputs_in_contracts(workflow):
    bullet = CONTRACTS[CONTRACTS.index("- Declared outputs of rule train:") :]
    declared = re.findall(r"`([^`]+)`", bullet[: bullet.index(";")])
    assert sorted(declared) == sorted(Path(p).name for p in workflow["rules"]["train"]["output"])
    from train.importance import IMPORTANCE_FILE

    assert f"`{IMPORTANCE_FILE}`" in bullet[: bullet.index("\n- ")]


def trigger_rows() -> dict[str, str]:
    """rule -> its settings cell of the rerun-trigger table."""
    return {name.strip(): cells[1] for cells in table_after(DESIGN, "Rerun triggers") for name in cells[0].split(",")}


def test_rerun_triggers_are_what_the_rules_declare(workflow):
    """Each rule's `params: settings` holds exactly the keys the table names for it, read from those config keys
    (`section.*`: the whole section); a rule without settings says none."""
    config, rules = workflow["config"], workflow["rules"]
    wrong = []
    for name, rule in rules.items():
        if name in TARGET_RULES or name == "train":
            continue
        cell = trigger_rows()[doc_rule(name)]
        keys = config_keys(cell)
        if rule["settings"] is None:
            if keys or not cell.startswith("none"):
                wrong.append(f"{name}: declares no settings, the table says {cell!r}")
            continue
        whole = {section for section, key in keys if key == "*"}
        if whole:
            if len(keys) != 1 or any(s != config[next(iter(whole))] for s in rule["settings"]):
                wrong.append(f"{name}: settings {rule['settings']} are not the whole section {whole}")
            continue
        have = set().union(*(s.keys() for s in rule["settings"]))
        if have != {key for _, key in keys}:
            wrong.append(f"{name}: the rule's settings {sorted(have)}, the table {sorted(keys)}")
            continue
        for settings in rule["settings"]:
            for section, key in keys:
                if key in settings and settings[key] != config[section].get(key, "(no such key)"):
                    wrong.append(f"{name}: settings {key} = {settings[key]!r} is not {section}.{key}")
    assert not wrong, "\n".join(wrong)


def test_the_tables_key_lists_are_the_codes():
    """Where a row names the code's constant, its keys are that constant."""
    from common.config import DPO_TRAIN_KEYS
    from common.layout import ANNOTATE_KEYS, PREFERENCE_DATA_KEYS, SFT_DATA_KEYS
    from train.settings import JOB_ONLY_KEYS

    rows = trigger_rows()
    for rule, section, keys, ref in [
        ("annotate", "annotate", ANNOTATE_KEYS, "common.layout.ANNOTATE_KEYS"),
        ("sft_data", "sft", SFT_DATA_KEYS, "common.layout.SFT_DATA_KEYS"),
        ("preference_data", "dpo", PREFERENCE_DATA_KEYS, "common.layout.PREFERENCE_DATA_KEYS"),
    ]:
        assert f"`{ref}`" in rows[rule]
        assert {k for s, k in config_keys(rows[rule]) if s == section} == set(keys), rule
    triggers, job_only = train_row()
    assert "`common.config.DPO_TRAIN_KEYS`" in rows["train"] and "`train.settings.JOB_ONLY_KEYS`" in rows["train"]
    assert {k for s, k in triggers if s == "dpo"} == set(DPO_TRAIN_KEYS)
    assert {k if s == "train" else f"{s}_{k}" for s, k in job_only} == set(JOB_ONLY_KEYS)


def train_row() -> tuple[set, set]:
    """(trigger keys, job-only keys) of the train row."""
    triggers, _, job_only = trigger_rows()["train"].partition("not the job-only")
    return config_keys(triggers), config_keys(job_only)


# ------------------------------------------------------------------------------------------------------------
# The train rule's trigger: TrainSettings.computing(), checked key by key


def leaves(value, node, schema, path=()):
    """(path, value, schema node) of every key of a validated config section, nested objects walked."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if isinstance(value, dict) and node.get("properties"):
        for key, sub in value.items():
            yield from leaves(sub, node["properties"][key], schema, (*path, key))
    else:
        yield path, value, node


SKIP = object()


def perturbed(value, node, schema):
    """Other values of the key's type, to try in turn (no schema check: only whether computing() sees the key
    matters; a value a run refuses, e.g. a batch size that does not divide, is passed over for the next)."""
    enum = node.get("enum")
    for sub in node.get("anyOf", []):
        enum = enum or schema["definitions"].get(sub.get("$ref", "").rsplit("/", 1)[-1], {}).get("enum")
    if isinstance(value, bool):
        return not value
    if enum:
        others = [e for e in enum if e != value and e is not None]
        return others[0] if others else SKIP
    if value is None:
        types = node.get("type", [])
        types = types if isinstance(types, list) else [types]
        return "perturbed" if "string" in types else 64 if "integer" in types else 0.25 if "number" in types else SKIP
    if isinstance(value, int):
        return [value + 2, value * 2, value // 2]
    if isinstance(value, float):
        return value * 2 if value else 0.25
    if isinstance(value, str):
        return value + "-perturbed"
    if isinstance(value, list):
        items = node.get("items", {})
        if value and all(isinstance(v, int) for v in value):
            return [v + 2 for v in value]
        if len(value) > 1:
            return value[::-1]
        others = [e for e in items.get("enum", []) if e not in value]
        return value + others[:1] if others else SKIP
    return SKIP


def computing_of(config: dict) -> dict:
    """(run, model) -> TrainSettings.computing(), or None where the settings are refused."""
    from train.settings import resolve

    out = {}
    for run, spec in config["runs"].items():
        for stage in (1, 2, 3) if spec["kind"] == "cascade" else (None,):
            try:
                out[(run, stage)] = json.dumps(resolve(config, run, stage).computing(), sort_keys=True, default=list)
            except Exception:  # noqa: BLE001 - a perturbed value some run cannot train with
                out[(run, stage)] = None
    return out


def test_train_triggers_are_what_computing_reads():
    """Changing a config key changes some train job's TrainSettings.computing() (the train rule's settings) exactly
    when the table's train row names it as a trigger, and never for the job-only keys."""
    config = validate_config(yaml.safe_load(yaml.safe_dump(RICH)))
    schema = load_schema()
    triggers, job_only = train_row()
    assert not triggers & job_only

    def documented(section, path):
        key = ".".join(path)
        return (
            ((section, "*") in triggers or (section, key) in triggers or (section, path[0]) in triggers)
            and (section, path[0]) not in job_only
            and (section, key) not in job_only
        )

    before = computing_of(config)
    assert None not in before.values()
    wrong, undecided, checked = [], [], 0
    for section in sorted(set(config) - {"runs", "profile"}):
        for path, value, node in leaves(config[section], schema["properties"][section], schema):
            if not path:
                continue
            candidates = perturbed(value, node, schema)
            if candidates is SKIP:
                undecided.append(f"{section}.{'.'.join(path)}")
                continue
            for new in candidates if isinstance(value, int) and not isinstance(value, bool) else [candidates]:
                changed_config = json.loads(json.dumps(config))
                target = changed_config[section]
                for part in path[:-1]:
                    target = target[part]
                target[path[-1]] = new
                after = computing_of(changed_config)
                usable = [k for k, v in after.items() if v is not None]
                if usable:
                    break
            if not usable:
                undecided.append(f"{section}.{'.'.join(path)}")
                continue
            checked += 1
            changes = any(after[k] != before[k] for k in usable)
            if changes != documented(section, path):
                wrong.append(
                    f"{section}.{'.'.join(path)}: changing it {'changes' if changes else 'does not change'}"
                    f" TrainSettings.computing(), the train row says "
                    f"{'it is' if documented(section, path) else 'it is not'} a trigger"
                )
    assert not wrong, "\n".join(wrong)
    # the zero-shot corpus map and run list are empty by default: there is no value to perturb (no train job reads
    # them: the zero-shot rules only score trained models)
    assert checked > 80 and sorted(undecided) == [
        "train.backbone.kind",
        "train.pretrained_format",
        "zero_shot.corpora",
        "zero_shot.runs",
    ], undecided


# ------------------------------------------------------------------------------------------------------------
# config.json


def written_meta_keys() -> set[str]:
    """Every config.json key the training code writes: train/trainer.py's self.meta (with backbone_meta's keys),
    self.meta.update(...) and meta["..."] = ... anywhere in train/, the dicts an objective's meta() hook returns
    (train/objective.py), and save_model's tokenizer keys."""
    keys = set()

    def returned_keys(path, function):
        tree = ast.parse((ROOT / path).read_text())
        fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
        return {
            k.value
            for r in ast.walk(fn)
            if isinstance(r, ast.Return) and isinstance(r.value, ast.Dict)
            for k in r.value.keys
            if isinstance(k, ast.Constant)
        }

    for path in sorted((ROOT / "train").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "meta":  # an objective's config.json keys
                keys |= returned_keys(path.relative_to(ROOT), "meta")
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Attribute) and t.attr == "meta" for t in node.targets)
            ):
                for key, value in zip(node.value.keys, node.value.values):
                    if isinstance(key, ast.Constant):
                        keys.add(key.value)
                    elif isinstance(value, ast.Call) and getattr(value.func, "id", None) == "backbone_meta":
                        keys |= returned_keys("train/backbones.py", "backbone_meta")
                    else:
                        raise AssertionError(f"{path.name}: a **{ast.unparse(value)} in self.meta: read its keys")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "meta"
            ):
                keys |= {kw.arg for kw in node.keywords}
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if (
                        isinstance(t, ast.Subscript)
                        and isinstance(t.value, ast.Attribute)
                        and t.value.attr == "meta"
                        and isinstance(t.slice, ast.Constant)
                    ):
                        keys.add(t.slice.value)
    return keys | returned_keys("train/checkpoint.py", "copy_tokenizer")


def test_config_json_keys_are_the_ones_written_and_required():
    from train.checkpoint import REQUIRED

    rows = table_after(CONTRACTS, "config.json` holds everything")
    documented = {re.fullmatch(r"`(\w+)`", cells[0]).group(1): cells[1] for cells in rows}
    assert {k for k, required in documented.items() if required == "yes"} == set(REQUIRED)
    assert set(documented.values()) == {"yes", "no"}
    written = written_meta_keys()
    assert set(documented) == written, (
        f"docs/contracts.md lists {sorted(set(documented) - written)} that no code "
        f"writes and misses {sorted(written - set(documented))}"
    )
    assert {"model", "objective", "training_objective", "generation", "dpo", "tokenizer_sha256"} <= written


# ------------------------------------------------------------------------------------------------------------
# Modules and commands


PACKAGES = ("common", "preprocess", "train", "eval")


def test_the_files_block_names_every_module():
    text, package = {}, None
    for line in code_block_after(DESIGN, "## Files"):
        first = line.split(" ", 1)[0]
        if first.rstrip("/") in PACKAGES and first.endswith("/"):
            package = first.rstrip("/")
            text[package] = line[len(first) :]
        elif line.startswith(" ") and package:
            text[package] += " " + line.strip()
        else:
            package = None
    assert set(text) == set(PACKAGES)
    for package, names in text.items():
        while re.search(r"\([^()]*\)", names):
            names = re.sub(r"\([^()]*\)", "", names)
        listed = {n.strip().removesuffix(".py") for n in names.split(",") if n.strip()}
        modules = {p.stem for p in (ROOT / package).glob("*.py")} - {"__init__", "__main__"}
        assert listed == modules, f"docs/design.md, Files, {package}/: lists {sorted(listed)}, has {sorted(modules)}"


def test_the_commands_are_the_modules_with_a_main():
    bullet = DESIGN[DESIGN.index("- Commands") :]
    bullet = bullet[: bullet.index("\n- ")]
    listed = {token.split()[0] for token in re.findall(r"`([^`]+)`", bullet) if token != "python -m"}
    commands = set()
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            if re.search(r'^if __name__ == "__main__":', path.read_text(), re.MULTILINE):
                commands.add(package if path.stem == "__main__" else f"{package}.{path.stem}")
    assert listed == commands


def test_every_sampler_has_its_paragraph():
    """Each sampler of the list is described under Sampling and evaluation (a bullet naming it)."""
    section = DESIGN[DESIGN.index("## Sampling and evaluation") : DESIGN.index("Metrics, each written")]
    for sampler in doc_list("eval.samplers.SAMPLERS"):
        assert f"`{sampler}`" in section.split("the last step removes every mask.", 1)[1], sampler


def test_no_doc_names_a_stale_example():
    """The demo's stage lengths and its data folders as the code names them."""
    demo = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    lengths = "_".join(map(str, demo["stages"]["lengths"]))
    for doc, text in DOCS.items():
        for example in re.findall(r"\b\d+_\d+_\d+\b", text):
            assert example == lengths, f"{doc}: stage lengths {example}, the demo has {lengths}"
        assert not re.search(r"data/\w+/(raw|stages|annot|blocks|sft|preference)/", text), doc
