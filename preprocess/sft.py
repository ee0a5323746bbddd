"""Supervised fine-tuning (SFT) data: conversations -> one Parquet shard of fixed-length rows whose answers are
the only masked tokens (LLaDA-style; the masking rules are in common/chat.py).

    python -m preprocess.sft --config config.yaml --split train --tokenizer data/pydoc/tokenizer-<tag> \
        --out data/sft/reverse/train.parquet [--stats FILE]

Settings: the config's ``sft`` section (defaults in schemas/config.schema.yaml), every key present:
``source``, ``format`` (auto | messages | alpaca), ``length`` (L, tokens per row), ``validation_fraction``,
``n_train``, ``n_validation``, ``seed``.

Sources (``sft.source``; files and hub datasets read by preprocess/records.py):
- ``task:reverse``: an offline procedural task with a checkable answer, "Reverse the words: a b c" -> "c b a".
  Words come from Python's own identifiers (``keyword.kwlist`` + names of ``builtins``, the lowercase ASCII
  alphabetic ones, without the names ``site`` adds: so ``python -S`` gives the same list); 2-5 distinct words
  per list; 1-3 turns per conversation, each user turn asking for a new list and each assistant turn answering
  it, so multi-turn targets are exercised. Record i of a split is a pure function of (seed, split, i);
  ``n_train`` / ``n_validation`` records. Held-out split: a word list w belongs to validation iff
  u("reverse|" + " ".join(w)) < validation_fraction (u = ``preprocess.corpus.in_validation``'s hash), and every
  list of a record is drawn (by rejection) from its split's side, so no validation word list equals a train word
  list, whatever the seed. ``common.tasks.check_answer`` / ``reference_answer`` score generated answers.
- a local file or folder (searched recursively, sorted): ``.jsonl`` (one JSON object a line), ``.json`` (one
  JSON array of objects, as Alpaca's ``alpaca_data.json``), ``.parquet`` (rows). Record ids: the record's own
  ``id`` field when it has one (a string or an integer), else ``{relative path}:{line | index | row}``.
  Validation = records with u(id) < validation_fraction (hash split, stable when records are added).
- anything else names a Hugging Face dataset (``datasets.load_dataset``, needs the network or a filled cache):
  its ``train`` split for train, its ``validation`` / ``valid`` / ``val`` / ``test`` split (first found) for
  validation, else a hash split of train as for local files. Ids: the record's ``id`` or ``{hub split}/{row}``.

Record shapes (``sft.format``; ``auto`` decides per record: ``messages`` when it has that field, ``alpaca`` when it
has ``instruction`` and ``output``):
- ``messages``: a list of {role, content}, roles system | user | assistant, any number of turns. Trailing
  non-assistant turns are dropped (the last message must be an answer) and counted
  (``trailing_turns_dropped``).
- ``alpaca``: ``instruction``, optional ``input``, ``output`` -> user = instruction + "\\n\\n" + input (input
  non-empty) else instruction; assistant = output.

Rows (docs/contracts.md): ``conversation_id: string``, ``ids: list<int32>[L]``, ``answer_mask: list<int32>[L]``
(1 = answer token: masked in training, carries the loss), ``n_answer: int32`` (= sum(answer_mask)),
``truncated: bool``, ``prompt: string`` (JSON list of the messages before the final assistant turn: the
generation prompt), ``reference: string`` (the final assistant answer).

Bad records never disappear silently: records_read = records_written + sum(skipped), with up to 5 examples per
reason naming the file and line, index or row, in the stats JSON. Reasons: ``invalid_utf8`` (a .jsonl line that
does not decode), ``invalid_json`` (a line that does not parse), ``not_object`` (valid JSON but not an object),
``unknown_shape`` (auto: neither ``messages`` nor ``instruction`` + ``output``), ``no_messages_field`` /
``no_alpaca_fields`` (the format is forced and the fields are missing), ``wrong_type`` (messages not a list, a
message not an object, a role / content / instruction / input / output that is not a string), ``unknown_role``,
``empty_content`` (empty or whitespace-only content, null), ``binary`` (content with NUL or many control
characters), ``no_assistant_turn``, ``no_prompt`` (the final assistant turn is the first message: a lone greeting
gives the evaluation no prompt to answer, eval/sft.py), ``special_token_in_content`` (content holding the text of
one of the tokenizer's special tokens, which would tokenize as that token), ``leading_assistant_turn`` (the
conversation starts with an assistant turn and the chat template cannot render it after an empty context, see
below), ``template_error`` (the chat template itself refuses the conversation, e.g. roles that do not alternate),
``no_answer_within_length`` (the prompt alone fills the L tokens). A template without the prefix property
(common/chat.assistant_spans) stops the run with an error naming the record. A split that yields no row is an error
naming the output file; it writes nothing.

A conversation may start with an assistant turn (a greeting before the first question). That turn is trained like
any other, with an empty context: by common/chat.py's span formula with i = 0 its answer starts at
len(render([], add_generation_prompt=True)), the template rendered on no messages (transformers' apply_chat_template
refuses an empty conversation, so ``common.chat.render_empty_context`` renders the template itself, with the same
renderer and variables). Where the template cannot do that (the empty render raises, e.g. a template that reads
messages[0], or it is not a prefix of the conversation's render) the record is skipped as ``leading_assistant_turn``.
"""

