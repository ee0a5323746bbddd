"""Corpus sources -> raw shards: N Parquet files per split with columns ``doc_id: string, text: string``,
plus ``stats.json`` beside them (documents read, written, skipped by reason, characters).

    python -m preprocess.corpus --config config.yaml --split train \
        --out data/pydoc/raw-<tag>/train/shard_00000.parquet data/pydoc/raw-<tag>/train/shard_00001.parquet

The number of ``--out`` files is the shard count. Sources, chosen by ``corpus.name`` in the config
(``corpus.validation_source``, where set, names another source for the validation split):

- ``pydoc``: the Python reference manual that every CPython ships (``pydoc_data.topics``), one document per
  paragraph (blank-line separated), ids ``{topic}/{paragraph}``. Offline, the embedded default.
- ``local``: ``corpus.path``, a file or a folder searched recursively (sorted paths): ``.txt`` split into
  documents at blank lines, ``.jsonl`` one JSON object per line, ``.parquet`` rows; the last two read the
  field ``corpus.text_column``. Ids ``{relative path}:{paragraph | line | row}``.
- Hugging Face datasets by name (``datasets.load_dataset``, needs the network or a filled HF cache):
  wikitext103, wikitext2, openwebtext, ptb, lm1b, lambada, wikihow, each with its detokenizer
  (``preprocess.detokenize``). The ids are those of the MDLM code base where ``datasets`` >= 4 still loads
  them, else their data-only successors (``datasets`` 4 dropped loading scripts: "wikitext" ->
  "Salesforce/wikitext", "openwebtext" -> "Skylion007/openwebtext", "lm1b" -> "dvruette/lm1b", and
  "ptb_text_only" is read from the Hub's own Parquet conversion of it).

Splits. A source with its own validation split uses it. Otherwise the split is a pure function of the data:
``pydoc``, ``local`` and ``lambada`` put a document in validation when a stable hash of its id falls below
``validation_fraction`` (u(id) = first 8 bytes of BLAKE2b(id) / 2^64 < fraction), so a document never moves
when others are added; ``openwebtext`` holds out its last 100,000 rows and ``wikihow`` its last 5% (as MDLM and
the WikiHow seed do).

Sharding is round-robin: the k-th document written goes to shard k mod N. Documents stream from the source
in order and every shard is written as they come (memory holds one row group per shard), so no document
count is needed in advance; neighbouring documents of one topic or article (similar length, similar
vocabulary) are spread over all shards, so annotation jobs get shards of near-equal cost; and raising
``max_docs`` only appends to the shards.

Documents per hub corpus: a WikiText article (its rows regrouped at each top-level " = Title = " row), an
OpenWebText page, a WikiHow article, a LAMBADA passage, a PTB or LM1B sentence (those two corpora carry no
document boundaries).

Bad input never disappears silently; every document read is written or skipped under a reason, and
``stats.json`` holds documents_read = documents_written + sum(skipped), with up to 5 examples per reason
naming the file and the paragraph, line or row:
``empty`` (whitespace only or null), ``invalid_utf8`` (bytes that do not decode; local files are decoded
one document at a time, so one bad paragraph or line costs only itself), ``binary`` (decodes but holds NUL
bytes or more than 1% control characters), ``invalid_json`` (a ``.jsonl`` line that is not a JSON object),
``no_text_field`` (a ``.jsonl`` object without the field ``corpus.text_column``), ``not_text`` (the text
field is a number, list, ...), ``empty_file`` (a local file that holds no document at all: 0 bytes, only
whitespace or blank lines, a Parquet file without rows; it counts as one item read, with the file's
relative path as its id, so it lands in one split by the same hash rule as a document). A local file whose
first 8 KiB hold a NUL byte is not text at all (an image, an archive): that stops the run with an error
naming the file and the byte offset, as do a corrupt Parquet file and a missing text column or a text
column that is not a string column (the error lists the columns the file has).
Huge documents are kept whole; the annotator cuts them into pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from common.config import ConfigError, load_config
from common.io import InputError, atomic_path, write_json
from preprocess import detokenize

SPLITS = ("train", "validation")
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
BINARY_SNIFF_BYTES = 8192  # as git does: a NUL byte in the first 8 KiB means "not a text file"
MAX_CONTROL_SHARE = 0.01  # more control characters than this and a document is binary junk
ROWS_PER_ROW_GROUP = 1000  # a shard's buffer is written as a Parquet row group at this many rows
BYTES_PER_ROW_GROUP = 8 << 20  # ... or at this many bytes of text, so 1,024 open shards stay in memory
EXAMPLES_PER_REASON = 5  # skipped documents named in stats.json, per reason


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


@dataclass(frozen=True)
class Skipped:
    doc_id: str
    reason: str
    detail: str = ""


Item = Document | Skipped


# --------------------------------------------------------------------------------------------------------
# Checks shared by every source


def in_validation(doc_id: str, fraction: float) -> bool:
    """u(doc_id) < fraction, with u = first 8 bytes of BLAKE2b(doc_id) read as an integer / 2^64.

    A stable hash (unlike Python's salted ``hash``) gives the same split on every machine and run, and a
    document's side depends on its own id only.
    """
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def text_problem(text) -> str | None:
    """Why ``text`` cannot be a document (a skip reason), or None when it can."""
    if text is None:
        return "empty"
    if not isinstance(text, str):
        return "not_text"
    if not text.strip():
        return "empty"
    if "\x00" in text:
        return "binary"
    # Category Cc covers C0/C1 controls; tab, newline, carriage return, vertical tab and form feed are
    # ordinary layout in real text.
    controls = sum(1 for ch in text if ch not in "\t\n\r\x0b\x0c" and unicodedata.category(ch) == "Cc")
    if controls > MAX_CONTROL_SHARE * len(text):
        return "binary"
    return None


def checked(doc_id: str, text, where: str = "") -> Item:
    """``text`` as a Document, or a Skipped under ``text_problem``'s reason; ``where`` (file and line, or
    dataset and row) goes into the skip's detail, with the type found where it is not a string."""
    reason = text_problem(text)
    if reason is None:
        return Document(doc_id, text)
    detail = where
    if reason == "not_text":
        found = f"a {type(text).__name__}, expected a string"
        detail = f"{where}: {found}" if where else found
    return Skipped(doc_id, reason, detail)


