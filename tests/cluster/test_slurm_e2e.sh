#!/usr/bin/env bash
# The real-cluster test: a live slurmctld/slurmd/slurmdbd on localhost, and Snakemake's SLURM profile
# submitting every job through sbatch.
#
#   tests/cluster/test_slurm_e2e.sh                                   what CI runs (parts chosen below)
#   CASCADE_SLURM_PARTS="smoke rerun preempt pipeline train" tests/cluster/test_slurm_e2e.sh    everything
#
# The parts, each checked against SLURM's accounting (sacct), not against Snakemake's word:
#   smoke     tests/cluster/smoke/Snakefile through `--profile profiles/slurm`: three CPU shard jobs and one
#             2-GPU job whose step must see CUDA_VISIBLE_DEVICES=0,1; sacct lists exactly those 4 jobs, all
#             COMPLETED, under the profile's partition and account.
#   rerun     asking for one smoke shard's file (`<file> --forcerun shard`) submits exactly that one job.
#   preempt   a smoke job with a 3-minute limit and `--signal=USR1@100` (the profile's mechanism, smaller
#             numbers) gets SIGUSR1 from SLURM's own timer, checkpoints and fails before the limit;
#             Snakemake's retry (6 minutes) resumes it from the checkpoint. sacct shows both attempts.
#   pipeline  `snakemake --profile profiles/slurm --configfile configs/tiny.yaml` for the stage shards of one
#             annotation method ($CASCADE_SLURM_METHOD, default constituency; or $CASCADE_SLURM_TARGETS): one
#             sacct job per submitted Snakemake job, every preprocessing rule seen; then one annotate shard
#             rerun by asking for its file: exactly that job, same documents, in the partition given on the
#             command line (--default-resources).
#   train     the real trainer (`python -m train` via rules/train.smk), cascade stage 1 on the tiny data,
#             signalled with SIGUSR1 after its first checkpoint (`scancel --signal=USR1`: the same delivery
#             to every process of the job step as the timer's, at a moment the test controls): it fails, is resubmitted, resumes, and its
#             final model.safetensors equals, tensor for tensor, the same job run uninterrupted here.
# Default parts: "smoke pipeline train" where the pipeline exists (its rerun and train parts cover `rerun`
# and `preempt` with the real rules), else "smoke rerun preempt".
#
# Prints one line `PASS: ...`, `FAIL: ...` or `SKIP: ...` at the end. Exit 0 pass, 1 fail, 77 skipped (this
# host cannot run SLURM daemons; see tests/cluster/slurm.sh). Every daemon it started is stopped on exit.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/cluster
SLURM_SH=$HERE/slurm.sh
WORK=${CASCADE_SLURM_WORK:-$(mktemp -d /tmp/cascade-slurm-e2e.XXXXXX)}
if [[ -n ${CASCADE_SLURM_PARTS:-} ]]; then
    PARTS=" $CASCADE_SLURM_PARTS "
elif [[ -f $ROOT/Snakefile && -f $ROOT/configs/tiny.yaml && -f $ROOT/rules/train.smk ]]; then
    PARTS=" smoke pipeline train "
else
    PARTS=" smoke rerun preempt "
fi
want() { [[ $PARTS == *" $1 "* ]]; }
DONE=()   # what passed, for the PASS line
SNAKEMAKE_TIMEOUT=${CASCADE_SLURM_TIMEOUT:-600}   # seconds per Snakemake run: a hang becomes a FAIL
SKIP=77
[[ -x $ROOT/.venv/bin/snakemake ]] && export PATH=$ROOT/.venv/bin:$PATH   # jobs inherit it (sbatch --export=ALL)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

T0=$SECONDS
STARTED_CLUSTER=0
BG_PID=
RESULT=

say() { echo "[e2e $((SECONDS - T0))s] $*" >&2; }
fail() { RESULT="FAIL: $*"; exit 1; }

