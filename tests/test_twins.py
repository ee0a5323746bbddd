"""Every recipe in configs/ has an offline twin (configs/twins/<name>.yaml, an override applied on top of it) that
runs end to end here: the same rules, runs and keys, with only sizes and sources swapped. The twins of tiny, sft,
sft-minilm, atat and wikihow run their whole DAG, and insert's its table target, in the modules that test their
outputs; the two cluster recipes (paper, atat-wikitext103) run one job of each kind they have and plan the rest,
here."""

import csv
import json

import pytest
import yaml
from conftest import CONFIGS, TWINS, dry_run_counts, layout, merged_config, snakemake, twin

RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_every_config_has_a_twin_and_no_twin_lacks_a_config():
    assert RECIPES, "no configs found"
    assert sorted(p.stem for p in TWINS.glob("*.yaml")) == RECIPES


def key_paths(tree, prefix=()):
    for key, value in tree.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from key_paths(value, prefix + (key,))


@pytest.mark.parametrize("name", RECIPES)
def test_a_twin_swaps_values_only(name):
    """A twin sets keys the recipe already has (itself or through the schema's defaults): no new run, no new key;
    the merged twin is a valid config with the recipe's runs, and a profile of its own, so that its outputs never
    land in the recipe's folders."""
    recipe = merged_config((CONFIGS / f"{name}.yaml",))
    merged = merged_config(twin(name))
    override = yaml.safe_load((TWINS / f"{name}.yaml").read_text())
    assert sorted(merged["runs"]) == sorted(recipe["runs"]), "a twin runs exactly the recipe's runs"
    for path in key_paths({k: v for k, v in override.items() if k != "runs"}):
        node = recipe
        for key in path[:-1]:
            node = node[key]
        assert isinstance(node, dict) and path[-1] in node, f"{'.'.join(path)} is not a key of configs/{name}.yaml"
    for run, spec in (override.get("runs") or {}).items():
        assert run in recipe["runs"], f"runs.{run} is not a run of configs/{name}.yaml"
        for key in spec:
            assert key in merged["runs"][run]
    same_recipe = merged["profile"] == recipe["profile"]
    assert same_recipe == (override.keys() == {"profile"}), "a twin that changes anything needs a profile of its own"


def test_profiles_are_distinct():
    """runs/{profile}/ and results/{profile}/ are a config's own: no two recipes share a profile, and a twin's is
    its own (the tiny twin, which swaps nothing, keeps tiny's)."""
    recipes = {n: merged_config((CONFIGS / f"{n}.yaml",))["profile"] for n in RECIPES}
    twins = {n: merged_config(twin(n))["profile"] for n in RECIPES}
    assert len(set(recipes.values())) == len(recipes) and "demo" not in recipes.values()
    assert len(set(twins.values())) == len(twins)
    for name, profile in twins.items():
        assert profile not in set(recipes.values()) - {recipes[name]}


def test_the_wikihow_twin_plans_no_annotation(recipe_workspace, hub):
    counts = dry_run_counts(recipe_workspace, twin("wikihow"))
    assert "annotate" not in counts and "stages" not in counts


# -- the paper reproduction -------------------------------------------------------------------------------------
PAPER = twin("paper")
PAPER_RUNS = "runs/paper-twin"
FINETUNE = "cascade-keybert_no_stopword-shuffle-sedd-finetune"  # sedd-small start, shuffled prefix, objective sedd


@pytest.fixture(scope="module")
def paper(recipe_workspace, hub):
    """One job of each kind the paper config has: the three stages of a from-scratch MDLM cascade and of a SEDD
    cascade fine-tuned from the sedd-small folder with shuffled prefixes, the single and AR baselines, sampling with
    two samplers, evaluation by the hub scorer and on validation, on stages annotated with the PyPI models."""
    targets = [
        f"{PAPER_RUNS}/cascade/eval/confidence-4.json",
        f"{PAPER_RUNS}/cascade/eval/val.json",
        f"{PAPER_RUNS}/{FINETUNE}/eval/analytic-4.json",
        f"{PAPER_RUNS}/{FINETUNE}/eval/val.json",
        f"{PAPER_RUNS}/single/eval/ddpm-4.json",
        f"{PAPER_RUNS}/ar/eval/ar-32.json",
        "results/paper-twin/tables/zero_shot.csv",
    ]
    snakemake(recipe_workspace, *targets, configfiles=PAPER)
    return recipe_workspace


