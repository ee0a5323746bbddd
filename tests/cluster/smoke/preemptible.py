"""A stand-in for a training job that survives preemption: counts to --steps, one step per --step-seconds,
saving its position in --checkpoint; on SIGTERM or SIGUSR1 it saves and exits 1 (so the job counts as failed
and Snakemake's retry resubmits it), and a new start resumes from the saved step.

The cluster test uses it to prove the signal path through snakemake-executor-plugin-slurm's job step
(sbatch -> snakemake -> srun -> snakemake -> shell -> this process) without training a model. The output
records every attempt's first step, so a test can see that the retry resumed rather than restarted.

    python tests/cluster/smoke/preemptible.py --steps 20 --checkpoint ckpt.json --out done.json
"""

import argparse
import json
import os
import signal
import sys
import time


def write_json_atomically(path, obj):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True, help="steps to count to")
    parser.add_argument("--step-seconds", type=float, default=1.0, help="seconds per step")
    parser.add_argument("--save-seconds", type=float, default=0.0, help="seconds a checkpoint takes to write")
    parser.add_argument("--checkpoint", required=True, help="JSON file holding the resumable state")
    parser.add_argument("--out", required=True, help="final JSON, written only when every step is done")
    args = parser.parse_args(argv)

    state = {"step": 0, "attempt_starts": []}
    if os.path.exists(args.checkpoint):
        with open(args.checkpoint) as f:
            state = json.load(f)
    state["attempt_starts"].append(state["step"])
    write_json_atomically(args.checkpoint, state)
    print(f"starting at step {state['step']} (attempt {len(state['attempt_starts'])})", flush=True)

    stop = {"signal": None}

    def on_signal(signum, frame):
        # Only note it: the loop checkpoints at a step boundary, as a trainer does.
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)

    while state["step"] < args.steps:
        time.sleep(args.step_seconds)
        state["step"] += 1
        if stop["signal"]:
            state.setdefault("signals", []).append(stop["signal"])
            print(f"{stop['signal']}: saving a checkpoint at step {state['step']}", flush=True)
            time.sleep(args.save_seconds)  # a big model takes a while to write
            write_json_atomically(args.checkpoint, state)
            print(f"{stop['signal']}: checkpoint at step {state['step']}, exiting", flush=True)
            return 1
    write_json_atomically(args.checkpoint, state)
    write_json_atomically(args.out, state)
    print(f"done: {state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
