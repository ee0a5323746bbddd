"""Chat conversations as fixed-length token rows for supervised fine-tuning (SFT) of a masked diffusion LM.

Shared by preprocess/ (building SFT shards) and eval/ (prompting and scoring); depends only on a
``transformers`` tokenizer.

LLaDA-style SFT masks only the answers: a conversation is rendered with a chat template, tokenized, and each
token gets ``answer_mask`` 1 when it belongs to an assistant turn (its content and the end-of-turn / EOS marker
the template writes after it) and 0 otherwise (system, user and template tokens: always visible, never
masked, no loss). Every assistant turn of a multi-turn dialogue is a target.

Assistant spans are found by incremental rendering, not from ``{% generation %}`` tags: transformers'
``return_assistant_tokens_mask`` works only for templates that carry those tags (DEFAULT_TEMPLATE and most
model templates do not), and transformers releases before the fix gave all zeros once truncation cut the first
span. Where a template has the tags, both give the same mask (tests/test_sft_data.py checks it).
With ``render(m, g)`` the rendered text of messages ``m`` (``g``: add the generation prompt), the answer of
assistant message i spans the characters

    start_i = len(render(messages[:i], g=True))
    end_i   = len(render(messages[:i+1]).rstrip())          (trailing whitespace excluded)

of ``render(messages)``. This holds only for a template with the prefix property (the full text starts with
every partial render); a template that rewrites earlier turns (e.g. strips the reasoning of past answers)
breaks it and is rejected with a ValueError.

Token j (character span [a_j, b_j) from the offsets mapping) is an answer token iff a_j < end_i and
b_j > start_i for some i (it overlaps an answer).

Fixed length L (``encode_conversation``):
  - more than L tokens: keep the first L with their masks (truncated=True, no fill). A conversation cut inside
    its first answer keeps that answer's visible tokens as targets.
  - fewer: when the last message is an assistant turn, the text is cut at the end of its span (the template's
    trailing whitespace would be a visible token marking where the answer stops) and filled with EOS up to L as
    answer targets (mask 1: the model learns to stop, LLaDA's EOS padding). Otherwise it is filled with the
    pad token (the EOS when the tokenizer has no pad) with mask 0.
"""
from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")

# Used when the tokenizer has no chat template (BERT-like tokenizers, the pipeline's byte-level BPE). One message:
# "<|{role}|>\n{content}", + the EOS token text for an assistant turn, + "\n". The generation prompt is
# "<|assistant|>\n". Unknown roles and non-string contents raise (apply_chat_template's raise_exception).
DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role ' ~ message['role'] ~ ' (expected system, user or assistant)') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('message content is not a string') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


@dataclass
class Encoded:
    """One conversation as a row of exactly ``length`` tokens.

    ids: token ids; answer_mask: 1 = answer token (masked in training, carries the loss), 0 = prompt / system /
    user / template token (never masked); n_answer = sum(answer_mask) (0 means no answer token fits within the
    length: the caller skips and counts the record); truncated: the text had more than ``length`` tokens;
    filled: how many fill tokens (EOS or pad) were appended.
    """

    ids: list[int]
    answer_mask: list[int]
    n_answer: int
    truncated: bool
    filled: int


def template_for(tokenizer) -> str:
    """The tokenizer's own ``chat_template`` when it has one, else DEFAULT_TEMPLATE."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    return template if template else DEFAULT_TEMPLATE


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text (no tokenization), through ``template_for(tokenizer)``."""
    text = tokenizer.apply_chat_template(
        list(messages),
        chat_template=template_for(tokenizer),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    if not isinstance(text, str):  # guard against API drift (return_dict defaults)
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


def _template_name(tokenizer) -> str:
    return "DEFAULT_TEMPLATE" if template_for(tokenizer) is DEFAULT_TEMPLATE else "the tokenizer's chat_template"


def assistant_spans(tokenizer, messages: list[dict]) -> list[tuple[int, int]]:
    """Character spans [start, end) in ``render(tokenizer, messages)`` of every assistant turn's answer (content
    + end-of-turn / EOS marker), by incremental rendering (see the module docstring for the formula).

    Raises ValueError when the template lacks the prefix property (a partial render is not a prefix of the full
    text) or gives an empty / inverted span.
    """
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1]).rstrip()
        for what, part in (("messages[:%d] + generation prompt" % i, before), ("messages[:%d]" % (i + 1), upto)):
            if not full.startswith(part):
                at = next((k for k, (x, y) in enumerate(zip(full, part)) if x != y), min(len(full), len(part)))
                raise ValueError(
                    f"chat template problem ({_template_name(tokenizer)}): the render of {what} is not a prefix "
                    f"of the full conversation (they differ at character {at}: expected {part[at:at + 40]!r}, "
                    f"got {full[at:at + 40]!r}); assistant spans need a template whose earlier turns render the "
                    f"same whatever follows"
                )
        start, end = len(before), len(upto)
        if end <= start:
            raise ValueError(
                f"chat template problem ({_template_name(tokenizer)}): assistant message {i} has an empty span "
                f"(start {start}, end {end}); expected its content after the generation prompt"
            )
        spans.append((start, end))
    return spans


def _fill_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id


def encode_conversation(tokenizer, messages: list[dict], length: int, fill_eos: bool = True,
                        final_only: bool = False) -> Encoded:
    """Render, tokenize and mask a conversation into exactly ``length`` tokens (rules in the module docstring).

    ``fill_eos`` False fills with the pad token (mask 0) even after a final answer. ``final_only`` True marks
    only the last assistant turn (and the fill after it): earlier answers are then context, mask 0, as in a
    preference pair where the score is of the final answer given everything before it. A result with
    ``n_answer == 0`` has no answer token within ``length``.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; SFT rows need one (fill and end of answer)")
    text = render(tokenizer, messages)
    spans = assistant_spans(tokenizer, messages)
    ends_with_answer = bool(messages) and messages[-1].get("role") == "assistant"
    if ends_with_answer:
        text = text[: spans[-1][1]]  # drop the trailing whitespace: no visible token marks the answer's end
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    targets = spans[-1:] if final_only else spans
    mask = []
    for a, b in offsets:
        mask.append(int(any(a < end and b > start for start, end in targets)))
    truncated = len(ids) > length
    filled = 0
    if truncated:
        ids, mask = ids[:length], mask[:length]
    else:
        filled = length - len(ids)
        if ends_with_answer and fill_eos:
            ids += [tokenizer.eos_token_id] * filled
            mask += [1] * filled
        else:
            ids += [_fill_id(tokenizer)] * filled
            mask += [0] * filled
    return Encoded(ids=ids, answer_mask=mask, n_answer=sum(mask), truncated=truncated, filled=filled)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the generation prompt ``render(messages, add_generation_prompt=True)`` (``messages`` ends with
    a user turn); the model generates the answer after them."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_text(tokenizer, ids) -> str:
    """A generated answer as text: ids cut at the first EOS, decoded with special tokens skipped, stripped."""
    ids = [int(i) for i in ids]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
