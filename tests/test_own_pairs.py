"""Preference pairs from a model's own answers (eval/own_pairs.py): which answers become chosen and rejected, the
counted skips, the stats that say what the pairs look like (checked against scripted answers, by hand), and, on a
real model folder, that a rejected answer is exactly the model's own first refused draw."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from test_atat_pipeline import fake_record
from test_generate import write_folder
from test_preference_data import dpo_config
from test_sft_data import bpe_tokenizer

import eval.generate
from common.chat import prompt_ids
from common.io import InputError, read_parquet
from common.tasks import reference_answer
from eval.dpo import table_rows, write_table
from eval.own_pairs import REJECTION, Tally, build_own_pairs, own_answer_items, pair_from_answers
from eval.trained import load_trained
from preprocess.preference import Pair, build, iter_split
from preprocess.records import Skipped

SFT = {"length": 256, "gen_length": 8, "eval_steps": 4, "remasking": "low_confidence", "eos_guard": True}
GENERATION = {"gen_length": 8, "steps": 4, "remasking": "low_confidence", "eos_guard": True}


def own(**over):
    return {
        "samples": 4, "prompts": None, "temperature": 0.7, "greedy_first": False, "reference_fallback": True,
        "batch_size": 16, "seed": 3,
        **over,
    }  # fmt: skip


PROMPT = [{"role": "user", "content": "Reverse the words: a b"}]
SOURCE = Pair("p0", PROMPT, "b a", "", "")


@pytest.mark.parametrize(
    "verdicts, fallback, expected",
    [
        ([False, True, False, True], True, ("ans1", "ans0")),  # the first accepted, the first refused
        ([True, True, False, False], True, ("ans0", "ans2")),
        ([False, False, False, False], True, ("b a", "ans0")),  # none accepted: the reference
        ([False, False, False, False], False, "no_correct_answer"),
        ([True, True, True, True], True, "no_wrong_answer"),
    ],
)
def test_the_first_accepted_answer_is_chosen_and_the_first_refused_rejected(verdicts, fallback, expected):
    item = pair_from_answers(SOURCE, [f"ans{j}" for j in range(4)], verdicts, fallback)
    if isinstance(expected, str):
        assert isinstance(item, Skipped) and item.reason == expected and item.record_id == "p0"
    else:
        assert isinstance(item, Pair) and (item.chosen, item.rejected) == expected
        assert item.prompt == PROMPT and item.rejection == REJECTION


# Per prompt (cycling): which of its K = 4 answers are right (the correct reversal) or wrong.
PATTERNS = [
    [False, True, False, True],  # a pair from samples; first wrong at draw 1
    [True, True, False, True],  # a pair from samples; first wrong at draw 3
    [True, True, True, True],  # no_wrong_answer
    [False, False, False, False],  # the reference is chosen; first wrong at draw 1
]


def scripted_generate(calls):
    """A stand-in for eval.generate.generate: answer j of prompt i is the reversal of its last user turn's words
    when PATTERNS says so, else those words unreversed with a marker; records its arguments."""

    def generate(trained, prompts, gen_length, steps, **options):
        calls.append({"n": len(prompts), "gen_length": gen_length, "steps": steps, **options})
        out = []
        for p, ids in enumerate(prompts):
            text = trained.tokenizer.decode(ids)
            words = text.split("Reverse the words:")[-1].split("<|")[0].split()
            i, j = divmod(p, 4)
            right = PATTERNS[i % len(PATTERNS)][j]
            out.append({"answer": " ".join(reversed(words)) if right else f"{' '.join(words)} wrong{j}"})
        return out

    return generate


def test_scripted_answers_make_the_pairs_and_the_stats(monkeypatch, tmp_path):
    tok = bpe_tokenizer()
    calls = []
    monkeypatch.setattr(eval.generate, "generate", scripted_generate(calls))
    dpo = {**dpo_config("task:reverse", n_train=8), "own_answers": own()}
    tally = Tally(samples=4)
    trained = SimpleNamespace(tokenizer=tok)
    items = own_answer_items(trained, iter_split(dpo, "train"), "task:reverse", dpo["own_answers"], GENERATION, tally)
    out = tmp_path / "shard_00000.parquet"

    def more_stats(written):
        return tally.stats(written)

    stats = build(dpo, SFT["length"], tok, "train", out, items=items, more_stats=more_stats)
    # one generate call for the 8 prompts x K = 4 answers, at the own_answers temperature and seed, with the
    # sft section's generation settings
    assert calls == [
        {"n": 32, "gen_length": 8, "steps": 4, "remasking": "low_confidence", "temperature": 0.7, "seed": 3,
         "eos_guard": True, "batch_size": 16}
    ]  # fmt: skip
    sources = list(iter_split(dpo, "train"))
    rows = read_parquet(out).to_pylist()
    expected = []
    for i, source in enumerate(sources):
        words = source.prompt[-1]["content"].removeprefix("Reverse the words: ").split()
        pattern = PATTERNS[i % 4]
        if all(pattern):
            continue
        right = " ".join(reversed(words))
        assert right == reference_answer("task:reverse", source.prompt) == source.chosen
        chosen = right  # a sampled right answer is the reversal itself; with none, the reference is too
        rejected = f"{' '.join(words)} wrong{pattern.index(False)}"
        expected.append((source.pair_id, chosen, rejected))
    assert [(r["pair_id"], r["chosen"], r["rejected"]) for r in rows] == expected
    assert {r["rejection"] for r in rows} == {REJECTION}
    # by hand: 8 prompts; patterns 0, 1, 3 give pairs (6 of 8); 2 (twice) skips; accepted answers 2 + 3 + 4 + 0 per
    # cycle = 9 of 16; first wrong draws 1, 3, 1 -> mean 5/3; chosen from samples on patterns 0, 1, the reference on 3
    assert stats["records_read"] == 8 and stats["records_written"] == 6
    assert stats["skipped"] == {"no_wrong_answer": 2}
    assert stats["prompts"] == 8 and stats["samples"] == 4
    assert stats["answers_accepted"] == 0.5625 and stats["pairs_share"] == 0.75
    assert stats["mean_draws_to_wrong"] == round(5 / 3, 3)
    assert stats["chosen_from"] == {"sample": 4, "reference": 2}
    assert stats["rejections"] == {REJECTION: 6}
    # every pair (6) and both no_wrong_answer skips, in prompt order (up to 8 pairs and 2 per skip reason)
    assert [e["outcome"] for e in stats["examples"]] == ["pair", "pair", "no_wrong_answer", "pair"] * 2
    assert stats["examples"][0]["accepted"] == PATTERNS[0]
    assert json.loads((tmp_path / "shard_00000.stats.json").read_text())["pairs_share"] == 0.75


def test_without_the_fallback_a_prompt_with_no_right_answer_is_skipped(monkeypatch, tmp_path):
    tok = bpe_tokenizer()
    monkeypatch.setattr(eval.generate, "generate", scripted_generate([]))
    dpo = {**dpo_config("task:reverse", n_train=4), "own_answers": own(reference_fallback=False)}
    items = own_answer_items(
        SimpleNamespace(tokenizer=tok), iter_split(dpo, "train"), "task:reverse", dpo["own_answers"], GENERATION,
        Tally(samples=4),
    )  # fmt: skip
    stats = build(dpo, SFT["length"], tok, "train", tmp_path / "s.parquet", items=items)
    assert stats["skipped"] == {"no_correct_answer": 1, "no_wrong_answer": 1} and stats["records_written"] == 2


def test_greedy_first_rejects_the_greedy_answer_the_score_would_judge(monkeypatch, tmp_path):
    """With greedy_first the first answer of a prompt is its greedy one (one temperature-0 call for the prompts),
    the other K - 1 are draws at the temperature (one call for prompts x (K - 1)); a wrong greedy answer is the
    rejected one even when every draw is right, and greedy_accepted counts the greedy answers the judge accepts."""
    tok = bpe_tokenizer()
    calls = []

    def generate(trained, prompts, gen_length, steps, **options):
        calls.append({"n": len(prompts), "temperature": options["temperature"], "seed": options["seed"]})
        greedy = options["temperature"] == 0
        out = []
        for p, ids in enumerate(prompts):
            words = trained.tokenizer.decode(ids).split("Reverse the words:")[-1].split("<|")[0].split()
            right = p % 2 == 1 if greedy else True  # greedy wrong on prompts 0 and 2; every draw right
            out.append({"answer": " ".join(reversed(words)) if right else f"{' '.join(words)} greedy"})
        return out

    monkeypatch.setattr(eval.generate, "generate", generate)
    dpo = {**dpo_config("task:reverse", n_train=4), "own_answers": own(greedy_first=True)}
    tally = Tally(samples=4, greedy_accepted=0)
    items = own_answer_items(
        SimpleNamespace(tokenizer=tok), iter_split(dpo, "train"), "task:reverse", dpo["own_answers"], GENERATION, tally
    )  # fmt: skip
    out = tmp_path / "shard_00000.parquet"
    stats = build(dpo, SFT["length"], tok, "train", out, items=items, more_stats=tally.stats)
    assert calls == [{"n": 4, "temperature": 0.0, "seed": 3}, {"n": 12, "temperature": 0.7, "seed": 3}]
    sources = list(iter_split(dpo, "train"))
    expected = []
    for source in sources[0::2]:
        words = source.prompt[-1]["content"].removeprefix("Reverse the words: ")
        expected.append((source.pair_id, source.chosen, f"{words} greedy"))
    rows = read_parquet(out).to_pylist()
    assert [(r["pair_id"], r["chosen"], r["rejected"]) for r in rows] == expected
    # by hand: 4 prompts, greedy right on 2; answers accepted (3 + 4 + 3 + 4) / 16; both pairs' chosen sampled
    assert stats["greedy_accepted"] == 0.5 and stats["answers_accepted"] == 0.875
    assert stats["mean_draws_to_wrong"] == 1.0 and stats["chosen_from"] == {"sample": 2, "reference": 0}
    assert stats["skipped"] == {"no_wrong_answer": 2}
    assert Tally(samples=4).stats(0)["greedy_accepted"] is None  # without greedy_first: not counted


def test_a_real_models_rejected_answer_is_its_own_first_draw(tmp_path):
    """On a random tiny model folder (every answer wrong): chosen is the reference, rejected is exactly the text
    eval.generate gives for the prompt's first draw at the own_answers temperature and seed."""
    tok = bpe_tokenizer()
    tok_dir = tmp_path / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    model_dir = write_folder(tmp_path / "model", tok_dir, tok)
    dpo = {**dpo_config("task:reverse", n_train=5), "own_answers": own(samples=3)}
    config = {"dpo": dpo, "sft": SFT}
    stats = build_own_pairs(config, model_dir, tok_dir, tmp_path / "pairs" / "shard_00000.parquet")
    rows = read_parquet(tmp_path / "pairs" / "shard_00000.parquet").to_pylist()
    assert stats["answers_accepted"] == 0 and stats["chosen_from"] == {"sample": 0, "reference": 5}
    assert stats["mean_draws_to_wrong"] == 1.0 and len(rows) == 5 and stats["model"] == str(model_dir)
    trained = load_trained(model_dir, torch.device("cpu"))
    sources = list(iter_split(dpo, "train"))
    prompts = [prompt_ids(trained.tokenizer, s.prompt) for s in sources for _ in range(3)]
    answers = eval.generate.generate(
        trained, prompts, 8, 4, remasking="low_confidence", temperature=0.7, seed=3, eos_guard=True, batch_size=16
    )
    assert [r["rejected"] for r in rows] == [answers[3 * i]["answer"] for i in range(5)]
    assert [r["chosen"] for r in rows] == [s.chosen for s in sources]
    # the three draws of a prompt are distinct streams (temperature > 0): not all the same text everywhere
    assert len({answers[3 * i + j]["answer"] for i in range(5) for j in range(3)}) > 5
    # own_answers.prompts: only the first prompts are answered
    few = {**config, "dpo": {**dpo, "own_answers": own(samples=3, prompts=2)}}
    stats = build_own_pairs(few, model_dir, tok_dir, tmp_path / "few" / "shard_00000.parquet")
    assert stats["prompts"] == stats["records_read"] == 2
    assert [r["rejected"] for r in read_parquet(tmp_path / "few" / "shard_00000.parquet").to_pylist()] == [
        answers[0]["answer"], answers[3]["answer"]
    ]  # fmt: skip
    # greedy_first: the rejected answer (every answer is wrong) is the prompt's greedy one, as the task score decodes
    greedy = {**config, "dpo": {**dpo, "own_answers": own(samples=3, greedy_first=True)}}
    stats = build_own_pairs(greedy, model_dir, tok_dir, tmp_path / "greedy" / "shard_00000.parquet")
    greedy_answers = eval.generate.generate(
        trained, prompts[::3], 8, 4, remasking="low_confidence", temperature=0.0, eos_guard=True, batch_size=16
    )
    assert [r["rejected"] for r in read_parquet(tmp_path / "greedy" / "shard_00000.parquet").to_pylist()] == [
        r["answer"] for r in greedy_answers
    ]
    assert stats["greedy_accepted"] == 0 and stats["generation"]["greedy_first"] is True


