"""The records both conversation builders read (preprocess/sft.py: SFT conversations, preprocess/preference.py:
DPO pairs): where they come from, the checks they share, and how a shard of them is written with every skip
counted.

Sources (the config key that names one, ``sft.source`` or ``dpo.source``, is the ``setting`` the errors name):
- ``task:<name>``: a procedural task, built by the builder itself (``source_kind`` only recognises it).
- a local file or folder (searched recursively, sorted, dot files left out): ``.jsonl`` (one JSON object a line,
  each decoded and parsed on its own), ``.json`` (one JSON array of objects), ``.parquet`` (rows, read in
  batches). Record ids: the record's own ``id`` field when it has one (a non-blank string or an integer), else
  ``{relative path}:{line | index | row}`` (the file's name for a source that is one file). Split by id:
  validation = records with u(id) < validation_fraction, u = ``preprocess.corpus.in_validation``'s hash, so the
  split is stable when records are added; a line that cannot be read is split by its fallback id, so each is
  counted in exactly one split's stats.
- anything else names a Hugging Face dataset (``datasets.load_dataset``): its ``train`` split for train, its first
  of ``validation`` / ``valid`` / ``val`` / ``test`` for validation, else a hash split of train as for local
  files. Ids: the record's ``id`` or ``{hub split}/{row}``.
A name that looks like a path (starts with / . ~, has a local suffix or a backslash) but does not exist is an
error, not a hub lookup; so are a missing path, an unsupported file type, a folder without record files, a .json
file that is not one JSON array and an unreadable Parquet file, each naming the file.

Skip reasons found here: ``invalid_utf8`` (a .jsonl line that does not decode), ``invalid_json`` (a line that does
not parse); of a message text (``content_problem``): ``empty_content`` (null, empty or whitespace-only),
``wrong_type`` (not a string), ``binary`` (NUL or many control characters, ``preprocess.corpus.text_problem``); of
a message list (``message_list``): a message that is not an object or whose role is not a string (``wrong_type``),
a role outside ``common.chat.ROLES`` (``unknown_role``), a bad content; ``leading_assistant_turn``
(``leading_assistant_problem``: a conversation that starts with an assistant turn the chat template cannot render
after an empty context). ``SkipLog`` counts every skip by reason with up to EXAMPLES_PER_REASON examples naming
the record; ``write_records`` returns (records read, rows written), so a builder's stats satisfy
records_read = records_written + sum(skipped).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.chat import ROLES, render, render_empty_context
from common.io import InputError
from preprocess.corpus import in_validation, text_problem

SPLITS = ("train", "validation")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
ROWS_PER_BATCH = 512  # records encoded, and rows written as one row group, at a time
EXAMPLES_PER_REASON = 5  # skipped records named in the stats, per reason
HUB_VALIDATION_SPLITS = ("validation", "valid", "val", "test")


@dataclass(frozen=True)
class Skipped:
    """A record left out, with the reason (module docstring) and a detail naming where it is."""

    record_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Raw:
    """A record as read, before the shape checks: ``obj`` is the parsed JSON value / Parquet row."""

    record_id: str
    obj: object
    where: str


# --------------------------------------------------------------------------------------------------------
# Message checks


def content_problem(content) -> tuple[str, str] | None:
    """(reason, detail) when ``content`` cannot be a message's text."""
    if content is None:
        return "empty_content", "null"
    if not isinstance(content, str):
        return "wrong_type", f"a {type(content).__name__}, expected a string"
    reason = text_problem(content)
    if reason is not None:
        return ("empty_content" if reason == "empty" else reason), ""
    return None


def message_list(value: list, field: str) -> tuple[list | None, str, str]:
    """(messages, "", "") from a list of {role, content} read from record field ``field``, or (None, reason, detail)
    for the first message that is not an object, has a role outside ROLES or a bad content (content_problem)."""
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            return None, "wrong_type", f"{field}[{i}] is a {type(message).__name__}, expected an object"
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            return None, "wrong_type", f"{field}[{i}].role is a {type(role).__name__}, expected a string"
        if role not in ROLES:
            return None, "unknown_role", f"{field}[{i}].role is {role!r}, expected one of {list(ROLES)}"
        problem = content_problem(content)
        if problem:
            return None, problem[0], f"{field}[{i}].content ({role}) {problem[1]}".rstrip()
        out.append({"role": role, "content": content})
    return out, "", ""


