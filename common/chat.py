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

Tokenization at the turn boundaries (``tokenize_turns``): the text is cut at every start_i and end_i and each
piece (context, answer, context, ...) is tokenized on its own, so no token crosses a boundary and a token is an
answer token iff it comes from an answer's piece. Tokenizing the whole text instead lets a byte-level BPE merge
across start_i: an answer that opens with whitespace ("  x", "\nx") joins the template's "\n" in one pretoken
("\n " or "\n\n"), so the training row's prompt would end one token before the prompt that generation tokenizes
alone. ``prompt_ids`` cuts the generation prompt at the same places (the spans of the answers inside it), so the
tokens before answer i of a training row are exactly ``prompt_ids(messages[:i])`` (tests/test_sft_data.py). A
tokenizer that adds something to the start of every call (SentencePiece's dummy prefix "▁": then
tokens("a\n") + tokens("b") != tokens("a\nb")) would put it at every piece; for such a tokenizer both sides
tokenize the whole text, as before (token j is an answer token iff its offsets [a_j, b_j) overlap a span:
a_j < end_i and b_j > start_i), and a merge across a boundary is possible there.

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


def render_empty_context(tokenizer, add_generation_prompt: bool = True, chat_template: str | None = None) -> str:
    """The chat template (``chat_template``, default template_for(tokenizer)) rendered on no messages,
    ``messages = []``: the text before an assistant turn that opens a conversation (with the generation prompt).

    transformers' apply_chat_template refuses an empty conversation ("Cannot apply chat template to an empty
    conversation"), so this calls its renderer (transformers.utils.chat_template_utils.render_jinja_template)
    directly, with the variables apply_chat_template passes (the tokenizer's special tokens). Raises
    jinja2.TemplateError where the template needs a message (e.g. reads messages[0]).
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[[]],
        chat_template=chat_template or template_for(tokenizer),
        add_generation_prompt=add_generation_prompt,
        **tokenizer.special_tokens_map,
    )
    return rendered[0]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text (no tokenization), through ``template_for(tokenizer)``; no messages: the empty
    context (``render_empty_context``), which assistant_spans renders before an opening assistant turn."""
    if len(messages) == 0:
        return render_empty_context(tokenizer, add_generation_prompt)
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


def assistant_spans(tokenizer, messages: list[dict], full: str | None = None) -> list[tuple[int, int]]:
    """Character spans [start, end) in ``full`` (default ``render(tokenizer, messages)``; prompt_ids passes the
    render with the generation prompt) of every assistant turn's answer (content + end-of-turn / EOS marker), by
    incremental rendering (see the module docstring for the formula).

    Raises ValueError when the template lacks the prefix property (a partial render is not a prefix of the full
    text) or gives an empty / inverted span.
    """
    full = render(tokenizer, messages) if full is None else full
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1]).rstrip()
        for what, part in ((f"messages[:{i}] + generation prompt", before), (f"messages[:{i + 1}]", upto)):
            if not full.startswith(part):
                at = next((k for k, (x, y) in enumerate(zip(full, part)) if x != y), min(len(full), len(part)))
                raise ValueError(
                    f"chat template problem ({_template_name(tokenizer)}): the render of {what} is not a prefix "
                    f"of the full conversation (they differ at character {at}: expected {part[at : at + 40]!r}, "
                    f"got {full[at : at + 40]!r}); assistant spans need a template whose earlier turns render the "
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


def tokenizes_pieces_alone(tokenizer) -> bool:
    """Whether a piece tokenized on its own gets the tokens it gets after a line break in a longer text:
    tokens("a\n") + tokens("b") == tokens("a\nb"). True for byte-level BPEs (the pipeline's, GPT-2's) and
    WordPiece; False for a tokenizer that prefixes every call (SentencePiece's dummy prefix)."""

    def ids(text):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return ids("a\n") + ids("b") == ids("a\nb")


def tokenize_turns(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(ids, turns) of ``text`` with the answer ``spans`` [start_i, end_i) (ascending, inside the text; the last
    one may run past its end): turns[j] = i when token j belongs to answer i, -1 for context. The text is cut at
    every start_i and end_i and each piece tokenized on its own (module docstring), or, when the tokenizer does not
    tokenize pieces alone as in context (``tokenizes_pieces_alone``), tokenized whole with turns[j] the first
    span that token j's offsets overlap."""
    if not tokenizes_pieces_alone(tokenizer):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        turns = [
            next((i for i, (start, end) in enumerate(spans) if a < end and b > start), -1)
            for a, b in enc["offset_mapping"]
        ]
        return list(enc["input_ids"]), turns
    pieces, at = [], 0  # (start, end, turn)
    for i, (start, end) in enumerate(spans):
        start, end = min(start, len(text)), min(end, len(text))
        if start < at:
            raise ValueError(f"answer spans must be ascending and disjoint, got {spans}")
        if start > at:
            pieces.append((at, start, -1))
        if end > start:
            pieces.append((start, end, i))
        at = end
    if at < len(text):
        pieces.append((at, len(text), -1))
    ids, turns = [], []
    if pieces:
        for (_, _, turn), piece in zip(
            pieces, tokenizer([text[a:b] for a, b, _ in pieces], add_special_tokens=False)["input_ids"]
        ):
            ids += piece
            turns += [turn] * len(piece)
    return ids, turns


def _fill_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id


def encode_conversation(
    tokenizer, messages: list[dict], length: int, fill_eos: bool = True, final_only: bool = False
) -> Encoded:
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
    ids, turns = tokenize_turns(tokenizer, text, spans)
    targets = {len(spans) - 1} if final_only else set(range(len(spans)))
    mask = [int(turn in targets) for turn in turns]
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
    a user turn); the model generates the answer after them. Tokenized as training rows are (``tokenize_turns``,
    cut at the spans of the earlier answers in ``messages``), so they equal the tokens before that answer in an
    SFT row of ``messages`` + the answer. Where the template gives no spans (no prefix property, or it cannot
    render the empty context before an opening assistant turn) no SFT row has this context (preprocess.sft
    refuses or skips it), and the whole text is tokenized."""
    import jinja2

    text = render(tokenizer, messages, add_generation_prompt=True)
    try:
        spans = assistant_spans(tokenizer, messages, full=text)
    except (ValueError, jinja2.TemplateError):
        spans = []
    return tokenize_turns(tokenizer, text, spans)[0]


def answer_text(tokenizer, ids) -> str:
    """A generated answer as text: ids cut at the first EOS, decoded with special tokens skipped, stripped."""
    ids = [int(i) for i in ids]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
