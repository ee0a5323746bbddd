"""Unannotated token blocks for single-stage and AR runs: raw shard -> tokenizer -> fixed-length blocks, no spaCy,
no KeyBERT. Two packings, chosen per run (`runs.<run>.data`), because they give different perplexities:

    wrap  (MDLM's `wrap`) every document's tokens followed by one EOS, concatenated in shard order, cut into
          blocks of L tokens. No padding, and every document is kept, however short: a block may span documents,
          so the model also learns where one ends. Only the last partial block of the shard is dropped (fewer
          than L tokens per shard, counted as `tail_tokens_dropped`).
    doc   every document on its own: its tokens + EOS cut into blocks of L tokens, the last block padded with the
          tokenizer's pad token to L. No block spans documents. Pad positions are never masked, carry no loss
          and are not counted as tokens (train/objectives.diffusion_loss, eval/likelihood.py), so the pad token
          must be a token of its own, not EOS (GPT-2 has none: use wrap, or a tokenizer with a pad token).

    python -m preprocess.blocks --packing wrap --length 1024 --tokenizer data/wikihow/tokenizer \
        --input data/wikihow/raw/train/shard_00000.parquet --out data/wikihow/blocks/wrap/1024/train/shard_00000.parquet

Rows (docs/contracts.md): `doc_id` (the document of the block's first token), `start` (that token's offset in
its document, EOS included in the count), `ids: list<int32>[L]`. Empty documents are skipped and counted; a
shard that yields no block is an error naming the shard, and writes nothing. Rows are written one record batch
at a time, so a job's memory holds one batch of documents, not the shard.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from common.io import InputError, atomic_path, open_parquet, stats_path, write_json

PACKINGS = ("wrap", "doc")
BLOCK_SCHEMA = pa.schema([("doc_id", pa.string()), ("start", pa.int32()), ("ids", pa.list_(pa.int32()))])
_DOCS_PER_BATCH = 256  # documents tokenized (and block rows written) at a time


def special_ids(tokenizer, packing: str, where: str) -> tuple[int, int | None]:
    """(eos_id, pad_id) the packing needs; pad_id only for doc, and then distinct from EOS and the mask."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise InputError(f"{where}: the tokenizer has no eos_token; blocks separate documents with it")
    if packing == "wrap":
        return eos, None
    if pad is None or pad in (eos, tokenizer.mask_token_id):
        raise InputError(
            f"{where}: doc packing pads with a token of its own, but the tokenizer's pad token is "
            f"{tokenizer.pad_token!r} (id {pad}; eos {eos}, mask {tokenizer.mask_token_id}); use "
            f"data: wrap, or a tokenizer with a separate pad token (the pipeline's BPE has <|pad|>)"
        )
    return eos, pad


class Packer:
    """Turns documents (token ids) into L-token block rows, one document at a time; see the module docstring.

    wrap keeps a carry of tokens not yet in a block across documents; doc pads each document's last block."""

    def __init__(self, packing: str, length: int, eos_id: int, pad_id: int | None):
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
        if length < 2:
            raise ValueError(f"block length must be at least 2, got {length}")
        self.packing, self.length, self.eos, self.pad = packing, length, eos_id, pad_id
        self.carry: list[np.ndarray] = []  # wrap: pieces of the stream not yet in a block
        self.carry_len = 0
        self.carry_owner: tuple[str, int] | None = None  # (doc_id, start) of the carry's first token
        self.counts = Counter()

    def add(self, doc_id: str, ids: list[int]) -> list[tuple[str, int, np.ndarray]]:
        """The block rows completed by this document."""
        tokens = np.asarray(list(ids) + [self.eos], dtype=np.int32)
        self.counts["documents_written"] += 1
        self.counts["tokens"] += len(tokens)
        if self.packing == "doc":
            return self._doc_blocks(doc_id, tokens)
        return self._wrap_blocks(doc_id, tokens)

    def _doc_blocks(self, doc_id: str, tokens: np.ndarray) -> list[tuple[str, int, np.ndarray]]:
        L, rows = self.length, []
        for start in range(0, len(tokens), L):
            block = tokens[start : start + L]
            if len(block) < L:
                self.counts["pad_tokens"] += L - len(block)
                block = np.concatenate([block, np.full(L - len(block), self.pad, dtype=np.int32)])
            rows.append((doc_id, start, block))
        return rows

    def _wrap_blocks(self, doc_id: str, tokens: np.ndarray) -> list[tuple[str, int, np.ndarray]]:
        L, rows, offset = self.length, [], 0
        if self.carry_len:  # finish the block the previous documents started
            need = L - self.carry_len
            piece = tokens[:need]
            self.carry.append(piece)
            self.carry_len += len(piece)
            offset = len(piece)
            if self.carry_len < L:
                return rows
            rows.append((*self.carry_owner, np.concatenate(self.carry)))
            self.carry, self.carry_len, self.carry_owner = [], 0, None
        while len(tokens) - offset >= L:
            rows.append((doc_id, offset, tokens[offset : offset + L]))
            offset += L
        if offset < len(tokens):
            self.carry, self.carry_len = [tokens[offset:]], len(tokens) - offset
            self.carry_owner = (doc_id, offset)
        return rows

    def finish(self) -> None:
        """End of the shard: wrap drops the partial block in hand (counted)."""
        self.counts["tail_tokens_dropped"] += self.carry_len
        self.carry, self.carry_len, self.carry_owner = [], 0, None


