"""The test suite with and without the warm interpreter (tests/warm_python.py), in one run, one after the other: wall
seconds and the CPU seconds of the whole machine (/proc/stat, so that Snakemake's jobs, the server and its forks all
count), and their ratio.

    python bench/warm_python.py                                  # the wikihow twin's DAG tests (about 2 minutes)
    python bench/warm_python.py --pytest-args tests -n 2 --dist loadgroup     # make test's own command (~20 minutes)

    ratio = seconds with WARM_PYTHON=0 / seconds with the warm interpreter (higher is better)

Each side starts from a fresh pytest base directory, so both build the same DAGs from nothing. Run it on an idle
machine: the CPU figure is the machine's, not the process tree's."""

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

ROOT = Path(__file__).resolve().parents[1]


def machine_cpu_seconds() -> float:
    """user + nice + system seconds of every CPU since boot (/proc/stat's first line, in clock ticks)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return sum(int(v) for v in fields[1:4]) / os.sysconf("SC_CLK_TCK")


def timed_pytest(args: list[str], warm: bool) -> dict:
    env = {**os.environ, "WARM_PYTHON": "1" if warm else "0"}
    with tempfile.TemporaryDirectory() as base:
        command = [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider", "--basetemp", base]
        cpu, wall = machine_cpu_seconds(), time.time()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        cpu, wall = machine_cpu_seconds() - cpu, time.time() - wall
    if proc.returncode != 0:
        sys.exit(f"pytest {' '.join(args)} failed (WARM_PYTHON={int(warm)}):\n{proc.stdout[-3000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "summary": proc.stdout.strip().splitlines()[-1]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=["tests/test_wikihow_twin.py"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    plain = timed_pytest(args.pytest_args, warm=False)
    warm = timed_pytest(args.pytest_args, warm=True)
    result = {
        "pytest_args": args.pytest_args,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "plain": plain,
        "warm": warm,
        "wall_ratio": round(plain["wall_s"] / warm["wall_s"], 2),
        "cpu_ratio": round(plain["cpu_s"] / warm["cpu_s"], 2),
    }
    print(f"pytest {' '.join(args.pytest_args)}  ({result['machine']})")
    print("| interpreter | wall s | CPU s | pytest |")
    print("|---|---|---|---|")
    for name in ("plain", "warm"):
        print(f"| {name} | {result[name]['wall_s']} | {result[name]['cpu_s']} | {result[name]['summary']} |")
    print(f"ratio plain / warm: wall {result['wall_ratio']}x, CPU {result['cpu_ratio']}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
