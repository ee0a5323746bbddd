"""SFT data: answer-only masks from a chat template (common/chat.py) and SFT shards (preprocess/sft.py).

Checked on the pipeline's byte-level BPE and on a BERT-style WordPiece tokenizer: system / user / template tokens
have mask 0 and every assistant turn of a 3-turn dialogue mask 1; the EOS fill is a target after a final answer;
truncation inside the first answer keeps its visible tokens as targets; a tokenizer's own chat template gives the
right spans; bad records are counted by reason; the reverse task is deterministic, held out and checkable; shard
rows have exactly L tokens."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from common.chat import (
    DEFAULT_TEMPLATE,
    answer_text,
    assistant_spans,
    encode_conversation,
    prompt_ids,
    render,
    template_for,
)
from common.io import InputError, read_parquet, write_parquet
from common.tasks import check_answer, reference_answer
from preprocess.sft import REVERSE_WORDS, SFT_SCHEMA, build, reverse_record, reverse_side
from preprocess.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[1]

DIALOGUE = [
    {"role": "system", "content": "you answer in short words"},
    {"role": "user", "content": "say the color of the sky"},
    {"role": "assistant", "content": "blue sky"},
    {"role": "user", "content": "and the grass"},
    {"role": "assistant", "content": "green grass"},
    {"role": "user", "content": "and the sun"},
    {"role": "assistant", "content": "yellow sun"},
]
ANSWERS = [m["content"] for m in DIALOGUE if m["role"] == "assistant"]
TRAIN_TEXTS = [
    "you answer in short words say the color of the sky blue sky and the grass green grass and the sun yellow sun",
    "<|system|> <|user|> <|assistant|> reverse the words: print len zip abs range",
    "the quick brown fox jumps over the lazy dog",
] * 3


def bpe_tokenizer():
    return train_bpe(iter([TRAIN_TEXTS]), vocab_size=400, min_frequency=1)


def wordpiece_tokenizer():
    """A BERT-style uncased WordPiece tokenizer built offline, with [MASK], [PAD] and an added [EOS]."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(TRAIN_TEXTS, vocab_size=200, min_frequency=1, show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=wp._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    tok.add_special_tokens({"eos_token": "[EOS]"})
    return tok


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tok(request):
    return bpe_tokenizer() if request.param == "bpe" else wordpiece_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of ones."""
    out, start = [], None
    for j, m in enumerate(mask + [0]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            out.append((start, j))
            start = None
    return out


# ----------------------------------------------------------------------------------------------------------
# common/chat.py


def test_default_template_text_and_spans(bpe):
    assert template_for(bpe) is DEFAULT_TEMPLATE
    msgs = DIALOGUE[:3]
    text = render(bpe, msgs)
    assert text == (
        "<|system|>\nyou answer in short words\n<|user|>\nsay the color of the sky\n"
        "<|assistant|>\nblue sky<|endoftext|>\n"
    )
    assert render(bpe, msgs[:2], add_generation_prompt=True).endswith(
        "<|user|>\nsay the color of the sky\n<|assistant|>\n"
    )
    spans = assistant_spans(bpe, DIALOGUE)
    full = render(bpe, DIALOGUE)
    assert [full[a:b] for a, b in spans] == [a + "<|endoftext|>" for a in ANSWERS]


def test_three_turn_dialogue_masks_every_answer_and_nothing_else(tok):
    enc = encode_conversation(tok, DIALOGUE, 128)
    assert len(enc.ids) == len(enc.answer_mask) == 128 and not enc.truncated
    eos = tok.eos_token_id
    # The EOS fill after the final answer is a target; it merges with the last answer's run.
    assert enc.filled > 0 and enc.ids[-enc.filled :] == [eos] * enc.filled and all(enc.answer_mask[-enc.filled :])
    body = enc.answer_mask[: 128 - enc.filled]
    turns = runs(body)
    assert len(turns) == 3
    for (a, b), answer in zip(turns, ANSWERS):
        assert enc.ids[b - 1] == eos and norm(tok.decode(enc.ids[a : b - 1])) == norm(answer)
        if tok.eos_token == "<|endoftext|>":  # byte-level BPE decodes back to the exact text
            assert tok.decode(enc.ids[a:b]) == answer + tok.eos_token
    # Every unmasked token is prompt: it decodes to the system / user text and the template, no answer word.
    visible = tok.decode([i for i, m in zip(enc.ids, enc.answer_mask) if not m])
    for m in DIALOGUE:
        if m["role"] == "assistant":
            assert m["content"].split()[0] not in norm(visible)
        else:
            assert norm(m["content"]) in norm(visible)
    assert enc.n_answer == sum(enc.answer_mask) == sum(b - a for a, b in turns) + enc.filled


def test_fill_rules(tok):
    enc = encode_conversation(tok, DIALOGUE[:3], 64)
    assert enc.filled > 0 and enc.answer_mask[-1] == 1 and enc.ids[-1] == tok.eos_token_id
    # fill_eos False: pad with mask 0.
    enc = encode_conversation(tok, DIALOGUE[:3], 64, fill_eos=False)
    assert enc.ids[-enc.filled :] == [tok.pad_token_id] * enc.filled and not any(enc.answer_mask[-enc.filled :])
    # Ending on a user turn: answers inside are still targets, the fill is pad with mask 0.
    enc = encode_conversation(tok, DIALOGUE[:4], 64)
    assert enc.ids[-enc.filled :] == [tok.pad_token_id] * enc.filled and not any(enc.answer_mask[-enc.filled :])
    assert len(runs(enc.answer_mask)) == 1
    # Exactly fitting: no fill, not truncated.
    n = len(tok(render(tok, DIALOGUE[:3]).rstrip(), add_special_tokens=False)["input_ids"])
    enc = encode_conversation(tok, DIALOGUE[:3], n)
    assert enc.filled == 0 and not enc.truncated and enc.answer_mask[-1] == 1


def test_no_pad_token_fills_with_eos_mask_zero():
    tok = bpe_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    enc = encode_conversation(tok, DIALOGUE[:2], 64)
    assert enc.ids[-enc.filled :] == [tok.eos_token_id] * enc.filled and not any(enc.answer_mask)


def test_no_trailing_template_token_after_the_final_answer(bpe):
    """The template's "\\n" after the last EOS would be a visible token marking where the answer stops."""
    enc = encode_conversation(bpe, DIALOGUE[:3], 64)
    last_unmasked = max(j for j, m in enumerate(enc.answer_mask) if not m)
    assert all(enc.answer_mask[last_unmasked + 1 :]) and enc.ids[last_unmasked + 1] != bpe.eos_token_id