cleanup() {
    local rc=$?
    local pid
    for pid in $BG_PID ${REF_PID:-}; do kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null; done
    if ((STARTED_CLUSTER)); then
        # Cancel any job this test left behind, then stop the daemons this test started.
        local left
        left=$(squeue -h -o %i 2>/dev/null | awk -v b="${FIRST_JOB:-0}" '$1 > b' | tr '\n' ' ')
        [[ -n ${left// /} ]] && scancel $left 2>/dev/null
        "$SLURM_SH" down >&2 || true
    fi
    if [[ -z $RESULT ]]; then
        if ((rc == 0)); then
            RESULT="PASS: $(printf '%s; ' "${DONE[@]}")" && RESULT=${RESULT%; }
        else
            RESULT="FAIL: exited with status $rc"
        fi
    fi
    echo "$RESULT (tests/cluster/test_slurm_e2e.sh, $((SECONDS - T0))s, work dir $WORK)"
    case $RESULT in PASS*) exit 0 ;; SKIP*) exit $SKIP ;; *) exit 1 ;; esac
}
trap cleanup EXIT

last_job_id() {  # highest job id SLURM's accounting knows (0 on a fresh cluster)
    timeout 20 sacct -X -n -P -a -S 2000-01-01 -o JobID 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 | grep . || echo 0
}

jobs_after() {  # jobs_after ID: "jobid|partition|account|comment|state" for every job with a larger id
    timeout 20 sacct -X -n -P -a -S 2000-01-01 -o JobID,Partition,Account,Comment,State 2>/dev/null |
        awk -F'|' -v b="$1" '$1 ~ /^[0-9]+$/ && $1 > b'
}

wait_for_jobs() {  # wait_for_jobs ID N: until sacct has N finished jobs after ID (slurmdbd writes asynchronously)
    local after=$1 n=$2 got
    for ((i = 0; i < 30; i++)); do
        got=$(jobs_after "$after" | grep -cvE '\|(PENDING|RUNNING|REQUEUED)$')
        ((got >= n)) && return 0
        sleep 1
    done
    return 1
}

smk() {  # Snakemake through the user's profile; a short first status check keeps a tiny DAG quick
    timeout -k 15 "$SNAKEMAKE_TIMEOUT" snakemake --profile "$ROOT/profiles/slurm" \
        --slurm-init-seconds-before-status-checks 2 "$@"
}

# ---------------------------------------------------------------- the cluster
say "bringing SLURM up ($SLURM_SH up)"
"$SLURM_SH" up >&2
rc=$?
if ((rc == SKIP)); then RESULT="SKIP: this host cannot run a SLURM cluster (see the slurm.sh message above)"; exit $SKIP; fi
((rc == 0)) || fail "SLURM did not come up (slurm.sh up exited $rc; daemon logs above)"
STARTED_CLUSTER=1
FIRST_JOB=$(last_job_id)
say "SLURM up; jobs from now on have ids > $FIRST_JOB"

say "parts:$PARTS"
SMOKE=$WORK/smoke
mkdir -p "$SMOKE"
if want smoke; then
# ---------------------------------------------------------------- smoke: CPU shards and a GPU job through sbatch
t0=$SECONDS
before=$(last_job_id)
say "smoke workflow: 3 CPU shards + one 2-GPU job"
smk -s "$HERE/smoke/Snakefile" -d "$SMOKE" >"$WORK/smoke.log" 2>&1 ||
    { tail -n 40 "$WORK/smoke.log" >&2; fail "smoke workflow failed (log: $WORK/smoke.log)"; }
for i in 0 1 2; do [[ -s $SMOKE/shards/shard_$i.txt ]] || fail "smoke: shards/shard_$i.txt missing"; done
[[ $(cat "$SMOKE/gpu/visible_devices.txt") == "0,1" ]] ||
    fail "smoke: the 2-GPU job saw CUDA_VISIBLE_DEVICES='$(cat "$SMOKE/gpu/visible_devices.txt")', not 0,1"
wait_for_jobs "$before" 4 || fail "smoke: sacct did not report 4 finished jobs: $(jobs_after "$before" | tr '\n' ' ')"
jobs=$(jobs_after "$before")
say "sacct saw:"$'\n'"$jobs"
(($(wc -l <<<"$jobs") == 4)) || fail "smoke: expected 4 SLURM jobs, sacct lists $(wc -l <<<"$jobs")"
(($(grep -c '|debug|cascade|rule_shard_wildcards_[012]|COMPLETED$' <<<"$jobs") == 3)) ||
    fail "smoke: expected 3 COMPLETED shard jobs in partition debug, account cascade"
