"""A tiny tokenizer and stage shards in the contract's format, for tests and benchmarks without a corpus.

Tokens are words w0..w{n-1} plus [EOS] and [MASK] (a tokenizers WordLevel model wrapped in a
PreTrainedTokenizerFast). Each block is an arithmetic progression x_i = (a + b i) mod n (b in 1..max_stride), so it is
learnable: a model that has seen a few tokens can fill in the rest. Stage 2 and stage 1 keep a random
subset of the block's positions (nested, in text order), as preprocess/stages.py would with priorities, and the
positions stage1_pos, stage2_pos of each in the next stage (docs/contracts.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_tokenizer(out_dir: str | Path, n_words: int = 61) -> Path:
    """WordLevel tokenizer with n_words words + [EOS] + [MASK]; len(tokenizer) = n_words + 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(n_words)}
    vocab["[EOS]"], vocab["[MASK]"] = n_words, n_words + 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[EOS]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[EOS]", mask_token="[MASK]")
    out_dir = Path(out_dir)
    fast.save_pretrained(str(out_dir))
    return out_dir


def stage_table(rows: int, lengths: tuple[int, int, int], n_words: int, seed: int, max_stride: int = 3) -> pa.Table:
    l1, l2, l3 = lengths
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_words, rows)
    b = rng.integers(1, max_stride + 1, rows)
    stage3 = (a[:, None] + b[:, None] * np.arange(l3)[None]) % n_words
    priority = rng.random((rows, l3)).astype(np.float32)
    order = np.argsort(-priority, axis=1, kind="stable")
    keep2 = np.sort(order[:, :l2], axis=1)
    keep1 = np.sort(order[:, :l1], axis=1)
    stage2 = np.take_along_axis(stage3, keep2, 1)
    stage1 = np.take_along_axis(stage3, keep1, 1)
    # keep1 is a subset of keep2 (both the top of one order), so its indices into stage 2 are a search
    pos1 = np.array([np.searchsorted(k2, k1) for k1, k2 in zip(keep1, keep2)], dtype=np.int64).reshape(rows, l1)

    def lists(m):
        return pa.array(list(m.astype(np.int32)), type=pa.list_(pa.int32()))

    return pa.table(
        {
            "doc_id": pa.array([f"doc{i // 4}" for i in range(rows)]),
            "block": pa.array((np.arange(rows) % 4).astype(np.int32)),
            "start": pa.array((np.arange(rows) % 4 * l3).astype(np.int32)),
            "stage1_ids": lists(stage1),
            "stage2_ids": lists(stage2),
            "stage3_ids": lists(stage3),
            "stage1_pos": lists(pos1),
            "stage2_pos": lists(keep2),
            "priority": pa.array(list(priority), type=pa.list_(pa.float32())),
        }
    )


def write_stage_shards(
    out_dir: str | Path,
    rows: int = 256,
    val_rows: int = 64,
    lengths: tuple[int, int, int] = (4, 8, 16),
    n_words: int = 61,
    seed: int = 0,
    max_stride: int = 3,
) -> dict:
    """Write tokenizer/, train/shard_00000.parquet, validation/shard_00000.parquet under out_dir."""
    out = Path(out_dir)
    paths = {"tokenizer": str(write_tokenizer(out / "tokenizer", n_words))}
    for split, n, s in (("train", rows, seed), ("validation", val_rows, seed + 1)):
        (out / split).mkdir(parents=True, exist_ok=True)
        path = out / split / "shard_00000.parquet"
        pq.write_table(stage_table(n, lengths, n_words, s, max_stride), path)
        (out / split / "shard_00000.stats.json").write_text(json.dumps({"rows": n}))
        paths[split] = str(path)
    return paths