@pytest.mark.slow
def test_paper_twin_runs_each_job_kind(paper, hub):
    from train.checkpoint import load_model

    for run, objective in (("cascade", "mdlm"), (FINETUNE, "sedd")):
        for k in (1, 2, 3):
            _, meta = load_model(paper / PAPER_RUNS / run / f"stage{k}")
            assert (meta["objective"], meta["stage"], meta["method"]) == (objective, k, "keybert_no_stopword")
            assert meta["pretrained"] == ("hub/sedd-small" if run == FINETUNE else None)
        val = json.loads((paper / PAPER_RUNS / run / "eval" / "val.json").read_text())
        assert set(val["stages"]) == {"stage1", "stage2", "stage3"}
    log = (paper / "logs" / "paper-twin" / "train" / FINETUNE / "stage2.log").read_text()
    assert "pretrained start" in log and "'layout': 'sedd'" in log
    assert json.loads((paper / PAPER_RUNS / FINETUNE / "stage3" / "config.json").read_text())["train"]["shuffle_prefix"]
    for run, sampler in (("cascade", "confidence-4"), (FINETUNE, "analytic-4"), ("single", "ddpm-4"), ("ar", "ar-32")):
        result = json.loads((paper / PAPER_RUNS / run / "eval" / f"{sampler}.json").read_text())
        assert result["metrics"]["gen_ppl"]["scorer"] == "hub/gpt2-large" and result["metrics"]["gen_ppl"]["value"] > 1
    # the stages were annotated by the PyPI spaCy and MiniLM models swapped in for en_core_web_md / the hub MiniLM
    stats = json.loads(
        (paper / layout(PAPER).annot("keybert_no_stopword", "train") / "shard_00000.stats.json").read_text()
    )
    assert stats["documents_written"] > 0


@pytest.mark.slow
def test_paper_twin_scores_its_single_and_ar_runs_zero_shot(paper):
    """MDLM's zero-shot table: the single (stage-trained) and AR runs on local WikiText-2 and PTB files, wrapped
    into blocks of their l3 = 32 tokens; the AR row is the exact NLL, the single run's the NELBO bound."""
    with open(paper / "results" / "paper-twin" / "tables" / "zero_shot.csv") as f:
        rows = {(r["corpus"], r["run"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(c, run) for c in ("wikitext2", "ptb") for run in ("single", "ar")}
    for (_, run), row in rows.items():
        assert row["bound"] == ("NLL (exact)" if run == "ar" else "NELBO (upper bound)")
        assert int(row["block_length"]) == 32 and int(row["tokens"]) > 0 and float(row["ppl"]) > 1
    result = json.loads((paper / PAPER_RUNS / "ar" / "eval" / "zero_shot" / "ptb.json").read_text())
    assert result["block_shards"] == [f"{layout(PAPER).zero_shot_blocks('ptb', 32)}/shard_00000.parquet"]


@pytest.mark.slow
def test_paper_twin_plans_the_whole_grid(paper):
    """The rest of the paper's DAG is planned: 16 runs (14 cascades x 3 stages, single, AR), every sampler on
    every diffusion run, the report; what ran above is not planned again."""
    counts = dry_run_counts(paper, PAPER)
    cascades = sum(1 for spec in merged_config(PAPER)["runs"].values() if spec["kind"] == "cascade")
    assert cascades == 14  # cascade, cascade-sedd, cascade-constituency and the 11 other cells of the grid
    assert counts["train"] == cascades * 3 + 2 - (2 * 3 + 2)  # all but the 8 models trained above
    assert counts["report"] == 1 and counts["annotate"] == 6  # constituency and keybert shards
    assert counts["sample"] == (cascades + 1) * 4 + 1 - 4  # 4 samplers x 14 diffusion runs + AR, less 4


# -- the ATAT ablation on WikiText-103 ------------------------------------------------------------------------------
ATAT_WT103 = twin("atat-wikitext103")


@pytest.mark.slow
def test_atat_wikitext103_twin_runs_a_variant_and_plans_the_ablation(recipe_workspace, hub):
    run = "runs/atat-wikitext103-twin/atat-full-s0"
    snakemake(recipe_workspace, f"{run}/eval/uncertainty-4.json", f"{run}/eval/val.json", configfiles=ATAT_WT103)
    meta = json.loads((recipe_workspace / run / "model" / "config.json").read_text())
    assert (meta["training_objective"], meta["atat"]["importance"]) == ("atat", "full")
    gen = json.loads((recipe_workspace / run / "eval" / "uncertainty-4.json").read_text())["metrics"]["gen_ppl"]
    assert gen["scorer"] == "hub/gpt2-large"
    counts = dry_run_counts(recipe_workspace, ATAT_WT103)
    assert counts["train"] == 4 * 3 + 1 - 1 and counts["atat_report"] == 1 and "annotate" not in counts
    assert counts["sample"] == 4 * 3 * 3 + 1 - 1


def test_twins_of_cluster_recipes_need_only_the_hub_folders(hub):
    """What the twins name under hub/ is exactly what tests/hub_layouts.py builds."""
    built = {p.name for p in hub.iterdir() if p.is_dir()}

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        return [node] if isinstance(node, str) else []

    named = {
        s.split("/")[1]
        for name in RECIPES
        for s in strings(yaml.safe_load((TWINS / f"{name}.yaml").read_text()))
        if s.startswith("hub/")
    }
    assert named == built == {"gpt2", "gpt2-large", "sedd-small", "mdlm-owt", "minilm", "wikitext-2", "ptb", "lambada"}
