"""Preference pairs for Diffusion-DPO (preprocess/preference.py).

Checked on the pipeline's byte-level BPE and a BERT-style WordPiece tokenizer (the fixtures of test_sft_data.py):
only the final answer and its EOS fill are masked (earlier assistant turns are context); the chosen and rejected
canvases share their prompt tokens; task:reverse pairs are correct vs wrong by their rule, deterministic and held
out; the three record shapes give the same canvases; bad records are counted by reason; file, Parquet and hub
sources; a split without a pair writes nothing; the command line end to end."""

import json

import pyarrow as pa
import pytest
import yaml
from test_sft_data import DIALOGUE, ROOT, bpe_tokenizer, runs, wordpiece_tokenizer

from common.chat import encode_conversation, prompt_ids
from common.io import InputError, read_parquet, write_parquet
from common.tasks import REVERSE_PROMPT, check_answer
from eval.dpo import read_pairs
from preprocess.preference import PAIR_SCHEMA, REJECTION_RULES, build, main, pair_canvases, reverse_pair, wrong_reversal
from preprocess.sft import reverse_record, reverse_side


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tok(request):
    return bpe_tokenizer() if request.param == "bpe" else wordpiece_tokenizer()


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def dpo_config(source, **over):
    return {"source": str(source), "validation_fraction": 0.1, "n_train": 60, "n_validation": 20, "seed": 1, **over}


def answer_start(mask: list[int]) -> int:
    return mask.index(1)


# ----------------------------------------------------------------------------------------------------------
# Masks


def test_only_the_final_answer_and_its_fill_are_masked(tok):
    full = encode_conversation(tok, DIALOGUE, 128)
    final = encode_conversation(tok, DIALOGUE, 128, final_only=True)
    assert final.ids == full.ids and not final.truncated and final.filled > 0
    turns = runs(full.answer_mask)
    assert len(turns) == 3  # the last answer's run includes the fill
    start = turns[-1][0]
    # Earlier assistant turns are context now: mask 0; the final answer and the EOS fill keep mask 1.
    assert final.answer_mask == [0] * start + [1] * (128 - start)
    assert final.n_answer == 128 - start and final.ids[-1] == tok.eos_token_id
    # A pair over the same multi-turn prompt: both canvases agree up to their answers.
    chosen, rejected = pair_canvases(tok, DIALOGUE[:-1], "yellow sun", "green moon", 128)
    assert chosen.ids == final.ids and chosen.answer_mask == final.answer_mask
    assert answer_start(rejected.answer_mask) == start and rejected.ids[:start] == chosen.ids[:start]
    assert all(rejected.answer_mask[start:]) and rejected.ids[start:] != chosen.ids[start:]


# ----------------------------------------------------------------------------------------------------------
# The reverse task


