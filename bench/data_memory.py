"""Training data memory: peak RSS of one training process and the time it spends reading its batches, on a
synthetic set of stage shards of several GB, for this checkout and for another (e.g. HEAD before the change).

    python bench/data_memory.py --rows 2400000 --shards 16 --steps 6 --json /tmp/data_memory.json
    python bench/data_memory.py --old-repo /tmp/old      # compare with a checkout unpacked by `git archive`

Without --old-repo the old code is `git archive HEAD` unpacked into a temporary folder. The data set is
--shards Parquet files (common.io.write_parquet: zstd) under --work (default /tmp/data_memory), each row with
stage1/2/3_ids of --lengths (default 64 128 256) uniform random ids of a 63-token vocabulary (the toy
WordLevel tokenizer of train/toydata.py); it is written once and reused. Every case is one real training
process, `python -m train` on a cascade stage-3 run of the tiny model (prefix = stage2_ids, target =
stage3_ids), global batch = micro batch = --batch, --steps steps, one validation at the end, no checkpoint
before it, in a child of its own:

    peak RSS     = ru_maxrss of that child, read with os.wait4 (Linux: KiB; reported in MB = 10^6 bytes)
    setup peak   = VmHWM of the child at the end of Trainer.__init__ (the peak up to then: imports, data, model)
    setup s      = Trainer.__init__ (tokenizer, shards -> data, model), timed in the child
    data ms/step = time in the objective's batch (rows gathered, cast, moved) during train_step, per step
                   (train.objective.LikelihoodObjective.batch; Trainer._batch in checkouts before it)
    step ms      = train_step wall time per step (data included), median over the steps after the first

The child is `python -c` with a small driver that wraps Trainer.__init__, batch and train_step with timers
and then calls train.__main__.main, so the code measured is the checkout's own. The new code is run twice:
the first run decodes the shards into its cache (`{out}/data-cache/`), the second is given a cache that
survives (a copy kept aside) to show the reuse; the cache is removed when a run finishes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import yaml  # noqa: E402

from common.io import write_parquet  # noqa: E402
from train.toydata import write_tokenizer  # noqa: E402

MB = 10**6
N_WORDS = 61  # + [EOS] + [MASK] = 63 tokens

DRIVER = r"""
import json, sys, time
import train.trainer as T
from train.__main__ import main
report = {"data_s": 0.0, "steps": [], "setup_s": None}
inside = [False]
try:  # the batch reader: the objective's (train/objective.py), or the trainer's own in older checkouts
    import train.objective as O
    reader, reader_name = O.LikelihoodObjective, "batch"
except ImportError:
    reader, reader_name = T.Trainer, "_batch"
init, batch, step = T.Trainer.__init__, getattr(reader, reader_name), T.Trainer.train_step
def timed_init(self, *a, **k):
    t = time.perf_counter(); init(self, *a, **k); report["setup_s"] = time.perf_counter() - t
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith("Vm"))
    report["setup_hwm_kib"] = int(status["VmHWM"].split()[0])  # peak RSS up to the end of setup
def timed_batch(self, *a, **k):
    t = time.perf_counter(); r = batch(self, *a, **k)
    if inside[0]: report["data_s"] += time.perf_counter() - t
    return r
def timed_step(self, s):
    inside[0] = True; t = time.perf_counter()
    try: return step(self, s)
    finally: report["steps"].append(time.perf_counter() - t); inside[0] = False
T.Trainer.__init__, T.Trainer.train_step = timed_init, timed_step
setattr(reader, reader_name, timed_batch)
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f: json.dump(report, f)
sys.exit(rc)
"""


def list_column(values: np.ndarray) -> pa.Array:
    rows, length = values.shape
    offsets = pa.array(np.arange(0, rows * length + 1, length, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


def make_shards(folder: Path, rows: int, shards: int, lengths: tuple[int, int, int], seed: int = 0) -> list[str]:
    """`shards` Parquet files of random stage ids, `rows` in all; reused when the folder already holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "done.json"
    spec = {"rows": rows, "shards": shards, "lengths": list(lengths), "seed": seed}
    paths = [str(folder / f"shard_{i:05d}.parquet") for i in range(shards)]
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return paths
    rng = np.random.default_rng(seed)
    per = np.diff(np.linspace(0, rows, shards + 1).astype(np.int64))
    for path, n in zip(paths, per):
        columns = {
            f"stage{k + 1}_ids": list_column(rng.integers(0, N_WORDS, (int(n), length), dtype=np.int32))
            for k, length in enumerate(lengths)
        }
        write_parquet(pa.table(columns), path)
    stamp.write_text(json.dumps(spec))
    return paths