def record_id(obj, fallback: str) -> str:
    """The record's own ``id`` (a non-blank string or an integer, as a string), else ``fallback``."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and rid.strip() or (isinstance(rid, int) and not isinstance(rid, bool)):
            return str(rid)
    return fallback


# --------------------------------------------------------------------------------------------------------
# Checks against the tokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer folder written by preprocess.tokenizer (a fast tokenizer: offsets are needed)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def special_texts(tokenizer) -> list[str]:
    """Texts of the tokenizer's special / added tokens that would tokenize as one token if found in content,
    longest first."""
    texts = set(tokenizer.all_special_tokens)
    texts |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    return sorted((t for t in texts if t), key=len, reverse=True)


def leading_assistant_problem(tokenizer, messages: list) -> str | None:
    """None when common.chat.encode_conversation can encode ``messages``: it does not start with an assistant
    turn, or the chat template renders that turn after an empty context (render_empty_context(add_generation_prompt
    =True) succeeds and is a prefix of render(messages), so the turn's span starts where the empty context ends).
    Else why not: the caller skips the record as ``leading_assistant_turn``. A template that refuses the whole
    conversation raises jinja2.TemplateError from render(messages), as for any conversation (``template_error``)."""
    import jinja2

    if not messages or messages[0]["role"] != "assistant":
        return None
    try:
        before = render_empty_context(tokenizer, add_generation_prompt=True)
    except jinja2.TemplateError as err:
        return (
            f"the conversation starts with an assistant turn, and the chat template cannot render the empty "
            f"context before it ({type(err).__name__}: {err})"
        )
    full = render(tokenizer, messages)
    if not full.startswith(before):
        return (
            f"the conversation starts with an assistant turn, and the chat template's render of an empty "
            f"context {before[:40]!r} does not start the conversation's render {full[:40]!r}"
        )
    return None


# --------------------------------------------------------------------------------------------------------
# Local files


def jsonl_records(path: Path, name: str) -> Iterator[Raw | Skipped]:
    """One record per non-blank line, decoded and parsed on its own (a bad line costs only itself)."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fallback, where = f"{name}:{lineno}", f"{path} line {lineno}"
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield Skipped(fallback, "invalid_utf8", f"{where}: {err.reason} at byte {err.start}")
                continue
            except json.JSONDecodeError as err:
                yield Skipped(fallback, "invalid_json", f"{where}: {err.msg} (column {err.colno})")
                continue
            yield Raw(record_id(obj, fallback), obj, where)


def json_records(path: Path, name: str) -> Iterator[Raw | Skipped]:
    """The elements of one JSON array (a file that is not one is an error naming it)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path}: not a JSON file ({err}); expected a JSON array of records (use .jsonl for one record a line)"
        ) from err
    if not isinstance(data, list):
        raise InputError(f"{path}: a JSON {type(data).__name__}, expected a JSON array of records")
    for index, obj in enumerate(data):
        yield Raw(record_id(obj, f"{name}:{index}"), obj, f"{path} index {index}")


def parquet_records(path: Path, name: str) -> Iterator[Raw | Skipped]:
    """One record per row (a dict of the row's columns), read in batches."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err
    row = 0
    batches = parquet.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: corrupt Parquet data, {row} rows read before it ({err})") from err
        for obj in batch.to_pylist():
            yield Raw(record_id(obj, f"{name}:{row}"), obj, f"{path} row {row}")
            row += 1


def local_records(path: str | Path, setting: str) -> Iterator[Raw | Skipped]:
    """Every record under ``path`` (a file, or a folder's .jsonl / .json / .parquet files in sorted order);
    ``setting`` is the config key that named it (for the errors)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {setting} does not exist")
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise InputError(f"{path}: unsupported {setting} file type {path.suffix!r}; expected {LOCAL_SUFFIXES}")
        files = [path]
    else:
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise InputError(f"{path}: no {', '.join(LOCAL_SUFFIXES)} files in this folder")
    readers = {".jsonl": jsonl_records, ".json": json_records, ".parquet": parquet_records}
    for file in files:
        name = file.name if path.is_file() else file.relative_to(path).as_posix()
        yield from readers[file.suffix](file, name)


# --------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def hub_records(name: str, split: str, fraction: float, setting: str, load: Callable = None) -> Iterator[Raw | Skipped]:
    """Records of hub dataset ``name`` for our ``split`` (see the module docstring for which hub split).

    ``load`` is ``datasets.load_dataset`` (called as ``load(name)``, returning a dict of splits)."""
    if load is None:
        import datasets

        load = datasets.load_dataset
    try:
        splits = load(name)
    except Exception as err:  # datasets raises many kinds (not found, offline, gated): name the source either way
        raise InputError(
            f"{name}: {setting} is not a local path, and loading it as a Hugging Face dataset "
            f"failed ({type(err).__name__}: {err})"
        ) from err
    have = list(splits.keys())
    if "train" not in splits:
        raise InputError(f"hub dataset {name}: no 'train' split; it has {have}")
    held = next((s for s in HUB_VALIDATION_SPLITS if s in splits), None)
    hub_split = "train" if split == "train" or held is None else held
    dataset = splits[hub_split]
    for row, obj in enumerate(dataset):
        rid = record_id(obj, f"{hub_split}/{row}")
        if held is None and in_validation(rid, fraction) != (split == "validation"):
            continue
        yield Raw(rid, obj, f"hub dataset {name} ({hub_split}) row {row}")


# --------------------------------------------------------------------------------------------------------
# One split of one source


def source_kind(source: str, setting: str) -> str:
    """``task``, ``local`` (an existing path) or ``hub``; a name that looks like a path but does not exist is an
    error (naming the config key ``setting``) rather than a hub lookup."""
    if source.startswith("task:"):
        return "task"
    path = Path(source).expanduser()
    if path.exists():
        return "local"
    if source.startswith(("/", ".", "~")) or path.suffix in LOCAL_SUFFIXES or "\\" in source:
        raise InputError(
            f"{source}: {setting} does not exist (expected task:reverse, a local "
            f"{'/'.join(LOCAL_SUFFIXES)} file or folder, or a Hugging Face dataset id)"
        )
    return "hub"


def split_records(
    source: str, split: str, fraction: float, setting: str, load: Callable = None
) -> Iterator[Raw | Skipped]:
    """The records (and read skips) of ``split`` from a local or hub ``source`` (module docstring: local records
    and unreadable lines split by id, hub records by the dataset's own splits or by id)."""
    kind = source_kind(source, setting)
    if kind == "task":
        raise ValueError(f"{source}: {setting} names a task, which has no records to read; the builder makes them")
    if kind == "hub":
        yield from hub_records(source, split, fraction, setting, load=load)
        return
    for r in local_records(Path(source).expanduser(), setting):
        # Bad lines are split by their id too, so each is counted in exactly one split's stats.
        if in_validation(r.record_id, fraction) == (split == "validation"):
            yield r


# --------------------------------------------------------------------------------------------------------
# Writing a shard


class SkipLog:
    """Records skipped by reason, with up to EXAMPLES_PER_REASON examples each naming the record: called as
    skip(record_id, reason, detail); `counts` and `examples` go to a shard's stats."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def __call__(self, record_id: str, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        named = self.examples.setdefault(reason, [])
        if len(named) < EXAMPLES_PER_REASON:
            named.append(f"{record_id} {detail}".strip())

    def stats(self) -> dict:
        return {"skipped": dict(sorted(self.counts.items())), "skipped_examples": dict(sorted(self.examples.items()))}


def write_records(
    items: Iterable, rows_of: Callable[[list], list[dict]], schema: pa.Schema, path: Path, skip: SkipLog, bar
) -> tuple[int, int]:
    """Write the rows of `items` to the Parquet file `path` (the caller's temporary name), ROWS_PER_BATCH records
    encoded, and written as one row group, at a time: a Skipped item goes to `skip`, the others through
    `rows_of(batch)` (which may skip some too). Returns (records read, rows written)."""
    read = written = 0
    writer = pq.ParquetWriter(path, schema, compression="zstd", write_statistics=False, store_schema=True)
    try:
        batch: list = []

        def flush() -> None:
            nonlocal written
            rows = rows_of(batch)
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                written += len(rows)
            batch.clear()

        for item in items:
            read += 1
            bar.update()
            if isinstance(item, Skipped):
                skip(item.record_id, item.reason, item.detail)
                continue
            batch.append(item)
            if len(batch) >= ROWS_PER_BATCH:
                flush()
        flush()
    finally:
        writer.close()
    return read, written
