"""Unannotated token blocks: wrap keeps every document and drops only the shard's last partial block, doc pads
each document's last block, the counts add up, and a shard without a block fails naming it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from common.io import InputError, read_parquet, stats_path, write_parquet
from preprocess.blocks import Packer, build_blocks
from preprocess.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[1]
EOS, PAD = 0, 1


def rows_of(packer, docs):
    rows = []
    for doc_id, ids in docs:
        rows += packer.add(doc_id, ids)
    packer.finish()
    return rows


def test_wrap_joins_documents_with_eos_and_drops_only_the_tail():
    docs = [("a", [5, 6, 7]), ("b", [8]), ("c", [9, 10, 11, 12, 13])]  # + EOS each: 4 + 2 + 6 = 12 tokens
    packer = Packer("wrap", 5, EOS, None)
    rows = rows_of(packer, docs)
    stream = [5, 6, 7, EOS, 8, EOS, 9, 10, 11, 12, 13, EOS]
    assert [r[2].tolist() for r in rows] == [stream[0:5], stream[5:10]]
    assert [(r[0], r[1]) for r in rows] == [("a", 0), ("b", 1)]  # block 2 starts at b's EOS (offset 1 in b)
    assert packer.counts["tail_tokens_dropped"] == 2 and packer.counts["documents_written"] == 3
    assert packer.counts["tokens"] == len(stream) == 5 * len(rows) + packer.counts["tail_tokens_dropped"]


def test_wrap_keeps_a_document_shorter_than_a_block():
    """The per-document stage blocks drop a document shorter than l3; wrap keeps its tokens in a block."""
    rows = rows_of(Packer("wrap", 4, EOS, None), [("short", [3]), ("x", [4, 5, 6, 7, 8, 9])])
    assert rows[0][2].tolist() == [3, EOS, 4, 5] and rows[0][0] == "short"


def test_doc_pads_the_last_block_of_each_document_and_never_spans_two():
    packer = Packer("doc", 4, EOS, PAD)
    rows = rows_of(packer, [("a", [5, 6, 7, 8, 9]), ("b", [3])])
    assert [(r[0], r[1], r[2].tolist()) for r in rows] == [
        ("a", 0, [5, 6, 7, 8]),
        ("a", 4, [9, EOS, PAD, PAD]),
        ("b", 0, [3, EOS, PAD, PAD]),
    ]
    assert packer.counts["pad_tokens"] == 4 and packer.counts["tail_tokens_dropped"] == 0


@pytest.fixture(scope="module")
def tokenizer():
    texts = [["the quick brown fox jumps over the lazy dog " * 3, "pack my box with five dozen liquor jugs"]]
    return train_bpe(iter(texts), vocab_size=300, min_frequency=1)


def raw_shard(path, texts):
    write_parquet(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}), path)
    return path


def test_shard_rows_and_stats(tmp_path, tokenizer):
    texts = ["the quick brown fox " * 5, "", "pack my box", "   ", "the lazy dog jumps over the fox " * 2]
    raw = raw_shard(tmp_path / "raw.parquet", texts)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts if t.strip()]
    for packing in ("wrap", "doc"):
        out = tmp_path / packing / "shard_00000.parquet"
        stats = build_blocks(raw, out, tokenizer, packing, 8)
        table = read_parquet(out)
        assert table.column_names == ["doc_id", "start", "ids"]
        ids = np.array(table.column("ids").to_pylist())
        assert ids.shape == (stats["blocks_written"], 8)
        assert stats["skipped"] == {"empty": 2} and stats["documents_written"] == 3
        assert stats["tokens"] == sum(lengths)
        if packing == "wrap":
            assert stats["tail_tokens_dropped"] == sum(lengths) % 8 and stats["pad_tokens"] == 0
            assert (ids == tokenizer.eos_token_id).sum() >= 2
        else:
            assert stats["blocks_written"] == sum(-(-n // 8) for n in lengths)
            assert (
                (ids == tokenizer.pad_token_id).sum()
                == stats["pad_tokens"]
                == stats["blocks_written"] * 8 - sum(lengths)
            )
        assert json.loads(stats_path(out).read_text()) == stats
        again = tmp_path / packing / "again.parquet"
        build_blocks(raw, again, tokenizer, packing, 8)
        assert again.read_bytes() == out.read_bytes()  # deterministic


def test_a_shard_without_a_block_fails_and_leaves_nothing(tmp_path, tokenizer):
    raw = raw_shard(tmp_path / "raw.parquet", ["fox", ""])
    out = tmp_path / "blocks" / "shard_00000.parquet"
    with pytest.raises(InputError, match=r"shard_00000.parquet: no block of 64 tokens"):
        build_blocks(raw, out, tokenizer, "wrap", 64)
    assert not out.exists() and not stats_path(out).exists()
    assert not list(out.parent.glob(".*tmp"))


def test_doc_packing_refuses_a_pad_that_is_eos(tmp_path, tokenizer):
    raw = raw_shard(tmp_path / "raw.parquet", ["the quick brown fox"])
    tokenizer.pad_token = tokenizer.eos_token
    try:
        with pytest.raises(InputError, match="pad token"):
            build_blocks(raw, tmp_path / "out.parquet", tokenizer, "doc", 4)
    finally:
        tokenizer.pad_token = "<|pad|>"


def test_command_line(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    raw = raw_shard(tmp_path / "raw.parquet", ["the quick brown fox jumps over the lazy dog"] * 4)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess.blocks",
            "--packing",
            "wrap",
            "--length",
            "8",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--input",
            str(raw),
            "--out",
            str(tmp_path / "b.parquet"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "blocks from 4/4 documents" in done.stdout
