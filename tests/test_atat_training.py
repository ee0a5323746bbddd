"""Objective atat in the trainer (train/atat.py's AtatObjective in train/trainer.py): the uniform variant trains
exactly as objective mdlm (same losses at every step, same weights); the full variant logs its curriculum and the
estimator's statistics, validates with the plain MDLM NELBO and saves the estimator beside the model. (Its
preempted and resumed run equals an uninterrupted one: tests/test_train_resume.py.) Tiny model, toy data
(tests/toy_runs.py), in this process, one thread."""

import pytest
import yaml
from safetensors.torch import load_file
from toy_runs import ToyProject, rows_of

from train.atat import ATAT_FIELDS
from train.importance import IMPORTANCE_FILE, load_importance

SINGLE = {"kind": "single", "method": "keybert_no_stopword"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    runs = {
        "single": {**SINGLE, "objective": "mdlm"},
        "uniform": {**SINGLE, "objective": "atat", "atat": {"importance": "uniform"}},
        "atat": {**SINGLE, "objective": "atat"},  # the full variant
    }
    # no dropout: the estimator (built after the model) draws from the same generator as the dropout masks
    train = {"max_steps": 12, "dropout": 0.0}
    return ToyProject.build(tmp_path_factory.mktemp("atat"), train=train, runs=runs)


@pytest.fixture(scope="module")
def full(project):
    out = project.root / "full"
    done = project.train("atat", out)
    assert done.returncode == 0, done.log[-3000:]
    return out, done.log


def test_uniform_variant_trains_exactly_as_mdlm(project):
    runs = {}
    for run in ("single", "uniform"):
        done = project.train(run, project.root / run)
        assert done.returncode == 0, done.log[-3000:]
        runs[run] = project.root / run
    want, got = rows_of(runs["single"]), rows_of(runs["uniform"])
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for a, b in zip(want, got):
        assert float(b["loss"]) == float(a["loss"]), (a, b)
    w_mdlm, w_uniform = (
        load_file(runs["single"] / "model.safetensors"),
        load_file(runs["uniform"] / "model.safetensors"),
    )
    assert all((w_mdlm[k] == w_uniform[k]).all() for k in w_mdlm)
    assert all(float(r["atat_strength"]) >= 0 for r in got if r["split"] == "train")


def test_full_variant_logs_curriculum_and_estimator_and_reports_plain_nelbo(full):
    out, log = full
    stages = [line for line in log.splitlines() if line.startswith("atat curriculum: stage")]
    assert [s.split(":")[1].split()[1] for s in stages] == ["1/3", "2/3", "3/3"], stages
    assert "plain MDLM (strength 0)" in stages[-1]
    rows = rows_of(out)
    train_rows = [r for r in rows if r["split"] == "train"]
    strengths = [float(r["atat_strength"]) for r in train_rows]
    assert strengths == sorted(strengths, reverse=True) and strengths[0] == 1.0 and strengths[-1] == 0.0
    for key in ATAT_FIELDS:
        assert all(r[key] != "" for r in train_rows), key
    assert all(r["atat_nelbo"] == "" for r in rows if r["split"] == "val")  # validation: the plain NELBO only
    meta = yaml.safe_load((out / "config.json").read_text())
    assert meta["objective"] == "mdlm" and meta["training_objective"] == "atat"
    assert meta["atat"]["importance"] == "full"
    estimator, frequency = load_importance(out)
    assert frequency is not None and frequency.shape == (meta["vocab_size"],)
    assert (out / IMPORTANCE_FILE).is_file() and not (out / "checkpoints").exists()