def test_wrong_reversal_rules():
    import random

    rng = random.Random(0)
    answer = "zip len print abs"
    assert wrong_reversal(answer, "unreversed", rng) == "abs print len zip"
    for _ in range(20):
        dropped = wrong_reversal(answer, "dropped", rng).split()
        assert len(dropped) == 3 and all(w in answer.split() for w in dropped)
        assert [w for w in answer.split() if w in dropped] == dropped  # order kept
        repeated = wrong_reversal(answer, "repeated", rng).split()
        k = next(j for j in range(4) if repeated[j] == repeated[j + 1])
        assert repeated[: k + 1] + repeated[k + 2 :] == answer.split()
        swapped = wrong_reversal(answer, "swapped", rng).split()
        diff = [j for j in range(4) if swapped[j] != answer.split()[j]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1 and sorted(swapped) == sorted(answer.split())
    # Two words: swapped is the unreversed list, dropped leaves one word; neither is the answer.
    assert wrong_reversal("len zip", "swapped", rng) == wrong_reversal("len zip", "unreversed", rng) == "zip len"
    assert wrong_reversal("len zip", "dropped", rng) in {"len", "zip"}
    with pytest.raises(ValueError, match="unknown rejection rule"):
        wrong_reversal(answer, "shuffled", rng)


def test_task_pairs_are_correct_vs_wrong_deterministic_and_held_out(tmp_path, tok):
    out = tmp_path / "train.parquet"
    stats = build(dpo_config("task:reverse"), 256, tok, "train", out, progress=False)
    table = read_parquet(out)
    assert table.schema.equals(PAIR_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == stats["records_written"] == stats["records_read"] == 60 and stats["skipped"] == {}
    assert sum(stats["rejections"].values()) == 60 and set(stats["rejections"]) == set(REJECTION_RULES)
    assert {r["rejection"] for r in rows} == set(REJECTION_RULES)
    for i, row in enumerate(rows):
        prompt = json.loads(row["prompt"])
        # The SFT task's record with the same seed, split and index.
        conv = reverse_record(1, "train", i, 0.1)
        assert row["pair_id"] == conv.conversation_id and prompt == conv.messages[:-1]
        assert check_answer("task:reverse", prompt, row["chosen"])
        assert not check_answer("task:reverse", prompt, row["rejected"])
        words = prompt[-1]["content"].removeprefix(REVERSE_PROMPT).split()
        if row["rejection"] == "unreversed":
            assert row["rejected"].split() == words
        elif row["rejection"] == "dropped":
            assert len(row["rejected"].split()) == len(words) - 1
        elif row["rejection"] == "repeated":
            assert len(row["rejected"].split()) == len(words) + 1
        else:
            assert sorted(row["rejected"].split()) == sorted(words)
        for side in ("chosen", "rejected"):
            ids, mask = row[f"{side}_ids"], row[f"{side}_mask"]
            assert len(ids) == len(mask) == 256 and row[f"n_{side}"] == sum(mask) > 0
            start = answer_start(mask)
            assert mask == [0] * start + [1] * (256 - start) and ids[-1] == tok.eos_token_id
            if tok.eos_token == "<|endoftext|>":  # byte-level BPE decodes back to the exact answer
                assert tok.decode(ids[start:]) == row[side] + tok.eos_token * ids[start:].count(tok.eos_token_id)
        p = answer_start(row["chosen_mask"])
        assert p == answer_start(row["rejected_mask"]) and row["chosen_ids"][:p] == row["rejected_ids"][:p]
    assert stats["chosen_tokens"] == sum(r["n_chosen"] for r in rows)
    assert stats["rejected_tokens"] == sum(r["n_rejected"] for r in rows)
    assert json.loads((tmp_path / "train.stats.json").read_text())["rejections"] == stats["rejections"]
    # Deterministic bytes; another seed gives other pairs.
    again = tmp_path / "again.parquet"
    build(dpo_config("task:reverse"), 256, tok, "train", again, tmp_path / "again.json", progress=False)
    assert out.read_bytes() == again.read_bytes()
    assert reverse_pair(2, "train", 0, 0.1) != reverse_pair(1, "train", 0, 0.1)
    # Held out: no validation word list is a train word list.
    val = build(dpo_config("task:reverse"), 256, tok, "validation", tmp_path / "val.parquet", progress=False)
    assert val["records_written"] == 20

    def lists(path):
        return {
            m["content"].removeprefix(REVERSE_PROMPT)
            for p in read_parquet(path, ["prompt"]).column(0).to_pylist()
            for m in json.loads(p)
            if m["role"] == "user"
        }

    train_lists, val_lists = lists(out), lists(tmp_path / "val.parquet")
    assert train_lists and val_lists and not train_lists & val_lists
    assert all(reverse_side(w.split(), 0.1) == "validation" for w in val_lists)


def test_truncated_pairs_are_skipped_and_counted(tmp_path, bpe):
    stats = build(dpo_config("task:reverse"), 64, bpe, "train", tmp_path / "t.parquet", progress=False)
    assert 0 < stats["skipped"]["truncated"] < 60 and set(stats["skipped"]) == {"truncated"}
    assert stats["records_read"] == 60 == stats["records_written"] + stats["skipped"]["truncated"]
    assert "canvas needs more than 64 tokens" in stats["skipped_examples"]["truncated"][0]
    rows = read_parquet(tmp_path / "t.parquet").to_pylist()
    # Every kept canvas holds its whole answer: the EOS fill (mask 1) follows it.
    assert all(
        r[f"{s}_ids"][-1] == bpe.eos_token_id and r[f"{s}_mask"][-1] == 1 for r in rows for s in ("chosen", "rejected")
    )
    assert sum(stats["rejections"].values()) == stats["records_written"]


def test_split_without_pairs_fails_naming_the_output(tmp_path, bpe):
    out = tmp_path / "train.parquet"
    with pytest.raises(InputError, match=f"{out}: no preference pair.*truncated"):
        build(dpo_config("task:reverse"), 8, bpe, "train", out, progress=False)
    assert not out.exists() and not (tmp_path / "train.stats.json").exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------
# Record shapes and bad records

SYSTEM = {"role": "system", "content": "you answer in short words"}
USER = {"role": "user", "content": "say the color of the sky"}
CHOSEN, REJECTED = "blue sky", "green grass"


def assistant(text):
    return {"role": "assistant", "content": text}


SHAPES = {
    "standard": {"prompt": USER["content"], "chosen": CHOSEN, "rejected": REJECTED},
    "conversational": {"prompt": [USER], "chosen": [assistant(CHOSEN)], "rejected": [assistant(REJECTED)]},
    "implicit": {"chosen": [USER, assistant(CHOSEN)], "rejected": [USER, assistant(REJECTED)]},
    "mixed": {"prompt": [USER], "chosen": CHOSEN, "rejected": [assistant(REJECTED)]},
}


def write_jsonl(path, records):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records))
    return path


