"""The training command end to end, in-process, on toy stage shards: every run kind and objective trains and
leaves a loadable model folder; warm start chains stages; bad input fails naming the file."""

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from train.__main__ import main
from train.checkpoint import load_model
from train.model import Rotary, apply_rotary
from train.toydata import write_stage_shards

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    data = write_stage_shards(tmp / "data", rows=128, val_rows=32, lengths=(4, 8, 16), max_stride=1)
    config = {
        "stages": {"lengths": [4, 8, 16]},
        "runs": {
            "cascade": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "mdlm", "warm_start": True},
            "sedd": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "sedd"},
            "single": {"kind": "single", "method": "keybert_no_stopword", "objective": "mdlm", "max_steps": 4},
            "ar": {"kind": "ar", "method": "keybert_no_stopword", "objective": "ar"},
        },
        "train": {
            "model": "tiny",
            "noise": {"type": "loglinear", "eps": 1e-3},
            "global_batch_size": 16,
            "micro_batch_size": 16,
            "lr": 3e-3,
            "weight_decay": 0.0,
            "warmup_steps": 5,
            "max_steps": 60,
            "grad_clip": 1.0,
            "ema": 0.9,
            "dropout": 0.0,
            "eval_every": 30,
            "eval_batches": 2,
            "save_every": 30,
            "shuffle_prefix": False,
            "warm_start": False,
            "antithetic": True,
            "precision": "auto",
            "deepspeed": None,
            "seed": 0,
            "gpus": 0,
        },
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp, data


def args(tmp, data, run, out, stage=None, *extra):
    argv = [
        "--config",
        str(tmp / "config.yaml"),
        "--run",
        run,
        "--train-shards",
        data["train"],
        "--val-shards",
        data["validation"],
        "--tokenizer",
        data["tokenizer"],
        "--out",
        str(out),
        *extra,
    ]
    return argv + (["--stage", str(stage)] if stage else [])


def val_losses(out):
    with open(out / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["split"] == "val"]


def test_validation_loss_falls_on_learnable_blocks(toy):
    tmp, data = toy
    out = tmp / "learn" / "stage3"
    assert main(args(tmp, data, "cascade", out, 3)) == 0
    val = val_losses(out)
    assert len(val) == 3 and val[-1] < 0.8 * val[0], val  # runs of consecutive words: NELBO falls fast
    assert not (out / "checkpoints").exists()  # resumable state of a finished run is gone with the run


def test_cascade_stages_chain_by_warm_start(toy):
    tmp, data = toy
    s1, s2 = tmp / "cascade" / "stage1", tmp / "cascade" / "stage2"
    assert main(args(tmp, data, "cascade", s1, 1, "--set", "max_steps=3")) == 0
    assert main(args(tmp, data, "cascade", s2, 2, "--init", str(s1), "--set", "max_steps=3")) == 0
    model, meta = load_model(s2)
    assert (meta["stage"], meta["prefix_len"], meta["target_len"], meta["objective"]) == (2, 4, 8, "mdlm")
    assert meta["init"] == str(s1) and meta["vocab_size"] == 63 and meta["mask_id"] == 62
    x = torch.randint(0, 61, (2, 12))
    assert model(x, torch.tensor([0.5, 1.0]), 4).shape == (2, 12, 63)


def test_sedd_single_and_ar_runs(toy):
    tmp, data = toy
    assert main(args(tmp, data, "sedd", tmp / "sedd3", 3, "--set", "max_steps=3")) == 0
    assert load_model(tmp / "sedd3")[1]["objective"] == "sedd"
    assert main(args(tmp, data, "single", tmp / "single")) == 0
    _, meta = load_model(tmp / "single")
    assert (meta["steps"], meta["prefix_len"], meta["target_len"]) == (4, 0, 16)  # max_steps means what it says
    assert main(args(tmp, data, "ar", tmp / "ar", None, "--set", "max_steps=3")) == 0
    model, meta = load_model(tmp / "ar")
    assert meta["objective"] == "ar" and meta["model"]["causal"] and meta["bos_id"] == meta["eos_id"]
    assert model(torch.randint(0, 61, (1, 17))).shape == (1, 17, 63)


def test_init_without_warm_start_and_bad_shards_are_refused(toy, tmp_path):
    tmp, data = toy
    with pytest.raises(SystemExit, match="neither warm_start: true"):
        main(args(tmp, data, "sedd", tmp_path / "x", 2, "--init", str(tmp / "cascade" / "stage1")))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"stage1_ids": pa.array([[1, 2, 3]], type=pa.list_(pa.int32()))}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'stage1_ids' row 0 has 3 tokens, expected 4"):
        main(
            [
                "--config",
                str(tmp / "config.yaml"),
                "--run",
                "sedd",
                "--stage",
                "1",
                "--train-shards",
                str(bad),
                "--val-shards",
                data["validation"],
                "--tokenizer",
                data["tokenizer"],
                "--out",
                str(tmp_path / "y"),
            ]
        )


def test_rotary_matches_rotate_half_and_depends_on_offset_only():
    cos, sin = Rotary(8)(6, torch.device("cpu"))
    x = torch.randn(2, 6, 1, 1, 8)
    x1, x2 = x.chunk(2, dim=-1)
    expected = x * cos + torch.cat((-x2, x1), dim=-1) * torch.cat((sin[..., 4:], sin[..., 4:]), dim=-1)
    assert torch.allclose(apply_rotary(x, cos, sin), expected, atol=1e-6)
    q, k = torch.randn(8), torch.randn(8)
    rq = apply_rotary(q.expand(1, 6, 1, 1, 8), cos, sin)[0, :, 0, 0]
    rk = apply_rotary(k.expand(1, 6, 1, 1, 8), cos, sin)[0, :, 0, 0]
    assert torch.allclose(rq[3] @ rk[1], rq[5] @ rk[3], atol=1e-5)  # offset 2 both times


def test_batch_order_is_a_function_of_step_and_covers_each_epoch_once():
    from train.data import BatchOrder

    order = BatchOrder(n_rows=10, global_batch=4, seed=3)
    first_epochs = torch.cat([order.indices(s) for s in range(5)])  # 20 positions = epochs 0 and 1
    assert sorted(first_epochs[:10].tolist()) == list(range(10))
    assert sorted(first_epochs[10:].tolist()) == list(range(10))
    assert first_epochs[:10].tolist() != first_epochs[10:].tolist()  # a new permutation per epoch
    fresh = BatchOrder(n_rows=10, global_batch=4, seed=3)
    assert fresh.indices(3).tolist() == order.indices(3).tolist()  # resuming at step 3 needs no state
