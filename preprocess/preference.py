"""Preference pairs for Diffusion-DPO: (prompt, chosen answer, rejected answer) records -> one Parquet shard of
two fixed-length canvases per pair, in which only the final answer (and the EOS fill after it) is masked.

    python -m preprocess.preference --config config.yaml --split train --tokenizer data/pydoc/tokenizer-<tag> \
        --out data/pydoc/preference-<tag>/64/train/shard_00000.parquet [--stats FILE]

Settings: the config's ``dpo`` section (defaults in schemas/config.schema.yaml): ``source``,
``validation_fraction``, ``n_train``, ``n_validation``, ``seed``; and the canvas length L = ``sft.length`` (there is
no dpo.length: DPO fine-tunes the SFT model, so pairs are scored on the canvas it was trained on).

Sources (``dpo.source``), read with preprocess/records.py's readers, as for SFT:
- ``task:reverse``: pair i of a split comes from ``preprocess.sft.reverse_record(dpo.seed, split, i,
  dpo.validation_fraction)``, so the held-out word lists are those of the SFT task: prompt = its messages before
  the last answer, chosen = the last answer (the correct reversal), rejected = a wrong answer made by a rule drawn
  per pair with ``random.Random(f"reject:{seed}:{split}:{i}")``:
      unreversed   the words in their original order
      dropped      the reversal with one word removed
      repeated     the reversal with one word written twice in place
      swapped      the reversal with two neighbouring words exchanged
  Lists hold 2-5 distinct words, so every rule gives a text other than the reversal (on two words ``swapped`` and
  ``unreversed`` coincide, and ``dropped`` leaves one word). ``n_train`` / ``n_validation`` pairs; the rule is kept
  in the ``rejection`` column and counted in the stats.
- a local ``.jsonl`` / ``.json`` / ``.parquet`` file or folder: record ids and the hash split by id with
  ``validation_fraction`` exactly as for SFT.
- anything else names a Hugging Face dataset (``datasets.load_dataset``), its splits chosen as for SFT.

Record shapes (TRL's preference formats; strings and message lists may be mixed within a record):
- standard: ``prompt`` a string (one user turn); ``chosen`` and ``rejected`` strings (one assistant turn each).
- conversational: ``prompt`` a list of {role, content} messages (roles system | user | assistant) ending with a
  user turn; ``chosen`` and ``rejected`` lists of messages ending with the assistant answer, usually that message
  alone (messages before it must be the same in both, and extend the prompt).
- implicit prompt: no ``prompt`` (or a null one, as in a Parquet column shared with explicit records); ``chosen``
  and ``rejected`` whole conversations that differ only in their last message: the prompt is everything before.

Rows (one row group per 512 pairs, zstd): ``pair_id: string``, ``chosen_ids``, ``chosen_mask``, ``rejected_ids``,
``rejected_mask``: ``list<int32>`` of exactly L, ``n_chosen`` / ``n_rejected: int32`` (sums of the masks),
``prompt: string`` (JSON list of the prompt messages), ``chosen`` / ``rejected: string`` (the answers' texts),
``rejection: string`` (the task's rule; "" for file and hub records). A canvas is the conversation prompt +
[assistant answer] through ``common.chat.encode_conversation(..., final_only=True)``: mask 1 on the final
answer's tokens (content + end-of-turn marker) and the EOS fill after it, 0 on everything else, earlier assistant
turns included (DPO scores the answer y given the context x; those turns are x). Both canvases of a pair start with
the same prompt text (the same tokens, for a tokenizer that does not merge across the answer's start).

Bad records never disappear silently: records_read = records_written + sum(skipped), with up to 5 examples per
reason naming the file and line, index or row, in the stats JSON. Reasons: ``invalid_utf8``, ``invalid_json``,
``not_object`` (as for SFT); ``missing_field`` (no ``chosen`` or ``rejected``, or no ``prompt`` while an answer is
a string); ``wrong_type`` (a field neither a string nor a list, a message not an object, a role or content that is
not a string); ``unknown_role``; ``empty_content`` (empty, whitespace-only or null text, an empty list);
``binary`` (NUL or many control characters); ``no_assistant_turn`` (an answer list whose last message is not an
assistant's); ``no_shared_prompt`` (chosen and rejected differ before their last message, or share nothing);
``prompt_not_ending_in_user`` (the prompt's last message is not a user turn); ``identical`` (chosen == rejected
after whitespace normalisation: no preference to learn); ``special_token_in_content`` (text holding one of the
tokenizer's special tokens); ``leading_assistant_turn`` (the prompt starts with an assistant turn, a greeting,
and the chat template cannot render it after an empty context: preprocess/sft.py's rule, checked by
``preprocess.records.leading_assistant_problem``; where it can, that turn is context like any earlier turn, mask
0); ``template_error`` (the chat template refuses the conversation); ``truncated`` (either canvas needs more than L
tokens: a cut answer would score a different text, so DPO needs whole answers). A split that yields no pair is an
error naming the output file; it writes nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from common.chat import Encoded, encode_conversation
from common.config import ConfigError, load_config
from common.io import InputError, atomic_path, write_json
from common.io import stats_path as default_stats_path
from common.tasks import normalise
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
from preprocess.sft import reverse_record

SETTING = "dpo.source"  # the config key named in source errors
PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("chosen_ids", pa.list_(pa.int32())),
        ("chosen_mask", pa.list_(pa.int32())),
        ("rejected_ids", pa.list_(pa.int32())),
        ("rejected_mask", pa.list_(pa.int32())),
        ("n_chosen", pa.int32()),
        ("n_rejected", pa.int32()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("rejection", pa.string()),
    ]
)
REJECTION_RULES = ("unreversed", "dropped", "repeated", "swapped")
ANSWERS = ("chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    """A record that passed the checks: ``prompt`` ends with a user turn; the answers are assistant texts."""

    pair_id: str
    prompt: list
    chosen: str
    rejected: str
    rejection: str = ""


Item = Pair | Skipped


# --------------------------------------------------------------------------------------------------------
# Record shapes -> a pair


def _field_messages(obj: dict, field: str, role: str) -> tuple[list | None, str, str]:
    """A field as a non-empty message list (a string is one ``role`` turn), or (None, reason, detail)."""
    value = obj[field]
    if value is None or isinstance(value, str):
        problem = content_problem(value)
        if problem:
            return None, problem[0], f"field {field!r} {problem[1]}".rstrip()
        return [{"role": role, "content": value}], "", ""
    if not isinstance(value, list):
        return (
            None,
            "wrong_type",
            (f"field {field!r} is a {type(value).__name__}, expected a string or a list of messages"),
        )
    if not value:
        return None, "empty_content", f"field {field!r} is an empty list"
    return message_list(value, field)


def to_pair(raw: Raw) -> Item:
    """A checked Pair from a raw record of any of the three shapes (module docstring), or a Skipped with the
    reason."""
    obj, rid, where = raw.obj, raw.record_id, raw.where
    if not isinstance(obj, dict):
        return Skipped(rid, "not_object", f"{where}: a {type(obj).__name__}, expected a JSON object")
    missing = [f for f in ANSWERS if f not in obj]
    if missing:
        return Skipped(
            rid, "missing_field", f"{where}: no field {' or '.join(map(repr, missing))}; it has {sorted(map(str, obj))}"
        )
    explicit = obj.get("prompt") is not None
    if not explicit and any(isinstance(obj[f], str) for f in ANSWERS):
        return Skipped(
            rid,
            "missing_field",
            f"{where}: no field 'prompt', and the answers are strings (the "
            f"implicit-prompt form needs two conversations)",
        )
    prompt = []
    if explicit:
        prompt, reason, detail = _field_messages(obj, "prompt", "user")
        if prompt is None:
            return Skipped(rid, reason, f"{where}: {detail}")
    answers = {}
    for field in ANSWERS:
        messages, reason, detail = _field_messages(obj, field, "assistant")
        if messages is None:
            return Skipped(rid, reason, f"{where}: {detail}")
        if messages[-1]["role"] != "assistant":
            return Skipped(
                rid,
                "no_assistant_turn",
                f"{where}: the last message of {field!r} is a "
                f"{messages[-1]['role']} turn, expected the assistant answer",
            )
        answers[field] = messages
    chosen, rejected = answers["chosen"], answers["rejected"]
    if chosen[:-1] != rejected[:-1]:
        at = next((k for k, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        return Skipped(
            rid,
            "no_shared_prompt",
            f"{where}: chosen and rejected differ at message {at}, before their "
            f"last ({len(chosen)} and {len(rejected)} messages); expected the "
            f"same context and different final answers",
        )
    prompt = prompt + chosen[:-1]
    if not prompt:
        return Skipped(
            rid,
            "no_shared_prompt",
            f"{where}: no prompt, and chosen and rejected share no message before their answers",
        )
    if prompt[-1]["role"] != "user":
        return Skipped(
            rid,
            "prompt_not_ending_in_user",
            f"{where}: the prompt's roles are {[m['role'] for m in prompt]}, expected a user turn last",
        )
    chosen_text, rejected_text = chosen[-1]["content"], rejected[-1]["content"]
    if normalise(chosen_text) == normalise(rejected_text):
        return Skipped(rid, "identical", f"{where}: chosen and rejected are the same text {chosen_text[:60]!r}")
    return Pair(rid, prompt, chosen_text, rejected_text)


# --------------------------------------------------------------------------------------------------------
# The procedural task: reverse the words, with a wrong answer


def wrong_reversal(answer: str, rule: str, rng: random.Random) -> str:
    """A wrong answer from the correct reversal ``answer`` (2+ distinct words) by ``rule`` (REJECTION_RULES);
    ``rng`` picks the word a rule touches."""
    words = answer.split()
    if len(words) < 2:
        raise ValueError(f"wrong_reversal: {answer!r} has {len(words)} word(s), expected at least 2")
    if rule == "unreversed":
        out = words[::-1]
    elif rule == "dropped":
        k = rng.randrange(len(words))
        out = words[:k] + words[k + 1 :]
    elif rule == "repeated":
        k = rng.randrange(len(words))
        out = words[: k + 1] + words[k:]
    elif rule == "swapped":
        k = rng.randrange(len(words) - 1)
        out = words[:k] + [words[k + 1], words[k]] + words[k + 2 :]
    else:
        raise ValueError(f"unknown rejection rule {rule!r}; expected one of {list(REJECTION_RULES)}")
    return " ".join(out)


def reverse_pair(seed: int, split: str, index: int, fraction: float) -> Pair:
    """Pair ``index`` of ``split``: the SFT task's record (same seed, split, index) with a wrong final answer.
    A pure function of its arguments."""
    conv = reverse_record(seed, split, index, fraction)
    chosen = conv.messages[-1]["content"]
    rng = random.Random(f"reject:{seed}:{split}:{index}")
    rule = rng.choice(REJECTION_RULES)
    rejected = wrong_reversal(chosen, rule, rng)
    # Distinct words make every rule change the text; a pair without a preference would be a silent bug.
    assert rejected != chosen, (conv.conversation_id, rule, chosen)
    return Pair(conv.conversation_id, conv.messages[:-1], chosen, rejected, rule)


TASKS = {"reverse": reverse_pair}


# --------------------------------------------------------------------------------------------------------
# One split of one source


def iter_split(dpo: dict, split: str, load: Callable = None) -> Iterator[Item]:
    """Every pair (or skip) of ``split`` from ``dpo.source``."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    source = str(dpo["source"])
    fraction = dpo["validation_fraction"]
    if source_kind(source, SETTING) == "task":
        name = source.removeprefix("task:")
        if name not in TASKS:
            raise InputError(f"unknown dpo task {source!r}; known: {['task:' + t for t in TASKS]}")
        if not 0 < fraction < 1:
            raise InputError(
                f"dpo.validation_fraction must be in (0, 1) for {source} (it splits the word lists "
                f"between train and validation), got {fraction}"
            )
        for index in range(dpo["n_train"] if split == "train" else dpo["n_validation"]):
            yield TASKS[name](dpo["seed"], split, index, fraction)
        return
    for raw in split_records(source, split, fraction, SETTING, load=load):
        yield raw if isinstance(raw, Skipped) else to_pair(raw)


