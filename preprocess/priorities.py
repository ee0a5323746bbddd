"""Word priorities: which words of a block make stage 1 and stage 2 (higher is kept first).

Every method maps each word of a document to one float; sub-word tokens inherit their word's priority
(see ``preprocess.annotate``). The rules, as docs/design.md ("Priorities") fixes them:

``constituency`` (from spaCy's fine-grained Penn tag), priority = -label with
    label 1  last token of a proper-noun run (consecutive NNP/NNPS)
          2  any other token of a proper-noun run
          3  NN, NNS
          4  VB* that is not a stop word
          5  JJ*
          6  RB*
          7  anything else

``keybert``: the cosine similarity between the word (lower-cased, as a 1-gram candidate) and its own
    document under KeyBERT's embedder (``preprocess.keywords``); words KeyBERT cannot
    score (its 1-gram analyzer never produces them: punctuation, one-character words) get -1.2.

``keybert_no_stopword``: as ``keybert`` but a stop word's score s in [-1, 1] is squeezed below every
    content word, -1.1 + 0.1 * (s + 1) / 2 in [-1.1, -1.0]; unscored words get -1.2; and a period that
    ends a sentence gets 1.1, so sentence structure survives into the short stages (priorities > 1 are the
    only ones the stage builder lets repeat).
"""

from __future__ import annotations

from collections.abc import Sequence

METHODS = ("constituency", "keybert", "keybert_no_stopword")

UNSCORED = -1.2
SENTENCE_PERIOD = 1.1
STOPWORD_LOW, STOPWORD_HIGH = -1.1, -1.0

PROPER_NOUN_TAGS = frozenset({"NNP", "NNPS"})
COMMON_NOUN_TAGS = frozenset({"NN", "NNS"})


def constituency_labels(tags: Sequence[str], is_stop: Sequence[bool]) -> list[int]:
    """Label 1..7 per token from its fine-grained tag (see module docstring)."""
    labels = []
    for i, (tag, stop) in enumerate(zip(tags, is_stop)):
        if tag in PROPER_NOUN_TAGS:
            run_continues = i + 1 < len(tags) and tags[i + 1] in PROPER_NOUN_TAGS
            labels.append(2 if run_continues else 1)
        elif tag in COMMON_NOUN_TAGS:
            labels.append(3)
        elif tag.startswith("VB") and not stop:
            labels.append(4)
        elif tag.startswith("JJ"):
            labels.append(5)
        elif tag.startswith("RB"):
            labels.append(6)
        else:
            labels.append(7)
    return labels


def constituency_priorities(tags: Sequence[str], is_stop: Sequence[bool]) -> list[float]:
    """priority = -label, so proper nouns are kept first."""
    return [-float(label) for label in constituency_labels(tags, is_stop)]


def keybert_priorities(scores: Sequence[float | None]) -> list[float]:
    """The KeyBERT score of each word; ``None`` (not scored) -> -1.2."""
    return [UNSCORED if s is None else float(s) for s in scores]


def squeeze_stopword(score: float) -> float:
    """Map a cosine score s in [-1, 1] into [-1.1, -1.0], preserving order: -1.1 + 0.1 * (s + 1) / 2."""
    return STOPWORD_LOW + (STOPWORD_HIGH - STOPWORD_LOW) * (score + 1.0) / 2.0


def keybert_no_stopword_priorities(
    scores: Sequence[float | None], is_stop: Sequence[bool], is_sentence_period: Sequence[bool]
) -> list[float]:
    """KeyBERT scores with stop words pushed below content words and sentence-final periods kept (1.1)."""
    out = []
    for score, stop, period in zip(scores, is_stop, is_sentence_period):
        if period:
            out.append(SENTENCE_PERIOD)
        elif score is None:
            out.append(UNSCORED)
        elif stop:
            out.append(squeeze_stopword(score))
        else:
            out.append(float(score))
    return out
