"""Zero-shot corpora from local files in their own release formats (preprocess/zero_shot.py), and the zero-shot
table (eval/zero_shot.py). The whole path through the DAG runs in the wikihow and paper twins
(tests/test_wikihow_twin.py, tests/test_twins.py)."""

import json

import pyarrow.parquet as pq
import pytest

from common.io import InputError
from eval.zero_shot import table_rows
from preprocess.zero_shot import build

WIKITEXT = [  # WikiText-2 raw rows, as wiki.valid.raw holds them
    " = Robert Boulter = \n",
    " \n",
    " Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role \n",
    " \n",
    " = = Career = = \n",
    " \n",
    " In 2000 Boulter had a guest @-@ starring role on the television series The Bill ; \n",
    " = Du Fu = \n",
    " \n",
    " Du Fu ( 712 – 770 ) was a prominent Chinese poet of the Tang dynasty . \n",
]
PTB = [  # ptb.valid.txt: one lower-cased tokenized sentence per line, numbers as N, rare words <unk>
    " consumers may want to move their telephones a little closer to the tv set \n",
    " <unk> <unk> watching abc 's monday night football can now vote during <unk> for the greatest play in N years \n",
    " \n",
    " it does n't cost much \n",
]
LAMBADA = [{"text": f"passage {i} ends with the word it needs to guess number {i}"} for i in range(20)]


def corpus(name, path, max_docs=None):
    return {"name": name, "path": str(path), "max_docs": max_docs}


def documents(tmp_path, name, file, max_docs=None):
    out = tmp_path / "out" / name / "shard_00000.parquet"
    stats = build(name, corpus(name, file, max_docs), str(out), progress=False)
    return pq.read_table(out).to_pylist(), stats


def test_wikitext_rows_become_detokenized_articles(tmp_path):
    file = tmp_path / "wiki.valid.txt"
    file.write_text("".join(WIKITEXT))
    rows, stats = documents(tmp_path, "wikitext2", file)
    assert [r["doc_id"] for r in rows] == ["validation/0", "validation/1"]  # two " = Title = " heads
    first = rows[0]["text"]
    assert first.startswith(" = Robert Boulter =\n") and "== Career ==" in first
    assert "guest-starring" in first and " @-@ " not in first and "film, television" in first
    assert rows[1]["text"].startswith(" = Du Fu =") and "(712 – 770)" in rows[1]["text"]
    assert stats["documents_written"] == 2 and stats["detokenizer"] == "wikitext" and stats["source"] == str(file)


def test_ptb_lines_become_detokenized_sentences_and_blank_lines_are_counted(tmp_path):
    file = tmp_path / "ptb.valid.txt"
    file.write_text("".join(PTB))
    rows, stats = documents(tmp_path, "ptb", file)
    texts = [r["text"] for r in rows]
    assert len(texts) == 3 and "abc's monday" in texts[1] and " 1 years" in texts[1] and "doesn't" in texts[2]
    assert stats["documents_read"] == 4 and stats["skipped"] == {"empty": 1}  # nothing lost silently


def test_every_lambada_passage_is_read_none_held_out(tmp_path):
    """As a training corpus LAMBADA is hash-split (preprocess/corpus.py); as a zero-shot corpus all of it counts."""
    file = tmp_path / "lambada_test.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in LAMBADA))
    rows, stats = documents(tmp_path, "lambada", file)
    assert len(rows) == len(LAMBADA) == stats["documents_written"]
    rows, stats = documents(tmp_path, "lambada", file, max_docs=5)
    assert len(rows) == 5


def test_bad_local_files_name_the_file_and_line(tmp_path):
    file = tmp_path / "lambada_test.jsonl"
    file.write_text(json.dumps(LAMBADA[0]) + "\n{not json\n")
    with pytest.raises(InputError, match=r"lambada_test.jsonl: line 2 is not JSON"):
        documents(tmp_path, "lambada", file)
    file.write_text(json.dumps({"passage": "x"}) + "\n")
    with pytest.raises(InputError, match=r"line 1 has no field 'text'"):
        documents(tmp_path, "lambada", file)
    with pytest.raises(InputError, match="does not exist"):
        documents(tmp_path, "ptb", tmp_path / "missing.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.md").write_text("x")
    with pytest.raises(InputError, match="no .txt, .jsonl, .parquet file"):
        documents(tmp_path, "ptb", tmp_path / "folder")


def metrics(tmp_path, run, objective, corpus, nelbo, tokens=64, blocks=2):
    path = tmp_path / "runs" / run / "eval" / "zero_shot" / f"{corpus}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    total = {"nelbo": nelbo, "ppl": 2.718281828459045**nelbo, "tokens": tokens, "blocks": blocks}
    result = {
        "run": run,
        "objective": objective,
        "stages": {"stage3": {"tokens": tokens}},
        "total": total,
        "provenance": {"settings_digest": "0123456789abcdef", "code_commit": "abc1234"},
    }
    path.write_text(json.dumps(result))
    return str(path)


def test_the_table_puts_each_corpus_s_diffusion_rows_then_the_exact_ar_row(tmp_path):
    stats = {
        "wikitext2": {"documents_written": 4, "source": "Salesforce/wikitext", "detokenizer": "wikitext"},
        "ptb": {"documents_written": 120, "source": "hub/ptb/ptb.valid.txt", "detokenizer": "ptb"},
    }
    files = [
        metrics(tmp_path, "ar", "ar", "ptb", 4.0),
        metrics(tmp_path, "single", "mdlm", "ptb", 4.5),
        metrics(tmp_path, "single", "mdlm", "wikitext2", 5.0, tokens=96, blocks=3),
        metrics(tmp_path, "ar", "ar", "wikitext2", 4.2, tokens=96, blocks=3),
    ]
    rows = table_rows(files, stats)
    assert [(r["corpus"], r["run"], r["bound"]) for r in rows] == [
        ("wikitext2", "single", "NELBO (upper bound)"),
        ("wikitext2", "ar", "NLL (exact)"),
        ("ptb", "single", "NELBO (upper bound)"),
        ("ptb", "ar", "NLL (exact)"),
    ]
    assert rows[0]["block_length"] == 32 and rows[2]["documents"] == 120 and rows[2]["source"].endswith(".txt")
    assert rows[3]["ppl"] == pytest.approx(2.718281828459045**4.0)
    with pytest.raises(InputError, match="not one of the zero-shot corpora"):
        table_rows([metrics(tmp_path, "ar", "ar", "lm1b", 4.0)], stats)