def test_the_record_shapes_give_the_same_canvases(tmp_path, tok):
    src = write_jsonl(tmp_path / "shapes.jsonl", list(SHAPES.values()))
    stats = build(dpo_config(src, validation_fraction=0.0), 64, tok, "train", tmp_path / "o.parquet", progress=False)
    assert stats["records_written"] == len(SHAPES) and stats["rejections"] == {}
    rows = read_parquet(tmp_path / "o.parquet").to_pylist()
    assert [r["pair_id"] for r in rows] == [f"shapes.jsonl:{i}" for i in range(1, len(SHAPES) + 1)]
    for row in rows:
        for key in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask", "prompt", "chosen", "rejected"):
            assert row[key] == rows[0][key], key
        assert row["rejection"] == ""
    assert json.loads(rows[0]["prompt"]) == [USER]
    chosen, rejected = pair_canvases(tok, [USER], CHOSEN, REJECTED, 64)
    assert rows[0]["chosen_ids"] == chosen.ids and rows[0]["rejected_mask"] == rejected.answer_mask
    # Multi-turn: a system turn and an earlier exchange in the prompt (explicit or implicit), masked 0.
    context = [SYSTEM, USER, assistant(CHOSEN), {"role": "user", "content": "and the grass"}]
    multi = [
        {"prompt": context, "chosen": [assistant("green grass")], "rejected": [assistant("blue grass")]},
        {"chosen": context + [assistant("green grass")], "rejected": context + [assistant("blue grass")]},
        # Answer lists that carry the earlier exchange themselves: it extends the prompt.
        {
            "prompt": context[:2],
            "chosen": context[2:] + [assistant("green grass")],
            "rejected": context[2:] + [assistant("blue grass")],
        },
    ]
    src = write_jsonl(tmp_path / "multi.jsonl", multi)
    build(dpo_config(src, validation_fraction=0.0), 96, tok, "train", tmp_path / "m.parquet", progress=False)
    rows = read_parquet(tmp_path / "m.parquet").to_pylist()
    assert len(rows) == 3 and all(json.loads(r["prompt"]) == context for r in rows)
    full = encode_conversation(tok, context + [assistant("green grass")], 96)
    assert len(runs(full.answer_mask)) == 2  # the earlier answer is a target in SFT ...
    for row in rows:
        assert row["chosen_ids"] == full.ids and len(runs(row["chosen_mask"])) == 1  # ... but context here
        assert row["chosen_mask"] == rows[0]["chosen_mask"] and row["rejected_ids"] == rows[0]["rejected_ids"]
        assert runs(row["chosen_mask"])[0] == runs(full.answer_mask)[-1]


def pair(**over):
    record = {"prompt": USER["content"], "chosen": CHOSEN, "rejected": REJECTED, **over}
    return {k: v for k, v in record.items() if v is not ...}