(($(grep -c '|debug|cascade|rule_gpus|COMPLETED$' <<<"$jobs") == 1)) || fail "smoke: the GPU job is not COMPLETED in sacct"
# Every shard file names the SLURM job that wrote it, and that job is one sacct listed.
for i in 0 1 2; do
    id=$(sed -n 's/.*slurm_job=\([0-9]*\).*/\1/p' "$SMOKE/shards/shard_$i.txt")
    grep -q "^$id|.*|rule_shard_wildcards_$i|" <<<"$jobs" || fail "smoke: shard $i was written by job '$id', not one sacct lists for it"
done
DONE+=("smoke: 4 jobs incl. 2 GPUs ($((SECONDS - t0))s)")
fi

if want rerun; then
# ---------------------------------------------------------------- rerun: one smoke shard by asking for its file
[[ -s $SMOKE/shards/shard_2.txt ]] || fail "rerun: needs the smoke part first"
t0=$SECONDS
before=$(last_job_id)
old0=$(cat "$SMOKE/shards/shard_0.txt") old1=$(cat "$SMOKE/shards/shard_1.txt") old2=$(cat "$SMOKE/shards/shard_2.txt")
say "rerun: shards/shard_1.txt --forcerun shard, partition gpu from the command line"
smk -s "$HERE/smoke/Snakefile" -d "$SMOKE" shards/shard_1.txt --forcerun shard \
    --default-resources slurm_partition=gpu slurm_account=cascade >"$WORK/rerun.log" 2>&1 ||
    { tail -n 40 "$WORK/rerun.log" >&2; fail "rerun of one shard failed (log: $WORK/rerun.log)"; }
wait_for_jobs "$before" 1 || fail "rerun: sacct shows no job"
sleep 2   # a second job, if any were wrongly submitted, would be listed by now
jobs=$(jobs_after "$before")
say "sacct saw:"$'\n'"$jobs"
(($(wc -l <<<"$jobs") == 1)) || fail "rerun: expected exactly 1 SLURM job, sacct lists $(wc -l <<<"$jobs")"
grep -q '|gpu|cascade|rule_shard_wildcards_1|COMPLETED$' <<<"$jobs" ||
    fail "rerun: the one job is not shard 1, COMPLETED, in the partition given on the command line (gpu)"
[[ $(cat "$SMOKE/shards/shard_1.txt") != "$old1" ]] || fail "rerun: shard_1.txt was not rewritten"
[[ $(cat "$SMOKE/shards/shard_0.txt") == "$old0" && $(cat "$SMOKE/shards/shard_2.txt") == "$old2" ]] ||
    fail "rerun: shards 0 or 2 were rewritten"
DONE+=("one-shard rerun ($((SECONDS - t0))s)")
fi

if want preempt; then
# ---------------------------------------------------------------- preempt: SLURM's own timer, checkpoint, resume
# The job asks for 3 minutes and --signal=USR1@100 (the profile's mechanism for training, smaller numbers).
# SLURM may send the signal up to 60 s early, so it comes 20-80 s in: the job checkpoints and fails before
# its limit; the retry gets 6 minutes and finishes.
t0=$SECONDS
STEPS=100
before=$(last_job_id)
say "preemption: a $STEPS-second job with a 3-minute limit and --signal=USR1@100; the retry resumes"
smk -s "$HERE/smoke/Snakefile" -d "$SMOKE" preempt/done.json --retries 1 \
    --config preempt_steps=$STEPS preempt_save_seconds=3 preempt_runtime=3 preempt_signal=100 >"$WORK/preempt.log" 2>&1 ||
    { tail -n 40 "$WORK/preempt.log" >&2; fail "preemption: Snakemake failed (log: $WORK/preempt.log)"; }
