"""Preprocessing benchmark: words/s of annotation per method, the seeds' approach against preprocess.annotate,
on the same documents, in the same process, on one CPU core; plus Snakemake planning time at 1,024 shards.

    python bench/preprocess.py --docs 40 --unit topic --json bench/preprocess_topics.json
    python bench/preprocess.py --docs 300 --unit paragraph --no-plan
    python bench/preprocess.py --plan-only --plan-shards 1024

The seeds' approach, re-expressed here (``Slow*``): for every document on its own, the full spaCy pipeline
(tok2vec, tagger, parser, attribute_ruler, lemmatizer, ner: no component disabled), and for the KeyBERT
methods ``KeyBERT.extract_keywords(doc, candidates=<every word of the doc>, top_n=<longest doc's word
count>, stop_words=None)``, which embeds every candidate word afresh for every document. The fast path is
``preprocess.annotate.Annotator`` (spaCy with only the components a method needs, run with ``nlp.pipe``;
word embeddings cached across documents in ``preprocess.keywords.KeywordScorer``). Both sides turn spaCy
words into word priorities with the same functions of ``preprocess.priorities``; BPE tokenization (the same
on both sides) is not timed.

    words/s = spaCy words of all documents / CPU seconds; speed-up = slow CPU seconds / fast CPU seconds
    (one thread does the work, so CPU seconds are the seconds on an idle core; wall-clock is reported too).

Any exact KeyBERT path must still embed every document once (KeyBERT's E(d)), so slow seconds / the CPU seconds
of embedding the documents alone is reported as the ceiling an exact fast path can reach on these documents.

The fast KeyBERT path starts with an empty word cache, so its figure includes embedding every distinct word
of the sample once; the sample is small, so that is pessimistic for a real shard. The "warm cache" figure
reruns the same documents with every word cached: the cost per document deep into a large shard.

Exactness check (keybert, keybert_no_stopword): the slow priorities are computed from the cosine KeyBERT
ranks by, taken unrounded from the embeddings ``extract_keywords`` itself computes (``model.embed`` is
wrapped to record them; ``extract_keywords`` reports scores rounded to 4 decimals), and compared word by
word with the fast priorities: max |fast - slow| (target <= 1e-5), the same against the rounded scores (at
most 5e-5 plus float noise), and the number of words scored on one side only. Model loading is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One core: set before torch / numpy start their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "1" if _var != "TOKENIZERS_PARALLELISM" else "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.config import load_config  # noqa: E402
from preprocess import priorities  # noqa: E402
from preprocess.annotate import Annotator, Words  # noqa: E402

KEYBERT_METHODS = ("keybert", "keybert_no_stopword")


def load_documents(n_docs: int, input_path: str | None, unit: str = "topic") -> list[str]:
    """``n_docs`` documents spread evenly over a raw shard, or over the pydoc corpus by ``unit``:
    ``topic`` (a whole reference-manual topic, ~1,000 words: the length of an OpenWebText page, the seeds'
    corpus) or ``paragraph`` (the pipeline's pydoc documents, ~40 words)."""
    if input_path:
        from common.io import read_parquet

        texts = read_parquet(input_path, ["text"]).column("text").to_pylist()
    elif unit == "topic":
        from pydoc_data.topics import topics

        texts = [topics[name] for name in sorted(topics)]
    else:
        from preprocess.corpus import pydoc_documents

        texts = [d.text for d in pydoc_documents() if hasattr(d, "text")]
    texts = [t for t in texts if t and t.strip()]
    stride = max(1, len(texts) // n_docs)
    return texts[::stride][:n_docs]


class RecordingEmbedder:
    """Wraps KeyBERT's backend so that the embeddings ``extract_keywords`` computes can be read back."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: list[np.ndarray] = []

    def embed(self, documents, *args, **kwargs):
        vectors = self.backend.embed(documents, *args, **kwargs)
        self.calls.append(vectors)
        return vectors

    def __getattr__(self, name):
        return getattr(self.backend, name)


class SlowAnnotator:
    """The seeds' approach: the full spaCy pipeline and ``extract_keywords`` called once per document."""

    def __init__(self, method: str, nlp_full, keybert=None, top_n: int = 0):
        self.method, self.nlp, self.top_n = method, nlp_full, top_n
        self.kw = keybert
        if keybert is not None:
            self.recorder = RecordingEmbedder(keybert.model)
            keybert.model = self.recorder

    def annotate(self, text: str):
        """(word priorities, priorities from KeyBERT's rounded scores or None, number of words)."""
        doc = self.nlp(text)
        words = Words()
        words.extend(doc, 0, with_sentences=self.method == "keybert_no_stopword")
        if self.method == "constituency":
            return priorities.constituency_priorities(words.tags, words.is_stop), None, len(words.texts)
        candidates = sorted({w.lower() for w in words.texts})
        self.recorder.calls.clear()
        keywords = self.kw.extract_keywords(text, candidates=candidates, top_n=self.top_n, stop_words=None)
        rounded = dict(keywords)
        exact = {}
        if keywords:
            from sklearn.metrics.pairwise import cosine_similarity

            doc_vector, word_vectors = self.recorder.calls  # extract_keywords embeds the doc, then the words
            index = {c: i for i, c in enumerate(candidates)}
            for word in rounded:
                exact[word] = float(cosine_similarity(doc_vector.reshape(1, -1), word_vectors[index[word]][None])[0, 0])
        return (
            self.priorities([exact.get(w.lower()) for w in words.texts], words),
            self.priorities([rounded.get(w.lower()) for w in words.texts], words),
            len(words.texts),
        )

    def priorities(self, scores, words: Words):
        if self.method == "keybert":
            return priorities.keybert_priorities(scores)
        return priorities.keybert_no_stopword_priorities(scores, words.is_stop, words.is_sentence_period)


class Timer:
    """Wall-clock and CPU seconds of a block. One thread runs the work, so CPU seconds are what the block
    would take on an idle core even when other jobs share the machine; wall-clock is reported beside."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def run_slow(slow: SlowAnnotator, texts: list[str]):
    exact, rounded, n_words = [], [], 0
    with Timer() as timer:
        for text in tqdm(texts, desc=f"slow {slow.method}", unit="doc"):
            e, r, n = slow.annotate(text)
            exact.append(e)
            rounded.append(r)
            n_words += n
    return timer, exact, rounded, n_words


def run_fast(fast: Annotator, texts: list[str], batch_docs: int, spacy_batch: int):
    """``Annotator.words`` + ``word_priorities`` over batches of documents, as ``annotate_shard`` runs them."""
    out, n_words = [], 0
    with Timer() as timer:
        for start in tqdm(range(0, len(texts), batch_docs), desc=f"fast {fast.method}", unit="batch"):
            batch = texts[start : start + batch_docs]
            words = fast.words(batch, spacy_batch)
            out.extend(fast.word_priorities(batch, words))
            n_words += sum(len(w.texts) for w in words)
    return timer, out, n_words


def compare(fast: list[list[float]], slow: list[list[float]]) -> dict:
    """Word-by-word differences between two priority lists of the same documents."""
    max_diff, n, length_mismatch, one_sided = 0.0, 0, 0, 0
    for f, s in zip(fast, slow):
        if len(f) != len(s):
            length_mismatch += 1
            continue
        f, s = np.asarray(f, dtype=np.float64), np.asarray(s, dtype=np.float64)
        # "Unscored" (-1.2) on one side only means the two paths disagree on which words KeyBERT scores.
        one_sided += int(np.sum((f == priorities.UNSCORED) != (s == priorities.UNSCORED)))
        if len(f):
            max_diff = max(max_diff, float(np.max(np.abs(f - s))))
        n += len(f)
    return {
        "words_compared": n,
        "max_abs_diff": max_diff,
        "docs_with_different_words": length_mismatch,
        "words_scored_on_one_side_only": one_sided,
    }


def bench_method(method: str, texts: list[str], config: dict, nlp_full, tokenizer, batch_docs: int) -> dict:
    import torch

    torch.set_num_threads(1)
    cfg = config["annotate"]
    fast = Annotator(method, tokenizer, cfg["spacy_model"], cfg["keybert_model"], cfg["max_doc_chars"])
    keybert = None
    if method in KEYBERT_METHODS:
        from preprocess.keywords import load_keybert

        keybert = load_keybert(cfg["keybert_model"])
    top_n = max(len(nlp_full.make_doc(t)) for t in texts)  # the longest document's word count
    slow = SlowAnnotator(method, nlp_full, keybert, top_n)
    # Warm both paths on one document so that lazy initialisation is not timed.
    slow.annotate(texts[0])
    fast.word_priorities(texts[:1], fast.words(texts[:1], 1))
    if fast.scorer is not None:
        fast.scorer.cache.clear()
        fast.scorer.embedded_words = 0

    slow_t, slow_exact, slow_rounded, n_words = run_slow(slow, texts)
    fast_t, fast_prio, fast_words = run_fast(fast, texts, batch_docs, cfg["batch_size"])
    result = {
        "method": method,
        "documents": len(texts),
        "words": n_words,
        "slow_cpu_seconds": round(slow_t.cpu, 3),
        "fast_cpu_seconds": round(fast_t.cpu, 3),
        "slow_words_per_cpu_s": round(n_words / slow_t.cpu, 1),
        "fast_words_per_cpu_s": round(fast_words / fast_t.cpu, 1),
        "speedup": round(slow_t.cpu / fast_t.cpu, 2),
        "slow_wall_seconds": round(slow_t.wall, 3),
        "fast_wall_seconds": round(fast_t.wall, 3),
        "speedup_wall": round(slow_t.wall / fast_t.wall, 2),
    }
    if fast_words != n_words:
        result["fast_words"] = fast_words
    exact = compare(fast_prio, slow_exact)
    if method == "constituency":
        result["labels_differing"] = sum(
            int(np.sum(np.asarray(f) != np.asarray(s))) for f, s in zip(fast_prio, slow_exact) if len(f) == len(s)
        )
        result["check"] = exact
    else:
        result["check_vs_unrounded"] = exact
        result["check_vs_extract_keywords_rounded"] = compare(fast_prio, slow_rounded)
        result["words_embedded_fast"] = fast.scorer.embedded_words
        # The same documents again with every word already cached: the per-document cost deep into a large
        # shard, where almost every word has been seen (reported separately, never as the headline).
        warm_t, warm_prio, _ = run_fast(fast, texts, batch_docs, cfg["batch_size"])
        result["fast_warm_cache_cpu_seconds"] = round(warm_t.cpu, 3)
        result["fast_warm_cache_words_per_cpu_s"] = round(fast_words / warm_t.cpu, 1)
        result["speedup_warm_cache"] = round(slow_t.cpu / warm_t.cpu, 2)
        result["check_warm_cache_vs_unrounded"] = compare(warm_prio, slow_exact)
        # The part no exact method can skip: one embedding of every document (KeyBERT's E(d)). Its CPU time
        # bounds the speed-up any exact fast path can reach: slow seconds / these seconds.
        with Timer() as embed_t:
            fast.scorer.kw.model.embed(list(texts))
        result["document_embedding_cpu_seconds"] = round(embed_t.cpu, 3)
        result["speedup_ceiling_exact"] = round(slow_t.cpu / embed_t.cpu, 2)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def plan_seconds(paper_config: Path, shards: int, snakemake: str) -> dict:
    """Seconds for ``snakemake -n`` to plan the paper profile at ``shards`` shards per split.

    The shard counts go in a second ``--configfile`` (merged key by key over the first): ``--config
    corpus='{shards: {train: 1024}}'`` cannot work, because Snakemake reads a nested ``--config`` value with
    YAML's BaseLoader, so 1024 arrives as the string '1024' and the schema rightly rejects it.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="plan-shards-", delete=False) as f:
        yaml.safe_dump({"corpus": {"shards": {"train": shards, "validation": shards}}}, f)
    cmd = [snakemake, "-n", "--cores", "1", "--quiet", "rules", "--configfile", str(paper_config), f.name]
    try:
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    jobs = None
    for line in (done.stdout + done.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    return {
        "command": " ".join(cmd[:-1] + [f"<(corpus.shards = {shards} per split)>"]),
        "shards": shards,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "jobs": jobs,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| method | docs | words | seeds' approach words/s | fast words/s | speed-up | speed-up (wall) |"
        " warm-cache speed-up | exact ceiling |"
        " max abs diff (unrounded) | max abs diff (rounded) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        unrounded = r.get("check_vs_unrounded", {}).get("max_abs_diff")
        rounded = r.get("check_vs_extract_keywords_rounded", {}).get("max_abs_diff")
        if r["method"] == "constituency":
            unrounded = f"{r['labels_differing']} labels differ"
            rounded = "-"
        else:
            unrounded, rounded = f"{unrounded:.2e}", f"{rounded:.2e}"
        lines.append(
            f"| {r['method']} | {r['documents']} | {r['words']} | {r['slow_words_per_cpu_s']:.0f} | "
            f"{r['fast_words_per_cpu_s']:.0f} | {r['speedup']:.1f}x | {r['speedup_wall']:.1f}x | "
            f"{str(r['speedup_warm_cache']) + 'x' if 'speedup_warm_cache' in r else '-'} | "
            f"{str(r['speedup_ceiling_exact']) + 'x' if 'speedup_ceiling_exact' in r else '-'} | "
            f"{unrounded} | {rounded} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"), help="annotate: settings (models, batch)")
    parser.add_argument("--docs", type=int, default=40, help="documents, spread evenly over the input")
    parser.add_argument("--input", help="a raw shard to read documents from (default: the pydoc corpus)")
    parser.add_argument(
        "--unit",
        choices=["topic", "paragraph"],
        default="topic",
        help="without --input: pydoc topics (long documents) or paragraphs (short ones)",
    )
    parser.add_argument("--methods", nargs="+", default=list(priorities.METHODS), choices=priorities.METHODS)
    parser.add_argument("--spacy-model", help="override annotate.spacy_model")
    parser.add_argument("--keybert-model", help="override annotate.keybert_model")
    parser.add_argument("--batch-docs", type=int, default=256, help="documents per fast-path batch")
    parser.add_argument("--plan-shards", type=int, default=1024)
    parser.add_argument("--paper-config", default=str(ROOT / "configs" / "paper.yaml"))
    parser.add_argument("--snakemake", default=str(Path(sys.executable).with_name("snakemake")))
    parser.add_argument("--plan-only", action="store_true", help="only time snakemake -n")
    parser.add_argument("--no-plan", action="store_true", help="skip timing snakemake -n")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args(argv)

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}",
        "threads": 1,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.plan_only:
        import spacy
        import torch

        torch.set_num_threads(1)
        config = load_config(args.config)
        if args.spacy_model:
            config["annotate"]["spacy_model"] = args.spacy_model
        if args.keybert_model:
            config["annotate"]["keybert_model"] = args.keybert_model
        texts = load_documents(args.docs, args.input, args.unit)
        report["documents"] = args.input or f"pydoc {args.unit}s"
        nlp_full = spacy.load(config["annotate"]["spacy_model"])  # every component, as the seeds ran it
        report["spacy_model"] = config["annotate"]["spacy_model"]
        report["spacy_components"] = nlp_full.pipe_names
        report["keybert_model"] = config["annotate"]["keybert_model"]
        report["methods"] = []
        for method in args.methods:
            result = bench_method(method, texts, config, nlp_full, None, args.batch_docs)
            print(json.dumps(result), flush=True)
            report["methods"].append(result)
        print(markdown(report["methods"]))
    if not args.no_plan:
        report["plan"] = plan_seconds(Path(args.paper_config), args.plan_shards, args.snakemake)
        print(json.dumps(report["plan"]))
    if args.json:
        with tempfile.NamedTemporaryFile("w", dir=Path(args.json).parent, delete=False, suffix=".tmp") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(f.name, args.json)


if __name__ == "__main__":
    main()