from __future__ import annotations

import argparse
import builtins
import json
import keyword
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from common.chat import encode_conversation
from common.config import ConfigError, load_config
from common.io import InputError, atomic_path, write_json
from common.io import stats_path as default_stats_path
from common.tasks import REVERSE_PROMPT
from preprocess.corpus import in_validation
from preprocess.records import (
    SPLITS,
    Raw,
    SkipLog,
    Skipped,
    content_problem,
    leading_assistant_problem,
    load_tokenizer,
    message_list,
    source_kind,
    special_texts,
    split_records,
    write_records,
)

SETTING = "sft.source"  # the config key named in source errors
FORMATS = ("auto", "messages", "alpaca")
SFT_SCHEMA = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("answer_mask", pa.list_(pa.int32())),
        ("n_answer", pa.int32()),
        ("truncated", pa.bool_()),
        ("prompt", pa.string()),
        ("reference", pa.string()),
    ]
)


@dataclass(frozen=True)
class Conversation:
    """A record that passed the checks: ``messages`` ends with an assistant turn."""

    conversation_id: str
    messages: list


Item = Conversation | Skipped


# --------------------------------------------------------------------------------------------------------
# Record shapes -> messages


def _messages_of(obj: dict) -> tuple[list | None, str, str]:
    """(messages, "", "") from a ``messages`` record, or (None, reason, detail)."""
    messages = obj["messages"]
    if not isinstance(messages, list):
        return None, "wrong_type", f"field 'messages' is a {type(messages).__name__}, expected a list"
    return message_list(messages, "messages")


def _alpaca_of(obj: dict) -> tuple[list | None, str, str]:
    """(messages, "", "") from an Alpaca record: user = instruction [+ "\\n\\n" + input], assistant = output."""
    for key in ("instruction", "output"):
        problem = content_problem(obj[key])
        if problem:
            return None, problem[0], f"field {key!r} {problem[1]}".rstrip()
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        return None, "wrong_type", f"field 'input' is a {type(extra).__name__}, expected a string"
    user = obj["instruction"] + ("\n\n" + extra if extra and extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}], "", ""


def to_conversation(raw: Raw, fmt: str, counts: Counter) -> Item:
    """A checked Conversation from a raw record, or a Skipped with the reason; trailing non-assistant turns are
    dropped and counted in ``counts["trailing_turns_dropped"]``."""
    obj, rid, where = raw.obj, raw.record_id, raw.where
    if not isinstance(obj, dict):
        return Skipped(rid, "not_object", f"{where}: a {type(obj).__name__}, expected a JSON object")
    has_messages = "messages" in obj
    has_alpaca = "instruction" in obj and "output" in obj
    shape = fmt
    if fmt == "auto":
        shape = "messages" if has_messages else "alpaca" if has_alpaca else None
        if shape is None:
            return Skipped(
                rid,
                "unknown_shape",
                f"{where}: neither 'messages' nor 'instruction' + 'output'; it has {sorted(map(str, obj))}",
            )
    elif fmt == "messages" and not has_messages:
        return Skipped(rid, "no_messages_field", f"{where}: no field 'messages'; it has {sorted(map(str, obj))}")
    elif fmt == "alpaca" and not has_alpaca:
        return Skipped(
            rid, "no_alpaca_fields", f"{where}: expected 'instruction' and 'output'; it has {sorted(map(str, obj))}"
        )
    messages, reason, detail = (_messages_of if shape == "messages" else _alpaca_of)(obj)
    if messages is None:
        return Skipped(rid, reason, f"{where}: {detail}")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return Skipped(rid, "no_assistant_turn", f"{where}: roles {[m['role'] for m in messages]}")
    if last == 0:
        return Skipped(
            rid,
            "no_prompt",
            f"{where}: the only assistant turn is the first message (roles "
            f"{[m['role'] for m in messages]}); expected a message before the answer "
            f"to prompt it with",
        )
    counts["trailing_turns_dropped"] += len(messages) - last - 1
    return Conversation(rid, messages[: last + 1])