python3 - "$SMOKE/preempt/done.json" "$STEPS" <<'EOF' || fail "preemption: the resumed job's record is wrong (see above)"
import json, sys
state = json.load(open(sys.argv[1]))
steps = int(sys.argv[2])
starts = state["attempt_starts"]
print(f"[e2e] preempted job record: {state}", file=sys.stderr)
assert state["step"] == steps, f"finished at step {state['step']}, not {steps}"
assert len(starts) == 2 and starts[0] == 0 and 0 < starts[1] < steps, f"attempts started at {starts}: not resumed"
assert state.get("signals") == ["SIGUSR1"], f"signals seen: {state.get('signals')}"
EOF
wait_for_jobs "$before" 2 || fail "preemption: sacct does not show two finished attempts"
jobs=$(jobs_after "$before")
say "sacct saw:"$'\n'"$jobs"
[[ $(grep -c 'rule_preempt|' <<<"$jobs") == 2 ]] || fail "preemption: expected 2 SLURM jobs for the preempted rule"
first=$(head -1 <<<"$jobs" | cut -d'|' -f1)
read -r state limit elapsed < <(timeout 20 sacct -j "$first" -X -n -P -o State,Timelimit,ElapsedRaw | tr '|' ' ')
say "first attempt: $state after ${elapsed}s of its $limit limit"
[[ $state == FAILED && $limit == 00:03:00 ]] && ((elapsed < 180)) ||
    fail "preemption: the first attempt should end FAILED (checkpointed) before its 3-minute limit, not $state after ${elapsed}s"
tail -1 <<<"$jobs" | grep -q '|COMPLETED$' || fail "preemption: the resumed attempt is not COMPLETED in sacct"
DONE+=("preemption stand-in resumed ($((SECONDS - t0))s)")
fi

if want pipeline || want train; then
[[ -f $ROOT/Snakefile && -f $ROOT/configs/tiny.yaml ]] || fail "parts '$PARTS' need the pipeline's Snakefile and configs/tiny.yaml"
PIPE=$WORK/pipeline
mkdir -p "$PIPE"
# On top of configs/tiny.yaml: the cascade run on the method whose shards the test builds, and a training
# run long enough to be signalled well before its end (the tiny model does ~30 steps/s on 2 free cores). Same file for every invocation, so the effective
# config (and every job's command) stays the same.
cat >"$WORK/cluster-test.yaml" <<EOF
runs:
  cascade: {method: ${CASCADE_SLURM_METHOD:-constituency}}
train:
  max_steps: ${CASCADE_SLURM_TRAIN_STEPS:-600}
  save_every: 50
  eval_every: 200
EOF
CONFIGS=(--configfile "$ROOT/configs/tiny.yaml" "$WORK/cluster-test.yaml")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false   # no network on a CI machine
# Default targets: every stage shard (train and validation) of one annotation method, with the corpus,
# tokenizer and annotate jobs they need. One method, not three, keeps CI's cluster test within minutes;
# CASCADE_SLURM_TARGETS="preprocess" (or "all") asks for more.
if [[ -n ${CASCADE_SLURM_TARGETS:-} ]]; then
    read -r -a targets <<<"$CASCADE_SLURM_TARGETS"
