"""Stage shards -> tensors, and the deterministic order in which training reads them.

A stage shard (docs/contracts.md) has one row per block with `stage1_ids[l1]`, `stage2_ids[l2]`,
`stage3_ids[l3]`. Stage k trains on target = stage{k}_ids with prefix = stage{k-1}_ids (no prefix for stage
1 and for single / AR runs, which model stage3_ids).

The order is a pure function of (seed, step): the global batch of step s is rows s*G .. (s+1)*G - 1 of the
stream perm_0 ++ perm_1 ++ ..., where perm_e is a seeded permutation of the rows for epoch e. Resuming at
step s therefore needs no data-loader state, and every process computes the same global batch and takes
its own slice of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.io import read_parquet


@dataclass
class StageTensors:
    target: torch.Tensor                 # Int32[N, target_len] (cast to long per batch)
    prefix: torch.Tensor | None          # Int32[N, prefix_len] or None

    def __len__(self) -> int:
        return self.target.shape[0]


def _column_matrix(table, column: str, length: int, path: str) -> np.ndarray:
    if column not in table.column_names:
        raise ValueError(f"{path}: missing column {column!r} (has {table.column_names})")
    col = table.column(column).combine_chunks()
    offsets = np.asarray(col.offsets)
    sizes = np.diff(offsets)
    bad = np.nonzero(sizes != length)[0]
    if bad.size:
        raise ValueError(f"{path}: column {column!r} row {int(bad[0])} has {int(sizes[bad[0]])} tokens, "
                         f"expected {length} (and {bad.size - 1} more such rows)")
    values = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.int32)  # int32 in memory; batches are cast
    return values[offsets[0]:offsets[-1]].reshape(-1, length)


def load_stage_tensors(paths: list[str], stage: int, prefix_len: int, target_len: int,
                       vocab_size: int | None = None) -> StageTensors:
    """Read the target (stage{stage}_ids) and prefix (stage{stage-1}_ids, if prefix_len) of every row."""
    if not paths:
        raise ValueError("no stage shards given")
    targets, prefixes = [], []
    for path in paths:
        path = str(path)
        wanted = [f"stage{stage}_ids"] + ([f"stage{stage - 1}_ids"] if prefix_len else [])
        table = read_parquet(path, wanted)  # names the file when it is missing, corrupt or lacks a column
        targets.append(_column_matrix(table, wanted[0], target_len, path))
        if prefix_len:
            prefixes.append(_column_matrix(table, wanted[1], prefix_len, path))
    target = torch.from_numpy(np.concatenate(targets))
    prefix = torch.from_numpy(np.concatenate(prefixes)) if prefix_len else None
    if len(target) == 0:
        raise ValueError(f"stage shards {paths} hold no rows")
    if vocab_size is not None:
        for name, t in (("target", target), ("prefix", prefix)):
            if t is not None and (int(t.max()) >= vocab_size or int(t.min()) < 0):
                raise ValueError(f"stage shards {paths}: {name} token ids span [{int(t.min())}, {int(t.max())}] "
                                 f"outside the vocabulary of {vocab_size} (wrong tokenizer?)")
    return StageTensors(target=target, prefix=prefix)


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

    def indices(self, step: int) -> torch.Tensor:
        positions = torch.arange(step * self.g, (step + 1) * self.g)
        epochs, offsets = positions // self.n, positions % self.n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])
