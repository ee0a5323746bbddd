"""The offline tasks' judges: the correct answer to a task question and whether an answer is it. Shared by
preprocess/ (which writes the tasks' records: preprocess/sft.py, preprocess/preference.py) and eval/ (which scores
generated answers: eval/dpo.py).

    task:reverse   "Reverse the words: a b c" -> "c b a"; an answer is correct iff normalise(answer) equals it,
                   normalise = runs of whitespace -> one space, ends stripped
"""

from __future__ import annotations

import re

REVERSE_PROMPT = "Reverse the words: "
_REVERSE_RE = re.compile(r"^\s*Reverse the words:\s*(.*?)\s*$", re.DOTALL)


def normalise(text: str) -> str:
    return " ".join(text.split())


def _last_user(prompt_messages: list) -> str:
    users = [m["content"] for m in prompt_messages if m.get("role") == "user"]
    if not users:
        raise ValueError(f"prompt has no user turn: roles {[m.get('role') for m in prompt_messages]}")
    return users[-1]


def reverse_answer(question: str) -> str:
    """The words after "Reverse the words:", in reverse order, joined by single spaces."""
    match = _REVERSE_RE.match(question)
    if not match:
        raise ValueError(f"task:reverse: the last user turn is not a reverse question: {question[:80]!r}")
    return " ".join(reversed(match.group(1).split()))


ANSWERS = {"reverse": reverse_answer}


def reference_answer(task: str, prompt_messages: list) -> str:
    """The correct answer to the last user turn of ``prompt_messages`` for ``task`` ("task:reverse" or
    "reverse")."""
    name = task.removeprefix("task:")
    if name not in ANSWERS:
        raise ValueError(f"unknown task {task!r}; known: {['task:' + t for t in ANSWERS]}")
    return ANSWERS[name](_last_user(prompt_messages))


def check_answer(task: str, prompt_messages: list, answer: str) -> bool:
    """normalise(answer) == reference_answer(task, prompt_messages)."""
    return normalise(answer) == reference_answer(task, prompt_messages)
