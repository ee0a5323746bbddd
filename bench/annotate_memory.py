"""Annotate memory: peak RSS of one annotate job against piece size (``annotate.max_doc_chars``) and
document size, for each method, with the configured models.

    python bench/annotate_memory.py --methods constituency keybert keybert_no_stopword \
        --piece-chars 10000 100000 1000000 --doc-chars 1000000 --json /tmp/annotate_memory.json
    python bench/annotate_memory.py --methods constituency --piece-chars 10000 100000 --one-piece

Every piece size runs against every document size; ``--one-piece`` instead makes each document exactly one
piece long (document chars = piece chars), which isolates the cost of the piece.

Every case is one real job, ``python -m preprocess.annotate`` in a subprocess of its own, exactly as the
``annotate`` rule runs it (the repository's ``config.yaml`` with ``annotate.max_doc_chars`` set to the piece
size), on a raw shard that holds one document of ``doc chars`` characters: the pydoc reference manual
(``pydoc_data.topics``, topics in sorted order, blank lines between them) repeated and cut at that length.
The tokenizer is a 2,048-token byte-level BPE trained on the same text, as the demo trains it.

    peak RSS = ru_maxrss of that one child, read with os.wait4 (Linux: KiB; reported in MB = 10^6 bytes)

so the figure covers the whole job: Python, torch, spaCy and the embedder loaded, the shard read, the
annotation and the write. ``--repo`` runs the module from another checkout (e.g. an older commit unpacked
with ``git archive``) on the same inputs, for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import yaml  # noqa: E402

from common.config import load_config  # noqa: E402
from common.io import write_parquet  # noqa: E402
from preprocess import priorities  # noqa: E402
from preprocess.annotate import split_long_text  # noqa: E402

MB = 10**6


def pydoc_text(n_chars: int) -> str:
    """The pydoc topics in sorted order, blank lines between them, repeated and cut to ``n_chars``."""
    from pydoc_data.topics import topics

    corpus = "\n\n".join(topics[name] for name in sorted(topics))
    repeats = -(-n_chars // len(corpus))
    return ("\n\n".join([corpus] * repeats))[:n_chars]


def make_tokenizer(folder: Path) -> Path:
    """The demo's kind of tokenizer: a 2,048-token byte-level BPE trained on the pydoc topics."""
    from pydoc_data.topics import topics

    from preprocess.tokenizer import train_bpe

    train_bpe([list(topics.values())], vocab_size=2048, min_frequency=2).save_pretrained(str(folder))
    return folder


def make_shard(folder: Path, n_chars: int) -> Path:
    path = folder / f"doc_{n_chars}.parquet"
    if not path.exists():
        write_parquet(pa.table({"doc_id": ["big/0"], "text": [pydoc_text(n_chars)]}), path)
    return path


def make_config(folder: Path, base: Path, piece_chars: int) -> Path:
    """``base`` read as a job reads it (defaults applied), with ``annotate.max_doc_chars`` = ``piece_chars``."""
    config = load_config(base)
    config["annotate"]["max_doc_chars"] = piece_chars
    path = folder / f"config_{piece_chars}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def run_job(repo: Path, config: Path, method: str, shard: Path, tokenizer: Path, out: Path) -> dict:
    """One annotate job in a child process: its peak RSS (MB), wall seconds and exit status."""
    cmd = [
        sys.executable,
        "-m",
        "preprocess.annotate",
        "--config",
        str(config),
        "--method",
        method,
        "--input",
        str(shard),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
    result = {
        "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB),
        "wall_s": round(time.perf_counter() - t0, 1),
        "returncode": child.returncode,
    }
    if child.returncode != 0:
        result["log_tail"] = tail
    return result


def markdown(rows: list[dict]) -> str:
    lines = [
        "| method | piece chars (max_doc_chars) | document chars | pieces | peak RSS MB | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['piece_chars']:,} | {r['doc_chars']:,} | {r['pieces']} | "
            f"{r['peak_rss_mb']:,} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", required=True, choices=priorities.METHODS)
    parser.add_argument("--piece-chars", type=int, nargs="+", required=True, help="annotate.max_doc_chars values")
    parser.add_argument("--doc-chars", type=int, nargs="+", default=[], help="document sizes, in characters")
    parser.add_argument("--one-piece", action="store_true", help="one document per piece size, that long")
    parser.add_argument("--config", default=str(ROOT / "config.yaml"), help="base config (models, batch size)")
    parser.add_argument("--repo", default=str(ROOT), help="checkout whose preprocess.annotate runs")
    parser.add_argument("--workdir", help="keep inputs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    if not args.one_piece and not args.doc_chars:
        parser.error("give --doc-chars or --one-piece")

    with tempfile.TemporaryDirectory(prefix="annotate-memory-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = work / "tokenizer"
        if not tokenizer.exists():
            make_tokenizer(tokenizer)
        rows = []
        for method in args.methods:
            for piece in args.piece_chars:
                config = make_config(work, Path(args.config), piece)
                for n_chars in [piece] if args.one_piece else args.doc_chars:
                    shard = make_shard(work, n_chars)
                    job = run_job(Path(args.repo), config, method, shard, tokenizer, work / "out.parquet")
                    row = {
                        "method": method,
                        "piece_chars": piece,
                        "doc_chars": n_chars,
                        "pieces": len(split_long_text(pydoc_text(n_chars), piece)),
                        **job,
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print(markdown(rows))
    if args.json:
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
            "repo": args.repo,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(r["returncode"] != 0 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
