"""Stage shards -> row stores read from disk, and the deterministic order in which training reads them.

A stage shard (docs/contracts.md) has one row per block with `stage1_ids[l1]`, `stage2_ids[l2]`,
`stage3_ids[l3]`. Stage k trains on target = stage{k}_ids with prefix = stage{k-1}_ids (no prefix for stage
1 and for single / AR runs, which model stage3_ids).

Memory: the shards are not held in memory. Each (shard, column) is decoded once into a cache file, an
uncompressed `.npy` of int32[rows, length] (row lengths checked and value range recorded while it is
written, one record batch at a time; the Parquet reader decodes a whole row group of a column, so building
needs one row group of one column in memory, never the data set), and a batch reads just its rows from
those files with positioned reads (os.preadv): no memory map, so the pages read stay in the kernel's page
cache and not in the process's resident set, which therefore does not grow with the data set. The cache files live under
`cache_dir` (the trainer passes `{out}/data-cache/` and removes it when the run finishes); each is named by
its shard's path and (size, mtime), written atomically with a JSON sidecar (rows, length, min, max, the
shard's identity), and reused only when the sidecar matches the shard and the `.npy` header and file size
match the sidecar; anything else is rebuilt from the shard, and files of an older version of the shard
are removed.

The order is a pure function of (seed, step): the global batch of step s is rows s*G .. (s+1)*G - 1 of the
stream perm_0 ++ perm_1 ++ ..., where perm_e is a seeded permutation of the rows for epoch e. Resuming at
step s therefore needs no data-loader state, and every process computes the same global batch and takes
its own slice of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from common.io import InputError, atomic_path, open_parquet, write_json

CACHE_VERSION = 1
ANSWER_COLUMN = "answer_mask"  # SFT shards: 1 where the token is an answer token
_READ_BATCH_ROWS = 16384  # rows decoded at a time while a cache file is written
_SCAN_BYTES = 64 << 20  # bytes read at a time when a cache file is scanned for an out-of-vocabulary row
_I32 = np.iinfo(np.int32)


class RowStore:
    """Int32[N, length] spread over the cache files of several shards; `store[rows]` reads those rows.

    `rows` is a LongTensor (or anything numpy turns into integers) of global row numbers; the result is a new
    int32 tensor in the order of `rows`. Global row r lives in file i = searchsorted(starts, r, "right") - 1
    at local row r - starts[i]."""

    def __init__(self, files: list[Path], counts: list[int], length: int):
        self.files, self.length = [Path(f) for f in files], length
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.offsets = [_header_offset(f) for f in self.files]
        self._fds: list[int] | None = None
        self._pid = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.length

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _open(self) -> list[int]:
        if self._fds is None or self._pid != os.getpid():  # a forked child opens its own descriptors
            self._fds = [os.open(f, os.O_RDONLY) for f in self.files]
            self._pid = os.getpid()
        return self._fds

    def close(self) -> None:
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = None

    def __del__(self):
        with contextlib.suppress(Exception):  # also at interpreter exit, when os may be half torn down
            self.close()

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        rows = np.asarray(rows)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows must be integers, got {rows.dtype}")
        flat = rows.reshape(-1).astype(np.int64)
        n = len(self)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((flat.size, self.length), dtype=np.int32)
        if flat.size:
            shard = np.searchsorted(self.starts, flat, side="right") - 1
            local = flat - self.starts[shard]
            # runs of consecutive rows of one shard are read with one call (validation reads a range)
            breaks = np.nonzero((np.diff(flat) != 1) | (np.diff(shard) != 0))[0] + 1
            bounds = np.concatenate([[0], breaks, [flat.size]])
            fds, row_bytes = self._open(), self.length * 4
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                i = int(shard[a])
                want = (b - a) * row_bytes
                got = os.preadv(fds[i], [out[a:b]], self.offsets[i] + int(local[a]) * row_bytes)
                if got != want:
                    raise OSError(
                        f"{self.files[i]}: short read ({got} of {want} bytes); the cache file changed under the run"
                    )
        return torch.from_numpy(out.reshape(*rows.shape, self.length))


@dataclass
class StageTensors:
    target: RowStore  # Int32[N, target_len] rows read per batch (cast to long by the trainer)
    prefix: RowStore | None  # Int32[N, prefix_len] or None
    answer: RowStore | None = None  # SFT: Int32[N, target_len], 1 at answer tokens (masked, scored), else 0

    def __len__(self) -> int:
        return len(self.target)


def _header_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _cache_names(cache_dir: Path, path: Path, column: str, length: int) -> tuple[Path, Path, str]:
    """(npy, sidecar, glob of every version) for one column of one shard; the name holds the shard's path and
    (size, mtime), so a rewritten shard gets new cache files."""
    source = str(path.resolve())
    st = path.stat()
    where = hashlib.sha1(source.encode()).hexdigest()[:10]
    state = hashlib.sha1(
        f"{CACHE_VERSION}|{source}|{st.st_size}|{st.st_mtime_ns}|{column}|{length}".encode()
    ).hexdigest()[:12]
    stem = f"{path.stem}.{where}.{column}"
    return cache_dir / f"{stem}.{state}.npy", cache_dir / f"{stem}.{state}.json", f"{stem}.*"


def _identity(path: Path, column: str, length: int) -> dict:
    st = path.stat()
    return {
        "version": CACHE_VERSION,
        "source": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "column": column,
        "length": length,
    }


def _cached(npy: Path, sidecar: Path, identity: dict) -> dict | None:
    """The sidecar of a cache file that matches the shard and is whole, or None (then it is rebuilt)."""
    try:
        meta = json.loads(sidecar.read_text())
        if any(meta.get(k) != v for k, v in identity.items()):
            return None
        rows, length = int(meta["rows"]), int(meta["length"])
        int(meta["min"]), int(meta["max"])
        with open(npy, "rb") as f:
            if np.lib.format.read_magic(f) != (1, 0):
                return None
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        if shape != (rows, length) or fortran or dtype != np.dtype("<i4"):
            return None
        if npy.stat().st_size != offset + rows * length * 4:
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _flat_values(col: pa.Array, column: str, length: int, path: Path, first_row: int) -> np.ndarray:
    """The values of one record batch's list column as int32[rows, length], row lengths checked."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        if col.type.list_size != length:
            raise ValueError(
                f"{path}: column {column!r} row {first_row} has {col.type.list_size} tokens, expected {length}"
            )
        if col.null_count:
            bad = int(np.nonzero(col.is_null().to_numpy(zero_copy_only=False))[0][0])
            raise ValueError(f"{path}: column {column!r} row {first_row + bad} is null, expected {length} tokens")
        values = col.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        offsets = np.asarray(col.offsets)
        sizes = np.diff(offsets)
        bad = np.nonzero(sizes != length)[0]
        if bad.size:
            raise ValueError(
                f"{path}: column {column!r} row {first_row + int(bad[0])} has {int(sizes[bad[0]])} "
                f"tokens, expected {length} (and {bad.size - 1} more such rows in its record batch)"
            )
        values = col.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    else:
        raise ValueError(f"{path}: column {column!r} is {col.type}, expected a list of token ids")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{path}: column {column!r} holds {values.dtype}, expected integer token ids")
    if values.dtype.itemsize > 4 or values.dtype == np.uint32:
        outside = np.nonzero((values < _I32.min) | (values > _I32.max))[0]
        if outside.size:
            raise ValueError(
                f"{path}: column {column!r} row {first_row + int(outside[0]) // length} has token id "
                f"{int(values[outside[0]])} outside int32"
            )
    return values.astype(np.int32, copy=False).reshape(-1, length)