else
    mapfile -t targets < <(python3 - "$ROOT" "${CASCADE_SLURM_METHOD:-constituency}" "$WORK/cluster-test.yaml" <<'EOF'
import sys
root, method, extra = sys.argv[1:]
sys.path.insert(0, root)
from common.layout import Layout, merge_configfiles  # where the config keeps its stage shards (tagged folders)
c = merge_configfiles([f"{root}/configs/tiny.yaml", extra])
for split, n in c["corpus"]["shards"].items():
    for i in range(n):
        print(f"{Layout(c).stages(method, split)}/shard_{i:05d}.parquet")
EOF
    )
    ((${#targets[@]} > 0)) || fail "pipeline: could not list the tiny config's stage shards"
fi
fi

if want pipeline; then
# ---------------------------------------------------------------- pipeline: the tiny config through sbatch
t0=$SECONDS
before=$(last_job_id)
say "pipeline: snakemake --profile profiles/slurm --configfile configs/tiny.yaml ${targets[*]} (in $PIPE)"
smk "${targets[@]}" -s "$ROOT/Snakefile" -d "$PIPE" "${CONFIGS[@]}" >"$WORK/pipeline.log" 2>&1 ||
    { tail -n 60 "$WORK/pipeline.log" >&2; fail "the tiny pipeline failed through SLURM (log: $WORK/pipeline.log)"; }
submitted=$(grep -c 'has been submitted with SLURM jobid' "$WORK/pipeline.log")
((submitted > 0)) || fail "pipeline: Snakemake submitted no job through sbatch"
wait_for_jobs "$before" "$submitted" || fail "pipeline: sacct does not show the $submitted submitted jobs"
jobs=$(jobs_after "$before")
say "pipeline: $submitted jobs submitted in $((SECONDS - t0))s; sacct by rule:"$'\n'"$(cut -d'|' -f4 <<<"$jobs" | sed 's/_wildcards.*//' | sort | uniq -c)"
(($(wc -l <<<"$jobs") == submitted)) || fail "pipeline: Snakemake submitted $submitted jobs, sacct lists $(wc -l <<<"$jobs")"
(($(grep -c '|COMPLETED$' <<<"$jobs") == submitted)) || fail "pipeline: not every job is COMPLETED in sacct"
# Every stage shard of the tiny config exists, and sacct saw every preprocessing rule.
shards=$(find "$PIPE/data" -path '*/stages-*' -name 'shard_*.parquet' | wc -l)
annot=$(find "$PIPE/data" -path '*/annot-*' -name 'shard_*.parquet' | wc -l)
((shards > 0 && shards == annot)) || fail "pipeline: $annot annotated shards but $shards stage shards"
for rule in corpus_train corpus_validation tokenizer annotate stages; do
    grep -q "|rule_$rule" <<<"$jobs" || fail "pipeline: no SLURM job for rule $rule in sacct"
done
(($(grep -c '|rule_annotate_' <<<"$jobs") == annot)) || fail "pipeline: expected one annotate job per annotated shard ($annot)"

DONE+=("tiny pipeline: $submitted jobs ($((SECONDS - t0))s)")

# Rerun one annotate shard by asking for its file: exactly that job, same documents; and the partition
# given on the command line is the one SLURM used.
t0=$SECONDS
shard=$(cd "$PIPE" && find data -path '*/annot-*/*/train/*' -name 'shard_00001.parquet' | sort | head -1)
[[ -n $shard ]] || fail "pipeline: no annotated train shard_00001 to rerun"
python3 -c "import pyarrow.parquet as pq, sys; print(pq.read_table(sys.argv[1]).column('doc_id').to_pylist())" "$PIPE/$shard" >"$WORK/docs.before"
before=$(last_job_id)
say "pipeline: rerun $shard --forcerun annotate, partition gpu from the command line"
smk "$shard" --forcerun annotate --default-resources slurm_partition=gpu slurm_account=cascade -s "$ROOT/Snakefile" -d "$PIPE" "${CONFIGS[@]}" >"$WORK/pipeline-rerun.log" 2>&1 ||
    { tail -n 40 "$WORK/pipeline-rerun.log" >&2; fail "pipeline: rerunning $shard failed (log: $WORK/pipeline-rerun.log)"; }
wait_for_jobs "$before" 1 || fail "pipeline rerun: sacct shows no job"
sleep 2
jobs=$(jobs_after "$before")
say "sacct saw:"$'\n'"$jobs"
(($(wc -l <<<"$jobs") == 1)) || fail "pipeline rerun: expected exactly 1 SLURM job, sacct lists $(wc -l <<<"$jobs")"
method=$(cut -d/ -f4 <<<"$shard")
grep -q "|gpu|cascade|rule_annotate_wildcards_.*${method}.*train.*shard_00001|COMPLETED$" <<<"$jobs" ||
    fail "pipeline rerun: the one job is not annotate $method/train/shard_00001, COMPLETED, in partition gpu"
python3 -c "import pyarrow.parquet as pq, sys; print(pq.read_table(sys.argv[1]).column('doc_id').to_pylist())" "$PIPE/$shard" >"$WORK/docs.after"
cmp -s "$WORK/docs.before" "$WORK/docs.after" || fail "pipeline rerun: $shard holds other documents after the rerun"
DONE+=("one annotate shard rerun ($((SECONDS - t0))s)")
fi

if want train; then
# ---------------------------------------------------------------- train: the real trainer, preempted and resumed
compgen -G "$PIPE/data/*/stages-*/*/*/train/shard_*.parquet" >/dev/null || fail "train: needs the pipeline part first"
t0=$SECONDS
model=runs/tiny/cascade/stage1/model.safetensors
REF=$WORK/reference
mkdir -p "$REF" && cp -a "$PIPE/data" "$REF/"
say "training: $model through SLURM, SIGUSR1 after its first checkpoint; the same job uninterrupted, locally, in $REF"
# The uninterrupted reference runs here at the same time (not through SLURM): same inputs, same config, and
# the same threads (the rule's 2; float sums depend on the thread count).
timeout -k 15 "$SNAKEMAKE_TIMEOUT" snakemake --profile "$ROOT/profiles/local" --cores 2 "$model" \
    -s "$ROOT/Snakefile" -d "$REF" "${CONFIGS[@]}" >"$WORK/train-reference.log" 2>&1 &
REF_PID=$!
before=$(last_job_id)
smk "$model" --retries 1 -s "$ROOT/Snakefile" -d "$PIPE" "${CONFIGS[@]}" >"$WORK/train.log" 2>&1 &
BG_PID=$!
job=
for ((i = 0; i < 600; i++)); do  # until the SLURM job has written its first checkpoint
    job=$(squeue -h -t RUNNING -o %i 2>/dev/null | awk -v b="$before" '$1 > b' | head -1)
    [[ -n $job ]] && compgen -G "$PIPE/runs/tiny/cascade/stage1/checkpoints/step_*" >/dev/null && break
    kill -0 "$BG_PID" 2>/dev/null || break
    job=
    sleep 0.5
done
[[ -n $job ]] || { tail -n 30 "$WORK/train.log" >&2; fail "training: the SLURM job never reached its first checkpoint (log: $WORK/train.log)"; }
scancel --signal=USR1 "$job" || fail "training: scancel --signal=USR1 $job failed"
say "sent SIGUSR1 to the steps of training job $job"
wait "$BG_PID"; rc=$?; BG_PID=
((rc == 0)) || { tail -n 40 "$WORK/train.log" >&2; fail "training: Snakemake failed after the signal (log: $WORK/train.log)"; }
wait "$REF_PID"; rc=$?; REF_PID=
((rc == 0)) || { tail -n 40 "$WORK/train-reference.log" >&2; fail "training: the uninterrupted local run failed (log: $WORK/train-reference.log)"; }
wait_for_jobs "$before" 2 || fail "training: sacct does not show two finished attempts"
jobs=$(jobs_after "$before")
say "sacct saw:"$'\n'"$jobs"
(($(grep -c '|rule_train_wildcards_cascade_stage1|' <<<"$jobs") == 2)) || fail "training: expected 2 SLURM jobs for train cascade/stage1"
head -1 <<<"$jobs" | grep -q '|FAILED$' || fail "training: the signalled attempt is not FAILED in sacct"
tail -1 <<<"$jobs" | grep -q '|COMPLETED$' || fail "training: the resumed attempt is not COMPLETED in sacct"
resumed=$(sed -n 's/.*resuming from .*(step \([0-9]*\)).*/\1/p' "$PIPE/logs/tiny/train/cascade/stage1.log" | head -1)
max_steps=$(sed -n 's/^  max_steps: //p' "$WORK/cluster-test.yaml")
say "the second attempt resumed at step ${resumed:-none} of $max_steps"
[[ -n $resumed ]] && ((resumed > 0 && resumed < max_steps)) ||
    fail "training: the second attempt did not resume mid-run from a checkpoint (step '${resumed:-none}' of $max_steps; logs/tiny/train/cascade/stage1.log)"
python3 - "$PIPE/$model" "$REF/$model" <<'EOF' || fail "training: the resumed model differs from the uninterrupted one"
import sys
from safetensors.torch import load_file
resumed, reference = load_file(sys.argv[1]), load_file(sys.argv[2])
assert resumed.keys() == reference.keys(), "different tensor names"
diff = {k: (resumed[k] - reference[k]).abs().max().item() for k in resumed if not resumed[k].equal(reference[k])}
assert not diff, f"{len(diff)} of {len(resumed)} tensors differ, largest |diff| {max(diff.values()):.3g}"
print(f"[e2e] resumed == uninterrupted: all {len(resumed)} tensors of model.safetensors identical", file=sys.stderr)
EOF
DONE+=("training preempted by SIGUSR1, resumed == uninterrupted ($((SECONDS - t0))s)")
fi