BAD = {
    "invalid_utf8": [b'{"chosen": "\xff"}'],
    "invalid_json": [b'{"chosen": [}'],
    "not_object": [b"[1, 2]", b'"text"'],
    "missing_field": [pair(chosen=...), pair(rejected=..., chosen=...), pair(prompt=...)],
    "wrong_type": [
        pair(chosen=3),
        pair(prompt={"role": "user"}),
        pair(chosen=["blue"]),
        pair(rejected=[{"role": "assistant", "content": 5}]),
        pair(chosen=[{"role": None, "content": "x"}]),
    ],
    "unknown_role": [pair(prompt=[{"role": "bot", "content": "hi"}])],
    "empty_content": [pair(chosen="  "), pair(rejected=None), pair(prompt=[]), pair(chosen=[])],
    "binary": [pair(rejected="a\u0000b")],
    "no_assistant_turn": [pair(chosen=[{"role": "user", "content": "blue sky"}])],
    "no_shared_prompt": [
        {"chosen": [USER, assistant(CHOSEN)], "rejected": [{"role": "user", "content": "other"}, assistant(REJECTED)]},
        {"chosen": [assistant(CHOSEN)], "rejected": [assistant(REJECTED)]},
    ],
    "prompt_not_ending_in_user": [pair(prompt=[USER, assistant("hm")]), pair(prompt=[SYSTEM])],
    "identical": [
        pair(rejected=" blue \n sky "),
        {"chosen": [USER, assistant(CHOSEN)], "rejected": [USER, assistant(CHOSEN)]},
    ],
    "special_token_in_content": [pair(prompt="hi <|endoftext|>"), pair(rejected="x [MASK] y")],
    "template_error": [pair(prompt=[USER, USER])],
    "truncated": [pair(prompt="the lazy dog " * 40), pair(rejected="the lazy dog " * 40)],
}


def test_bad_records_are_counted_by_reason(tmp_path):
    # A template that refuses two user turns in a row (as many model templates refuse non-alternating roles).
    tok = bpe_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["[MASK]"]})
    from common.chat import DEFAULT_TEMPLATE

    tok.chat_template = (
        "{%- for m in messages -%}{%- if loop.index0 > 0 and m['role'] == 'user' and "
        "messages[loop.index0 - 1]['role'] == 'user' -%}{{- raise_exception('roles must "
        "alternate') -}}{%- endif -%}{%- endfor -%}" + DEFAULT_TEMPLATE
    )
    good = [pair(), pair(prompt=[SYSTEM, USER])]
    records = [good[0], *[r for v in BAD.values() for r in v], good[1]]
    src = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "train.parquet"
    stats = build(dpo_config(src, validation_fraction=0.0), 64, tok, "train", out, progress=False)
    assert stats["skipped"] == {reason: len(v) for reason, v in BAD.items()}
    assert stats["records_written"] == 2
    assert stats["records_read"] == len(records) == stats["records_written"] + sum(stats["skipped"].values())
    assert f"{src} line 2" in stats["skipped_examples"]["invalid_utf8"][0]
    assert "data.jsonl:2" in stats["skipped_examples"]["invalid_utf8"][0]
    assert "no field 'chosen'" in stats["skipped_examples"]["missing_field"][0]
    assert "roles must alternate" in stats["skipped_examples"]["template_error"][0]
    assert all(len(v) <= 5 for v in stats["skipped_examples"].values())
    rows = read_parquet(out).to_pylist()
    assert [r["pair_id"] for r in rows] == ["data.jsonl:1", f"data.jsonl:{len(records)}"]
    assert json.loads(rows[1]["prompt"]) == [SYSTEM, USER]


