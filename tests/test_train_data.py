"""Stage shards read through the on-disk row stores (train/data.py): batches equal those of the shards held in
memory, stale or damaged cache files are rebuilt, and bad rows are refused naming the file, column and row."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from train.data import BatchOrder, load_stage_tensors
from train.toydata import stage_table


def _in_memory(paths, column, length):
    return torch.from_numpy(
        np.concatenate(
            [
                np.asarray(
                    pq.read_table(p, columns=[column]).column(column).combine_chunks().values, dtype=np.int32
                ).reshape(-1, length)
                for p in paths
            ]
        )
    )


@pytest.fixture
def shards(tmp_path):
    paths = []
    for i, n in enumerate((37, 0, 50, 21)):  # uneven shards, one empty, several record batches / row groups
        path = tmp_path / "shards" / f"shard_{i:05d}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(stage_table(n, (4, 8, 16), 61, i, 3), path, row_group_size=16)
        paths.append(str(path))
    return paths


def test_batches_equal_the_in_memory_rows(shards, tmp_path):
    data = load_stage_tensors(shards, 3, 8, 16, vocab_size=63, cache_dir=tmp_path / "cache")
    target, prefix = _in_memory(shards, "stage3_ids", 16), _in_memory(shards, "stage2_ids", 8)
    assert len(data) == 108 and data.target.shape == (108, 16) and data.prefix.shape == (108, 8)
    order = BatchOrder(len(data), global_batch=24, seed=5)
    for step in range(12):  # a little over two epochs
        rows = order.indices(step)
        assert data.target[rows].dtype == torch.int32
        assert torch.equal(data.target[rows], target[rows]) and torch.equal(data.prefix[rows], prefix[rows])
    assert torch.equal(data.target[torch.arange(100, 108)], target[100:108])  # a range across shards
    assert torch.equal(data.target[torch.tensor([-1, 0])], target[[-1, 0]])
    with pytest.raises(IndexError):
        data.target[torch.tensor([108])]
    stage1 = load_stage_tensors(shards[:1], 1, 0, 4, cache_dir=tmp_path / "cache")
    assert stage1.prefix is None
    assert torch.equal(stage1.target[torch.arange(37)], _in_memory(shards[:1], "stage1_ids", 4))


def test_cache_is_reused_and_damaged_or_stale_files_are_rebuilt(shards, tmp_path):
    cache = tmp_path / "cache"
    load_stage_tensors(shards, 3, 8, 16, cache_dir=cache)
    npys = sorted(cache.glob("shard_00000.*stage3_ids*.npy"))
    assert len(npys) == 1
    npy = npys[0]
    stamp = npy.stat().st_mtime_ns
    load_stage_tensors(shards, 3, 8, 16, cache_dir=cache)
    assert npy.stat().st_mtime_ns == stamp  # reused, not rewritten
    target = _in_memory(shards, "stage3_ids", 16)
    rows = torch.arange(37)

    with open(npy, "r+b") as f:  # truncated: rebuilt
        f.truncate(npy.stat().st_size - 4)
    assert torch.equal(load_stage_tensors(shards, 3, 8, 16, cache_dir=cache).target[rows], target[rows])
    npy.write_bytes(b"garbage")  # not a .npy at all: rebuilt
    assert torch.equal(load_stage_tensors(shards, 3, 8, 16, cache_dir=cache).target[rows], target[rows])
    sidecar = npy.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "rows": 36}))  # a sidecar that does not match the file: rebuilt
    assert torch.equal(load_stage_tensors(shards, 3, 8, 16, cache_dir=cache).target[rows], target[rows])
    assert json.loads(sidecar.read_text())["rows"] == 37

    # the shard is rewritten with other rows: new cache files, the old ones removed
    pq.write_table(stage_table(37, (4, 8, 16), 61, 99, 3), shards[0])
    data = load_stage_tensors(shards, 3, 8, 16, cache_dir=cache)
    assert torch.equal(data.target[rows], _in_memory(shards[:1], "stage3_ids", 16))
    assert not npy.exists() and len(list(cache.glob("shard_00000.*stage3_ids*.npy"))) == 1


def test_bad_rows_name_the_file_column_and_row(shards, tmp_path):
    bad = tmp_path / "bad.parquet"
    rows = [[1] * 16] * 20 + [[1] * 15] + [[1] * 16] * 3
    pq.write_table(
        pa.table(
            {
                "stage3_ids": pa.array(rows, type=pa.list_(pa.int32())),
                "stage2_ids": pa.array([[1] * 8] * 24, type=pa.list_(pa.int32())),
            }
        ),
        bad,
        row_group_size=8,
    )
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'stage3_ids' row 20 has 15 tokens, expected 16"):
        load_stage_tensors(shards + [str(bad)], 3, 8, 16, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("bad.*"))  # nothing half-written is left to be trusted
    with pytest.raises(
        ValueError,
        match=r"shard_00002\.parquet: column 'stage3_ids' row \d+ has token id \d+ "
        r"outside the vocabulary of 10",
    ):
        load_stage_tensors(shards[2:], 3, 8, 16, vocab_size=10, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"bad\.parquet: missing column 'stage1_ids'"):
        load_stage_tensors([str(bad)], 2, 4, 8, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"nothing\.parquet: file does not exist"):
        load_stage_tensors([str(tmp_path / "nothing.parquet")], 3, 8, 16, cache_dir=tmp_path / "cache")