def decoded(doc_id: str, raw: bytes, where: str) -> Item:
    """Decode one document's bytes as strict UTF-8; a failure is a counted skip that says where."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Skipped(doc_id, "invalid_utf8", f"{where}: {err.reason} at byte {err.start}")
    return checked(doc_id, text)


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of ``text``: runs of non-blank lines, blank (whitespace-only) lines between them.

    Indentation inside a paragraph is kept (code examples stay code); trailing whitespace is dropped.
    """
    paragraphs, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current).rstrip())
            current = []
    if current:
        paragraphs.append("\n".join(current).rstrip())
    return paragraphs


# --------------------------------------------------------------------------------------------------------
# pydoc: the offline default


def pydoc_documents() -> Iterator[Item]:
    """Paragraph documents of CPython's reference manual topics, topics in sorted order."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        for i, paragraph in enumerate(split_paragraphs(topics[topic])):
            yield checked(f"{topic}/{i}", paragraph)


# --------------------------------------------------------------------------------------------------------
# local files


def refuse_binary_file(path: Path) -> None:
    """Stop on a file that is not text at all (NUL byte in its first 8 KiB), naming it and the offset."""
    with open(path, "rb") as f:
        head = f.read(BINARY_SNIFF_BYTES)
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputError(
            f"{path}: not a text file (NUL byte at byte offset {nul}); "
            f"expected UTF-8 text for a {path.suffix} corpus file"
        )


def txt_documents(path: Path, name: str) -> Iterator[Item]:
    """Blank-line separated paragraphs of a text file, each decoded on its own (``name:index``)."""
    refuse_binary_file(path)
    index, lines, start, offset = 0, [], 0, 0

    def finish() -> Item:
        raw = b"".join(lines).replace(b"\r\n", b"\n").rstrip()
        return decoded(f"{name}:{index}", raw, f"{path} paragraph {index} (byte {start})")

    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                if not lines:
                    start = offset
                lines.append(line)
            elif lines:
                yield finish()
                index, lines = index + 1, []
            offset += len(line)
    if lines:
        yield finish()


def jsonl_documents(path: Path, name: str, column: str) -> Iterator[Item]:
    """One document per JSON-object line, text in field ``column`` (``name:line``); blank lines ignored."""
    refuse_binary_file(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            doc_id, where = f"{name}:{lineno}", f"{path} line {lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield Skipped(doc_id, "invalid_utf8", f"{where}: {err.reason} at byte {err.start}")
                continue
            except json.JSONDecodeError as err:
                yield Skipped(doc_id, "invalid_json", f"{where}: {err.msg}")
                continue
            if not isinstance(obj, dict):
                yield Skipped(doc_id, "invalid_json", f"{where}: a {type(obj).__name__}, not an object")
                continue
            if column not in obj:
                yield Skipped(doc_id, "no_text_field", f"{where}: no field {column!r}; it has {sorted(obj)}")
                continue
            yield checked(doc_id, obj[column], f"{where} field {column!r}")


def parquet_documents(path: Path, name: str, column: str) -> Iterator[Item]:
    """One document per row of column ``column`` (``name:row``), read in batches."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise InputError(f"{path}: no text column {column!r}; it has columns {schema.names}")
    kind = schema.field(column).type
    if not (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        raise InputError(f"{path}: text column {column!r} has type {kind}, expected string")
    row = 0
    batches = parquet.iter_batches(columns=[column], batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: corrupt Parquet data, {row} rows read before it ({err})") from err
        # Read as bytes and decode ourselves: a string column written by a careless tool can still hold
        # invalid UTF-8, which should cost one row, not the file.
        for raw in batch.column(0).cast(pa.large_binary()).to_pylist():
            doc_id = f"{name}:{row}"
            if raw is None:
                yield Skipped(doc_id, "empty", f"{path} row {row}: null")
            else:
                yield decoded(doc_id, raw, f"{path} row {row}")
            row += 1


def local_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(files to read, files ignored) under ``path``, sorted so that the document order is reproducible."""
    if not path.exists():
        raise InputError(f"{path}: corpus path does not exist")
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise InputError(f"{path}: unsupported corpus file type {path.suffix!r}; use {LOCAL_SUFFIXES}")
        return [path], []
    files = sorted(p for p in path.rglob("*") if p.is_file())
    wanted = [p for p in files if p.suffix in LOCAL_SUFFIXES and not p.name.startswith(".")]
    if not wanted:
        raise InputError(f"{path}: no {', '.join(LOCAL_SUFFIXES)} files in this folder")
    return wanted, [p for p in files if p not in wanted]


def file_documents(file: Path, name: str, column: str) -> Iterator[Item]:
    """The items of one local file; a file that yields none is one ``empty_file`` skip with id ``name``."""
    if file.suffix == ".txt":
        items = txt_documents(file, name)
    elif file.suffix == ".jsonl":
        items = jsonl_documents(file, name, column)
    else:
        items = parquet_documents(file, name, column)
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        yield Skipped(name, "empty_file", f"{file}: {file.stat().st_size} bytes, no document in it")


def local_documents(path: str | os.PathLike, column: str) -> Iterator[Item]:
    """Every item of the local corpus at ``path`` (a file, or a folder's files in sorted order)."""
    path = Path(path)
    files, _ = local_files(path)
    for file in files:
        name = file.name if path.is_file() else file.relative_to(path).as_posix()
        yield from file_documents(file, name, column)


# --------------------------------------------------------------------------------------------------------
# Hugging Face datasets


@dataclass(frozen=True)
class HubCorpus:
    """Where a named corpus lives on the hub and how it becomes documents.

    ``splits`` maps our split to the hub split where the dataset has both. Otherwise every row comes from
    ``source_split`` and ``holdout`` says which rows are validation: ``("tail_rows", n)`` the last n rows,
    ``("tail_fraction", f)`` the last f of the rows, ``("hash", None)`` by ``in_validation(doc_id)``.
    """

    path: str
    config: str | None
    text_column: str
    detokenizer: str | None = None
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"))
    source_split: str | None = None
    holdout: tuple[str, float | None] | None = None
    wikitext_articles: bool = False
    revision: str | None = None

    def rows(self, split: str, n_rows: int) -> range:
        """Row indices of ``split`` in the hub split that holds it (all rows for a hash holdout)."""
        if self.holdout is None or self.holdout[0] == "hash":
            return range(n_rows)
        kind, size = self.holdout
        held = int(size) if kind == "tail_rows" else round(size * n_rows)
        held = min(held, n_rows)
        return range(n_rows - held, n_rows) if split == "validation" else range(0, n_rows - held)


HUB_CORPORA: dict[str, HubCorpus] = {
    # WikiText lines are rows; articles are regrouped (see wikitext_articles) so that a document is an article.
    "wikitext103": HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1", "text", "wikitext", wikitext_articles=True),
    "wikitext2": HubCorpus("Salesforce/wikitext", "wikitext-2-raw-v1", "text", "wikitext", wikitext_articles=True),
    # MDLM: openwebtext-train = train[:-100000], openwebtext-valid = train[-100000:].
    "openwebtext": HubCorpus(
        "Skylion007/openwebtext", None, "text", source_split="train", holdout=("tail_rows", 100_000)
    ),
    # One sentence per row, with its own train / validation / test splits. The repository holds only a
    # loading script; the Hub's automatic Parquet conversion of it is on this branch.
    "ptb": HubCorpus("ptb-text-only/ptb_text_only", None, "sentence", "ptb", revision="refs/convert/parquet"),
    # LM1B has train and test only; test serves as validation (as in MDLM).
    "lm1b": HubCorpus("dvruette/lm1b", None, "text", "lm1b", splits=(("train", "train"), ("validation", "test"))),
    # LAMBADA (OpenAI's release) is a single test split of passages: hash-split by validation_fraction.
    "lambada": HubCorpus(
        "EleutherAI/lambada_openai", "en", "text", "lambada", source_split="test", holdout=("hash", None)
    ),
    # WikiHow ships one split; the seed holds out the last 5% (train[-5%:]) for validation.
    "wikihow": HubCorpus("ajibawa-2023/WikiHow", None, "text", source_split="train", holdout=("tail_fraction", 0.05)),
}


def is_wikitext_title(line: str) -> bool:
    """A top-level WikiText heading row, " = Title = \\n" (one '=' each side); sections use "= =" or more."""
    stripped = line.strip()
    return (
        stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= =") and len(stripped) > 4
    )


def wikitext_articles(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(article index, raw text) from WikiText rows: an article starts at each top-level title row.

    Rows before the first title (none in the released files) form article 0.
    """
    index, current = 0, []
    for line in lines:
        if line is not None and is_wikitext_title(line) and any(row.strip() for row in current):
            yield index, "".join(current)
            index, current = index + 1, []
        current.append(line or "")
    if any(row.strip() for row in current):
        yield index, "".join(current)


def hub_documents(name: str, split: str, load: Callable = None, batch_rows: int = 1000) -> Iterator[Item]:
    """Documents of hub corpus ``name`` for our ``split``: the rows that belong to it, detokenized.

    ``load`` is ``datasets.load_dataset`` (tests pass a function returning an in-memory dataset).
    Ids are ``{hub split}/{row}`` (``{hub split}/{article}`` for WikiText), rows counted in the hub split,
    so ids are unique across our two splits even where both come from one hub split.
    """
    spec = HUB_CORPORA[name]
    if load is None:
        import datasets

        load = datasets.load_dataset
    hub_split = spec.source_split or dict(spec.splits)[split]
    extra = {"revision": spec.revision} if spec.revision else {}
    dataset = load(spec.path, spec.config, split=hub_split, **extra)
    if spec.text_column not in dataset.column_names:
        raise InputError(
            f"hub dataset {spec.path} ({spec.config}, {hub_split}): no text column {spec.text_column!r}; "
            f"it has columns {dataset.column_names}"
        )
    rows = spec.rows(split, len(dataset))
    detok = detokenize.get(spec.detokenizer) if spec.detokenizer else (lambda text: text)

    def texts() -> Iterator[str]:
        for start in range(rows.start, rows.stop, batch_rows):
            yield from dataset[start : min(start + batch_rows, rows.stop)][spec.text_column]

    where = f"hub dataset {spec.path} ({spec.config}, {hub_split})"
    if spec.wikitext_articles:
        for index, raw in wikitext_articles(texts()):
            yield checked(f"{hub_split}/{index}", detok(raw), f"{where} article {index}")
        return
    for row, text in zip(rows, texts()):
        yield checked(f"{hub_split}/{row}", detok(text) if isinstance(text, str) else text, f"{where} row {row}")


# --------------------------------------------------------------------------------------------------------
# One split of one source


def hash_split(items: Iterable[Item], split: str, fraction: float) -> Iterator[Item]:
    want_validation = split == "validation"
    for item in items:
        if in_validation(item.doc_id, fraction) == want_validation:
            yield item


def split_items(corpus: dict, split: str, source: str | None = None, load: Callable = None) -> Iterator[Item]:
    """Every document (or skip) of ``split`` from the source named in the ``corpus`` config section."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    source = source or corpus["name"]
    fraction = corpus["validation_fraction"]
    if source == "pydoc":
        return hash_split(pydoc_documents(), split, fraction)
    if source == "local":
        if not corpus["path"]:
            raise InputError("corpus.name is 'local' but corpus.path is not set")
        return hash_split(local_documents(corpus["path"], corpus["text_column"]), split, fraction)
    if source in HUB_CORPORA:
        items = hub_documents(source, split, load=load)
        if HUB_CORPORA[source].holdout == ("hash", None):
            items = hash_split(items, split, fraction)
        return items
    raise InputError(f"unknown corpus {source!r}; known: {['pydoc', 'local', *HUB_CORPORA]}")


# --------------------------------------------------------------------------------------------------------
# Writing shards


class RoundRobinShards:
    """N Parquet files written side by side: document k goes to shard k mod N.

    Each shard streams through a ``pyarrow.parquet.ParquetWriter`` to a temporary file beside its target;
    all N are renamed into place only when every document has been written (``common.io.atomic_path``),
    so a killed run leaves no shard that looks finished. Row groups are cut at fixed row and byte counts,
    so the same documents give the same bytes.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]):
        if len(set(map(str, paths))) != len(paths):
            raise InputError(f"the shard outputs are not distinct: {list(map(str, paths))}")
        self.paths = [Path(p) for p in paths]
        self.stack = contextlib.ExitStack()
        self.writers, self.buffers, self.buffer_bytes = [], [], []
        self.rows = [0] * len(self.paths)
        self.chars = [0] * len(self.paths)
        self.written = 0

    def __enter__(self):
        with contextlib.ExitStack() as stack:
            for path in self.paths:
                tmp = stack.enter_context(atomic_path(path))
                self.writers.append(
                    stack.enter_context(
                        pq.ParquetWriter(tmp, SCHEMA, compression="zstd", write_statistics=False, store_schema=True)
                    )
                )
                self.buffers.append([])
                self.buffer_bytes.append(0)
            self.stack = stack.pop_all()
        return self

    def add(self, doc: Document) -> None:
        shard = self.written % len(self.paths)
        self.buffers[shard].append(doc)
        self.buffer_bytes[shard] += len(doc.text)
        self.rows[shard] += 1
        self.chars[shard] += len(doc.text)
        self.written += 1
        if len(self.buffers[shard]) >= ROWS_PER_ROW_GROUP or self.buffer_bytes[shard] >= BYTES_PER_ROW_GROUP:
            self.flush(shard)

    def flush(self, shard: int) -> None:
        docs = self.buffers[shard]
        if docs:
            table = pa.table({"doc_id": [d.doc_id for d in docs], "text": [d.text for d in docs]}, schema=SCHEMA)
            self.writers[shard].write_table(table)
        self.buffers[shard], self.buffer_bytes[shard] = [], 0

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                for shard in range(len(self.paths)):
                    self.flush(shard)
            except BaseException:
                if not self.stack.__exit__(*sys.exc_info()):
                    raise
                return False
        # Each writer closes (inner context) before its temporary file is renamed (outer context).
        return self.stack.__exit__(exc_type, exc, tb)


def write_split(
    items: Iterable[Item],
    outs: Sequence[str | os.PathLike],
    stats_path: str | os.PathLike,
    max_docs: int | None = None,
    describe: dict | None = None,
    progress: bool = True,
) -> dict:
    """Write the documents of ``items`` round-robin into ``outs`` and their accounting into ``stats_path``.

    Stops after ``max_docs`` documents written. Returns the stats, which satisfy
    documents_read == documents_written + sum(skipped.values()).
    """
    read, skipped, examples = 0, {}, {}
    with RoundRobinShards(outs) as shards:
        bar = tqdm(desc=f"corpus -> {Path(outs[0]).parent}", unit="doc", disable=not progress, file=sys.stderr)
        for item in items:
            if max_docs is not None and shards.written >= max_docs:
                break
            read += 1
            bar.update()
            if isinstance(item, Skipped):
                skipped[item.reason] = skipped.get(item.reason, 0) + 1
                named = examples.setdefault(item.reason, [])
                if len(named) < EXAMPLES_PER_REASON:
                    named.append(f"{item.doc_id} {item.detail}".strip())
            else:
                shards.add(item)
        bar.close()
    stats = {
        **(describe or {}),
        "shards": len(outs),
        "documents_read": read,
        "documents_written": shards.written,
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": dict(sorted(examples.items())),
        "chars_written": sum(shards.chars),
        "documents_per_shard": shards.rows,
        "chars_per_shard": shards.chars,
    }
    assert read == shards.written + sum(skipped.values())
    write_json(stats, stats_path)
    return stats


def source_for(corpus: dict, split: str) -> str:
    """The source a split is read from: ``corpus.validation_source`` for validation where set (the paper
    trains on openwebtext and validates on wikitext103), else ``corpus.name``."""
    if split == "validation" and corpus["validation_source"]:
        return corpus["validation_source"]
    return corpus["name"]


def build(
    corpus: dict,
    split: str,
    outs: Sequence[str],
    stats_path: str | None = None,
    source: str | None = None,
    load: Callable = None,
    progress: bool = True,
) -> dict:
    """Read ``split`` of the configured source and write its shards and stats.json (default: beside shard 0)."""
    if not outs:
        raise InputError("no output shards given")
    stats_path = stats_path or Path(outs[0]).parent / "stats.json"
    source = source or source_for(corpus, split)
    describe = {
        "corpus": source,
        "split": split,
        "validation_fraction": corpus["validation_fraction"],
        "max_docs": corpus["max_docs"],
    }
    if source == "local":
        describe["path"] = str(corpus["path"])
        if corpus["path"]:
            read, ignored = local_files(Path(corpus["path"]))
            describe["files_read"] = len(read)
            describe["files_ignored"] = [str(p) for p in ignored]
    items = split_items(corpus, split, source=source, load=load)
    return write_split(items, outs, stats_path, max_docs=corpus["max_docs"], describe=describe, progress=progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline config (read with common.config.load_config)")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, nargs="+", help="the shard files; their count is the shard count")
    parser.add_argument("--stats", help="stats JSON (default: stats.json beside the first shard)")
    parser.add_argument("--source", help="read this source instead of the configured one")
    args = parser.parse_args(argv)
    try:
        stats = build(load_config(args.config)["corpus"], args.split, args.out, args.stats, args.source)
    except (ConfigError, InputError) as err:
        parser.exit(2, f"preprocess.corpus: error: {err}\n")
    print(
        f"{stats['corpus']}/{args.split}: {stats['documents_written']} of {stats['documents_read']} documents "
        f"into {stats['shards']} shards, skipped {stats['skipped'] or 'none'}"
    )


if __name__ == "__main__":
    main()