GENERATION_TEMPLATE = DEFAULT_TEMPLATE.replace(
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}",
    "{{- '<|' ~ message['role'] ~ '|>\\n' -}}{%- if message['role'] == 'assistant' -%}{% generation %}"
    "{{- message['content'] ~ eos_token -}}{% endgeneration %}{%- else -%}{{- message['content'] -}}{%- endif -%}",
)


def test_truncation_inside_the_first_answer_keeps_its_visible_tokens(tok):
    msgs = DIALOGUE[:3]
    n_prompt = len(prompt_ids(tok, msgs[:2]))
    enc = encode_conversation(tok, msgs, n_prompt + 2)
    assert enc.truncated and enc.filled == 0 and len(enc.ids) == n_prompt + 2
    assert enc.answer_mask == [0] * n_prompt + [1, 1] and enc.n_answer == 2
    assert norm(tok.decode(enc.ids[n_prompt:])) in norm(ANSWERS[0])
    # Cut before the answer: nothing to learn, the caller skips it (n_answer == 0).
    enc = encode_conversation(tok, msgs, n_prompt)
    assert enc.truncated and enc.n_answer == 0
    # transformers' own helper (only with {% generation %} tags; older releases gave all zeros here) agrees.
    assert GENERATION_TEMPLATE != DEFAULT_TEMPLATE
    ref = tok.apply_chat_template(
        msgs,
        chat_template=GENERATION_TEMPLATE,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        truncation=True,
        max_length=n_prompt + 2,
    )
    assert list(ref["assistant_masks"]) == [0] * n_prompt + [1, 1]