# ----------------------------------------------------------------------------------------------------------------
# The DPO table's variants (eval/dpo.py): runs grouped by their pairs, loss and round, mean ± sd over seeds


def fake_dpo_run(root, name, seed, data, init, sft_weight, scores):
    """runs/{name}/model/config.json as the trainer writes it for a dpo run (the keys read_meta requires and the
    record's), and its eval/dpo.json with ``scores`` and the other keys the table reads; returns the dpo.json."""
    folder = root / "runs" / name / "model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").touch()
    meta = {**fake_record(name, "dpo", 3, seed, "mdlm"), "data": data, "init": init}
    meta["dpo"] = {"loss": "sigmoid", "beta": 0.1, "sft_weight": sft_weight}
    (folder / "config.json").write_text(json.dumps(meta))
    (root / "runs" / name / "eval").mkdir()
    path = root / "runs" / name / "eval" / "dpo.json"
    settings = {"loss": "sigmoid", "beta": 0.1, "time_samples": 2, "n_pairs": 8, "n_gen": 8, "remasking": "random"}
    result = {
        "run": name, "backbone": {"kind": "dit"}, "source": "task:reverse", "judge": "task check", "init_from": init,
        "settings": {**settings, "steps": 4}, "steps_trained": 6, "reward_margin": 0.0,
        "elbo_preference_before": 0.5, "elbo_preference_after": 0.5, **scores,
        "provenance": {"settings_digest": f"{name}-digest", "seed": seed, "code_commit": "c0ffee"},
    }  # fmt: skip
    path.write_text(json.dumps(result))
    return path


