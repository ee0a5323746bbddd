"""The stage selection rule: ranking, ties, repeatable periods, dropped blocks, and the shard it writes."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.io import InputError, write_parquet
from preprocess.annotate import ANNOT_SCHEMA
from preprocess.stages import build_stages, select_positions, split_block


def test_highest_priority_first_and_text_order_restored():
    ids = np.array([10, 11, 12, 13, 14, 15])
    prio = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3], dtype=np.float32)
    s1, s2 = split_block(ids, prio, 2, 4)[:2]
    assert s1.tolist() == [11, 13]  # positions 1 (0.9) and 3 (0.7), in text order
    assert s2.tolist() == [11, 12, 13, 15]


def test_positions_index_the_next_stage_in_text_order():
    """stage2_ids[stage1_pos] == stage1_ids and stage3_ids[stage2_pos] == stage2_ids, both strictly increasing."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        ids = rng.integers(0, 9, 16)
        prio = rng.random(16).astype(np.float32)
        split = split_block(ids, prio, 3, 6)
        if split is None:
            continue
        assert split.stage2_ids[split.stage1_pos].tolist() == split.stage1_ids.tolist()
        assert ids[split.stage2_pos].tolist() == split.stage2_ids.tolist()
        assert (np.diff(split.stage1_pos) > 0).all() and (np.diff(split.stage2_pos) > 0).all()
        assert split.stage1_pos.dtype == split.stage2_pos.dtype == np.int32


def test_ties_break_to_the_earlier_position():
    ids = np.array([1, 2, 3, 4])
    prio = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)
    assert select_positions(ids, prio, 3).tolist() == [0, 1, 2]


def test_repeated_token_is_skipped_unless_structural():
    ids = np.array([7, 7, 8, 99, 99, 9])  # 99 plays the sentence period
    prio = np.array([0.9, 0.8, 0.1, 1.1, 1.1, 0.0], dtype=np.float32)
    taken = select_positions(ids, prio, 5)
    # periods (1.1) first, both taken; second 7 skipped as a repeat
    assert taken.tolist() == [3, 4, 0, 2, 5]


def test_block_with_too_few_distinct_tokens_is_dropped():
    ids = np.array([5, 5, 5, 5, 6, 6])
    prio = np.zeros(6, dtype=np.float32)
    assert split_block(ids, prio, 1, 3) is None
    assert split_block(ids, prio, 1, 2)[1].tolist() == [5, 6]


def _annotated(path, docs):
    rows = {"doc_id": [], "input_ids": [], "priority": []}
    for doc_id, ids, prio in docs:
        rows["doc_id"].append(doc_id)
        rows["input_ids"].append(np.asarray(ids, dtype=np.int32))
        rows["priority"].append(np.asarray(prio, dtype=np.float32))
    write_parquet(pa.table(rows, schema=ANNOT_SCHEMA), path)


def test_build_stages_rows_stats_and_byte_identical_rerun(tmp_path):
    rng = np.random.default_rng(0)
    docs = [
        ("a", rng.permutation(100)[:20], rng.random(20)),  # 2 blocks of 8, tail 4
        ("b", [1, 2, 3], [0.1, 0.2, 0.3]),  # shorter than a block
        ("c", [4] * 8, [0.0] * 8),  # one block, one distinct token -> dropped
    ]
    src = tmp_path / "annot.parquet"
    _annotated(src, docs)
    out = tmp_path / "stages" / "shard_00000.parquet"
    stats = build_stages(src, out, (2, 4, 8))
    table = pq.read_table(out)
    assert table.num_rows == 2 and stats["blocks_written"] == 2
    assert stats["blocks_dropped_too_few_distinct"] == 1
    assert stats["documents_shorter_than_block"] == 1
    assert stats["tail_tokens_dropped"] == 4 + 3
    for row in table.to_pylist():
        assert (len(row["stage1_ids"]), len(row["stage2_ids"]), len(row["stage3_ids"])) == (2, 4, 8)
        assert set(row["stage1_ids"]) <= set(row["stage2_ids"]) <= set(row["stage3_ids"])
        assert (len(row["stage1_pos"]), len(row["stage2_pos"])) == (2, 4)
        start = row["start"]
        assert row["stage3_ids"] == docs[0][1][start : start + 8].tolist()
    assert json.loads((tmp_path / "stages" / "shard_00000.stats.json").read_text()) == stats | {
        "seconds": stats["seconds"]
    }
    first = out.read_bytes()
    build_stages(src, out, (2, 4, 8))
    assert out.read_bytes() == first


def test_corrupt_annotated_shard_names_the_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="broken.parquet"):
        build_stages(bad, tmp_path / "out.parquet", (2, 4, 8))
    assert not (tmp_path / "out.parquet").exists()


def test_mismatched_priority_length_is_an_error(tmp_path):
    src = tmp_path / "annot.parquet"
    _annotated(src, [("x", [1, 2, 3, 4], [0.1, 0.2])])
    with pytest.raises(ValueError, match="'x' has 4 tokens but 2 priorities"):
        build_stages(src, tmp_path / "out.parquet", (1, 2, 4))


def test_shard_without_a_block_fails_naming_shard_length_and_counts(tmp_path):
    """Every document shorter than l3 (a validation split of short documents): an error, not an empty shard."""
    src = tmp_path / "annot" / "shard_00003.parquet"
    src.parent.mkdir()
    _annotated(src, [("a", [1, 2, 3], [0.1, 0.2, 0.3]), ("b", [4, 5, 6, 7, 8], [0.5] * 5)])
    out = tmp_path / "stages" / "shard_00003.parquet"
    out.parent.mkdir()
    out.write_bytes(b"an older shard")  # a stale result must not survive as if it were this run's
    with pytest.raises(
        InputError,
        match=r"stages/shard_00003\.parquet: no block of l3 = 8 tokens from .*"
        r"annot/shard_00003\.parquet: 2 documents in, 2 of them shorter than 8 tokens",
    ):
        build_stages(src, out, (2, 4, 8))
    assert not list(out.parent.iterdir())


def test_shard_whose_blocks_are_all_dropped_fails(tmp_path):
    src = tmp_path / "annot.parquet"
    _annotated(src, [("c", [4] * 16, [0.0] * 16)])
    with pytest.raises(
        InputError,
        match=r"1 documents in, 0 of them shorter than 8 tokens, 2 blocks dropped "
        r"with fewer than l2 = 4 distinct tokens",
    ):
        build_stages(src, tmp_path / "out.parquet", (2, 4, 8))
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.stats.json").exists()


def test_command_line_reports_a_shard_without_blocks(tmp_path):
    src = tmp_path / "annot.parquet"
    _annotated(src, [("a", [1, 2, 3], [0.1, 0.2, 0.3])])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess.stages",
            "--lengths",
            "2",
            "4",
            "8",
            "--input",
            str(src),
            "--out",
            str(tmp_path / "out.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "preprocess.stages: error:" in done.stderr and "1 of them shorter than 8 tokens" in done.stderr
    assert not (tmp_path / "out.parquet").exists()