def _table(rows: list[tuple[str, int, np.ndarray]]) -> pa.Table:
    ids = pa.array([r[2] for r in rows], type=pa.list_(pa.int32()))
    return pa.table(
        {"doc_id": [r[0] for r in rows], "start": pa.array([r[1] for r in rows], pa.int32()), "ids": ids},
        schema=BLOCK_SCHEMA,
    )


def build_blocks(input_path: str | Path, out_path: str | Path, tokenizer, packing: str, length: int) -> dict:
    """Write the block shard of one raw shard (atomically, one record batch of rows at a time) and its stats."""
    t0 = time.perf_counter()
    input_path, out_path = Path(input_path), Path(out_path)
    eos, pad = special_ids(tokenizer, packing, str(input_path))
    packer = Packer(packing, length, eos, pad)
    source = open_parquet(input_path, ["doc_id", "text"])
    blocks, skipped, documents_in = 0, Counter(), 0
    with atomic_path(out_path) as tmp:
        writer = pq.ParquetWriter(tmp, BLOCK_SCHEMA, compression="zstd", write_statistics=False, store_schema=True)
        try:
            bar = tqdm(total=source.metadata.num_rows, desc=f"blocks {packing} {input_path.name}", unit="doc")
            for batch in source.iter_batches(batch_size=_DOCS_PER_BATCH, columns=["doc_id", "text"], use_threads=False):
                doc_ids, texts = batch.column("doc_id").to_pylist(), batch.column("text").to_pylist()
                documents_in += len(texts)
                keep = [i for i, text in enumerate(texts) if text is not None and text.strip()]
                skipped["empty"] += len(texts) - len(keep)
                encoded = tokenizer([texts[i] for i in keep], add_special_tokens=False)["input_ids"] if keep else []
                rows = []
                for i, ids in zip(keep, encoded):
                    if not ids:
                        skipped["no_tokens"] += 1
                        continue
                    rows += packer.add(doc_ids[i], ids)
                if rows:
                    writer.write_table(_table(rows))
                    blocks += len(rows)
                bar.update(len(texts))
            bar.close()
            packer.finish()
        finally:
            writer.close()
        if blocks == 0:
            for stale in (out_path, stats_path(out_path)):
                stale.unlink(missing_ok=True)
            raise InputError(
                f"{out_path}: no block of {length} tokens from {input_path}: {documents_in} documents "
                f"in, {packer.counts['tokens']} tokens (EOS included), skipped {dict(skipped)}; "
                f"expected at least one block. Lower blocks.length or give this split more text"
            )
    counts = packer.counts
    stats = {
        "input": str(input_path),
        "packing": packing,
        "length": length,
        "documents_in": documents_in,
        "documents_written": counts["documents_written"],
        "skipped": dict(sorted((k, v) for k, v in skipped.items() if v)),
        "tokens": counts["tokens"],
        "blocks_written": blocks,
        "tail_tokens_dropped": counts["tail_tokens_dropped"],
        "pad_tokens": counts["pad_tokens"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(stats, stats_path(out_path))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.blocks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packing", required=True, choices=PACKINGS)
    parser.add_argument("--length", type=int, required=True, help="tokens per block (blocks.length)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--input", required=True, help="raw shard (Parquet: doc_id, text)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    try:
        stats = build_blocks(args.input, args.out, tokenizer, args.packing, args.length)
    except InputError as err:
        parser.exit(2, f"preprocess.blocks: error: {err}\n")
    print(
        f"{args.out}: {stats['blocks_written']} blocks from {stats['documents_written']}/{stats['documents_in']} "
        f"documents, {stats['tail_tokens_dropped']} tail tokens dropped, {stats['pad_tokens']} pad tokens"
    )


if __name__ == "__main__":
    main()