def scores(before, after, win, acc):
    return {"task_score_before": before, "task_score_after": after, "win_rate": win, "reward_accuracy": acc}


def test_the_table_names_each_runs_variant_and_averages_its_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a record's init is relative to the working directory, as in the DAG
    sft = tmp_path / "runs" / "sft" / "model"
    sft.mkdir(parents=True)
    (sft / "config.json").write_text(json.dumps({**fake_record("sft", "sft", 3, 0, "mdlm"), "data": "sft"}))
    paths = [
        fake_dpo_run(tmp_path, "rpo", 0, "preference", "runs/sft/model", 1.0, scores(0.8, 0.7, 0.45, 1.0)),
        fake_dpo_run(tmp_path, "rpo-s1", 1, "preference", "runs/sft/model", 1.0, scores(0.8, 0.6, 0.40, 0.9)),
        fake_dpo_run(tmp_path, "own1", 0, "own_pairs", "runs/sft/model", 1.0, scores(0.8, 0.9, 0.60, 0.5)),
        fake_dpo_run(tmp_path, "own1-s1", 1, "own_pairs", "runs/sft/model", 1.0, scores(0.8, 0.86, 0.55, 0.7)),
        fake_dpo_run(tmp_path, "own2", 0, "own_pairs", "runs/own1/model", 1.0, scores(0.9, 0.92, 0.51, 0.6)),
        fake_dpo_run(tmp_path, "plain", 0, "preference", "runs/sft/model", 0.0, scores(0.8, 0.4, 0.3, 0.98)),
    ]
    rows = table_rows([str(p.relative_to(tmp_path)) for p in paths])
    rpo, own1, own2 = (
        "source pairs; sigmoid + 1 x chosen NELBO; beta 0.1",
        "own answers, round 1; sigmoid + 1 x chosen NELBO; beta 0.1",
        "own answers, round 2; sigmoid + 1 x chosen NELBO; beta 0.1",
    )
    assert [r["variant"] for r in rows] == [rpo, rpo, own1, own1, own2, "source pairs; sigmoid; beta 0.1"]
    write_table(rows, tmp_path / "tables")
    text = (tmp_path / "tables" / "dpo.md").read_text()
    # by hand: mean ± sample sd of two seeds a, b is (a + b) / 2 ± |a - b| / sqrt(2)
    assert (
        f"| {rpo} | 0 1 | 0.800 ± 0.000 | 0.650 ± {0.1 / math.sqrt(2):.3f} | 0.425 ± {0.05 / math.sqrt(2):.3f} |"
        in text
    )
    assert f"| {own1} | 0 1 | 0.800 ± 0.000 | 0.880 ± {0.04 / math.sqrt(2):.3f} | 0.575 ± " in text
    assert f"| {own2} | 0 | 0.900 | 0.920 | 0.510 | 0.600 |" in text  # one seed: no spread
    # two runs of one variant and seed would share a cell: refused, naming both
    paths.append(fake_dpo_run(tmp_path, "rpo-again", 1, "preference", "runs/sft/model", 1.0, scores(0, 0, 0, 0)))
    with pytest.raises(InputError, match="rpo-s1 and .*rpo-again"):
        table_rows([str(p.relative_to(tmp_path)) for p in paths])


def test_each_seed_of_a_round_draws_its_own_pairs():
    """Rule own_pairs draws with dpo.own_answers.seed + the run's seed: the two seeds of round 1 start from the same
    SFT model yet get different draw seeds, hence different jobs and pairs; a run's seed moves its pairs' seed."""
    from conftest import merged_config, twin

    from common.workflow import Plan

    config = merged_config(twin("sft"))
    config["dpo"]["own_answers"]["seed"] = 5
    plan = Plan(config)
    assert [plan.own_pairs_seed(run) for run in ("dpo-own-r1", "dpo-own-r1-s1", "dpo-own-r2-s1")] == [5, 6, 6]
    assert plan.dpo_dirs("dpo-own-r1")[0] == plan.dpo_dirs("dpo-own-r1-s1")[0]  # the same start model
    first, second = plan.own_pairs_settings("dpo-own-r1"), plan.own_pairs_settings("dpo-own-r1-s1")
    assert first["own_answers"]["seed"] == 5 and second["own_answers"]["seed"] == 6
    assert {**first, "own_answers": None} == {**second, "own_answers": None}
