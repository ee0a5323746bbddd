"""Cascade sampling, evaluation and report on hand-made runs (random tiny models, a tiny BPE, real files)."""

import csv
import json
import math

import pyarrow as pa
import pytest
import torch

from common.io import write_parquet
from eval.denoiser import Denoiser
from eval.evaluate import main as evaluate_main
from eval.likelihood import read_stage_blocks, run_validation, stage_nelbo
from eval.report import main as report_main
from eval.runs import RunError, run_model_dirs
from eval.sample import main as sample_main
from eval.sample import read_jsonl
from eval.scorer import PipelineARScorer, generative_perplexity, load_scorer
from eval.trained import Trained, load_trained
from preprocess.tokenizer import train_bpe
from train.checkpoint import read_meta, save_model, tokenizer_digest
from train.model import DiffusionTransformer, ModelConfig
from train.noise import GeometricNoise, LogLinearNoise
from train.objectives import ar_token_loss, subs_log_probs

torch.set_num_threads(1)

LENGTHS = (4, 8, 16)


def make_model(vocab, causal=False, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2, cond_dim=16, causal=causal)
    model = DiffusionTransformer(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model, cfg


def provenance_keys(seed):
    """What the trainer writes into config.json about where a model came from (settings digest, train.seed,
    code commit); distinct per model so a table row can be traced to its own folder."""
    return {
        "settings_digest": f"{seed:x}" * 16,
        "train": {"seed": 100 + seed, "lr": 1e-3},
        "code_commit": f"c0ffee{seed}" + "0" * 33,
        "data": "stages",
    }


def write_model(folder, tok_dir, tok, objective, stage, prefix_len, target_len, run, kind, seed, old=False, **extra):
    """A random tiny model folder; ``old``: a config.json from before provenance and data were written."""
    model, cfg = make_model(len(tok), causal=objective == "ar", seed=seed)
    meta = {
        "model": cfg.to_dict(),
        "objective": objective,
        "noise": {"type": "loglinear", "eps": 1e-3},
        "stage": stage,
        "prefix_len": prefix_len,
        "target_len": target_len,
        "vocab_size": len(tok),
        "mask_id": tok.mask_token_id,
        "eos_id": tok.eos_token_id,
        "bos_id": tok.eos_token_id,
        "tokenizer": str(tok_dir),
        "run": run,
        "kind": kind,
        "method": "keybert",
        **({} if old else provenance_keys(seed)),
        **extra,
    }
    save_model(folder, model.state_dict(), meta)
    rows = [
        {"step": s, "split": "train", "loss": 5 - s / 10, "lr": 1e-3, "tokens": s * 32, "seconds": s, "grad_norm": 1.0}
        for s in range(1, 11)
    ]
    rows += [
        {"step": s, "split": "val", "loss": 5 - s / 12, "lr": "", "tokens": "", "seconds": "", "grad_norm": ""}
        for s in (5, 10)
    ]
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    texts = [
        "def f(x): return x + 1",
        "The quick brown fox jumps over the lazy dog.",
        "import os and sys for the path of a module",
    ] * 20
    tok = train_bpe([texts], vocab_size=300, min_frequency=1)
    tok_dir = root / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    runs = root / "runs"
    for k, (prefix_len, target_len) in enumerate(zip((0,) + LENGTHS[:2], LENGTHS), 1):
        write_model(
            runs / "cascade" / f"stage{k}",
            tok_dir,
            tok,
            "mdlm",
            k,
            prefix_len,
            target_len,
            "cascade",
            "cascade",
            seed=k,
        )
    write_model(runs / "single" / "model", tok_dir, tok, "sedd", 3, 0, 16, "single", "single", seed=7)
    write_model(runs / "ar" / "model", tok_dir, tok, "ar", 3, 0, 16, "ar", "ar", seed=8, old=True)
    g = torch.Generator().manual_seed(0)
    n = 10
    stage3 = torch.randint(0, tok.mask_token_id, (n, 16), generator=g)
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "block": [0] * n,
            "start": [0] * n,
            "stage1_ids": stage3[:, :4].tolist(),
            "stage2_ids": stage3[:, :8].tolist(),
            "stage3_ids": stage3.tolist(),
            "priority": [[0.0] * 16] * n,
        }
    )
    val_shard = root / "val" / "shard_00000.parquet"
    write_parquet(table, val_shard)
    return {"root": root, "tok": tok, "tok_dir": tok_dir, "runs": runs, "val": val_shard, "stage3": stage3}


