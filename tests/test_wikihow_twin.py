"""The MDLM-on-WikiHow recipe's offline twin (configs/wikihow-tiny.yaml) through the real DAG: packed and
per-document blocks without annotation, training from scratch and fine-tuning from a local folder in the
kuleshov-group/mdlm-owt layout, ppl_eval with both bounds, sample_eval, and table rows that say where they
came from. The real recipe (configs/wikihow.yaml) is planned with a dry run."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import offline_env, snakemake
from train.checkpoint import load_model
from train.model import DiffusionTransformer, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
TWIN = ROOT / "configs" / "wikihow-tiny.yaml"
pytestmark = pytest.mark.slow


def write_mdlm_owt_folder(folder: Path, vocab_size: int) -> DiffusionTransformer:
    """A folder laid out as kuleshov-group/mdlm-owt is on the hub (config.json with model_type mdlm, weights
    under `backbone.` with MDLM's own key names, rotary buffer included), holding a random tiny network."""
    torch.manual_seed(7)
    model = DiffusionTransformer(ModelConfig.from_size("tiny", vocab_size))
    for name, p in model.named_parameters():
        if name != "prefix_embed":
            torch.nn.init.normal_(p, std=0.05)
    cfg = model.config
    state = {}
    for key, value in model.state_dict().items():
        if key == "prefix_embed":
            continue   # ours alone: MDLM has no prefix segment
        state["backbone." + ("vocab_embed.embedding" if key == "vocab_embed.weight" else key)] = value.clone()
    head = cfg.dim // cfg.n_heads
    state["backbone.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mdlm", "auto_map": {"AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "vocab_size": vocab_size, "model_length": 32, "hidden_dim": cfg.dim, "cond_dim": cfg.cond_dim,
        "n_blocks": cfg.n_layers, "n_heads": cfg.n_heads, "dropout": 0.1, "time_conditioning": False}))
    save_file(state, str(folder / "model.safetensors"))
    return model


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    work = tmp_path_factory.mktemp("wikihow-twin")
    snakemake(work, "data/pydoc/tokenizer", configfiles=(TWIN,))
    from transformers import PreTrainedTokenizerFast
    vocab = len(PreTrainedTokenizerFast.from_pretrained(work / "data" / "pydoc" / "tokenizer"))
    write_mdlm_owt_folder(work / "mdlm-owt-local", vocab)
    finetune = work / "finetune.yaml"
    finetune.write_text(yaml.safe_dump({"runs": {"mdlm-finetune": {
        "kind": "single", "data": "wrap", "objective": "mdlm", "pretrained": str(work / "mdlm-owt-local"),
        "pretrained_format": "mdlm", "lr": 1e-4}, "mdlm-owt": {
        "kind": "single", "data": "wrap", "objective": "mdlm", "pretrained": str(work / "mdlm-owt-local"),
        "max_steps": 0}}}))
    snakemake(work, configfiles=(TWIN, finetune))
    return work


def test_blocks_skip_annotation_and_account_for_every_token(twin):
    data = twin / "data" / "pydoc"
    assert not (data / "annot").exists() and not (data / "stages").exists()
    raw_docs = sum(pq.read_table(p).num_rows for p in (data / "raw" / "train").glob("shard_*.parquet"))
    for packing in ("wrap", "doc"):
        stats = [json.loads(p.read_text()) for p in sorted((data / "blocks" / packing / "32" / "train").glob("*.stats.json"))]
        assert sum(s["documents_written"] for s in stats) == raw_docs     # pydoc has no empty topic
        for s in stats:
            if packing == "wrap":
                assert s["blocks_written"] * 32 + s["tail_tokens_dropped"] == s["tokens"] and s["tail_tokens_dropped"] < 32
            else:
                assert s["blocks_written"] * 32 == s["tokens"] + s["pad_tokens"]


def test_fine_tune_starts_from_the_mdlm_owt_folder(twin):
    log = (twin / "logs" / "train" / "mdlm-finetune" / "model.log").read_text()
    assert "pretrained start" in log and "'layout': 'mdlm'" in log
    _, meta = load_model(twin / "runs" / "mdlm-finetune" / "model")
    assert meta["pretrained"] == str(twin / "mdlm-owt-local") and meta["data"] == "wrap"
    assert meta["time_conditioning"] is False   # followed the checkpoint's config
    # same data, steps and seed as mdlm-scratch except the start: the two models differ
    tuned, _ = load_model(twin / "runs" / "mdlm-finetune" / "model")
    scratch, _ = load_model(twin / "runs" / "mdlm-scratch" / "model")
    assert not torch.equal(tuned.state_dict()["blocks.0.attn_qkv.weight"], scratch.state_dict()["blocks.0.attn_qkv.weight"])


def test_max_steps_0_evaluates_the_checkpoint_as_is(twin):
    """MDLM's ppl_eval / sample_eval of a checkpoint: a run that trains nothing holds the published weights."""
    model, meta = load_model(twin / "runs" / "mdlm-owt" / "model")
    from safetensors.torch import load_file
    published = load_file(str(twin / "mdlm-owt-local" / "model.safetensors"))
    assert torch.equal(model.state_dict()["blocks.1.mlp.0.weight"], published["backbone.blocks.1.mlp.0.weight"])
    assert meta["steps"] == 0
    rows = list(csv.DictReader((twin / "runs" / "mdlm-owt" / "model" / "metrics.csv").open()))
    assert [(r["step"], r["split"]) for r in rows] == [("0", "val")]


def test_ppl_eval_reports_both_bounds_and_pads_are_not_counted(twin):
    for run in ("mdlm-scratch", "mdlm-doc", "mdlm-finetune", "mdlm-owt"):
        val = json.loads((twin / "runs" / run / "eval" / "val.json").read_text())
        stage = val["stages"]["stage3"]
        assert stage["discrete_steps"] == 1000 and stage["nelbo_discrete"] > 0 and stage["nelbo"] > 0
    doc = json.loads((twin / "runs" / "mdlm-doc" / "eval" / "val.json").read_text())["stages"]["stage3"]
    assert doc["tokens"] < doc["blocks"] * 32   # the pads of the validation blocks are not counted


def test_table_rows_carry_data_digest_seed_and_commit(twin):
    rows = list(csv.DictReader((twin / "results" / "wikihow-tiny" / "tables" / "main.csv").open()))
    runs = {r["run"] for r in rows}
    assert {"mdlm-scratch", "mdlm-doc", "mdlm-finetune", "ar"} <= runs
    for row in rows:
        meta = json.loads((twin / "runs" / row["run"] / "model" / "config.json").read_text())
        assert row["data"] == meta["data"]
        assert meta["settings_digest"].startswith(row["settings_digest"]) and row["seed"] == "0"
        assert row["code_commit"] and meta["code_commit"].startswith(row["code_commit"].split("+")[0])


def test_the_real_recipe_plans(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--quiet",
         "rules", "--configfile", str(ROOT / "configs" / "wikihow.yaml")],
        capture_output=True, text=True, env=offline_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["blocks"] == 34 and counts["train"] == 3 and "annotate" not in counts
    assert counts["sample"] == 3 and counts["evaluate_val"] == 3