def make_config(folder: Path, lengths, batch: int, steps: int) -> Path:
    config = {
        "stages": {"lengths": list(lengths)},
        "runs": {"bench": {"kind": "cascade", "method": "keybert_no_stopword", "objective": "mdlm"}},
        "train": {
            "model": "tiny",
            "noise": {"type": "loglinear", "eps": 1e-3},
            "global_batch_size": batch,
            "micro_batch_size": batch,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "warmup_steps": 1,
            "max_steps": steps,
            "grad_clip": 1.0,
            "ema": 0.9,
            "dropout": 0.0,
            "eval_every": steps,
            "eval_batches": 1,
            "save_every": 10**6,
            "shuffle_prefix": False,
            "warm_start": False,
            "antithetic": True,
            "precision": "auto",
            "deepspeed": None,
            "seed": 0,
            "gpus": 0,
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_case(
    repo: Path, config: Path, train: list[str], val: list[str], tokenizer: Path, out: Path, threads: int
) -> dict:
    report = out.parent / f"{out.name}.timings.json"
    cmd = [
        sys.executable,
        "-c",
        DRIVER,
        str(report),
        "--config",
        str(config),
        "--run",
        "bench",
        "--stage",
        "3",
        "--train-shards",
        *train,
        "--val-shards",
        *val,
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        child = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{repo}: training failed; see {out.parent / (out.name + '.log')}")
    t = json.loads(report.read_text())
    later = t["steps"][1:] or t["steps"]
    step_ms = 1000 * statistics.median(later)
    data_ms = 1000 * t["data_s"] / len(t["steps"])
    return {
        "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB),
        "setup_peak_rss_mb": round(t.get("setup_hwm_kib", 0) * 1024 / MB),
        "setup_s": round(t["setup_s"], 1),
        "data_ms_per_step": round(data_ms, 2),
        "step_ms": round(step_ms, 1),
        "data_share": round(data_ms / step_ms, 4),
        "wall_s": round(wall, 1),
    }


def old_checkout(folder: Path) -> Path:
    """`git archive HEAD` of this repository unpacked into folder/old."""
    target = folder / "old"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = folder / "head.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), "HEAD"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/data_memory", help="folder for the shards and the runs")
    parser.add_argument("--rows", type=int, default=2_400_000, help="training rows in all")
    parser.add_argument("--val-rows", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs=3, default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    parser.add_argument("--old-repo", default=None, help="checkout of the old code (default: git archive HEAD)")
    parser.add_argument("--skip-old", action="store_true", help="measure only this checkout")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    work = Path(args.work)
    start = time.perf_counter()
    train = make_shards(work / "train", args.rows, args.shards, tuple(args.lengths))
    val = make_shards(work / "validation", args.val_rows, 1, tuple(args.lengths), seed=1)
    made_s = time.perf_counter() - start
    tokenizer = work / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        write_tokenizer(tokenizer, N_WORDS)
    config = make_config(work, args.lengths, args.batch, args.steps)
    raw = args.rows * sum(args.lengths) * 4
    loaded = args.rows * sum(args.lengths[1:]) * 4
    on_disk = sum(Path(p).stat().st_size for p in train)
    print(
        f"shards: {args.rows} rows in {args.shards} files, {raw / MB:.0f} MB as int32 ({loaded / MB:.0f} MB in "
        f"the two columns a stage-3 run reads), {on_disk / MB:.0f} MB of zstd Parquet; ready in {made_s:.0f} s",
        flush=True,
    )

    cases = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        if not args.skip_old:
            old = Path(args.old_repo) if args.old_repo else old_checkout(tmp)
            cases.append(("old (in memory)", old, "old"))
        cases.append(("new, cache built", ROOT, "new"))
        cases.append(("new, cache reused", ROOT, "reuse"))
        rows = []
        for label, repo, name in cases:
            out = tmp / name
            if name == "reuse":  # the first new run's cache, kept aside before that run removed it
                shutil.copytree(tmp / "cache-copy", out / "data-cache")
            if name == "new":
                # keep the cache the run builds: copy it once setup is over (the run removes it when it finishes)
                result = run_new_keeping_cache(
                    repo, config, train, val, tokenizer, out, args.threads, tmp / "cache-copy"
                )
            else:
                result = run_case(repo, config, train, val, tokenizer, out, args.threads)
            result = {"case": label, **result}
            print(json.dumps(result), flush=True)
            rows.append(result)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "rows": args.rows,
        "shards": args.shards,
        "lengths": args.lengths,
        "int32_mb": round(raw / MB),
        "read_mb": round(loaded / MB),
        "parquet_mb": round(on_disk / MB),
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "cases": rows,
    }
    print("| case | peak RSS MB | setup peak MB | setup s | data ms/step | step ms | data / step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['peak_rss_mb']} | {r['setup_peak_rss_mb']} | {r['setup_s']} | "
            f"{r['data_ms_per_step']} | {r['step_ms']} | "
            f"{100 * r['data_share']:.2f}% |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_new_keeping_cache(repo, config, train, val, tokenizer, out, threads, keep: Path) -> dict:
    """run_case, with the cache the run builds hard-linked aside as soon as its last file appears."""
    import threading

    done = threading.Event()

    def watch():
        cache = out / "data-cache"
        want = 2 * (len(train) + len(val))  # two columns per shard
        while not done.is_set():
            npys = [p for p in cache.glob("*.npy") if not p.name.startswith(".")] if cache.exists() else []
            jsons = [p for p in cache.glob("*.json") if not p.name.startswith(".")] if cache.exists() else []
            if len(npys) == want and len(jsons) == want:
                keep.mkdir(parents=True, exist_ok=True)
                for p in npys + jsons:
                    os.link(p, keep / p.name)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return run_case(repo, config, train, val, tokenizer, out, threads)
    finally:
        done.set()
        watcher.join()


if __name__ == "__main__":
    sys.exit(main())