# --------------------------------------------------------------------------------------------------------
# The procedural task: reverse the words


# Names ``site`` puts into builtins (absent under ``python -S``): left out so the word list does not depend on it.
_SITE_BUILTINS = {"copyright", "credits", "exit", "quit", "help", "license"}
REVERSE_WORDS = tuple(
    sorted(
        {
            w
            for w in [*keyword.kwlist, *dir(builtins)]
            if w.isascii() and w.isalpha() and w.islower() and w not in _SITE_BUILTINS
        }
    )
)
MAX_DRAWS = 10_000


def reverse_side(words: Iterable[str], fraction: float) -> str:
    """The split a word list belongs to: validation iff u("reverse|" + " ".join(words)) < fraction."""
    return "validation" if in_validation("reverse|" + " ".join(words), fraction) else "train"


def reverse_record(seed: int, split: str, index: int, fraction: float) -> Conversation:
    """Record ``index`` of ``split``: 1-3 turns, each a new list of 2-5 distinct words from REVERSE_WORDS drawn
    (by rejection) from the split's side, answered by the list reversed. A pure function of its arguments."""
    if not 0 < fraction < 1:
        raise InputError(
            f"sft.validation_fraction must be in (0, 1) for task:reverse (it splits the word lists "
            f"between train and validation), got {fraction}"
        )
    rng = random.Random(f"reverse:{seed}:{split}:{index}")
    messages = []
    for _ in range(rng.randint(1, 3)):
        for _ in range(MAX_DRAWS):
            words = rng.sample(REVERSE_WORDS, rng.randint(2, 5))
            if reverse_side(words, fraction) == split:
                break
        else:
            raise InputError(
                f"task:reverse: no {split} word list in {MAX_DRAWS} draws (validation_fraction "
                f"{fraction}); use a fraction further from 0 and 1"
            )
        messages.append({"role": "user", "content": REVERSE_PROMPT + " ".join(words)})
        messages.append({"role": "assistant", "content": " ".join(reversed(words))})
    return Conversation(f"reverse/{split}/{index}", messages)


TASKS = {"reverse": reverse_record}


def task_items(name: str, sft: dict, split: str) -> Iterator[Item]:
    if name not in TASKS:
        raise InputError(f"unknown sft task {'task:' + name!r}; known: {['task:' + t for t in TASKS]}")
    count = sft["n_train"] if split == "train" else sft["n_validation"]
    for index in range(count):
        yield TASKS[name](sft["seed"], split, index, sft["validation_fraction"])


# --------------------------------------------------------------------------------------------------------
# One split of one source


