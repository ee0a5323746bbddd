"""``python -m eval.generate --chat``: a dialogue on stdin answered turn by turn by prompted generation
(eval/generate.py), the dialogue kept (each answer goes back into the messages), each finished turn written to
the transcript at once (Transcript), the oldest turns dropped when the dialogue outgrows the backbone's positions
(fit_dialogue).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from eval.generate import backbone_note, fit_gen_length, generate, generate_options, output_record, show_callback
from eval.samplers import block_plan
from eval.views import write_record


class Transcript:
    """--chat --out: the dialogue as JSONL, one line per finished turn, written as the turn ends (one write of the
    whole line, flush, fsync), so an interrupted (Ctrl-C) or crashed chat keeps every turn it finished. The file
    is started empty (a new chat replaces an old transcript)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", encoding="utf-8")
        self.turns = 0

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        try:
            os.fsync(self.file.fileno())
        except OSError:  # not a regular file (/dev/stdout, a pipe): nothing to sync
            pass
        self.turns += 1

    def close(self) -> None:
        self.file.close()


def fit_dialogue(
    trained, messages: list[dict], gen_length: int, block_length: int | None, say: Callable[[str], None]
) -> tuple[list[int], int] | None:
    """--chat: the prompt ids of ``messages`` (system?, then user / assistant turns, ending with a user turn) and
    the turn's canvas length, fitted to a backbone of max_positions P: while len(prompt) + G > P and older turns
    are left, the oldest user turn and its answer are dropped from ``messages`` (in place: they stay dropped);
    when the last user turn alone still leaves no room for G, G is capped (fit_gen_length). None, with the
    reason said, when the turn leaves no room for an answer at all (the caller drops the turn)."""
    from common.chat import prompt_ids

    ids = prompt_ids(trained.tokenizer, messages)
    limit = trained.max_positions
    if limit is None or len(ids) + gen_length <= limit:
        return ids, gen_length
    first = 1 if messages[0].get("role") == "system" else 0
    before, dropped = len(ids), 0
    while len(ids) + gen_length > limit and len(messages) - first > 1:
        del messages[first : first + 2]  # the oldest user turn and the assistant's answer to it
        dropped += 1
        ids = prompt_ids(trained.tokenizer, messages)
    if dropped:
        say(
            f"eval.generate: the dialogue ({before} prompt tokens) + gen_length {gen_length} outgrows "
            f"{backbone_note(trained)}; dropped the oldest {dropped} turn(s), {len(ids)} prompt tokens left"
        )
    fitted = fit_gen_length(gen_length, len(ids), limit, block_length)
    if fitted < 1:
        say(
            f"eval.generate: this turn's prompt takes {len(ids)} of {backbone_note(trained)}: no room for an "
            f"answer; the turn is skipped (write a shorter one)"
        )
        return None
    if fitted < gen_length:
        say(
            f"eval.generate: gen_length {gen_length} capped to {fitted} for this turn: its prompt takes "
            f"{len(ids)} of {backbone_note(trained)}"
        )
    return ids, fitted


def chat_loop(args, trained, stdin=None, stdout=None, transcript: Transcript | None = None, stderr=None) -> list[dict]:
    """--chat: one user turn per stdin line until EOF or an empty line; the dialogue is kept (each answer goes
    back into the messages) and each answer printed; each finished turn goes to ``transcript`` at once. A dialogue
    that outgrows the backbone's positions loses its oldest turns (fit_dialogue, said on stderr)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr

    def say(line: str) -> None:
        stderr.write(line + "\n")
        stderr.flush()

    messages = [{"role": "system", "content": args.system}] if args.system else []
    records = []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stderr.write("you> ")
            stderr.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        fitted = fit_dialogue(trained, messages, args.gen_length, args.block_length, say)
        if fitted is None:
            messages.pop()
            continue
        ids, gen_length = fitted
        try:
            block_plan(gen_length, args.steps, args.block_length)
        except ValueError as err:
            say(f"eval.generate: this turn cannot be generated ({err}); the turn is skipped")
            messages.pop()
            continue
        result = generate(
            trained,
            [ids],
            record=bool(args.record),
            on_step=show_callback(args, trained, [f"turn {len(records) + 1}"]),
            **generate_options(args, gen_length),
        )[0]
        result["index"] = len(records)
        messages.append({"role": "assistant", "content": result["answer"]})
        stdout.write(f"assistant> {result['answer']}\n")
        stdout.flush()
        record = output_record({"messages": messages[:-1]}, result, None, False)
        records.append(record)
        if transcript is not None:
            transcript.write(record)
        if args.record:
            write_record(args.record, trained, [result], [line.strip()], args.frame_ms)
    return records


def run_chat(args, trained) -> int:
    """``python -m eval.generate --chat``: chat_loop on stdin, the transcript to --out; Ctrl-C ends it with exit
    code 130 and every finished turn kept."""
    transcript = Transcript(args.out) if args.out else None
    try:
        records = chat_loop(args, trained, transcript=transcript)
    except KeyboardInterrupt:
        where = f"; {transcript.turns} finished turn(s) in {args.out}" if transcript else ""
        print(f"\neval.generate: interrupted{where}", file=sys.stderr)
        return 130
    finally:
        if transcript is not None:
            transcript.close()
    if args.out:
        print(f"{args.out}: {len(records)} turn(s)", file=sys.stderr)
    return 0
