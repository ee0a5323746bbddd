"""Atomic file writing and checked Parquet reading: the file I/O of every phase (preprocess, train, eval).

A killed job must never leave a file that looks finished: everything is written under a temporary name in
the destination folder and renamed into place (``os.replace`` is atomic on POSIX within one file system).
Parquet files are written without timestamps or row-group statistics that vary between runs, so rerunning a
shard gives a byte-identical file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class InputError(ValueError):
    """Bad input: the message names the file and what is wrong with it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A ``path`` that exists and is neither a file nor a folder (/dev/null, /dev/stdout, a named pipe) is yielded
    as it is: there is nothing to make atomic, and a rename would replace the device with a regular file (as
    root, /dev/null itself)."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files 0600; give them the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; swap it in for ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes folders 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` atomically and deterministically (same table -> same bytes)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, store_schema=True)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def open_parquet(path: str | os.PathLike, columns: list[str] = ()) -> pq.ParquetFile:
    """Open a Parquet file (its footer only), failing with an error that names the file when it is missing,
    corrupt or lacks one of ``columns``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err
    have = parquet.schema_arrow.names
    missing = [c for c in columns if c not in have]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise InputError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {names}; it has {have}")
    return parquet


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (only ``columns``, when given), failing with an error that names the file when it is
    missing, corrupt or lacks columns."""
    parquet = open_parquet(path, columns or [])
    try:
        return parquet.read(columns=columns, use_threads=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err


def jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of a JSONL file; a line that is not JSON is an error
    naming the file and the line."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None


def stats_path(shard_path: str | os.PathLike) -> Path:
    """``shard_00000.parquet`` -> ``shard_00000.stats.json`` (the accounting written beside a shard)."""
    shard_path = Path(shard_path)
    return shard_path.with_name(shard_path.name.removesuffix(".parquet") + ".stats.json")
