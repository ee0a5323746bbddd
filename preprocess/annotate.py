"""Annotate one raw shard with one priority method: token ids and a priority per token.

    python -m preprocess.annotate --config config.yaml --method keybert_no_stopword \
        --input data/pydoc/raw-<tag>/train/shard_00000.parquet --tokenizer data/pydoc/tokenizer-<tag> \
        --out data/pydoc/annot-<tag>/keybert_no_stopword/train/shard_00000.parquet

Each document is split into words by spaCy, every word gets a priority (``preprocess.priorities``), the text
is tokenized with the pipeline's tokenizer, and each token inherits the priority of the word its first
non-space character belongs to (a token that lies wholly in whitespace between words gets the method's
lowest "anything else" value). spaCy runs only the components a method needs: ``constituency`` needs the
tagger, ``keybert`` only the tokenizer, ``keybert_no_stopword`` the parser (for sentence ends). A document
longer than ``annotate.max_doc_chars`` is annotated in pieces cut at whitespace, never dropped.

Memory. spaCy's peak grows with the characters it runs at once (about 3.7 KB per character through tok2vec,
0.3 KB with the tokenizer alone), so spaCy never gets more than ``max_doc_chars`` characters at once: pieces
and short documents go to it in batches of at most ``annotate.batch_size`` texts and ``max_doc_chars``
characters (``bounded_batches``), and documents are annotated together up to 256 documents or
``max_doc_chars`` characters. What still grows with one document is its own tokenization and word lists
(about 0.2 KB per character of the longest document). So, measured (bench/README.md, "Annotate memory"):

    peak RSS ~ base (0.45 to 0.75 GB) + 3.7 KB x max_doc_chars + 0.2 KB x (characters of the longest document)

Output: Parquet ``doc_id, input_ids list<int32>, priority list<float32>`` and ``<shard>.stats.json``
(documents in / written / skipped by reason, words, tokens, seconds).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from common.config import load_config
from common.io import read_parquet, stats_path, write_json, write_parquet
from preprocess import priorities

# spaCy components each method needs; everything else is excluded (the speed-up over the full pipeline).
SPACY_COMPONENTS = {
    "constituency": ["tok2vec", "tagger"],
    "keybert": [],
    "keybert_no_stopword": ["tok2vec", "parser"],
}
# Priority of a token that belongs to no word (whitespace between words): the method's "anything else".
NO_WORD_PRIORITY = {"constituency": -7.0, "keybert": priorities.UNSCORED, "keybert_no_stopword": priorities.UNSCORED}

# Documents annotated together (spaCy batches, one KeyBERT call); a batch also holds at most
# annotate.max_doc_chars characters (one longer document goes alone), so many long documents in a row cost
# no more memory than the longest of them.
DOCS_PER_BATCH = 256

ANNOT_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("priority", pa.list_(pa.float32()))]
)


@dataclass
class Words:
    """The words of one document: character spans and what the priority rules read."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    is_stop: list[bool] = field(default_factory=list)
    is_sentence_period: list[bool] = field(default_factory=list)

    def extend(self, doc, offset: int, with_sentences: bool) -> None:
        sentence_periods = set()
        if with_sentences:
            for sent in doc.sents:
                content = [t for t in sent if not t.is_space]
                if content and content[-1].text == ".":
                    sentence_periods.add(content[-1].i)
        for tok in doc:
            self.starts.append(offset + tok.idx)
            self.ends.append(offset + tok.idx + len(tok.text))
            self.texts.append(tok.text)
            self.tags.append(tok.tag_)
            self.is_stop.append(tok.is_stop)
            self.is_sentence_period.append(tok.i in sentence_periods)


def split_long_text(text: str, max_chars: int) -> list[tuple[int, str]]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters at whitespace: [(offset, piece)]."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        cut = max(text.rfind("\n", start, start + max_chars), text.rfind(" ", start, start + max_chars))
        if cut <= start:  # no whitespace in the window: cut hard rather than fail
            cut = start + max_chars
        pieces.append((start, text[start:cut]))
        start = cut
    pieces.append((start, text[start:]))
    return pieces


def load_spacy(model: str, method: str):
    """The spaCy pipeline ``model`` with only the components ``method`` needs."""
    import spacy

    nlp = spacy.load(model)
    keep = SPACY_COMPONENTS[method]
    missing = [c for c in keep if c not in nlp.pipe_names]
    if missing:
        raise ValueError(f"annotate.spacy_model {model!r} lacks component(s) {missing} needed by {method}")
    nlp = spacy.load(model, exclude=[c for c in nlp.pipe_names if c not in keep])
    nlp.max_length = max(nlp.max_length, 10**7)  # we cut long documents ourselves
    return nlp


def token_priorities(offsets: np.ndarray, words: Words, word_priority: list[float], text_len: int, fallback: float):
    """Each token's priority = that of the word holding its first non-space character.

    ``offsets``: [n_tokens, 2] character spans from the tokenizer.
    """
    char_word = np.full(text_len + 1, -1, dtype=np.int64)
    for w, (s, e) in enumerate(zip(words.starts, words.ends)):
        char_word[s:e] = w
    prio = np.full(len(offsets), fallback, dtype=np.float32)
    word_prio = np.asarray(word_priority, dtype=np.float32)
    for t, (s, e) in enumerate(offsets):
        owners = char_word[s:e]
        owners = owners[owners >= 0]
        if len(owners):
            prio[t] = word_prio[owners[0]]
    return prio