def test_a_prompt_that_opens_with_an_assistant_turn(tmp_path, tok):
    """A greeting before the question is context (mask 0) after an empty context, as in SFT; a template that cannot
    render it there makes the pair a counted skip (leading_assistant_turn), and the other pairs are written."""
    from common.chat import DEFAULT_TEMPLATE

    greeting = assistant("hello there")
    records = [
        {"prompt": [greeting, USER], "chosen": CHOSEN, "rejected": REJECTED},
        {"chosen": [greeting, USER, assistant(CHOSEN)], "rejected": [greeting, USER, assistant(REJECTED)]},
        pair(),
    ]
    src = write_jsonl(tmp_path / "data.jsonl", records)
    stats = build(dpo_config(src, validation_fraction=0.0), 64, tok, "train", tmp_path / "o.parquet", progress=False)
    assert stats["records_written"] == 3 and stats["skipped"] == {}
    rows = read_parquet(tmp_path / "o.parquet").to_pylist()
    assert json.loads(rows[0]["prompt"]) == json.loads(rows[1]["prompt"]) == [greeting, USER]
    assert rows[0]["chosen_ids"] == rows[1]["chosen_ids"] and rows[0]["rejected_mask"] == rows[1]["rejected_mask"]
    plain = rows[2]
    for side in ("chosen", "rejected"):
        ids, mask = rows[0][f"{side}_ids"], rows[0][f"{side}_mask"]
        assert len(runs(mask)) == 1  # only the final answer and its fill: the greeting is context
        start = answer_start(mask)
        assert ids[:start] == prompt_ids(tok, [greeting, USER])  # the prompt eval.dpo generates from
        # The answer and its fill are those of the pair without the greeting (which has more fill).
        at = answer_start(plain[f"{side}_mask"])
        assert ids[start:] == plain[f"{side}_ids"][at : at + 64 - start] and all(mask[start:])
    # A template that writes a default system turn before a conversation without one: the render of no messages
    # does not start the conversation's, so the greeting has no empty context to follow.
    refusing = bpe_tokenizer()
    refusing.chat_template = (
        "{%- if messages and messages[0]['role'] != 'system' -%}{{- '<|system|>\\nbe brief"
        "\\n' -}}{%- endif -%}" + DEFAULT_TEMPLATE
    )
    stats = build(
        dpo_config(src, validation_fraction=0.0), 64, refusing, "train", tmp_path / "r.parquet", progress=False
    )
    assert stats["skipped"] == {"leading_assistant_turn": 2} and stats["records_written"] == 1
    assert stats["records_read"] == stats["records_written"] + sum(stats["skipped"].values())
    assert read_parquet(tmp_path / "r.parquet").column("pair_id").to_pylist() == ["data.jsonl:3"]


def test_parquet_folder_and_hash_split(tmp_path, bpe):
    folder = tmp_path / "data"
    folder.mkdir()
    # One Parquet file mixing explicit prompts and null ones (implicit-prompt rows), answers as message lists.
    records = []
    for i in range(40):
        user = {"role": "user", "content": f"say the color {i}"}
        if i % 2:
            records.append(
                {"id": f"p{i}", "prompt": [user], "chosen": [assistant(CHOSEN)], "rejected": [assistant(REJECTED)]}
            )
        else:
            records.append(
                {
                    "id": f"p{i}",
                    "prompt": None,
                    "chosen": [user, assistant(CHOSEN)],
                    "rejected": [user, assistant(REJECTED)],
                }
            )
    write_parquet(pa.Table.from_pylist(records), folder / "pairs.parquet")
    (folder / "more.json").write_text(json.dumps([pair(prompt=f"say the color {i}") for i in range(20)]))
    (folder / "notes.txt").write_text("ignored")
    cfg = dpo_config(folder, validation_fraction=0.3)
    train = build(cfg, 64, bpe, "train", tmp_path / "t.parquet", progress=False)
    val = build(cfg, 64, bpe, "validation", tmp_path / "v.parquet", progress=False)
    assert train["records_read"] + val["records_read"] == 60 and train["skipped"] == val["skipped"] == {}
    assert 0 < val["records_written"] < train["records_written"]
    ids_t = set(read_parquet(tmp_path / "t.parquet", ["pair_id"]).column(0).to_pylist())
    ids_v = set(read_parquet(tmp_path / "v.parquet", ["pair_id"]).column(0).to_pylist())
    assert not ids_t & ids_v and len(ids_t | ids_v) == 60 and {"p0", "p1", "more.json:0"} <= ids_t | ids_v
    rows = {
        r["pair_id"]: r
        for r in read_parquet(tmp_path / "t.parquet").to_pylist() + read_parquet(tmp_path / "v.parquet").to_pylist()
    }
    # The implicit-prompt row and the explicit one are encoded alike.
    for i in (0, 1):
        user = {"role": "user", "content": f"say the color {i}"}
        assert json.loads(rows[f"p{i}"]["prompt"]) == [user]
        chosen, rejected = pair_canvases(bpe, [user], CHOSEN, REJECTED, 64)
        assert rows[f"p{i}"]["chosen_ids"] == chosen.ids and rows[f"p{i}"]["rejected_mask"] == rejected.answer_mask


def test_hub_source_through_an_injected_loader(tmp_path, bpe):
    splits = {
        "train": [pair(prompt=f"say the color {i}") for i in range(5)],
        "test": [SHAPES["implicit"], pair(rejected=CHOSEN)],
    }
    seen = []

    def load(name):
        seen.append(name)
        return splits

    stats = build(dpo_config("someone/prefs"), 64, bpe, "validation", tmp_path / "v.parquet", load=load, progress=False)
    assert seen == ["someone/prefs"] and stats["records_written"] == 1 and stats["skipped"] == {"identical": 1}
    assert read_pairs(tmp_path / "v.parquet", 10)["pair_id"] == ["test/0"]

    def offline(name):
        raise ConnectionError("no network")

    with pytest.raises(InputError, match="someone/prefs: dpo.source is not a local path.*ConnectionError"):
        build(dpo_config("someone/prefs"), 64, bpe, "train", tmp_path / "t.parquet", load=offline, progress=False)