def _build(path: Path, wanted: dict[str, tuple[int, Path, Path, str]]) -> dict[str, dict]:
    """Decode the `wanted` columns of one shard into their cache files in one pass, a record batch at a time."""
    pf = open_parquet(path, list(wanted))
    rows = pf.metadata.num_rows
    metas = {
        c: {**_identity(path, c, length), "rows": rows, "min": None, "max": None}
        for c, (length, *_rest) in wanted.items()
    }
    with contextlib.ExitStack() as stack:
        handles = {}
        for c, (length, npy, _sidecar, _glob) in wanted.items():
            tmp = stack.enter_context(atomic_path(npy))
            f = stack.enter_context(open(tmp, "wb"))
            np.lib.format.write_array_header_1_0(f, {"descr": "<i4", "fortran_order": False, "shape": (rows, length)})
            handles[c] = f
        done = 0
        try:
            batches = pf.iter_batches(batch_size=_READ_BATCH_ROWS, columns=list(wanted), use_threads=False)
            for batch in batches:
                for c, (length, *_rest) in wanted.items():
                    values = _flat_values(batch.column(c), c, length, path, done)
                    if values.size:
                        lo, hi = int(values.min()), int(values.max())
                        m = metas[c]
                        m["min"] = lo if m["min"] is None else min(m["min"], lo)
                        m["max"] = hi if m["max"] is None else max(m["max"], hi)
                    handles[c].write(memoryview(np.ascontiguousarray(values)).cast("B"))
                done += batch.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"{path}: not a readable Parquet file ({err})") from err
        if done != rows:
            raise InputError(f"{path}: the footer says {rows} rows but {done} were read")
        for f in handles.values():
            f.close()
    for c, (_, npy, sidecar, pattern) in wanted.items():
        meta = metas[c]
        meta["min"] = 0 if meta["min"] is None else meta["min"]
        meta["max"] = -1 if meta["max"] is None else meta["max"]
        write_json(meta, sidecar)
        for old in npy.parent.glob(pattern):  # the cache of an older version of this shard
            if old not in (npy, sidecar) and not old.name.startswith("."):
                with contextlib.suppress(OSError):
                    old.unlink()
    return metas


