"""The MDLM-on-WikiHow recipe's offline twin (configs/wikihow.yaml under configs/twins/wikihow.yaml) through the real
DAG: packed blocks without annotation, a pretrained tokenizer from a local folder in gpt2's layout, training from
scratch and fine-tuning from a local folder in kuleshov-group/mdlm-owt's layout, the published model evaluated as
is, ppl_eval with both bounds, sample_eval scored by a local causal LM in gpt2-large's layout, and table rows that
say where they came from. (Per-document packing, data: doc, needs a pad token GPT-2 lacks; tests/test_blocks.py.)"""

import csv
import json

import pyarrow.parquet as pq
import pytest
import torch
from conftest import layout, snakemake, twin

from train.checkpoint import load_model

CONFIGS = twin("wikihow")
RUNS = "runs/wikihow-twin"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wikihow(recipe_workspace, hub):
    snakemake(recipe_workspace, configfiles=CONFIGS)
    return recipe_workspace


def test_blocks_skip_annotation_and_account_for_every_token(wikihow):
    paths = layout(CONFIGS)
    raw_docs = sum(pq.read_table(p).num_rows for p in (wikihow / paths.raw("train")).glob("shard_*.parquet"))
    stats = [json.loads(p.read_text()) for p in sorted((wikihow / paths.blocks("wrap", "train")).glob("*.stats.json"))]
    assert len(stats) == 2 and sum(s["documents_written"] for s in stats) == raw_docs  # pydoc has no empty topic
    for s in stats:
        assert s["blocks_written"] * 32 + s["tail_tokens_dropped"] == s["tokens"] and s["tail_tokens_dropped"] < 32


def test_the_pretrained_tokenizer_is_the_local_gpt2_folder_with_a_mask(wikihow, hub):
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(wikihow / layout(CONFIGS).tokenizer)
    gpt2 = AutoTokenizer.from_pretrained(hub / "gpt2")
    assert len(ours) == len(gpt2) + 1 and ours.mask_token_id == len(gpt2)  # <|mask|> appended
    text = "Return the list of keys."
    assert ours(text)["input_ids"] == gpt2(text)["input_ids"]


def test_fine_tune_starts_from_the_mdlm_owt_folder(wikihow):
    log = (wikihow / "logs" / "wikihow-twin" / "train" / "mdlm-finetune" / "model.log").read_text()
    assert "pretrained start" in log and "'layout': 'mdlm'" in log
    tuned, meta = load_model(wikihow / RUNS / "mdlm-finetune" / "model")
    assert meta["pretrained"] == "hub/mdlm-owt" and meta["data"] == "wrap"
    assert meta["time_conditioning"] is False  # followed the checkpoint's config
    # same data, steps and seed as mdlm-scratch except the start: the two models differ
    scratch, _ = load_model(wikihow / RUNS / "mdlm-scratch" / "model")
    assert not torch.equal(
        tuned.state_dict()["blocks.0.attn_qkv.weight"], scratch.state_dict()["blocks.0.attn_qkv.weight"]
    )


def test_max_steps_0_evaluates_the_checkpoint_as_is(wikihow, hub):
    """MDLM's ppl_eval / sample_eval of a checkpoint: a run that trains nothing holds the published weights."""
    from safetensors.torch import load_file

    model, meta = load_model(wikihow / RUNS / "mdlm-owt" / "model")
    published = load_file(str(hub / "mdlm-owt" / "model.safetensors"))
    assert torch.equal(model.state_dict()["blocks.1.mlp.0.weight"], published["backbone.blocks.1.mlp.0.weight"])
    assert meta["steps"] == 0
    rows = list(csv.DictReader((wikihow / RUNS / "mdlm-owt" / "model" / "metrics.csv").open()))
    assert [(r["step"], r["split"]) for r in rows] == [("0", "val")]


def test_ppl_eval_reports_both_bounds_and_gen_ppl_comes_from_the_hub_scorer(wikihow, hub):
    for run in ("mdlm-scratch", "mdlm-finetune", "mdlm-owt"):
        val = json.loads((wikihow / RUNS / run / "eval" / "val.json").read_text())
        stage = val["stages"]["stage3"]
        assert stage["discrete_steps"] == 1000 and stage["nelbo_discrete"] > 0 and stage["nelbo"] > 0
        gen = json.loads((wikihow / RUNS / run / "eval" / "ddpm_cache-4.json").read_text())["metrics"]["gen_ppl"]
        assert gen["scorer"] == "hub/gpt2-large" and gen["tokens"] > 0 and gen["value"] > 1


def test_table_rows_carry_data_digest_seed_and_commit(wikihow):
    rows = list(csv.DictReader((wikihow / "results" / "wikihow-twin" / "tables" / "main.csv").open()))
    assert {r["run"] for r in rows} == {"mdlm-scratch", "mdlm-owt", "mdlm-finetune"}
    for row in rows:
        meta = json.loads((wikihow / RUNS / row["run"] / "model" / "config.json").read_text())
        assert row["data"] == meta["data"]
        assert meta["settings_digest"].startswith(row["settings_digest"]) and row["seed"] == "0"
        assert row["code_commit"] and meta["code_commit"].startswith(row["code_commit"].split("+")[0])


def test_the_zero_shot_table_scores_every_run_on_local_wikitext_and_lambada(wikihow, hub):
    """Both corpora from local files in their own formats (tests/hub_layouts.py), grouped and detokenized as the hub
    rows are (every LAMBADA passage: none held out), wrapped into the runs' 32-token blocks by the gpt2-layout
    tokenizer; one row per (corpus, run)."""
    with open(wikihow / "results" / "wikihow-twin" / "tables" / "zero_shot.csv") as f:
        rows = list(csv.DictReader(f))
    runs = ["mdlm-finetune", "mdlm-owt", "mdlm-scratch"]
    assert [(r["corpus"], r["run"]) for r in rows] == [(c, run) for c in ("wikitext2", "lambada") for run in runs]
    paths = layout(CONFIGS)
    for row in rows:
        raw = wikihow / paths.zero_shot_raw(row["corpus"])
        stats = json.loads((raw / "stats.json").read_text())
        shard = pq.read_table(raw / "shard_00000.parquet")
        assert int(row["documents"]) == stats["documents_written"] == shard.num_rows
        file = "wikitext-2/wiki.valid.txt" if row["corpus"] == "wikitext2" else "lambada/lambada_test.jsonl"
        assert row["source"] == f"hub/{file}"
        assert row["bound"] == "NELBO (upper bound)" and int(row["block_length"]) == 32
        assert int(row["tokens"]) == 32 * int(row["blocks"]) > 0  # max_batches 1: one batch of blocks
        assert 0 < float(row["nats_per_token"]) < 10 and float(row["ppl"]) > 1
    texts = pq.read_table(wikihow / paths.zero_shot_raw("wikitext2") / "shard_00000.parquet").column("text")
    assert len(texts) == 4 and not any(" @-@ " in t for t in texts.to_pylist())  # 4 articles, detokenized
    passages = (hub / "lambada" / "lambada_test.jsonl").read_text().splitlines()
    assert int(next(r for r in rows if r["corpus"] == "lambada")["documents"]) == len(passages)
