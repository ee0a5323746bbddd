"""KeyBERT word scores, computed the way KeyBERT computes them, with word embeddings cached.

KeyBERT scores a 1-gram candidate w of document d as

    score(w, d) = cos(E(d), E(w)) = E(d) . E(w) / (|E(d)| |E(w)|)

where E is the sentence-transformers embedder applied to the document text and to the word *on its own*.
Because E(w) does not depend on d, a word's embedding can be computed once and reused for every document
of the shard: this is the whole speed-up over calling ``KeyBERT.extract_keywords`` per document (see
bench/preprocess.py), and it changes no score beyond float noise of batching.

``extract_keywords`` rounds the scores it reports to 4 decimals; we keep the float32 cosine it ranks by
(rounding would only create ties). The quantity to compare against is therefore KeyBERT's own
``extract_embeddings(docs, candidates=words, stop_words=None)`` followed by ``cosine_similarity``; against
``extract_keywords``' rounded output the difference is at most 5e-5 by construction.

A word is scored exactly when KeyBERT would score it: when its lower-cased text is a token of the document
under scikit-learn's ``CountVectorizer`` analyzer (lower-casing, ``token_pattern`` of two or more word
characters), the analyzer KeyBERT uses with ``keyphrase_ngram_range=(1, 1)`` and ``stop_words=None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.model_packages import model_location


def load_keybert(name: str):
    """A ``keybert.KeyBERT`` over the named sentence-transformers embedder, on the CPU."""
    from keybert import KeyBERT
    from sentence_transformers import SentenceTransformer

    return KeyBERT(model=SentenceTransformer(model_location(name), device="cpu"))


class KeywordScorer:
    """Scores every word of many documents as KeyBERT 1-gram candidates, caching word embeddings."""

    def __init__(self, keybert_model):
        from sklearn.feature_extraction.text import CountVectorizer

        self.kw = keybert_model
        self.analyzer = CountVectorizer(ngram_range=(1, 1), stop_words=None).build_analyzer()
        self.cache: dict[str, np.ndarray] = {}
        self.embedded_words = 0  # words actually sent through the embedder (cache misses)

    def candidates(self, doc_text: str, words: Sequence[str]) -> list[str | None]:
        """The lower-cased candidate for each word, or None where KeyBERT's analyzer would not produce it."""
        features = set(self.analyzer(doc_text))
        return [w.lower() if w.lower() in features else None for w in words]

    def _embed_missing(self, candidates: set[str]) -> None:
        missing = sorted(c for c in candidates if c not in self.cache)
        if missing:
            vectors = self.kw.model.embed(missing)
            self.cache.update(zip(missing, vectors))
            self.embedded_words += len(missing)

    def score(self, doc_texts: Sequence[str], words_per_doc: Sequence[Sequence[str]]) -> list[list[float | None]]:
        """For each document, the cosine score of each word (None where it is not a candidate)."""
        from sklearn.metrics.pairwise import cosine_similarity

        if not doc_texts:
            return []
        doc_vectors = self.kw.model.embed(list(doc_texts))
        candidates_per_doc = [self.candidates(t, ws) for t, ws in zip(doc_texts, words_per_doc)]
        self._embed_missing({c for cands in candidates_per_doc for c in cands if c is not None})
        out = []
        for doc_vector, cands in zip(doc_vectors, candidates_per_doc):
            unique = sorted({c for c in cands if c is not None})
            if not unique:
                out.append([None] * len(cands))
                continue
            sims = cosine_similarity(doc_vector.reshape(1, -1), np.stack([self.cache[c] for c in unique]))[0]
            by_word = {c: float(s) for c, s in zip(unique, sims)}
            out.append([None if c is None else by_word[c] for c in cands])
        return out