def test_masks_agree_with_generation_tags_on_a_full_dialogue(tok):
    text = render(tok, DIALOGUE).rstrip()
    ref = tok.apply_chat_template(
        DIALOGUE, chat_template=GENERATION_TEMPLATE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    enc = encode_conversation(tok, DIALOGUE, n)
    assert enc.answer_mask == list(ref["assistant_masks"])[:n]


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def test_tokenizers_own_chat_template(tok):
    tok = bpe_tokenizer() if tok.eos_token == "<|endoftext|>" else wordpiece_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    assert template_for(tok) == CHATML
    full = render(tok, DIALOGUE)
    assert full.startswith("<|im_start|>system\nyou answer in short words<|im_end|>\n")
    assert [full[a:b] for a, b in assistant_spans(tok, DIALOGUE)] == [a + "<|im_end|>" for a in ANSWERS]
    enc = encode_conversation(tok, DIALOGUE, 128)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    turns = runs(enc.answer_mask[: 128 - enc.filled])
    assert len(turns) == 3
    for (a, b), answer in zip(turns, ANSWERS):
        assert enc.ids[b - 1] == im_end
        assert norm(tok.decode(enc.ids[a:b], skip_special_tokens=True)) == norm(answer)
    assert enc.ids[-1] == tok.eos_token_id and enc.answer_mask[-1] == 1


def test_template_without_prefix_property_is_refused(bpe):
    tok = bpe_tokenizer()
    # Writes the turn count first: every partial render differs from the full one.
    tok.chat_template = "{{ messages | length }}" + DEFAULT_TEMPLATE
    with pytest.raises(ValueError, match="chat template problem.*not a prefix"):
        assistant_spans(tok, DIALOGUE[:3])


def test_prompt_ids_and_answer_text(tok):
    ids = prompt_ids(tok, DIALOGUE[:2])
    assert ids == tok(render(tok, DIALOGUE[:2], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    answer = tok("blue sky", add_special_tokens=False)["input_ids"]
    generated = answer + [tok.eos_token_id] + tok("grass", add_special_tokens=False)["input_ids"]
    assert norm(answer_text(tok, generated)) == "blue sky"
    assert norm(answer_text(tok, answer)) == "blue sky"


# Code-like text: the byte-level BPE learns "\n " (ĊĠ) and "\n\n" (ĊĊ), the merges that could join the template's
# "\n" before an answer with the answer's own leading whitespace.
INDENTED_TEXTS = TRAIN_TEXTS + ["def f(x):\n  return x\n\n\nclass A:\n  pass\n  x = 1\n\n"] * 5


@pytest.mark.parametrize("lead", ["  ", "\n\n", " "])
def test_training_rows_hold_the_generation_prompt_before_every_answer(lead):
    """Answers that start with whitespace, tokenized by the pipeline's byte-level BPE: the tokens before answer i
    of a training row (SFT, and a preference canvas's final answer) are exactly the prompt eval.generate builds,
    prompt_ids(messages[:i]); tokenizing the whole text would merge "\n" + "  " across the boundary."""
    tok = train_bpe(iter([INDENTED_TEXTS]), vocab_size=400, min_frequency=1)
    assert {"ĊĠ", "ĊĊ"} <= set(tok.get_vocab())
    dialogue = [dict(m, content=lead + m["content"]) if m["role"] == "assistant" else m for m in DIALOGUE]
    for final_only in (False, True):
        enc = encode_conversation(tok, dialogue, 128, final_only=final_only)
        turns = runs(enc.answer_mask[: 128 - enc.filled])
        answers = [i for i, m in enumerate(dialogue) if m["role"] == "assistant"]
        assert len(turns) == (1 if final_only else 3)
        for (a, b), i in zip(turns, answers[-len(turns) :]):
            assert enc.ids[:a] == prompt_ids(tok, dialogue[:i]), (final_only, i)
            assert tok.decode(enc.ids[a:b]) == dialogue[i]["content"] + tok.eos_token
    # the case is real: a whole-text tokenization ends the first prompt elsewhere (one token earlier)
    first = prompt_ids(tok, dialogue[:2])
    whole = tok(render(tok, dialogue[:3]), add_special_tokens=False)["input_ids"]
    assert (whole[: len(first)] == first) == (lead == " ")
    # a conversation that opens with an assistant turn: the same, after the empty context
    opening = [dict(GREETING, content=lead + GREETING["content"]), *dialogue[1:3]]
    enc = encode_conversation(tok, opening, 64)
    (a0, _), (a1, _) = runs(enc.answer_mask[: 64 - enc.filled])
    assert enc.ids[:a0] == tok("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    assert enc.ids[:a1] == prompt_ids(tok, opening[:2])


# ----------------------------------------------------------------------------------------------------------
# The reverse task


def test_reverse_task_is_deterministic_held_out_and_checkable():
    assert len(REVERSE_WORDS) > 50 and "print" in REVERSE_WORDS and "help" not in REVERSE_WORDS
    assert all(w.isalpha() and w.islower() for w in REVERSE_WORDS)
    train = [reverse_record(0, "train", i, 0.1) for i in range(400)]
    val = [reverse_record(0, "validation", i, 0.1) for i in range(100)]
    assert train == [reverse_record(0, "train", i, 0.1) for i in range(400)]
    assert train != [reverse_record(1, "train", i, 0.1) for i in range(400)]

    def lists(records):
        return {
            m["content"].removeprefix("Reverse the words: ") for r in records for m in r.messages if m["role"] == "user"
        }

    train_lists, val_lists = lists(train), lists(val)
    assert train_lists and val_lists and not (train_lists & val_lists)
    assert not lists([reverse_record(7, "train", i, 0.1) for i in range(400)]) & val_lists  # whatever the seed
    assert {len(r.messages) // 2 for r in train} == {1, 2, 3}
    for r in train + val:
        roles = [m["role"] for m in r.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        for q, a in zip(r.messages[::2], r.messages[1::2]):
            words = q["content"].removeprefix("Reverse the words: ").split()
            assert 2 <= len(words) <= 5 and len(set(words)) == len(words)
            assert a["content"] == " ".join(reversed(words))
            assert reverse_side(words, 0.1) == ("validation" if r in val else "train")
        prompt = r.messages[:-1]
        assert reference_answer("task:reverse", prompt) == r.messages[-1]["content"]
        assert check_answer("task:reverse", prompt, r.messages[-1]["content"])
    prompt = [{"role": "user", "content": "Reverse the words: print len zip"}]
    assert check_answer("task:reverse", prompt, "  zip   len\nprint ")
    assert not check_answer("task:reverse", prompt, "print len zip")
    assert not check_answer("reverse", prompt, "zip len")
    with pytest.raises(ValueError, match="unknown task"):
        check_answer("task:sort", prompt, "x")


# ----------------------------------------------------------------------------------------------------------
# Shards


def sft_config(source, **over):
    return {
        "source": str(source),
        "format": "auto",
        "length": 64,
        "validation_fraction": 0.1,
        "n_train": 60,
        "n_validation": 20,
        "seed": 0,
        **over,
    }


def test_task_shard_rows_and_stats(tmp_path, tok):
    out = tmp_path / "train.parquet"
    stats = build(sft_config("task:reverse"), tok, "train", out, progress=False)
    table = read_parquet(out)
    assert table.schema.equals(SFT_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == stats["records_written"] == 60 and stats["records_read"] == 60 and stats["skipped"] == {}
    for row in rows:
        assert len(row["ids"]) == len(row["answer_mask"]) == 64
        assert row["n_answer"] == sum(row["answer_mask"]) > 0
        prompt = json.loads(row["prompt"])
        assert prompt[-1]["role"] == "user" and check_answer("task:reverse", prompt, row["reference"])
        if not row["truncated"]:
            assert row["answer_mask"][-1] == 1 and row["ids"][-1] == tok.eos_token_id
    assert stats["answer_tokens"] == sum(r["n_answer"] for r in rows)
    assert stats["truncated"] == sum(r["truncated"] for r in rows)
    assert stats["tokens"] == 60 * 64 and stats["assistant_turns"] > 60
    for key in (
        "records_read",
        "records_written",
        "skipped",
        "skipped_examples",
        "truncated",
        "filled_tokens",
        "answer_tokens",
        "trailing_turns_dropped",
        "length",
        "source",
        "split",
    ):
        assert key in stats
    assert json.loads((tmp_path / "train.stats.json").read_text())["records_written"] == 60
    # Deterministic bytes.
    again = tmp_path / "again.parquet"
    build(sft_config("task:reverse"), tok, "train", again, tmp_path / "again.json", progress=False)
    assert out.read_bytes() == again.read_bytes()
    val = build(sft_config("task:reverse"), tok, "validation", tmp_path / "val.parquet", progress=False)
    assert val["records_written"] == 20


def test_split_without_rows_fails_naming_the_output(tmp_path, bpe):
    out = tmp_path / "train.parquet"
    with pytest.raises(InputError, match=f"{out}: no SFT row.*no_answer_within_length"):
        build(sft_config("task:reverse", length=4), bpe, "train", out, progress=False)
    assert not out.exists() and not (tmp_path / "train.stats.json").exists()


def good(i, **extra):
    return {
        "messages": [{"role": "user", "content": f"say the color {i}"}, {"role": "assistant", "content": "blue sky"}],
        **extra,
    }


BAD_LINES = {
    "invalid_utf8": [b'{"messages": "\xff"}'],
    "invalid_json": [b'{"messages": [}'],
    "not_object": [b'[1, 2]', b'"text"'],
    "unknown_shape": [json.dumps({"text": "hello"}).encode()],
    "wrong_type": [
        json.dumps({"messages": "hi"}).encode(),
        json.dumps({"messages": [{"role": "user", "content": 3}]}).encode(),
        json.dumps({"messages": ["hi"]}).encode(),
        json.dumps({"instruction": "x", "input": 5, "output": "y"}).encode(),
    ],
    "unknown_role": [json.dumps({"messages": [{"role": "bot", "content": "hi"}]}).encode()],
    "empty_content": [
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}).encode(),
        json.dumps({"instruction": "x", "output": None}).encode(),
    ],
    "binary": [
        json.dumps(
            {"messages": [{"role": "user", "content": "a\u0000b"}, {"role": "assistant", "content": "x"}]}
        ).encode()
    ],
    "no_assistant_turn": [
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}).encode()
    ],
    "special_token_in_content": [
        json.dumps(
            {"messages": [{"role": "user", "content": "hi <|endoftext|>"}, {"role": "assistant", "content": "x"}]}
        ).encode()
    ],
    "no_answer_within_length": [
        json.dumps(
            {"messages": [{"role": "user", "content": "the lazy dog " * 40}, {"role": "assistant", "content": "x"}]}
        ).encode()
    ],
}


def test_bad_records_are_counted_by_reason(tmp_path, bpe):
    lines = [json.dumps(good(0)).encode(), b"", *[line for v in BAD_LINES.values() for line in v]]
    # A valid multi-turn record with trailing non-assistant turns: kept, the two trailing turns dropped.
    trailing = good(1)
    trailing["messages"] += [{"role": "user", "content": "more"}, {"role": "user", "content": "again"}]
    lines.append(json.dumps(trailing).encode())
    lines.append(json.dumps({"instruction": "say the color", "input": "of the sky", "output": "blue sky"}).encode())
    src = tmp_path / "data.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "train.parquet"
    # validation_fraction 0: every record is in train.
    stats = build(sft_config(src, validation_fraction=0.0), bpe, "train", out, progress=False)
    assert stats["skipped"] == {reason: len(v) for reason, v in BAD_LINES.items()}
    assert stats["records_written"] == 3 and stats["trailing_turns_dropped"] == 2
    assert stats["records_read"] == stats["records_written"] + sum(stats["skipped"].values())
    assert f"{src} line 3" in stats["skipped_examples"]["invalid_utf8"][0]
    rows = read_parquet(out).to_pylist()
    assert [r["conversation_id"] for r in rows] == [
        "data.jsonl:1",
        f"data.jsonl:{len(lines) - 1}",
        f"data.jsonl:{len(lines)}",
    ]
    assert json.loads(rows[1]["prompt"])[-1]["content"] == "say the color 1" and rows[1]["reference"] == "blue sky"
    assert json.loads(rows[2]["prompt"]) == [{"role": "user", "content": "say the color\n\nof the sky"}]
    # A forced format names the missing fields.
    forced = build(sft_config(src, validation_fraction=0.0, format="alpaca"), bpe, "train", out, progress=False)
    assert forced["skipped"]["no_alpaca_fields"] > 0 and forced["records_written"] == 1
    forced = build(sft_config(src, validation_fraction=0.0, format="messages"), bpe, "train", out, progress=False)
    assert forced["skipped"]["no_messages_field"] == 4 and forced["records_written"] == 2


GREETING = {"role": "assistant", "content": "hello there"}
# Templates that cannot render an assistant turn after an empty context: one reads messages[0] (the render of no
# messages raises), one writes a default system turn before a conversation that has none (the render of no messages
# is not a prefix of the conversation's).
NO_EMPTY_CONTEXT = {
    "reads messages[0]": "{%- if messages[0]['role'] == 'system' -%}{%- endif -%}" + DEFAULT_TEMPLATE,
    "default system turn": (
        "{%- if messages and messages[0]['role'] != 'system' -%}{{- '<|system|>\nbe brief\n' "
        "-}}{%- endif -%}" + DEFAULT_TEMPLATE
    ),
}


def test_a_conversation_that_opens_with_an_assistant_turn_trains_it(tmp_path, tok):
    """A greeting before the first question is an answer with an empty context: its span starts after the template
    rendered on no messages; a lone greeting (no prompt to evaluate with) is a counted skip."""
    opening = [GREETING, *DIALOGUE[1:3]]
    src = tmp_path / "data.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"messages": opening},
                {"messages": [GREETING]},
                {"messages": [GREETING, {"role": "user", "content": "hi"}]},  # the trailing user turn is dropped
            ]
        )
        + "\n"
    )
    stats = build(sft_config(src, validation_fraction=0.0), tok, "train", tmp_path / "o.parquet", progress=False)
    assert stats["records_written"] == 1 and stats["skipped"] == {"no_prompt": 2}
    assert stats["records_read"] == stats["records_written"] + sum(stats["skipped"].values())
    assert "the first message" in stats["skipped_examples"]["no_prompt"][0]
    row = read_parquet(tmp_path / "o.parquet").to_pylist()[0]
    assert json.loads(row["prompt"]) == opening[:-1] and row["reference"] == ANSWERS[0]
    turns = runs(row["answer_mask"])
    assert len(turns) == 2 and stats["assistant_turns"] == 2
    # The greeting's tokens follow exactly the template's text for no messages + the generation prompt.
    head = tok("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    (a, b), last = turns[0], turns[1]
    assert row["ids"][:a] == head and row["ids"][b - 1] == tok.eos_token_id
    assert norm(tok.decode(row["ids"][a : b - 1])) == norm(GREETING["content"])
    assert norm(tok.decode(row["ids"][last[0] :], skip_special_tokens=True)) == norm(ANSWERS[0])


@pytest.mark.parametrize("template", sorted(NO_EMPTY_CONTEXT))
def test_an_opening_assistant_turn_the_template_cannot_render_is_a_counted_skip(tmp_path, template):
    tok = bpe_tokenizer()
    tok.chat_template = NO_EMPTY_CONTEXT[template]
    src = tmp_path / "data.jsonl"
    src.write_text("\n".join(json.dumps({"messages": m}) for m in [[GREETING, *DIALOGUE[1:3]], DIALOGUE[1:3]]) + "\n")
    stats = build(sft_config(src, validation_fraction=0.0), tok, "train", tmp_path / "o.parquet", progress=False)
    assert stats["records_written"] == 1 and stats["skipped"] == {"leading_assistant_turn": 1}
    assert stats["records_read"] == 2
    assert "starts with an assistant turn" in stats["skipped_examples"]["leading_assistant_turn"][0]
    assert read_parquet(tmp_path / "o.parquet").column("conversation_id").to_pylist() == ["data.jsonl:2"]


def test_local_parquet_json_folder_and_hash_split(tmp_path, bpe):
    folder = tmp_path / "data"
    folder.mkdir()
    records = [good(i, id=f"m{i}") for i in range(40)]
    write_parquet(pa.Table.from_pylist(records), folder / "chat.parquet")
    alpaca = [{"instruction": f"say the color {i}", "input": "", "output": "green grass"} for i in range(40)]
    (folder / "alpaca.json").write_text(json.dumps(alpaca))
    (folder / "notes.txt").write_text("ignored")
    cfg = sft_config(folder, validation_fraction=0.3)
    train = build(cfg, bpe, "train", tmp_path / "t.parquet", progress=False)
    val = build(cfg, bpe, "validation", tmp_path / "v.parquet", progress=False)
    assert train["records_read"] + val["records_read"] == 80
    assert 0 < val["records_written"] < train["records_written"]
    ids_t = set(read_parquet(tmp_path / "t.parquet", ["conversation_id"]).column(0).to_pylist())
    ids_v = set(read_parquet(tmp_path / "v.parquet", ["conversation_id"]).column(0).to_pylist())
    assert not ids_t & ids_v and "m0" in ids_t | ids_v and "alpaca.json:0" in ids_t | ids_v


def test_hub_source_through_an_injected_loader(tmp_path, bpe):
    splits = {"train": [good(i) for i in range(5)], "test": [good(9)]}
    stats = build(
        sft_config("someone/chat"), bpe, "validation", tmp_path / "v.parquet", load=lambda name: splits, progress=False
    )
    assert stats["records_written"] == 1
    assert read_parquet(tmp_path / "v.parquet").column("conversation_id").to_pylist() == ["test/0"]


def test_missing_local_source_is_an_error(tmp_path, bpe):
    with pytest.raises(InputError, match="does not exist"):
        build(sft_config(tmp_path / "nope.jsonl"), bpe, "train", tmp_path / "o.parquet", progress=False)


def test_command_help():
    out = subprocess.run(
        [sys.executable, "-m", "preprocess.sft", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "--tokenizer" in out and "task:reverse" in out
