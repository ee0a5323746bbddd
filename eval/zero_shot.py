"""The zero-shot table (MDLM's): each single and AR run's validation bound on corpora it was not trained on.

One row per (corpus, run), from runs/{profile}/{run}/eval/zero_shot/{corpus}.json (eval.evaluate val --blocks) and
the corpus's raw stats.json (preprocess/zero_shot.py):

    nats_per_token  a diffusion run: the continuous-time NELBO per token of the corpus's blocks, an upper bound on
                    its NLL (eval/likelihood.py); an AR run: the exact NLL per token ([bos; x0], every token
                    predicted), so the AR row beside the diffusion rows is the number the bound is compared with
    ppl             exp(nats_per_token): a bound on the perplexity for a diffusion run, the perplexity for AR
    bound           "NELBO (upper bound)" | "NLL (exact)"
    tokens, blocks  what was scored: blocks of block_length tokens of the corpus wrapped end to end with the
                    config's tokenizer (MDLM's wrap; a block may span two documents, joined by EOS)
    documents, source, detokenizer   the corpus's provenance (hub dataset or local path), and the run's
                    settings digest and code commit

Perplexities are per token of the config's tokenizer: they compare runs of one config, not runs with other
tokenizers (MDLM's table is per GPT-2 token).

    python -m eval.zero_shot --metrics runs/demo/*/eval/zero_shot/*.json --corpus-stats data/.../raw/stats.json \
        --corpora wikitext2 --tables results/demo/tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.io import InputError
from eval.tables import write_run_table

COLUMNS = [
    "corpus",
    "run",
    "objective",
    "bound",
    "nats_per_token",
    "ppl",
    "tokens",
    "blocks",
    "block_length",
    "documents",
    "source",
    "detokenizer",
    "settings_digest",
    "code_commit",
]


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err})") from None


def table_rows(metrics: list[str], corpus_stats: dict[str, dict]) -> list[dict]:
    """The rows, by corpus (in the config's order) then run; a metrics file must sit at
    .../eval/zero_shot/{corpus}.json with {corpus} among ``corpus_stats``."""
    rows = []
    for path in metrics:
        corpus = Path(path).stem
        if corpus not in corpus_stats:
            raise InputError(f"{path}: corpus {corpus!r} is not one of the zero-shot corpora {sorted(corpus_stats)}")
        result, stats = read_json(path), corpus_stats[corpus]
        total = result.get("total")
        if not total or "nelbo" not in total:
            raise InputError(f"{path}: no total.nelbo (expected eval.evaluate val --blocks output)")
        exact = result["objective"] == "ar"
        rows.append(
            {
                "corpus": corpus,
                "run": result["run"],
                "objective": result["objective"],
                "bound": "NLL (exact)" if exact else "NELBO (upper bound)",
                "nats_per_token": total["nelbo"],
                "ppl": total["ppl"],
                "tokens": total["tokens"],
                "blocks": total["blocks"],
                "block_length": total["tokens"] // total["blocks"],  # wrap blocks: no padding, blocks > 0
                "documents": stats["documents_written"],
                "source": stats["source"],
                "detokenizer": stats.get("detokenizer"),
                "settings_digest": result["provenance"].get("settings_digest"),
                "code_commit": result["provenance"].get("code_commit"),
            }
        )
    order = {corpus: i for i, corpus in enumerate(corpus_stats)}
    return sorted(rows, key=lambda r: (order[r["corpus"]], r["objective"] == "ar", r["run"]))


def notes(rows: list[dict]) -> list[str]:
    """What the numbers are, and which corpus had fewest tokens (the noisiest row)."""
    lines = [
        "nats_per_token: a diffusion run's continuous-time NELBO (an upper bound on its NLL), an AR run's exact NLL, "
        "per token of this config's tokenizer; ppl = exp(nats_per_token). Blocks: the corpus wrapped end to end "
        "into the run's block length (eval/zero_shot.py).",
    ]
    if rows:
        fewest = min(rows, key=lambda r: r["tokens"])
        lines.append(
            f"Fewest tokens scored: {fewest['corpus']} ({fewest['tokens']} tokens, {fewest['blocks']} blocks)."
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.zero_shot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--metrics", nargs="+", required=True, help="runs/{profile}/{run}/eval/zero_shot/{corpus}.json")
    parser.add_argument("--corpus-stats", nargs="+", required=True, help="each zero-shot corpus's raw stats.json")
    parser.add_argument("--corpora", nargs="+", required=True, help="the corpus labels, in --corpus-stats' order")
    parser.add_argument("--tables", required=True, help="results/{profile}/tables")
    args = parser.parse_args(argv)
    if len(args.corpora) != len(args.corpus_stats):
        parser.error(f"{len(args.corpora)} --corpora for {len(args.corpus_stats)} --corpus-stats")
    try:
        stats = {label: read_json(path) for label, path in zip(args.corpora, args.corpus_stats)}
        rows = table_rows(args.metrics, stats)
    except InputError as err:
        parser.exit(2, f"eval.zero_shot: error: {err}\n")
    write_run_table(rows, COLUMNS, args.tables, "zero_shot", notes(rows))
    print(f"{args.tables}/zero_shot.md: {len(rows)} rows")


if __name__ == "__main__":
    main()
