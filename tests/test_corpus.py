"""Raw shards from every corpus source: rows, ids, splits, reruns, and each kind of bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from common.config import load_config
from common.io import InputError
from preprocess import corpus

ROOT = Path(__file__).resolve().parents[1]


def config(**overrides):
    """A corpus: section as a job reads it: every key set (common.config applies the schema's defaults)."""
    return {**load_config(ROOT / "config.yaml")["corpus"], **overrides}


def shard_paths(folder: Path, n: int):
    return [folder / f"shard_{i:05d}.parquet" for i in range(n)]


def rows(paths):
    return [row for p in paths for row in pq.read_table(p).to_pylist()]


def build(cfg, split, folder, n=1, **kw):
    outs = shard_paths(folder, n)
    stats = corpus.build(cfg, split, [str(p) for p in outs], progress=False, **kw)
    return outs, stats


def assert_adds_up(stats):
    assert stats["documents_read"] == stats["documents_written"] + sum(stats["skipped"].values())
    assert sum(stats["documents_per_shard"]) == stats["documents_written"]


# ---------------------------------------------------------------------------------------------- pydoc


@pytest.fixture(scope="module")
def pydoc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pydoc")
    train, train_stats = build(config(), "train", root / "train", n=3)
    val, val_stats = build(config(), "validation", root / "validation", n=1)
    return root, train, train_stats, val, val_stats


def test_pydoc_shards_cover_every_paragraph_once(pydoc_run):
    _, train, train_stats, val, val_stats = pydoc_run
    train_ids = [r["doc_id"] for r in rows(train)]
    val_ids = [r["doc_id"] for r in rows(val)]
    every = [d.doc_id for d in corpus.pydoc_documents()]
    assert len(set(train_ids)) == len(train_ids) and len(set(val_ids)) == len(val_ids)
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == sorted(every)
    # The split is the hash rule and close to the configured 10%.
    assert all(corpus.in_validation(i, 0.1) for i in val_ids)
    assert not any(corpus.in_validation(i, 0.1) for i in train_ids)
    assert 0.07 < len(val_ids) / len(every) < 0.13
    for stats, ids in ((train_stats, train_ids), (val_stats, val_ids)):
        assert stats["documents_written"] == len(ids) and stats["skipped"] == {}
        assert_adds_up(stats)


def test_pydoc_round_robin_and_schema(pydoc_run):
    root, train, train_stats, _, _ = pydoc_run
    ordered = [d for d in corpus.pydoc_documents() if not corpus.in_validation(d.doc_id, 0.1)]
    for i, path in enumerate(train):
        table = pq.read_table(path)
        assert table.schema == corpus.SCHEMA
        assert table.to_pylist() == [{"doc_id": d.doc_id, "text": d.text} for d in ordered[i::3]]
    assert train_stats["chars_written"] == sum(len(d.text) for d in ordered)
    on_disk = json.loads((root / "train" / "stats.json").read_text())
    assert on_disk == train_stats


def test_pydoc_rerun_is_byte_identical(pydoc_run, tmp_path):
    root, train, _, _, _ = pydoc_run
    again, _ = build(config(), "train", tmp_path, n=3)
    for a, b in zip(train, again):
        assert a.read_bytes() == b.read_bytes()
    assert (root / "train" / "stats.json").read_bytes() == (tmp_path / "stats.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_max_docs_caps_written_documents(tmp_path):
    outs, stats = build(config(max_docs=25), "train", tmp_path, n=2)
    assert stats["documents_written"] == 25 and stats["documents_per_shard"] == [13, 12]
    assert len(rows(outs)) == 25


def write_config(config_path, **corpus_keys):
    """The repository's config.yaml with some corpus: keys changed, as the --config of a command."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.setdefault("corpus", {}).update(corpus_keys)  # config.yaml sets only what differs from the schema
    config_path.write_text(yaml.safe_dump(config))


def test_command_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    write_config(cfg, name="pydoc", validation_fraction=0.5, max_docs=40, shards={"train": 2})
    outs = [str(p) for p in shard_paths(tmp_path / "raw", 2)]
    done = subprocess.run(
        [sys.executable, "-m", "preprocess.corpus", "--config", str(cfg), "--split", "train", "--out", *outs],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert len(rows(outs)) == 40
    assert json.loads((tmp_path / "raw" / "stats.json").read_text())["documents_written"] == 40

    write_config(cfg, name="local", path=str(tmp_path / "missing"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess.corpus",
            "--config",
            str(cfg),
            "--split",
            "train",
            "--out",
            str(tmp_path / "x.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "missing: corpus path does not exist" in done.stderr
    assert not (tmp_path / "x.parquet").exists()

    write_config(cfg, name="nosuchcorpus")  # the config reader names the key and the value
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess.corpus",
            "--config",
            str(cfg),
            "--split",
            "train",
            "--out",
            str(tmp_path / "x.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "corpus.name: 'nosuchcorpus' is not one of" in done.stderr
    assert not (tmp_path / "x.parquet").exists()


# ---------------------------------------------------------------------------------------------- local files


def everything(path, **kw):
    """All local documents in one split (validation_fraction 0 -> everything is train)."""
    return config(name="local", path=str(path), validation_fraction=0.0, **kw)


def test_local_txt_paragraphs(tmp_path):
    src = tmp_path / "notes.txt"
    src.write_bytes(b"First paragraph\r\nstill first.\r\n\r\n  \t \n\n    indented code\n      more\n\nlast  \n")
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert rows(outs) == [
        {"doc_id": "notes.txt:0", "text": "First paragraph\nstill first."},
        {"doc_id": "notes.txt:1", "text": "    indented code\n      more"},
        {"doc_id": "notes.txt:2", "text": "last"},
    ]
    assert stats["documents_read"] == 3 and stats["files_read"] == 1


def test_local_huge_document_kept_whole(tmp_path):
    huge = "word " * 400_000  # 2,000,000 characters, over spaCy's default max_length
    (tmp_path / "big.txt").write_text(huge.strip() + "\n\nsmall\n")
    outs, stats = build(everything(tmp_path / "big.txt"), "train", tmp_path / "out")
    texts = [r["text"] for r in rows(outs)]
    assert texts == [huge.strip(), "small"]


def test_local_txt_invalid_utf8_and_binary_junk_are_counted_skips(tmp_path):
    src = tmp_path / "mixed.txt"
    src.write_bytes(b"good one\n\nbad \xff\xfe bytes\n\n" + b"junk\x01\x02\x03\x04\x05\x06 here\n\ngood two\n")
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert [r["text"] for r in rows(outs)] == ["good one", "good two"]
    assert stats["skipped"] == {"binary": 1, "invalid_utf8": 1}
    assert_adds_up(stats)
    # The skip names the file, the paragraph and the byte where it starts.
    assert stats["skipped_examples"]["invalid_utf8"] == [
        f"mixed.txt:1 {src} paragraph 1 (byte 10): invalid start byte at byte 4"
    ]


def test_local_binary_file_is_an_error_naming_file_and_offset(tmp_path):
    src = tmp_path / "image.txt"
    src.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(InputError, match=r"image\.txt: not a text file \(NUL byte at byte offset 8\)"):
        build(everything(src), "train", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_local_jsonl(tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"body": "first document", "id": 7}),
        "",  # blank line: not a document
        json.dumps({"body": "   \n "}),  # whitespace only
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"body": None}),
        json.dumps({"body": 42}),
        json.dumps({"body": "nul\u0000inside"}),
    ]
    src.write_bytes(
        ("\n".join(lines) + "\n").encode()
        + b'{"body": "bad \xc3\x28 utf8"}\n'
        + json.dumps({"body": "last ünïcode"}).encode()
        + b"\n"
    )
    outs, stats = build(everything(src, text_column="body"), "train", tmp_path / "out")
    assert rows(outs) == [
        {"doc_id": "docs.jsonl:1", "text": "first document"},
        {"doc_id": "docs.jsonl:10", "text": "last ünïcode"},
    ]
    assert stats["skipped"] == {"binary": 1, "empty": 2, "invalid_json": 2, "invalid_utf8": 1, "not_text": 1}
    assert stats["documents_read"] == 9
    assert_adds_up(stats)


def test_local_jsonl_missing_text_field_is_a_counted_skip_naming_file_line_and_fields(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(
        json.dumps({"text": "fine"})
        + "\n"
        + json.dumps({"content": "x", "title": "t"})
        + "\n"
        + json.dumps({"text": "also fine"})
        + "\n"
    )
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert [r["text"] for r in rows(outs)] == ["fine", "also fine"]
    assert stats["skipped"] == {"no_text_field": 1}
    assert stats["skipped_examples"]["no_text_field"] == [
        f"docs.jsonl:2 {src} line 2: no field 'text'; it has ['content', 'title']"
    ]
    assert_adds_up(stats)


def test_local_jsonl_wrong_type_in_text_field_names_file_line_and_type(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(
            json.dumps(obj) + "\n"
            for obj in (
                {"text": ["a", "list"]},
                {"text": "fine"},
                {"text": {"nested": 1}},
                {"text": True},
                {"text": 1.5},
            )
        )
    )
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert [r["text"] for r in rows(outs)] == ["fine"]
    assert stats["skipped"] == {"not_text": 4}
    assert stats["skipped_examples"]["not_text"] == [
        f"docs.jsonl:{line} {src} line {line} field 'text': a {kind}, expected a string"
        for line, kind in ((1, "list"), (3, "dict"), (4, "bool"), (5, "float"))
    ]
    assert_adds_up(stats)


def test_empty_and_whitespace_files_are_counted_by_reason(tmp_path):
    """A file with no document at all is one skip, empty_file; summed over the two splits each counts once."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one paragraph\n\nanother one\n")
    (src / "empty.txt").write_bytes(b"")
    (src / "blank.txt").write_text("  \n\t\n\n   \n")
    (src / "blank.jsonl").write_text("\n   \n")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), src / "norows.parquet")
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert [r["text"] for r in rows(outs)] == ["one paragraph", "another one"]
    assert stats["skipped"] == {"empty_file": 4} and stats["files_read"] == 5
    assert stats["documents_read"] == 6
    assert_adds_up(stats)
    assert stats["skipped_examples"]["empty_file"] == [
        f"blank.jsonl {src / 'blank.jsonl'}: 5 bytes, no document in it",
        f"blank.txt {src / 'blank.txt'}: 10 bytes, no document in it",
        f"empty.txt {src / 'empty.txt'}: 0 bytes, no document in it",
        f"norows.parquet {src / 'norows.parquet'}: {(src / 'norows.parquet').stat().st_size} bytes, no document in it",
    ]
    cfg = config(name="local", path=str(src), validation_fraction=0.5)
    per_split = [build(cfg, split, tmp_path / split)[1]["skipped"].get("empty_file", 0) for split in corpus.SPLITS]
    assert sum(per_split) == 4