def test_source_errors_name_the_dpo_setting(tmp_path, bpe):
    with pytest.raises(InputError, match="dpo.source does not exist"):
        build(dpo_config(tmp_path / "nope.jsonl"), 64, bpe, "train", tmp_path / "o.parquet", progress=False)
    with pytest.raises(InputError, match="unknown dpo task"):
        build(dpo_config("task:sort"), 64, bpe, "train", tmp_path / "o.parquet", progress=False)
    with pytest.raises(InputError, match="dpo.validation_fraction"):
        build(
            dpo_config("task:reverse", validation_fraction=0.0),
            64,
            bpe,
            "train",
            tmp_path / "o.parquet",
            progress=False,
        )
    assert not (tmp_path / "o.parquet").exists()


# ----------------------------------------------------------------------------------------------------------
# Reading back, and the command line


def test_read_pairs_across_shards(tmp_path, bpe):
    src = write_jsonl(tmp_path / "a.jsonl", [pair(prompt=f"say the color {i}") for i in range(3)])
    build(dpo_config(src, validation_fraction=0.0), 64, bpe, "train", tmp_path / "a.parquet", progress=False)
    build(dpo_config("task:reverse", n_train=4), 256, bpe, "train", tmp_path / "b.parquet", progress=False)
    got = read_pairs([tmp_path / "a.parquet", tmp_path / "b.parquet"], 5)
    assert got["pair_id"] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "reverse/train/0", "reverse/train/1"]
    assert got["prompt"][0] == [{"role": "user", "content": "say the color 0"}]
    assert got["chosen"][0] == CHOSEN and got["rejected"][0] == REJECTED
    table = read_parquet(tmp_path / "a.parquet").to_pylist()
    assert got["chosen_ids"][0] == table[0]["chosen_ids"] and got["rejected_mask"][2] == table[2]["rejected_mask"]
    assert len(got["chosen_mask"][4]) == 256
    assert len(read_pairs(str(tmp_path / "b.parquet"), 100)["pair_id"]) == 4
    assert read_pairs(tmp_path / "a.parquet", 0)["pair_id"] == []
    write_parquet(pa.table({"pair_id": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="missing column"):
        read_pairs(tmp_path / "bad.parquet", 1)


def test_command_line_end_to_end(tmp_path, bpe, capsys):
    tokenizer = tmp_path / "tokenizer"
    bpe.save_pretrained(tokenizer)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["dpo"] = {"n_train": 12, "n_validation": 5, "seed": 3}
    config["sft"] = {"length": 256}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "data" / "pydoc" / "preference" / "256" / "validation" / "shard_00000.parquet"
    main(
        [
            "--config",
            str(tmp_path / "c.yaml"),
            "--split",
            "validation",
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(out),
        ]
    )
    assert "5 of 5 pairs" in capsys.readouterr().out
    stats = json.loads((out.parent / "shard_00000.stats.json").read_text())
    assert stats["split"] == "validation" and stats["length"] == 256 and stats["records_written"] == 5
    got = read_pairs(out, 5)
    assert got["pair_id"] == [f"reverse/validation/{i}" for i in range(5)]
    assert got["prompt"][0] == reverse_record(3, "validation", 0, 0.1).messages[:-1]
    assert all(
        check_answer("task:reverse", p, c) and not check_answer("task:reverse", p, r)
        for p, c, r in zip(got["prompt"], got["chosen"], got["rejected"])
    )
    # A config error exits 2 naming the problem, writing nothing.
    config["dpo"] = {"source": str(tmp_path / "missing.jsonl")}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--config",
                str(tmp_path / "bad.yaml"),
                "--split",
                "train",
                "--tokenizer",
                str(tokenizer),
                "--out",
                str(tmp_path / "x.parquet"),
                "--stats",
                str(tmp_path / "x.json"),
            ]
        )
    assert exit_.value.code == 2 and "dpo.source does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.json").exists()
