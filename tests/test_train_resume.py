"""A run killed (SIGKILL) or preempted (SIGTERM: checkpoint after the step in flight, exit 75) and resumed gives the
same loss at every later step, and the same final weights, as a run that was never stopped: for every objective
(mdlm, sedd, ar, sft, dpo with cached reference scores, atat with its importance estimator). A checkpoint resumes
only the settings that wrote it; a damaged newest checkpoint falls back to the older one; a finished run leaves
no checkpoint behind. Tiny model, toy data (tests/toy_runs.py), one thread; in this process, except where a real
SIGKILL is sent."""

import re
import shutil
import signal

import pytest
from toy_runs import OBJECTIVE_RUNS, ToyProject, assert_same_run, rows_of

from train.importance import IMPORTANCE_FILE

STEPS = 12


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return ToyProject.build(tmp_path_factory.mktemp("resume"), train={"max_steps": STEPS})


def resumed(log):
    return re.search(r"^resuming from ", log, re.MULTILINE) is not None


@pytest.fixture(scope="module")
def uninterrupted(project):
    """run -> its uninterrupted run, every other run's yardstick (trained on first use). The dpo yardstick scores
    the reference at every step (cache_reference: false); the interrupted dpo run caches the scores, so its
    equality with the yardstick also shows that the cache changes nothing."""
    nocache = project.write_config("config-nocache.yaml", lambda c: c["dpo"].update(cache_reference=False))
    done = {}

    def get(run):
        if run not in done:
            out = project.root / f"uninterrupted-{run}"
            finished = project.train(run, out, config=nocache if run == "dpo" else "config.yaml")
            assert finished.returncode == 0, finished.log[-3000:]
            assert len([r for r in rows_of(out) if r["split"] == "train"]) == STEPS
            done[run] = out
        return done[run]

    return get


@pytest.fixture(scope="module")
def reference(uninterrupted):
    return uninterrupted("mdlm")


def same_run(reference, out, run):
    assert_same_run(reference, out, ("model.safetensors", IMPORTANCE_FILE) if run == "atat" else ("model.safetensors",))


@pytest.mark.parametrize(
    "run, sig",
    [("mdlm", signal.SIGKILL)] + [(run, signal.SIGTERM) for run in OBJECTIVE_RUNS],
    ids=["mdlm-SIGKILL"] + [f"{run}-SIGTERM" for run in OBJECTIVE_RUNS],
)
def test_interrupted_and_resumed_equals_uninterrupted(project, uninterrupted, run, sig):
    """Stopped after step 6: SIGKILL (a real one, in a subprocess) leaves the step-4 checkpoint (save_every 4);
    SIGTERM finishes step 7, checkpoints it and exits 75."""
    out = project.root / f"interrupted-{run}-{int(sig)}"
    if sig == signal.SIGKILL:
        first, expected_rc, resumed_from = project.subprocess(run, out, kill_at=6), -signal.SIGKILL, "step_00000004"
    else:
        first, expected_rc, resumed_from = project.train(run, out, stop_at=6), 75, "step_00000007"
    assert first.returncode == expected_rc, first.log[-3000:]
    assert not (out / "model.safetensors").exists()  # an unfinished run declares no outputs
    assert (out / "checkpoints" / resumed_from).is_dir()
    if run == "dpo":
        assert "dpo reference scores" in first.log
        assert (out / "checkpoints" / "reference_scores.pt").is_file()
    # mem_mb is a job-only setting (not in the digest): the checkpoint still resumes under a new value
    second = project.train(run, out, "--set", "mem_mb=4000")
    assert second.returncode == 0, second.log[-3000:]
    assert f"resuming from {out / 'checkpoints' / resumed_from}" in second.log
    assert "not resuming" not in second.log
    if run == "dpo":
        assert "read from" in second.log  # the cached scores are reused
    same_run(uninterrupted(run), out, run)
    assert not (out / "checkpoints").exists()  # a finished run keeps no resumable state


def test_checkpoint_of_other_settings_is_not_resumed(project, reference):
    out = project.root / "new-lr"
    first = project.subprocess("mdlm", out, kill_at=6)
    assert first.returncode == -signal.SIGKILL and (out / "checkpoints" / "step_00000004").is_dir()
    second = project.train("mdlm", out, "--set", "lr=0.002")
    assert second.returncode == 0, second.log[-3000:]
    assert (
        f"warning: not resuming from {out / 'checkpoints' / 'step_00000004'}: written under other settings"
        in second.log
    )
    assert "lr 0.003 -> 0.002" in second.log and "training from step 0" in second.log
    assert not resumed(second.log)
    want, got = rows_of(reference), rows_of(out)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]  # from step 0, once
    # step 1: the weights before any update; step 2 already shows the new lr
    assert float(got[1]["loss"]) == pytest.approx(float(want[1]["loss"]), rel=1e-6)
    assert float(got[2]["loss"]) != pytest.approx(float(want[2]["loss"]), rel=1e-4)


def test_finished_run_forced_again_trains_from_step_0(project, reference, tmp_path):
    out = tmp_path / "forced"
    shutil.copytree(reference, out)  # a finished run's folder, as `snakemake --forcerun` finds it
    done = project.train("mdlm", out)
    assert done.returncode == 0, done.log[-3000:]
    assert not resumed(done.log)
    assert_same_run(reference, out)


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(project, reference):
    out = project.root / "damaged"
    first = project.subprocess("mdlm", out, kill_at=10)
    assert first.returncode == -signal.SIGKILL
    newest, older = out / "checkpoints" / "step_00000008", out / "checkpoints" / "step_00000004"
    assert older.is_dir() and newest.is_dir()  # the last two are kept
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    second = project.train("mdlm", out)
    assert second.returncode == 0, second.log[-3000:]
    assert f"warning: not resuming from {newest}: {weights}: unreadable safetensors file" in second.log
    assert f"resuming from {older} (step 4)" in second.log
    assert_same_run(reference, out)