def _first_row_outside(npy: Path, length: int, vocab_size: int) -> tuple[int, int]:
    """(row, token id) of the first id outside [0, vocab_size) in a cache file, read a chunk at a time."""
    offset = _header_offset(npy)
    rows_per_chunk = max(1, _SCAN_BYTES // (4 * length))
    row = 0
    with open(npy, "rb") as f:
        f.seek(offset)
        while True:
            chunk = np.fromfile(f, dtype="<i4", count=rows_per_chunk * length)
            if chunk.size == 0:
                return -1, 0
            bad = np.nonzero((chunk < 0) | (chunk >= vocab_size))[0]
            if bad.size:
                return row + int(bad[0]) // length, int(chunk[bad[0]])
            row += chunk.size // length


def data_columns(data: str, stage: int, prefix_len: int) -> tuple[str, str | None]:
    """(target column, prefix column or None) a run reads: `stage{k}_ids` and `stage{k-1}_ids` of stage shards
    (data: stages), `ids` of unannotated block shards (data: wrap | doc, preprocess/blocks.py) and of SFT shards
    (data: sft, preprocess/sft.py; their `answer_mask` column is read beside it); no prefix."""
    if data == "stages":
        return f"stage{stage}_ids", (f"stage{stage - 1}_ids" if prefix_len else None)
    if data in ("wrap", "doc", "sft"):
        if prefix_len:
            raise ValueError(f"block shards (data: {data}) have no prefix column, got prefix_len {prefix_len}")
        return "ids", None
    raise ValueError(f"data must be stages, wrap, doc or sft, got {data!r}")


def load_stage_tensors(
    paths: list[str],
    stage: int,
    prefix_len: int,
    target_len: int,
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    data: str = "stages",
) -> StageTensors:
    """The target and prefix (if prefix_len) columns of every row (data_columns(): stage{stage}_ids and
    stage{stage-1}_ids of stage shards, ids of block shards; and answer_mask of SFT shards), as row stores
    (load_columns)."""
    target_column, prefix_column = data_columns(data, stage, prefix_len)
    columns = {target_column: target_len}
    if prefix_column:
        columns[prefix_column] = prefix_len
    if data == "sft":
        columns[ANSWER_COLUMN] = target_len
    stores = load_columns(paths, columns, vocab_size, cache_dir, id_columns=[c for c in columns if c != ANSWER_COLUMN])
    return StageTensors(
        target=stores[target_column], prefix=stores.get(prefix_column), answer=stores.get(ANSWER_COLUMN)
    )


def load_columns(
    paths: list[str],
    columns: dict[str, int],
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    id_columns: list[str] | None = None,
) -> dict[str, RowStore]:
    """Fixed-length int list columns {name: length} of every row of `paths`, as row stores over cache files under
    `cache_dir` (default: `.data-cache/` beside each shard), built when missing or stale.

    Every row's length is checked, and every token id's range in `id_columns` (default: all; masks are not ids)
    when vocab_size is given; errors name the shard, the column and the row."""
    if not paths:
        raise ValueError("no stage shards given")
    id_columns = list(columns) if id_columns is None else id_columns
    files: dict[str, list[Path]] = {c: [] for c in columns}
    counts: list[int] = []
    for raw in paths:
        path = Path(str(raw))
        if not path.exists():
            raise InputError(f"{path}: file does not exist")
        folder = Path(cache_dir) if cache_dir is not None else path.parent / ".data-cache"
        folder.mkdir(parents=True, exist_ok=True)
        metas, wanted = {}, {}
        for column, length in columns.items():
            npy, sidecar, pattern = _cache_names(folder, path, column, length)
            meta = _cached(npy, sidecar, _identity(path, column, length))
            if meta is None:
                wanted[column] = (length, npy, sidecar, pattern)
            else:
                metas[column] = meta
            files[column].append(npy)
        for column, spec in wanted.items():
            # one column at a time: the reader decodes a whole row group of the columns it reads, so the
            # memory a build needs is one row group of one column (then handed back to the system)
            metas.update(_build(path, {column: spec}))
            pa.default_memory_pool().release_unused()
        rows = {metas[c]["rows"] for c in columns}
        if len(rows) != 1:
            raise ValueError(f"{path}: columns {list(columns)} have different row counts {sorted(rows)}")
        counts.append(rows.pop())
        if vocab_size is not None:
            for column in id_columns:
                meta, length = metas[column], columns[column]
                if meta["rows"] and (meta["min"] < 0 or meta["max"] >= vocab_size):
                    row, token = _first_row_outside(files[column][-1], length, vocab_size)
                    raise ValueError(
                        f"{path}: column {column!r} row {row} has token id {token} outside the "
                        f"vocabulary of {vocab_size} (ids span [{meta['min']}, {meta['max']}]; "
                        f"wrong tokenizer?)"
                    )
    if sum(counts) == 0:
        raise ValueError(f"stage shards {paths} hold no rows")
    return {column: RowStore(files[column], counts, length) for column, length in columns.items()}


class BatchOrder:
    """Row indices of the global batch of each step; see the module docstring."""

    def __init__(self, n_rows: int, global_batch: int, seed: int):
        self.n, self.g, self.seed = n_rows, global_batch, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def epochs(self, step: int) -> torch.Tensor:
        """The epoch (pass over the data) each row of step `step`'s global batch belongs to."""
        return torch.arange(step * self.g, (step + 1) * self.g) // self.n

    def indices(self, step: int) -> torch.Tensor:
        return self.rows_at(torch.arange(step * self.g, (step + 1) * self.g))

    def rows_at(self, positions: torch.Tensor) -> torch.Tensor:
        """The rows at global positions (step x G + k) of the stream of epochs."""
        epochs, offsets = positions // self.n, positions % self.n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])
