"""Toy training runs shared by the trainer's tests: one project folder with stage shards, SFT canvases and
preference pairs of arithmetic progressions (train/toydata.py), a config with one run per objective, and
`python -m train` on it, in this process (fast) or in a subprocess (for a real SIGKILL).

    project = ToyProject.build(tmp, train={"max_steps": 12})
    done = project.train("sedd", tmp / "out", stop_at=6)       # SIGTERM after step 6: exit 75, done.log
    done = project.train("sedd", tmp / "out")                  # resumes from the step-7 checkpoint
    assert_same_run(tmp / "uninterrupted", tmp / "out")        # same losses and weights

OBJECTIVE_RUNS names the run of each objective: mdlm (a cascade stage 2, so prefix and shuffle_prefix are in
play), sedd (single), ar, sft, dpo (from `base`, a few mdlm steps) and atat (the full variant).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from train.toydata import write_stage_shards

ROOT = Path(__file__).resolve().parents[1]
PROMPT, ANSWER = 6, 10  # sft and dpo canvases: a clean prompt, then the answer (masked, scored)
N_WORDS = 61

# the tiny model and the smallest batches that still exercise accumulation (micro 8 of global 16); dropout > 0
# so the restored RNG state matters
TRAIN = {
    "model": "tiny",
    "noise": {"type": "loglinear", "eps": 1e-3},
    "global_batch_size": 16,
    "micro_batch_size": 8,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "warmup_steps": 3,
    "max_steps": 8,
    "grad_clip": 1.0,
    "ema": 0.9,
    "dropout": 0.1,
    "eval_every": 4,
    "eval_batches": 1,
    "save_every": 4,
    "shuffle_prefix": True,
    "antithetic": True,
    "precision": "auto",
    "seed": 0,
}
RUNS = {
    "mdlm": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "mdlm"},
    "sedd": {"kind": "single", "method": "keybert_no_stopword", "objective": "sedd"},
    "ar": {"kind": "ar", "method": "keybert_no_stopword", "objective": "ar"},
    "sft": {"kind": "sft", "objective": "mdlm"},
    "base": {"kind": "single", "method": "keybert_no_stopword", "objective": "mdlm", "max_steps": 4},
    # lr 1e-3: 12 steps take the toy preference's validation loss from ln 2 to 0.39; at 2e-3 a gradient spike
    # (norm 37) on an Intel Xeon left it at 0.82 after 12 steps, above ln 2, where an AMD EPYC passed
    "dpo": {"kind": "dpo", "objective": "mdlm", "init_from": "base", "lr": 1e-3, "dropout": 0.0},
    "atat": {"kind": "single", "method": "keybert_no_stopword", "objective": "atat"},
}
OBJECTIVE_RUNS = ("mdlm", "sedd", "ar", "sft", "dpo", "atat")

RUNNER = """
import os, signal, sys
from train.__main__ import main
kill_at, sig = int(os.environ.get("KILL_AT", "0")), int(os.environ.get("KILL_SIGNAL", "9"))
def on_step(step):
    if step == kill_at:
        os.kill(os.getpid(), sig)
