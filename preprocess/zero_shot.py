"""The evaluation text of a zero-shot corpus -> one raw shard (``doc_id, text``) and its stats.json.

MDLM, SEDD and their followers report the validation bound of a model on corpora it was not trained on. A
zero-shot corpus (the ``zero_shot.corpora`` section of the config) is one of the hub corpora of
``preprocess.corpus`` (HUB_CORPORA: wikitext2, wikitext103, ptb, lm1b, lambada, ...), read the way that module
reads its validation split, with the corpus's own document grouping and detokenizer:

    wikitext2 / wikitext103   the validation split; rows regrouped into articles at each " = Title = " row, then
                              the wikitext detokenizer (" @-@ " -> "-", " , " -> ", ", ...)
    ptb                       the validation split, one sentence per document, the ptb detokenizer
                              (" 's" -> "'s", "<unk>" kept, " n't" -> "n't", ...)
    lm1b                      the test split (LM1B has no validation), one sentence per document, lm1b's
    lambada                   every passage of the test set (LAMBADA is one test split; as a zero-shot corpus
                              nothing of it is held out for training), the lambada detokenizer

``path`` replaces the hub with local files in the corpus's own release format, read into the same rows the
hub dataset has, so the same grouping and detokenizer apply:

    .txt                      one row per line: WikiText's wiki.valid.raw rows (line breaks kept, as the hub
                              rows keep them), PTB's ptb.valid.txt sentences, LM1B's news.en-*-of-* sentences
    .jsonl                    one JSON object per line with the corpus's text field (LAMBADA's lambada_test.jsonl)
    .parquet                  rows with the corpus's text column (the hub's own Parquet files)

A folder is read file by file in sorted order. Every document read is written or skipped under a reason
(preprocess/corpus.py's accounting: empty, invalid_utf8, binary, not_text), in stats.json.

    python -m preprocess.zero_shot --config config.yaml --corpus wikitext2 \
        --out data/wikitext2/zero-shot-<tag>/raw/shard_00000.parquet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.config import ConfigError, load_config
from common.io import InputError
from preprocess.corpus import HUB_CORPORA, hub_documents, local_files, refuse_binary_file, write_split


def read_rows(file: Path, column: str, keep_linebreaks: bool) -> list:
    """The text rows of one local file, as the hub dataset has them in ``column``."""
    if file.suffix == ".parquet":
        from common.io import read_parquet

        table = read_parquet(file)
        if column not in table.column_names:
            raise InputError(f"{file}: no column {column!r}; it has {table.column_names}")
        return table.column(column).to_pylist()
    refuse_binary_file(file)
    # bytes that do not decode become U+FFFD here and are counted by preprocess.corpus.checked as text; a
    # row is the unit the hub has, so one bad byte does not cost a whole file
    lines = file.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=keep_linebreaks)
    if file.suffix == ".txt":
        return lines
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{file}: line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or column not in record:
            raise InputError(f"{file}: line {number} has no field {column!r} (expected one JSON object per line)")
        rows.append(record[column])
    return rows


def local_loader(path: str, name: str):
    """A stand-in for datasets.load_dataset that returns the local files' rows as hub corpus ``name``'s
    evaluation split (an in-memory datasets.Dataset with the corpus's text column)."""
    spec = HUB_CORPORA[name]

    def load(*_hub_location, split=None, **_options):
        import datasets

        files, _ = local_files(Path(path))  # preprocess.corpus's: .txt, .jsonl, .parquet, sorted; others ignored
        rows = [row for file in files for row in read_rows(file, spec.text_column, spec.wikitext_articles)]
        return datasets.Dataset.from_dict({spec.text_column: rows})

    return load


def zero_shot_documents(corpus: dict):
    """The documents (and counted skips) of one zero-shot corpus entry {name, path, max_docs}: the rows of its
    evaluation split (module docstring), from the hub or from ``path``."""
    name = corpus["name"]
    if name not in HUB_CORPORA:
        raise InputError(f"zero-shot corpus {name!r} is not a known corpus; known: {sorted(HUB_CORPORA)}")
    load = local_loader(corpus["path"], name) if corpus["path"] else None
    # hub_documents' validation rows: the hub's validation (test) split, or the held-out tail rows of a corpus
    # with one split; a hash holdout (lambada) is applied only when training on the corpus (corpus.split_items),
    # so here every row of it is read
    return hub_documents(name, "validation", load=load)


def build(label: str, corpus: dict, out: str, stats_path: str | None = None, progress: bool = True) -> dict:
    """Write zero-shot corpus ``label``'s documents into the shard ``out`` and its stats.json."""
    stats_path = stats_path or Path(out).parent / "stats.json"
    hub = HUB_CORPORA.get(corpus["name"])
    describe = {
        "zero_shot": label,
        "corpus": corpus["name"],
        "source": str(corpus["path"]) if corpus["path"] else (hub.path if hub else None),
        "detokenizer": hub.detokenizer if hub else None,
        "max_docs": corpus["max_docs"],
    }
    items = zero_shot_documents(corpus)
    return write_split(items, [out], stats_path, max_docs=corpus["max_docs"], describe=describe, progress=progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline config (read with common.config.load_config)")
    parser.add_argument("--corpus", required=True, help="a key of the config's zero_shot.corpora")
    parser.add_argument("--out", required=True, help="the raw shard to write")
    parser.add_argument("--stats", help="stats JSON (default: stats.json beside the shard)")
    args = parser.parse_args(argv)
    try:
        corpora = load_config(args.config)["zero_shot"]["corpora"]
        if args.corpus not in corpora:
            raise ConfigError(f"{args.config}: zero_shot.corpora has no {args.corpus!r}; it has {sorted(corpora)}")
        stats = build(args.corpus, corpora[args.corpus], args.out, args.stats)
    except (ConfigError, InputError) as err:
        parser.exit(2, f"preprocess.zero_shot: error: {err}\n")
    print(
        f"zero-shot {args.corpus} ({stats['corpus']} from {stats['source']}): {stats['documents_written']} of "
        f"{stats['documents_read']} documents, skipped {stats['skipped'] or 'none'}"
    )


if __name__ == "__main__":
    main()