def iter_split(sft: dict, split: str, counts: Counter, load: Callable = None) -> Iterator[Item]:
    """Every conversation (or skip) of ``split`` from ``sft.source``; trailing turns dropped go into ``counts``."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    if sft["format"] not in FORMATS:
        raise InputError(f"sft.format is {sft['format']!r}; expected one of {FORMATS}")
    source = str(sft["source"])
    if source_kind(source, SETTING) == "task":
        yield from task_items(source.removeprefix("task:"), sft, split)
        return
    for raw in split_records(source, split, sft["validation_fraction"], SETTING, load=load):
        yield raw if isinstance(raw, Skipped) else to_conversation(raw, sft["format"], counts)


def build(
    sft: dict,
    tokenizer,
    split: str,
    out_path: str | Path,
    stats_path: str | Path | None = None,
    load: Callable = None,
    progress: bool = True,
) -> dict:
    """Write the SFT shard of ``split`` (Parquet, SFT_SCHEMA, atomically, one row group per batch) and its stats
    JSON (default: ``<shard>.stats.json`` beside it). Returns the stats.

    ``sft`` is the filled ``sft`` config section; ``load`` replaces ``datasets.load_dataset`` (tests).
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    stats_path = Path(stats_path) if stats_path else default_stats_path(out_path)
    length = int(sft["length"])
    if length < 2:
        raise InputError(f"sft.length must be at least 2, got {length}")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"preprocess.sft needs a fast tokenizer (offsets mapping); got {type(tokenizer).__name__}")
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no eos_token; SFT rows end answers and fill with it")
    specials = special_texts(tokenizer)
    counts, skip = Counter(), SkipLog()

    def rows_of(batch: list[Conversation]) -> list[dict]:
        import jinja2

        rows = []
        for conv in batch:
            found = next((s for m in conv.messages for s in specials if s in m["content"]), None)
            if found is not None:
                skip(conv.conversation_id, "special_token_in_content", f"content holds {found!r}")
                continue
            try:
                problem = leading_assistant_problem(tokenizer, conv.messages)
                if problem is not None:
                    skip(conv.conversation_id, "leading_assistant_turn", problem)
                    continue
                enc = encode_conversation(tokenizer, conv.messages, length)
            except jinja2.TemplateError as err:
                skip(conv.conversation_id, "template_error", str(err))
                continue
            except ValueError as err:
                raise InputError(f"{sft['source']} record {conv.conversation_id}: {err}") from err
            if enc.n_answer == 0:
                skip(
                    conv.conversation_id,
                    "no_answer_within_length",
                    f"the prompt fills all {length} tokens (sft.length)",
                )
                continue
            counts["truncated"] += enc.truncated
            counts["filled_tokens"] += enc.filled
            counts["answer_tokens"] += enc.n_answer
            counts["assistant_turns"] += sum(m["role"] == "assistant" for m in conv.messages)
            rows.append(
                {
                    "conversation_id": conv.conversation_id,
                    "ids": enc.ids,
                    "answer_mask": enc.answer_mask,
                    "n_answer": enc.n_answer,
                    "truncated": enc.truncated,
                    "prompt": json.dumps(conv.messages[:-1], ensure_ascii=False),
                    "reference": conv.messages[-1]["content"],
                }
            )
        return rows

    with atomic_path(out_path) as tmp:
        total = None
        if source_kind(str(sft["source"]), SETTING) == "task":
            total = sft["n_train"] if split == "train" else sft["n_validation"]
        with tqdm(
            total=total, desc=f"sft {split} -> {out_path.name}", unit="conv", disable=not progress, file=sys.stderr
        ) as bar:
            read, written = write_records(
                iter_split(sft, split, counts, load=load), rows_of, SFT_SCHEMA, tmp, skip, bar
            )
        if written == 0:
            raise InputError(
                f"{out_path}: no SFT row for split {split!r} from {sft['source']}: {read} records read, skipped "
                f"{skip.stats()['skipped'] or 'none'}; expected at least one conversation with an answer "
                f"token within sft.length = {length}"
            )
    stats = {
        "source": str(sft["source"]),
        "split": split,
        "format": sft["format"],
        "length": length,
        "records_read": read,
        "records_written": written,
        **skip.stats(),
        "trailing_turns_dropped": counts["trailing_turns_dropped"],
        "truncated": counts["truncated"],
        "filled_tokens": counts["filled_tokens"],
        "answer_tokens": counts["answer_tokens"],
        "assistant_turns": counts["assistant_turns"],
        "tokens": written * length,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if source_kind(str(sft["source"]), SETTING) == "task":
        stats["task_words"] = len(REVERSE_WORDS)
    assert read == written + sum(skip.counts.values())
    write_json(stats, stats_path)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.sft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the pipeline config (read with common.config.load_config)")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--out", required=True, help="the SFT shard (Parquet)")
    parser.add_argument("--stats", help="stats JSON (default: <out>.stats.json beside the shard)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)  # the schema fills in every key of the sft section (and the section)
        stats = build(config["sft"], load_tokenizer(args.tokenizer), args.split, args.out, args.stats)
    except (ConfigError, InputError) as err:
        parser.exit(2, f"preprocess.sft: error: {err}\n")
    print(
        f"{args.out}: {stats['records_written']} of {stats['records_read']} conversations, "
        f"{stats['answer_tokens']} answer tokens, {stats['truncated']} truncated, "
        f"skipped {stats['skipped'] or 'none'}"
    )


if __name__ == "__main__":
    main()