def pair_canvases(tokenizer, prompt: list, chosen: str, rejected: str, length: int) -> tuple[Encoded, Encoded]:
    """The chosen and rejected canvases of ``length`` tokens: prompt + [assistant answer], only the final answer
    and its EOS fill masked (a prompt may start with an assistant turn, rendered after the empty context:
    common.chat.render)."""
    return tuple(
        encode_conversation(tokenizer, prompt + [{"role": "assistant", "content": answer}], length, final_only=True)
        for answer in (chosen, rejected)
    )


def build(
    dpo: dict,
    length: int,
    tokenizer,
    split: str,
    out_path: str | Path,
    stats_path: str | Path | None = None,
    load: Callable = None,
    progress: bool = True,
    items: Iterable[Item] | None = None,
    more_stats: Callable[[int], dict] | None = None,
) -> dict:
    """Write the preference shard of ``split`` (Parquet, PAIR_SCHEMA, atomically, one row group per batch) and its
    stats JSON (default: ``<shard>.stats.json`` beside it). Returns the stats.

    ``dpo`` is the filled ``dpo`` config section, ``length`` the canvas length (``sft.length``); ``load`` replaces
    ``datasets.load_dataset`` (tests). ``items`` replaces the source's pairs (iter_split) with other Pair / Skipped
    items, e.g. pairs of a model's own answers (eval/own_pairs.py), which pass the same checks; ``more_stats(pairs
    written)``, called once they are all read, adds its keys to the stats.
    """
    import jinja2

    t0 = time.perf_counter()
    out_path = Path(out_path)
    stats_path = Path(stats_path) if stats_path else default_stats_path(out_path)
    length = int(length)
    if length < 2:
        raise InputError(f"sft.length (the preference canvas) must be at least 2, got {length}")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"preprocess.preference needs a fast tokenizer (offsets mapping); got {type(tokenizer).__name__}"
        )
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no eos_token; preference canvases end answers and fill with it")
    source = str(dpo["source"])
    is_task = source_kind(source, SETTING) == "task"
    specials = special_texts(tokenizer)
    counts, rejections, skip = Counter(), Counter(), SkipLog()

    def rows_of(batch: list[Pair]) -> list[dict]:
        rows = []
        for pair in batch:
            texts = [m["content"] for m in pair.prompt] + [pair.chosen, pair.rejected]
            found = next((s for t in texts for s in specials if s in t), None)
            if found is not None:
                skip(pair.pair_id, "special_token_in_content", f"content holds {found!r}")
                continue
            try:
                problem = leading_assistant_problem(tokenizer, pair.prompt)
                if problem is not None:
                    skip(pair.pair_id, "leading_assistant_turn", problem)
                    continue
                chosen, rejected = pair_canvases(tokenizer, pair.prompt, pair.chosen, pair.rejected, length)
            except jinja2.TemplateError as err:
                skip(pair.pair_id, "template_error", str(err))
                continue
            except ValueError as err:
                raise InputError(f"{source} record {pair.pair_id}: {err}") from err
            cut = [name for name, enc in (("chosen", chosen), ("rejected", rejected)) if enc.truncated]
            if cut:
                skip(
                    pair.pair_id,
                    "truncated",
                    f"the {' and '.join(cut)} canvas needs more than {length} tokens (sft.length)",
                )
                continue
            counts["chosen_tokens"] += chosen.n_answer
            counts["rejected_tokens"] += rejected.n_answer
            if pair.rejection:
                rejections[pair.rejection] += 1
            rows.append(
                {
                    "pair_id": pair.pair_id,
                    "chosen_ids": chosen.ids,
                    "chosen_mask": chosen.answer_mask,
                    "rejected_ids": rejected.ids,
                    "rejected_mask": rejected.answer_mask,
                    "n_chosen": chosen.n_answer,
                    "n_rejected": rejected.n_answer,
                    "prompt": json.dumps(pair.prompt, ensure_ascii=False),
                    "chosen": pair.chosen,
                    "rejected": pair.rejected,
                    "rejection": pair.rejection,
                }
            )
        return rows

    with atomic_path(out_path) as tmp:
        total = (dpo["n_train"] if split == "train" else dpo["n_validation"]) if is_task and items is None else None
        with tqdm(
            total=total,
            desc=f"preference {split} -> {out_path.name}",
            unit="pair",
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            pairs = iter_split(dpo, split, load=load) if items is None else items
            read, written = write_records(pairs, rows_of, PAIR_SCHEMA, tmp, skip, bar)
        if written == 0:
            raise InputError(
                f"{out_path}: no preference pair for split {split!r} from {source}: {read} records read, skipped "
                f"{skip.stats()['skipped'] or 'none'}; expected at least one pair whose two canvases fit "
                f"sft.length = {length} tokens"
            )
    stats = {
        "source": source,
        "split": split,
        "length": length,
        "records_read": read,
        "records_written": written,
        **skip.stats(),
        "rejections": dict(sorted(rejections.items())),
        "chosen_tokens": counts["chosen_tokens"],
        "rejected_tokens": counts["rejected_tokens"],
        **(more_stats(written) if more_stats else {}),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    assert read == written + sum(skip.counts.values())
    write_json(stats, stats_path)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.preference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the pipeline config (read with common.config.load_config)")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--out", required=True, help="the preference shard (Parquet)")
    parser.add_argument("--stats", help="stats JSON (default: <out>.stats.json beside the shard)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)  # the schema fills in the dpo and sft sections with every key
        stats = build(
            config["dpo"], config["sft"]["length"], load_tokenizer(args.tokenizer), args.split, args.out, args.stats
        )
    except (ConfigError, InputError) as err:
        parser.exit(2, f"preprocess.preference: error: {err}\n")
    print(
        f"{args.out}: {stats['records_written']} of {stats['records_read']} pairs, {stats['chosen_tokens']} chosen "
        f"and {stats['rejected_tokens']} rejected answer tokens, skipped {stats['skipped'] or 'none'}"
    )


if __name__ == "__main__":
    main()