def test_a_single_empty_file_is_counted(tmp_path):
    src = tmp_path / "nothing.txt"
    src.write_text("\n \n")
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert rows(outs) == [] and stats["documents_read"] == 1 and stats["skipped"] == {"empty_file": 1}


def test_local_parquet(tmp_path):
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": ["alpha", None, " ", "delta"]}), src)
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert rows(outs) == [{"doc_id": "docs.parquet:0", "text": "alpha"}, {"doc_id": "docs.parquet:3", "text": "delta"}]
    assert stats["skipped"] == {"empty": 2}


def test_local_parquet_invalid_utf8_in_binary_column_is_a_skip(tmp_path):
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff\xfe"], pa.binary())}), src)
    outs, stats = build(everything(src), "train", tmp_path / "out")
    assert [r["text"] for r in rows(outs)] == ["ok"] and stats["skipped"] == {"invalid_utf8": 1}


def test_local_parquet_missing_column_lists_columns(tmp_path):
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["a"], "title": ["b"]}), src)
    with pytest.raises(InputError, match=r"docs\.parquet: no text column 'text'; it has columns \['body', 'title'\]"):
        build(everything(src), "train", tmp_path / "out")


def test_local_corrupt_parquet_names_the_file(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a b c"] * 100}), good)
    data = good.read_bytes()
    for name, payload in (
        ("garbage.parquet", b"this is not parquet at all"),
        ("truncated.parquet", data[: len(data) // 2]),
    ):
        bad = tmp_path / name
        bad.write_bytes(payload)
        with pytest.raises(InputError, match=rf"{name}: not a readable Parquet file"):
            build(everything(bad), "train", tmp_path / "out")


def test_local_parquet_corrupt_data_page_names_the_file(tmp_path):
    import random

    rng = random.Random(0)
    src = tmp_path / "pages.parquet"
    texts = ["".join(rng.choice("abcdefghij klm") for _ in range(200)) for _ in range(2000)]
    pq.write_table(pa.table({"text": texts}), src, compression="zstd", row_group_size=500)
    data = bytearray(src.read_bytes())
    middle = len(data) // 2  # inside the data pages; header and footer intact, so the file opens
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    src.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"pages\.parquet: corrupt Parquet data"):
        build(everything(src), "train", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_local_folder_recursive_sorted_and_split(tmp_path):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "a.txt").write_text("\n\n".join(f"paragraph {i} of a" for i in range(40)))
    (src / "b" / "c.jsonl").write_text("".join(json.dumps({"text": f"line {i} of c"}) + "\n" for i in range(40)))
    (src / "README.md").write_text("not a corpus file")
    cfg = config(name="local", path=str(src), validation_fraction=0.25)
    train, train_stats = build(cfg, "train", tmp_path / "train", n=2)
    val, val_stats = build(cfg, "validation", tmp_path / "validation", n=1)
    train_ids, val_ids = [r["doc_id"] for r in rows(train)], [r["doc_id"] for r in rows(val)]
    assert not set(train_ids) & set(val_ids)
    assert len(train_ids) + len(val_ids) == 80 and 8 <= len(val_ids) <= 32
    # Shard 0 starts with the first train document: a.txt comes before b/c.jsonl.
    assert train_ids[0].startswith("a.txt:") and any(i.startswith("b/c.jsonl:") for i in train_ids)
    assert train_stats["files_read"] == 2 and train_stats["files_ignored"] == [str(src / "README.md")]


def test_local_path_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build(config(name="local", path=str(tmp_path / "missing")), "train", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no \.txt, \.jsonl, \.parquet files"):
        build(config(name="local", path=str(tmp_path / "empty")), "train", tmp_path / "out")
    with pytest.raises(InputError, match="corpus.path is not set"):
        build(config(name="local"), "train", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- hub corpora


def fake_hub(tables):
    """A stand-in for datasets.load_dataset over in-memory splits: (path, config, split) -> datasets.Dataset."""
    import datasets

    def load(path, config, split, revision=None):
        key = (path, config, split) if revision is None else (path, config, split, revision)
        return datasets.Dataset.from_dict(tables[key])

    return load


def test_wikitext_rows_become_detokenized_articles(tmp_path):
    lines = [
        " = Alpha = \n",
        "",
        " Alpha is a 1st @-@ rate thing , really . \n",
        " = = History = = \n",
        " It began in 1 @,@ 000 BC . \n",
        " = Beta = \n",
        " Beta 's story . \n",
        "",
        " = Empty = \n",
        " \n",
    ]
    load = fake_hub({("Salesforce/wikitext", "wikitext-103-raw-v1", "validation"): {"text": lines}})
    outs, stats = build(config(name="wikitext103"), "validation", tmp_path, load=load)
    assert rows(outs) == [
        {
            "doc_id": "validation/0",
            "text": " = Alpha =\nAlpha is a 1st-rate thing, really.\n== History ==\nIt began in 1,000 BC.\n",
        },
        {"doc_id": "validation/1", "text": " = Beta =\nBeta's story.\n"},
        {"doc_id": "validation/2", "text": " = Empty =\n\n"},
    ]
    assert stats["documents_read"] == 3 and stats["skipped"] == {}


def test_openwebtext_and_wikihow_hold_out_the_tail():
    owt = corpus.HUB_CORPORA["openwebtext"]
    assert owt.rows("validation", 8_013_769) == range(7_913_769, 8_013_769)
    assert owt.rows("train", 8_013_769) == range(0, 7_913_769)
    how = corpus.HUB_CORPORA["wikihow"]
    assert how.rows("train", 1000) == range(0, 950) and how.rows("validation", 1000) == range(950, 1000)


def test_wikihow_tail_split_through_the_loader(tmp_path):
    texts = [f"How to do thing {i}." for i in range(40)]
    load = fake_hub({("ajibawa-2023/WikiHow", None, "train"): {"text": texts}})
    train, _ = build(config(name="wikihow"), "train", tmp_path / "t", n=2, load=load)
    val, _ = build(config(name="wikihow"), "validation", tmp_path / "v", load=load)
    assert sorted(r["text"] for r in rows(train)) == sorted(texts[:38])
    assert rows(val) == [{"doc_id": "train/38", "text": texts[38]}, {"doc_id": "train/39", "text": texts[39]}]


def test_ptb_lm1b_lambada_use_their_splits_and_detokenizers(tmp_path):
    load = fake_hub(
        {
            ("ptb-text-only/ptb_text_only", None, "validation", "refs/convert/parquet"): {
                "sentence": ["it does n't cost $ N", " "]
            },
            ("dvruette/lm1b", None, "test"): {"text": ["Hello , world !"]},
            ("EleutherAI/lambada_openai", "en", "test"): {"text": [f"\u201cPassage {i}\u201d" for i in range(30)]},
        }
    )
    outs, stats = build(config(name="ptb"), "validation", tmp_path / "ptb", load=load)
    assert rows(outs) == [{"doc_id": "validation/0", "text": "it doesn't cost $ N"}]
    assert stats["skipped"] == {"empty": 1}
    outs, _ = build(config(name="lm1b"), "validation", tmp_path / "lm1b", load=load)
    assert rows(outs) == [{"doc_id": "test/0", "text": "Hello, world!"}]
    lam = config(name="lambada", validation_fraction=0.3)
    train, _ = build(lam, "train", tmp_path / "lt", load=load)
    val, _ = build(lam, "validation", tmp_path / "lv", load=load)
    train_ids, val_ids = {r["doc_id"] for r in rows(train)}, {r["doc_id"] for r in rows(val)}
    assert len(train_ids | val_ids) == 30 and not train_ids & val_ids and val_ids
    assert all(r["text"].startswith('"Passage') for r in rows(val))


def test_validation_source_reads_another_corpus_for_validation(tmp_path):
    lines = [" = Gamma = \n", " Text . \n"]
    load = fake_hub({("Salesforce/wikitext", "wikitext-103-raw-v1", "validation"): {"text": lines}})
    cfg = config(name="pydoc", validation_source="wikitext103", max_docs=5)
    val, val_stats = build(cfg, "validation", tmp_path / "v", load=load)
    train, train_stats = build(cfg, "train", tmp_path / "t", load=load)
    assert rows(val) == [{"doc_id": "validation/0", "text": " = Gamma =\nText.\n"}]
    assert val_stats["corpus"] == "wikitext103" and train_stats["corpus"] == "pydoc"
    assert len(rows(train)) == 5


def test_hub_missing_text_column_names_dataset_and_columns(tmp_path):
    load = fake_hub({("dvruette/lm1b", None, "train"): {"sentence": ["x"]}})
    with pytest.raises(
        InputError, match=r"hub dataset dvruette/lm1b .*no text column 'text'; it has columns \['sentence'\]"
    ):
        build(config(name="lm1b"), "train", tmp_path, load=load)


# ---------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        (" \n\t ", "empty"),
        (None, "empty"),
        (3, "not_text"),
        ("a\x00b", "binary"),
        ("x" * 50 + "\x07", "binary"),
        ("x" * 200 + "\x07", None),
        ("tab\tand\fform feed\r\n", None),
    ],
)
def test_text_problem(text, reason):
    assert corpus.text_problem(text) == reason


def test_in_validation_is_stable():
    # Fixed values (u("doc0") = 0.807, u("doc1") = 0.392, ...): the split must not change between Python
    # versions, machines or runs, which a salted hash() would do.
    assert [corpus.in_validation(f"doc{i}", 0.5) for i in range(8)] == [
        False,
        True,
        True,
        False,
        True,
        True,
        False,
        False,
    ]
    assert corpus.in_validation("doc5", 0.02) and not corpus.in_validation("doc4", 0.07)
    ids = [f"doc{i}" for i in range(2000)]
    assert 0.08 < sum(corpus.in_validation(i, 0.1) for i in ids) / 2000 < 0.12
    assert not any(corpus.in_validation(i, 0.0) for i in ids) and all(corpus.in_validation(i, 1.0) for i in ids)