sys.exit(main(sys.argv[1:], on_step=on_step))
"""


def canvas_table(rows: int, seed: int, columns: str) -> pa.Table:
    """Canvases of PROMPT + ANSWER tokens: a progression x_i = (a + b i) mod N_WORDS, its answer the last ANSWER
    tokens. columns "sft": ids + answer_mask (preprocess/sft.py); "pairs": chosen = the progression, rejected = its
    answer replaced by random words (preprocess/preference.py)."""
    gen = torch.Generator().manual_seed(seed)
    length = PROMPT + ANSWER
    a = torch.randint(0, N_WORDS, (rows, 1), generator=gen)
    b = torch.randint(1, 4, (rows, 1), generator=gen)
    chosen = (a + b * torch.arange(length)) % N_WORDS
    mask = [[0] * PROMPT + [1] * ANSWER] * rows

    def lists(values):
        return pa.array(values, type=pa.list_(pa.int32()))

    if columns == "sft":
        return pa.table({"ids": lists(chosen.tolist()), "answer_mask": lists(mask)})
    rejected = chosen.clone()
    rejected[:, PROMPT:] = torch.randint(0, N_WORDS, (rows, ANSWER), generator=gen)
    return pa.table(
        {
            "pair_id": [f"p{i}" for i in range(rows)],
            "chosen_ids": lists(chosen.tolist()),
            "chosen_mask": lists(mask),
            "rejected_ids": lists(rejected.tolist()),
            "rejected_mask": lists(mask),
        }
    )


@dataclass
class Done:
    returncode: int
    log: str


@dataclass
class ToyProject:
    root: Path
    data: dict  # tokenizer, train, validation: the stage shards (write_stage_shards)
    runs: dict  # the config's runs

    @classmethod
    def build(
        cls,
        root: Path,
        train: dict | None = None,
        runs: dict | None = None,
        dpo: dict | None = None,
        stage_rows: int = 96,
    ):
        """Shards and config.yaml under `root`; `train`, `runs` (per run, merged) and `dpo` override the defaults;
        stage_rows training blocks (and 32 validation blocks) in the stage shards."""
        root = Path(root)
        data = write_stage_shards(root / "data", rows=stage_rows, val_rows=32, lengths=(4, 8, 16), n_words=N_WORDS)
        for kind in ("sft", "pairs"):
            for split, rows, seed in (("train", 96, 0), ("validation", 32, 1)):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                pq.write_table(canvas_table(rows, seed, kind), root / kind / split / "shard_00000.parquet")
        all_runs = copy.deepcopy(RUNS)
        for name, keys in (runs or {}).items():
            all_runs[name] = {**all_runs.get(name, {}), **keys}
        config = {
            "stages": {"lengths": [4, 8, 16]},
            "sft": {"length": PROMPT + ANSWER},
            "dpo": {"beta": 0.5, "time_samples": 2, **(dpo or {})},
            "atat": {"stages": 3, "max_strength": 1.0, "estimator_dim": 16},
            "runs": all_runs,
            "train": {**TRAIN, **(train or {})},
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        (root / "runner.py").write_text(RUNNER)
        return cls(root, data, all_runs)

    def write_config(self, name: str, change) -> str:
        """A second config file beside config.yaml: change(config) edits a copy; returns its file name."""
        config = yaml.safe_load((self.root / "config.yaml").read_text())
        change(config)
        (self.root / name).write_text(yaml.safe_dump(config))
        return name

    def args(self, run: str, out: Path, *extra: str, config: str = "config.yaml") -> list[str]:
        """`python -m train` arguments of `run` (dpo: its base model folder, trained first if missing)."""
        kind = self.runs[run]["kind"]
        if kind in ("sft", "dpo"):
            split = self.root / ("sft" if kind == "sft" else "pairs")
            shards = [str(split / "train/shard_00000.parquet"), str(split / "validation/shard_00000.parquet")]
        else:
            shards = [self.data["train"], self.data["validation"]]
        args = ["--config", str(self.root / config), "--run", run]
        args += ["--train-shards", shards[0], "--val-shards", shards[1], "--tokenizer", self.data["tokenizer"]]
        args += ["--out", str(out)]
        if kind == "cascade":
            args += ["--stage", "2"]
        if kind == "dpo":
            args += ["--init", str(self.base())]
        return args + list(extra)

    def base(self) -> Path:
        """The dpo run's start: the `base` run's model folder."""
        out = self.root / "base"
        if not (out / "config.json").is_file():
            done = self.train("base", out)
            assert done.returncode == 0, done.log[-3000:]
        return out

    def train(self, run: str, out: Path, *extra: str, stop_at: int = 0, config: str = "config.yaml") -> Done:
        """The run in this process (one thread, as the subprocesses); stop_at > 0: SIGTERM after that step."""
        from train.__main__ import main

        def on_step(step):
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

        args = self.args(run, out, *extra, config=config)
        threads, log = torch.get_num_threads(), io.StringIO()
        torch.set_num_threads(1)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                code = main(args, on_step=on_step)
        except SystemExit as err:  # a diverged run: the message, exit status 1
            log.write(str(err.code))
            code = err.code if isinstance(err.code, int) else 1
        finally:
            torch.set_num_threads(threads)
        return Done(0 if code is None else code, log.getvalue())

    def subprocess(self, run: str, out: Path, *extra: str, kill_at: int = 0, sig=signal.SIGKILL) -> Done:
        """The run as `python runner.py`, sent `sig` after step kill_at (0: never); log = stdout + stderr."""
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "KILL_AT": str(kill_at),
            "KILL_SIGNAL": str(int(sig)),
        }
        cmd = [sys.executable, str(self.root / "runner.py"), *self.args(run, out, *extra)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        return Done(done.returncode, done.stdout + done.stderr)


def rows_of(out) -> list[dict]:
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_same_run(reference: Path, out: Path, files=("model.safetensors",)) -> None:
    """Every step and validation row exactly once with the same loss (relative 1e-6), and the same weights
    (1e-6) in each of `files`."""
    want, got = rows_of(reference), rows_of(out)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for a, b in zip(want, got):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-6, abs=1e-7), (a, b)
    for name in files:
        w_ref, w_out = load_file(reference / name), load_file(out / name)
        assert w_ref.keys() == w_out.keys(), name
        for key in w_ref:
            assert (w_ref[key] - w_out[key]).abs().max().item() <= 1e-6, (name, key)
