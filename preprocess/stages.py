"""Stage datasets: three nested token sequences per block of an annotated document.

    python -m preprocess.stages --lengths 16 32 64 \
        --input data/pydoc/annot-<tag>/keybert/train/shard_00000.parquet \
        --out data/pydoc/stages-<tag>/keybert/8_16_32/train/shard_00000.parquet

Selection rule (docs/design.md, "Stages"). A document's tokens are cut into non-overlapping blocks of l3 tokens
(a tail shorter than l3 is dropped and counted). In each block, positions are ranked by priority, highest
first, ties broken by the earlier position, and walked in that order; a position is *taken* unless its token
id was already taken, except that tokens with priority > 1 (the structural sentence periods) may repeat.
Stage 2 is the first l2 taken positions and stage 1 the first l1, each put back in text order; stage 3 is
the whole block. So stage1 ⊂ stage2 ⊂ stage3 as position sets. A block with fewer than l2 taken positions
is dropped and counted. The positions are written too (the inserting stage form, docs/design.md):

    stage1_pos[j] = the index in stage2_ids of stage 1's j-th token,   stage2_ids[stage1_pos] == stage1_ids
    stage2_pos[j] = the index in stage3_ids of stage 2's j-th token,   stage3_ids[stage2_pos] == stage2_ids

each strictly increasing (text order is kept).

A shard that yields no block at all (every document shorter than l3 tokens, or every block dropped) is an
error naming the shard, l3 and the counts, and writes nothing: training or validating on an empty split
would otherwise pass silently.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from common.io import InputError, read_parquet, stats_path, write_json, write_parquet

REPEATABLE_ABOVE = 1.0  # priorities above this may be taken more than once per block

STAGE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("block", pa.int32()),
        ("start", pa.int32()),
        ("stage1_ids", pa.list_(pa.int32())),
        ("stage2_ids", pa.list_(pa.int32())),
        ("stage3_ids", pa.list_(pa.int32())),
        ("stage1_pos", pa.list_(pa.int32())),
        ("stage2_pos", pa.list_(pa.int32())),
        ("priority", pa.list_(pa.float32())),
    ]
)


def select_positions(ids: np.ndarray, priority: np.ndarray, n: int) -> np.ndarray | None:
    """The first ``n`` taken positions of one block in priority order, or None if fewer than n are taken."""
    order = np.argsort(-priority, kind="stable")  # stable: equal priorities keep text order
    taken, seen = [], set()
    for pos in order:
        token = int(ids[pos])
        if token in seen and priority[pos] <= REPEATABLE_ABOVE:
            continue
        seen.add(token)
        taken.append(pos)
        if len(taken) == n:
            return np.asarray(taken)
    return None


class Split(NamedTuple):
    """One block's stages: stage1_ids [l1] and stage2_ids [l2] in text order, stage1_pos [l1] (indices into
    stage2_ids) and stage2_pos [l2] (indices into the block, stage3_ids), both strictly increasing."""

    stage1_ids: np.ndarray
    stage2_ids: np.ndarray
    stage1_pos: np.ndarray
    stage2_pos: np.ndarray


def split_block(ids: np.ndarray, priority: np.ndarray, l1: int, l2: int) -> Split | None:
    """The stages of one block (Split); None when the block must be dropped."""
    taken = select_positions(ids, priority, l2)
    if taken is None:
        return None
    pos2 = np.sort(taken)
    # stage 1's block positions are a subset of pos2 (sorted), so searchsorted gives their indices in stage 2
    pos1 = np.searchsorted(pos2, np.sort(taken[:l1])).astype(np.int32)
    return Split(ids[pos2[pos1]], ids[pos2], pos1, pos2.astype(np.int32))


def no_blocks_error(input_path, out_path, lengths: tuple[int, int, int], counts: Counter) -> InputError:
    """The error for a shard without a single block; an older shard and stats at ``out_path`` are removed,
    so that nothing there looks finished."""
    for stale in (Path(out_path), stats_path(out_path)):
        stale.unlink(missing_ok=True)
    _, l2, l3 = lengths
    return InputError(
        f"{out_path}: no block of l3 = {l3} tokens from {input_path}: "
        f"{counts['documents_in']} documents in, {counts['documents_shorter_than_block']} of them shorter "
        f"than {l3} tokens, {counts['blocks_dropped_too_few_distinct']} blocks dropped with fewer than "
        f"l2 = {l2} distinct tokens; expected at least one block. Lower stages.lengths, or give this split "
        f"more or longer documents (corpus.max_docs, corpus.validation_fraction, corpus.shards)"
    )


def build_stages(input_path: str | Path, out_path: str | Path, lengths: tuple[int, int, int]) -> dict:
    """Cut every annotated document of a shard into blocks and write the stage shard and its stats."""
    l1, l2, l3 = lengths
    if not 0 < l1 < l2 < l3:
        raise ValueError(f"stage lengths must satisfy 0 < l1 < l2 < l3, got {lengths}")
    t0 = time.perf_counter()
    table = read_parquet(input_path, ["doc_id", "input_ids", "priority"])
    rows = {name: [] for name in STAGE_SCHEMA.names}
    counts = Counter()
    for doc_id, ids, prio in tqdm(
        zip(*(table.column(c).to_pylist() for c in ("doc_id", "input_ids", "priority"))),
        total=table.num_rows,
        desc=f"stages {Path(input_path).name}",
        unit="doc",
    ):
        if len(ids) != len(prio):
            raise ValueError(f"{input_path}: document {doc_id!r} has {len(ids)} tokens but {len(prio)} priorities")
        ids, prio = np.asarray(ids, dtype=np.int32), np.asarray(prio, dtype=np.float32)
        counts["documents_in"] += 1
        counts["tokens_in"] += len(ids)
        n_blocks = len(ids) // l3
        if n_blocks == 0:
            counts["documents_shorter_than_block"] += 1
        counts["tail_tokens_dropped"] += len(ids) - n_blocks * l3
        for b in range(n_blocks):
            start = b * l3
            block_ids, block_prio = ids[start : start + l3], prio[start : start + l3]
            split = split_block(block_ids, block_prio, l1, l2)
            if split is None:
                counts["blocks_dropped_too_few_distinct"] += 1
                continue
            rows["doc_id"].append(doc_id)
            rows["block"].append(b)
            rows["start"].append(start)
            rows["stage1_ids"].append(split.stage1_ids)
            rows["stage2_ids"].append(split.stage2_ids)
            rows["stage3_ids"].append(block_ids)
            rows["stage1_pos"].append(split.stage1_pos)
            rows["stage2_pos"].append(split.stage2_pos)
            rows["priority"].append(block_prio)
            counts["blocks_written"] += 1
    if counts["blocks_written"] == 0:
        raise no_blocks_error(input_path, out_path, lengths, counts)
    write_parquet(pa.table(rows, schema=STAGE_SCHEMA), out_path)
    stats = {
        "input": str(input_path),
        "lengths": list(lengths),
        **{
            k: counts.get(k, 0)
            for k in (
                "documents_in",
                "tokens_in",
                "documents_shorter_than_block",
                "tail_tokens_dropped",
                "blocks_written",
                "blocks_dropped_too_few_distinct",
            )
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(stats, stats_path(out_path))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs=3, required=True, metavar=("L1", "L2", "L3"))
    parser.add_argument("--input", required=True, help="annotated shard (doc_id, input_ids, priority)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        stats = build_stages(args.input, args.out, tuple(args.lengths))
    except InputError as err:
        parser.exit(2, f"preprocess.stages: error: {err}\n")
    print(f"{args.out}: {stats['blocks_written']} blocks, {stats['blocks_dropped_too_few_distinct']} dropped")


if __name__ == "__main__":
    main()