class Annotator:
    """Holds the models of one method and turns batches of documents into (input_ids, priority)."""

    def __init__(self, method: str, tokenizer, spacy_model: str, keybert_model: str | None, max_doc_chars: int):
        if method not in priorities.METHODS:
            raise ValueError(f"unknown annotation method {method!r}; expected one of {priorities.METHODS}")
        self.method = method
        self.tokenizer = tokenizer
        self.nlp = load_spacy(spacy_model, method)
        self.max_doc_chars = max_doc_chars
        self.scorer = None
        if method.startswith("keybert"):
            from preprocess.keywords import KeywordScorer, load_keybert

            self.scorer = KeywordScorer(load_keybert(keybert_model))

    def words(self, texts: list[str], batch_size: int) -> list[Words]:
        """spaCy words of each text, long texts annotated in pieces of at most ``max_doc_chars`` characters.

        spaCy's memory grows with the characters of the batch it runs at once (about 3.7 KB per character
        with tok2vec, bench/README.md "Annotate memory"), so a batch holds at most ``batch_size`` pieces
        and at most ``max_doc_chars`` characters: spaCy's share of the peak is bounded by the piece size,
        whatever the document size.
        """
        pieces = [
            (d, offset, piece)
            for d, text in enumerate(texts)
            for offset, piece in split_long_text(text, self.max_doc_chars)
        ]
        out = [Words() for _ in texts]
        for batch in bounded_batches([len(p) for _, _, p in pieces], batch_size, self.max_doc_chars):
            chunk = pieces[batch]
            docs = self.nlp.pipe([p for _, _, p in chunk], batch_size=len(chunk))
            for (d, offset, _), doc in zip(chunk, docs):
                out[d].extend(doc, offset, with_sentences=self.method == "keybert_no_stopword")
        return out

    def word_priorities(self, texts: list[str], words: list[Words]) -> list[list[float]]:
        if self.method == "constituency":
            return [priorities.constituency_priorities(w.tags, w.is_stop) for w in words]
        scores = self.scorer.score(texts, [w.texts for w in words])
        if self.method == "keybert":
            return [priorities.keybert_priorities(s) for s in scores]
        return [
            priorities.keybert_no_stopword_priorities(s, w.is_stop, w.is_sentence_period) for s, w in zip(scores, words)
        ]

    def annotate(self, texts: list[str], batch_size: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """(input_ids int32, priority float32, n_words) for each text."""
        words = self.words(texts, batch_size)
        word_prio = self.word_priorities(texts, words)
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, w, wp, ids, offsets in zip(texts, words, word_prio, enc["input_ids"], enc["offset_mapping"]):
            prio = token_priorities(np.asarray(offsets).reshape(-1, 2), w, wp, len(text), NO_WORD_PRIORITY[self.method])
            out.append((np.asarray(ids, dtype=np.int32), prio, len(w.texts)))
        return out


def bounded_batches(sizes: list[int], max_items: int, max_chars: int) -> Iterator[slice]:
    """Consecutive runs of items, each with at most ``max_items`` items and at most ``max_chars`` summed
    ``sizes`` (an item larger than ``max_chars`` forms a batch of its own)."""
    start, chars = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start == max_items or chars + size > max_chars):
            yield slice(start, i)
            start, chars = i, 0
        chars += size
    if start < len(sizes):
        yield slice(start, len(sizes))


def annotate_shard(annotator: Annotator, input_path: str | Path, out_path: str | Path, batch_size: int) -> dict:
    """Annotate every document of one raw shard; write the Parquet and its stats atomically."""
    t0 = time.perf_counter()
    table = read_parquet(input_path, ["doc_id", "text"])
    doc_ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    skipped = Counter()
    keep = []
    for i, text in enumerate(texts):
        if text is None or not text.strip():
            skipped["empty"] += 1
        else:
            keep.append(i)
    rows = {"doc_id": [], "input_ids": [], "priority": []}
    n_words = n_tokens = 0
    with tqdm(total=len(keep), desc=f"annotate {annotator.method} {Path(input_path).name}", unit="doc") as bar:
        for batch in bounded_batches([len(texts[i]) for i in keep], DOCS_PER_BATCH, annotator.max_doc_chars):
            idx = keep[batch]
            for i, (ids, prio, words) in zip(idx, annotator.annotate([texts[i] for i in idx], batch_size)):
                if len(ids) == 0:
                    skipped["no_tokens"] += 1
                    continue
                rows["doc_id"].append(doc_ids[i])
                rows["input_ids"].append(ids)
                rows["priority"].append(prio)
                n_words += words
                n_tokens += len(ids)
            bar.update(len(idx))
    write_parquet(pa.table(rows, schema=ANNOT_SCHEMA), out_path)
    stats = {
        "input": str(input_path),
        "method": annotator.method,
        "documents_in": len(texts),
        "documents_written": len(rows["doc_id"]),
        "skipped": dict(sorted(skipped.items())),
        "words": n_words,
        "tokens": n_tokens,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if annotator.scorer is not None:
        stats["words_embedded"] = annotator.scorer.embedded_words
    write_json(stats, stats_path(out_path))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline config (read with common.config.load_config)")
    parser.add_argument("--method", required=True, choices=priorities.METHODS)
    parser.add_argument("--input", required=True, help="raw shard (Parquet: doc_id, text)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)["annotate"]

    import torch
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(cfg["threads"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    annotator = Annotator(args.method, tokenizer, cfg["spacy_model"], cfg["keybert_model"], cfg["max_doc_chars"])
    stats = annotate_shard(annotator, args.input, args.out, cfg["batch_size"])
    print(f"{args.out}: {stats['documents_written']}/{stats['documents_in']} documents, {stats['tokens']} tokens")


if __name__ == "__main__":
    main()