def test_run_model_dirs(project, tmp_path):
    assert [p.name for p in run_model_dirs(project["runs"] / "cascade")] == ["stage1", "stage2", "stage3"]
    assert [p.name for p in run_model_dirs(project["runs"] / "single")] == ["model"]
    with pytest.raises(RunError, match="no stage1"):
        run_model_dirs(tmp_path)


def test_cascade_sample_writes_every_stage(project, tmp_path):
    out = tmp_path / "s.jsonl"
    sample_main(
        [
            "--run-dir",
            str(project["runs"] / "cascade"),
            "--n",
            "5",
            "--batch-size",
            "2",
            "--sampler",
            "ddpm_cache",
            "--steps",
            "6",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    records = read_jsonl(out)
    assert len(records) == 5 and [r["sample"] for r in records] == list(range(5))
    mask = project["tok"].mask_token_id
    for r in records:
        for k, length in zip((1, 2, 3), LENGTHS):
            ids = r[f"stage{k}_ids"]
            assert len(ids) == length and mask not in ids
            assert r[f"stage{k}_text"] == project["tok"].decode(ids)
        assert r["seconds"] > 0 and r["generated_tokens"] == sum(LENGTHS)
    # nothing half-written is left beside the output
    assert [p.name for p in tmp_path.iterdir()] == ["s.jsonl"]


def test_cascade_conditions_each_stage_on_the_previous(project, monkeypatch):
    """The prefix stage k sees is exactly the stage k-1 sample of the same row."""
    from eval import sample as sample_module

    seen = []
    real = sample_module.sample

    def spy(denoiser, noise, prefix, *args, **kwargs):
        out = real(denoiser, noise, prefix, *args, **kwargs)
        seen.append((prefix.clone(), out.clone()))
        return out

    monkeypatch.setattr(sample_module, "sample", spy)
    stages = [load_trained(d, torch.device("cpu")) for d in run_model_dirs(project["runs"] / "cascade")]
    sample_module.sample_batch(stages, 3, "ddpm", 4, 1.0, None, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert seen[0][0].shape == (3, 0)
    assert torch.equal(seen[1][0], seen[0][1]) and torch.equal(seen[2][0], seen[1][1])


def test_wrong_sampler_for_run_is_named(project, tmp_path):
    with pytest.raises(ValueError, match="autoregressive"):
        sample_main(
            [
                "--run-dir",
                str(project["runs"] / "ar"),
                "--n",
                "1",
                "--sampler",
                "ddpm",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "x.jsonl"),
                "--device",
                "cpu",
            ]
        )


def test_ar_scorer_matches_hand_computation(project):
    scorer = PipelineARScorer(project["runs"] / "ar" / "model")
    seqs = project["stage3"][:3]
    bos = project["tok"].eos_token_id
    with torch.no_grad():
        x = torch.cat([torch.full((3, 1), bos), seqs[:, :-1]], 1)
        logp = torch.log_softmax(scorer.model(x).double(), -1)
        expected = -logp.gather(-1, seqs[..., None]).sum().item()
        assert math.isclose(expected, ar_token_loss(scorer.model(x), seqs).sum().item(), rel_tol=1e-5)
    records = [{"stage3_ids": s.tolist(), "stage3_text": project["tok"].decode(s.tolist())} for s in seqs]
    result = generative_perplexity(records, scorer, "stage3", tokenizer_digest(project["tok_dir"]))
    assert result["tokens"] == 48
    assert math.isclose(result["value"], math.exp(expected / 48), rel_tol=1e-5)
    assert "no retokenization" in result["definition"]


def test_validation_nelbo(project):
    result = run_validation(project["runs"] / "cascade", [project["val"]], time_samples=2, batch_size=4, max_batches=2)
    stages = result["stages"]
    assert list(stages) == ["stage1", "stage2", "stage3"]
    for k, length in zip((1, 2, 3), LENGTHS):
        assert stages[f"stage{k}"]["blocks"] == 8 and stages[f"stage{k}"]["tokens"] == 8 * length
        assert stages[f"stage{k}"]["nelbo"] > 0
        assert math.isclose(stages[f"stage{k}"]["ppl"], math.exp(stages[f"stage{k}"]["nelbo"]))
    total = sum(s["nats"] for s in stages.values()) / (8 * 16)
    assert math.isclose(result["total"]["nelbo"], total)
    # fixed seed: the estimate is reproducible
    again = run_validation(project["runs"] / "cascade", [project["val"]], 2, 4, 2)
    assert again["total"]["nelbo"] == result["total"]["nelbo"]


def test_validation_ar_is_exact_nll(project):
    result = run_validation(project["runs"] / "ar", [project["val"]], 2, 4, None)
    scorer = PipelineARScorer(project["runs"] / "ar" / "model")
    nats, tokens = scorer.nll(project["stage3"].tolist())
    assert result["stages"]["stage3"]["tokens"] == tokens == 160
    assert math.isclose(result["stages"]["stage3"]["nats"], nats, rel_tol=1e-5)


def test_stage_blocks_of_wrong_length_name_the_file(project):
    with pytest.raises(ValueError, match="shard_00000.parquet.*stage2_ids.*expects 9"):
        read_stage_blocks([project["val"]], 2, 4, 9, None)


@pytest.fixture(scope="module")
def doc_run(project):
    """A single-stage mdlm run on doc blocks (column ids, data: doc, pad_id) and its validation block shard: 10
    blocks of 16 tokens, block i holding 16 - i real tokens then pads (the end of a document)."""
    root, tok = project["root"], project["tok"]
    pad = tok.eos_token_id
    ids = torch.tensor([i for i in range(tok.mask_token_id) if i != pad])  # real tokens: never the pad
    real = ids[torch.randint(0, len(ids), (10, 16), generator=torch.Generator().manual_seed(4))]
    blocks = torch.where(torch.arange(16)[None] < 16 - torch.arange(10)[:, None], real, pad)
    shard = root / "blocks" / "doc" / "shard_00000.parquet"
    write_parquet(pa.table({"doc_id": [f"d{i}" for i in range(10)], "ids": blocks.tolist()}), shard)
    run = root / "doc-runs" / "doc"
    write_model(
        run / "model",
        project["tok_dir"],
        tok,
        "mdlm",
        3,
        0,
        16,
        "doc",
        "single",
        seed=9,
        data="doc",
        pad_id=pad,
        method=None,
    )
    return {"run": run, "shard": shard, "blocks": blocks, "pad": pad}


def test_validation_of_a_doc_run_reads_ids_and_counts_real_tokens(doc_run, project):
    prefix, target = read_stage_blocks([doc_run["shard"]], 3, 0, 16, None, data="doc")
    assert prefix.shape == (10, 0) and torch.equal(target, doc_run["blocks"])
    result = run_validation(doc_run["run"], [doc_run["shard"]], 2, 4, None, discrete_steps=8)
    stage = result["stages"]["stage3"]
    real = sum(16 - i for i in range(10))
    assert stage["tokens"] == result["total"]["tokens"] == real < 10 * 16 and stage["blocks"] == 10
    assert result["total"]["nelbo"] == pytest.approx(stage["nats"] / real)
    assert result["total"]["nelbo_discrete"] == pytest.approx(stage["nats_discrete"] / real)
    # stage shards have no ids column: the run reads the column its config.json names
    with pytest.raises(ValueError, match="ids"):
        read_stage_blocks([project["val"]], 3, 0, 16, None, data="wrap")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pad_id": None}, "missing key 'pad_id'"),
        ({"data": "packed"}, "key 'data' should be one of \\['stages', 'wrap', 'doc'\\], got 'packed'"),
        ({"pad_id": 10**6}, "key 'pad_id' should be an integer token id in \\[0, \\d+\\), got 1000000"),
    ],
)
def test_data_and_pad_id_errors_name_the_config(doc_run, tmp_path, change, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(doc_run["run"], run)
    config = run / "model" / "config.json"
    meta = json.loads(config.read_text())
    meta = {k: v for k, v in {**meta, **change}.items() if v is not None}
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{config}: {message}"):
        run_validation(run, [doc_run["shard"]], 1, 4, 1)


def test_end_to_end_sample_evaluate_report(project, tmp_path):
    runs = project["runs"]
    sample_files, val_files = [], []
    for run, sampler, steps in [
        ("cascade", "ddpm_cache", 4),
        ("cascade", "ddpm_cache", 8),
        ("single", "analytic", 4),
        ("cascade", "confidence", 4),
        ("ar", "ar", 16),
    ]:
        samples = runs / run / "samples" / f"{sampler}-{steps}.jsonl"
        sample_main(
            [
                "--run-dir",
                str(runs / run),
                "--n",
                "3",
                "--sampler",
                sampler,
                "--steps",
                str(steps),
                "--out",
                str(samples),
                "--device",
                "cpu",
            ]
        )
        out = runs / run / "eval" / f"{sampler}-{steps}.json"
        evaluate_main(
            [
                "samples",
                "--run-dir",
                str(runs / run),
                "--samples",
                str(samples),
                "--scorer",
                str(runs / "ar" / "model"),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        sample_files.append(out)
    for run in ("cascade", "single", "ar"):
        out = runs / run / "eval" / "val.json"
        evaluate_main(
            [
                "val",
                "--run-dir",
                str(runs / run),
                "--val-shards",
                str(project["val"]),
                "--time-samples",
                "2",
                "--batch-size",
                "5",
                "--discrete-steps",
                "4",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        val_files.append(out)
    metrics = json.loads(sample_files[0].read_text())
    assert metrics["run"] == "cascade" and metrics["sampler"] == "ddpm_cache" and metrics["steps"] == 4
    for key in (
        "gen_ppl",
        "unigram_entropy",
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "seconds_per_sample",
        "tokens_per_second",
        "prefix_retention_stage1_stage2",
        "prefix_retention_stage2_stage3",
    ):
        assert "definition" in metrics["metrics"][key] and metrics["metrics"][key]["value"] >= 0
    train_files = sorted(runs.glob("*/*/metrics.csv"))
    tables, plots = tmp_path / "tables", tmp_path / "plots"
    report_main(
        [
            "--sample-metrics",
            *map(str, sample_files),
            "--val-metrics",
            *map(str, val_files),
            "--train-metrics",
            *map(str, train_files),
            "--tables",
            str(tables),
            "--plots",
            str(plots),
        ]
    )
    with open(tables / "main.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["sampler"], r["steps"]) for r in rows] == [
        ("ar", "ar", "16"),
        ("cascade", "confidence", "4"),
        ("cascade", "ddpm_cache", "4"),
        ("cascade", "ddpm_cache", "8"),
        ("single", "analytic", "4"),
    ]
    val = json.loads(val_files[0].read_text())
    assert float(rows[1]["val_nelbo"]) == pytest.approx(val["total"]["nelbo"])
    assert float(rows[2]["gen_ppl"]) == pytest.approx(metrics["metrics"]["gen_ppl"]["value"])
    # the discrete-T bound: per stage and total for the mdlm cascade, null for sedd, the exact NLL for AR
    for stage in val["stages"].values():
        assert stage["discrete_steps"] == 4 and stage["nelbo_discrete"] > 0 and "T = 4" in stage["definition_discrete"]
    assert val["total"]["nelbo_discrete"] == pytest.approx(
        sum(s["nats_discrete"] for s in val["stages"].values()) / val["total"]["tokens"]
    )
    assert float(rows[1]["val_ppl_discrete"]) == pytest.approx(val["total"]["ppl_discrete"])
    assert rows[1]["discrete_steps"] == "4"
    single = json.loads(val_files[1].read_text())
    assert single["stages"]["stage3"]["nelbo_discrete"] is None and rows[4]["val_ppl_discrete"] == ""
    ar = json.loads(val_files[2].read_text())
    assert float(rows[0]["val_ppl_discrete"]) == pytest.approx(ar["total"]["ppl"])
    # provenance: every row carries the digest, seed and commit of its run's last config.json, and what it read;
    # the AR folder predates them (nulls, data stages)
    for row in rows:
        meta = read_meta(run_model_dirs(runs / row["run"])[-1])
        assert row["data"] == meta.get("data", "stages") == "stages"
        for key, value in (
            ("settings_digest", meta.get("settings_digest")),
            ("seed", meta.get("train", {}).get("seed")),
            ("code_commit", meta.get("code_commit")),
        ):
            assert row[key] == ("" if value is None else str(value))
    assert rows[1]["settings_digest"] == provenance_keys(3)["settings_digest"] and rows[1]["seed"] == "103"
    assert rows[4]["code_commit"] == provenance_keys(7)["code_commit"] and rows[0]["settings_digest"] == ""
    assert (
        metrics["provenance"]
        == val["provenance"]
        == {"settings_digest": "3" * 16, "seed": 103, "code_commit": "c0ffee3" + "0" * 33}
    )
    assert ar["provenance"] == {"settings_digest": None, "seed": None, "code_commit": None}
    md = (tables / "main.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 6 and "gen ppl" in md
    cascade_md = md.splitlines()[3].split(" | ")
    assert cascade_md[-3:] == ["33333333", "103", "c0ffee3 |"] and "val ppl (T)" in md
    assert "\\begin{tabular}" in (tables / "main.tex").read_text()
    for name in ("loss.png", "gen_ppl_steps.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hub_scorer_on_a_local_causal_lm(project, tmp_path):
    """The hub path (AutoTokenizer + AutoModelForCausalLM, text retokenized) on a local random GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from eval.scorer import HubScorer

    tok = project["tok"]
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(str(tmp_path / "lm"))
    scorer = load_scorer(str(tmp_path / "lm"))
    assert isinstance(scorer, HubScorer) and scorer.context == 8
    texts = ["def f(x): return x + 1 and the quick brown fox", "import os"]
    records = [{"stage3_ids": [], "stage3_text": t} for t in texts]
    result = generative_perplexity(records, scorer, "stage3")
    # by hand: each text retokenized, cut into windows of 7 tokens, each window scored after bos (= eos)
    nats, tokens = 0.0, 0
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), 7):
            window = torch.tensor([[tok.eos_token_id] + ids[i : i + 7]])
            with torch.no_grad():
                logp = torch.log_softmax(lm(window).logits.double()[0, :-1], -1)
            nats -= logp.gather(-1, window[0, 1:, None]).sum().item()
            tokens += window.shape[1] - 1
    assert result["tokens"] == tokens and tokens > 8
    assert math.isclose(result["nats"], nats, rel_tol=1e-5)
    assert "retokenized" in result["definition"]


def test_load_trained_gives_every_part(project):
    stage2 = load_trained(project["runs"] / "cascade" / "stage2")
    assert stage2.name == "stage2" and not stage2.is_ar and not stage2.model.training
    assert (stage2.meta["prefix_len"], stage2.meta["target_len"]) == (4, 8)
    assert stage2.denoiser.prefix_len == 4 and stage2.denoiser.mask_id == project["tok"].mask_token_id
    assert float(stage2.noise.total(torch.tensor([0.5]))) == pytest.approx(-math.log(1 - 0.999 * 0.5))
    assert stage2.tokenizer.decode([5, 6]) == project["tok"].decode([5, 6])
    ar = load_trained(project["runs"] / "ar" / "model")
    assert ar.name == "stage3" and ar.is_ar and ar.denoiser is None and ar.noise is None


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("bos_id", None, "missing key 'bos_id'"),
        ("objective", "atat", "key 'objective' should be one of \\['mdlm', 'sedd', 'ar'\\], got 'atat'"),
        ("prefix_len", -1, "key 'prefix_len' should be an integer >= 0, got -1"),
    ],
)
def test_config_json_errors_name_file_key_expected_and_got(project, tmp_path, key, value, message):
    meta = json.loads((project["runs"] / "single" / "model" / "config.json").read_text())
    meta = {k: v for k, v in meta.items() if k != key} if value is None else {**meta, key: value}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'}: {message}"):
        read_meta(tmp_path)


def test_scorer_spec_is_a_pipeline_ar_folder_or_a_causal_lm(project):
    assert isinstance(load_scorer(str(project["runs"] / "ar" / "model")), PipelineARScorer)
    with pytest.raises(ValueError, match="single/model/config.json: objective should be 'ar'.*got 'sedd'"):
        load_scorer(str(project["runs"] / "single" / "model"))


def test_sample_cli_requires_n_and_batches_default_to_one(project, tmp_path, monkeypatch):
    from eval import sample as sample_module

    with pytest.raises(SystemExit):
        sample_main(
            [
                "--run-dir",
                str(project["runs"] / "single"),
                "--sampler",
                "ddpm",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "x.jsonl"),
            ]
        )
    batches = []
    real = sample_module.sample_batch
    monkeypatch.setattr(
        sample_module, "sample_batch", lambda stages, batch, *a: batches.append(batch) or real(stages, batch, *a)
    )
    sample_main(
        [
            "--run-dir",
            str(project["runs"] / "single"),
            "--n",
            "3",
            "--sampler",
            "ddpm",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "x.jsonl"),
            "--device",
            "cpu",
        ]
    )
    assert batches == [3]


def one_token_model(vocab, mask_id):
    """A network that ignores sigma (time_conditioning False) on one-token blocks, so its sampler's likelihood
    is exact: -log p(x0) = -log p_theta(x0 | [m])."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, cond_dim=8, time_conditioning=False)
    model = DiffusionTransformer(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model


@pytest.mark.parametrize(
    "noise_spec", [{"type": "loglinear", "eps": 0.5}, {"type": "geometric", "sigma_min": 0.5, "sigma_max": 4.0}]
)
def test_validation_nelbo_bounds_the_sampler_likelihood(noise_spec):
    """On one-token blocks with a time-independent network the NELBO of the sampler's model is its exact NLL.
    The training estimator (t ~ U[eps, 1], training noise) gives (1 - eps) NLL for loglinear, below the NLL,
    and without the t = 0 term the geometric schedule's first share move(0) / M would be missing."""
    vocab, mask_id = 6, 5
    model = one_token_model(vocab, mask_id)
    noise = {"loglinear": LogLinearNoise, "geometric": GeometricNoise}[noise_spec["type"]](
        **{k: v for k, v in noise_spec.items() if k != "type"}
    )
    meta = {"objective": "mdlm", "mask_id": mask_id, "prefix_len": 0, "target_len": 1, "noise": noise_spec}
    trained = Trained("stage3", None, model, meta, None, None, noise, Denoiser(model, "mdlm", mask_id, 0))
    target = torch.arange(400)[:, None] % mask_id
    with torch.no_grad():
        log_p = subs_log_probs(
            model(torch.full((1, 1), mask_id), torch.zeros(1)), torch.full((1, 1), mask_id), mask_id
        )[0, 0]
    nll = float(-log_p[target[:, 0]].sum())
    result = stage_nelbo(trained, torch.zeros(400, 0, dtype=torch.long), target, time_samples=64, batch_size=400)
    assert result["nats"] == pytest.approx(nll, rel=0.03)
    assert "strict upper bound" in result["definition"]
