# Training: stage shards -> one model folder per cascade stage (runs/{run}/stage{k}/) or per single-stage /
# AR run (runs/{run}/model/). Each job runs `python -m train` (train/__main__.py), under `accelerate launch`
# with one process per GPU when the run asks for GPUs.
#
#   snakemake --cores 2 runs/cascade/stage2/model.safetensors     # one stage
#   snakemake --cores 2 runs/single/model/model.safetensors       # the single-stage baseline
#
# Declared outputs are written only when training finishes; resumable state lives in {out}/checkpoints/,
# which is not an output, so Snakemake never deletes it and a rerun (--retries, SLURM requeue) resumes.
# A job stopped by SIGTERM / SIGUSR1 checkpoints and exits 75 (a failure to Snakemake, so it is retried).
# Uses from the Snakefile / rules/common.smk: config, RUNS, CONFIG_FILE, stage_shards(), tokenizer_dir().
import sys

sys.path.insert(0, workflow.basedir)
from train.settings import resolve as resolve_train_settings  # noqa: E402

CASCADE_RUNS = [r for r, spec in RUNS.items() if spec["kind"] == "cascade"]
MODEL_RUNS = [r for r, spec in RUNS.items() if spec["kind"] in ("single", "ar")]
NEVER = "(?!)"  # a wildcard pattern that matches nothing, for a config without runs of a kind


def train_settings(run, stage):
    return resolve_train_settings(config, run, int(stage) if stage is not None else None)


def train_inputs(run, stage):
    """Stage shards of the run's method, the tokenizer, and the previous stage's model when warm_start."""
    s = train_settings(run, stage)
    inputs = {
        "train": stage_shards(s["method"], "train"),
        "val": stage_shards(s["method"], "validation"),
        "tokenizer": tokenizer_dir(),
    }
    if s["kind"] == "cascade" and s["stage"] > 1 and s.get("warm_start"):
        previous = f"runs/{run}/stage{s['stage'] - 1}"
        inputs["init"] = [f"{previous}/model.safetensors", f"{previous}/config.json"]
    return inputs


def init_arg(run, stage):
    s = train_settings(run, stage)
    if s["kind"] == "cascade" and s["stage"] > 1 and s.get("warm_start"):
        return f"--init runs/{run}/stage{s['stage'] - 1}"
    return ""


def train_launcher(run, stage):
    """`python -m train` on CPU (gpus: 0); `accelerate launch` with one process per GPU otherwise."""
    gpus = int(train_settings(run, stage).get("gpus") or 0)
    if gpus == 0:
        return "python -m train"
    multi = "--multi_gpu " if gpus > 1 else ""
    return (f"accelerate launch {multi}--num_processes {gpus} --num_machines 1 --mixed_precision no"
            f" --dynamo_backend no -m train")


def train_threads(run, stage):
    """train.cpus, else 8 per GPU, else 1 on CPU: a tiny model gains little from a second thread, and on a
    2-core laptop two single-threaded stages side by side beat two oversubscribed OpenMP teams."""
    s = train_settings(run, stage)
    gpus = int(s.get("gpus") or 0)
    return int(s.get("cpus") or (8 * gpus if gpus else 1))


def train_resource(key, cpu_default, gpu_default):
    def get(wildcards):
        s = train_settings(wildcards.run, getattr(wildcards, "stage", None))
        if s.get(key):
            return int(s[key])
        return gpu_default if int(s.get("gpus") or 0) else cpu_default
    return get


def train_gpus(wildcards):
    return int(train_settings(wildcards.run, getattr(wildcards, "stage", None)).get("gpus") or 0)


TRAIN_SHELL = (
    "OMP_NUM_THREADS={threads} {params.launch} --config {CONFIG_FILE} --run {wildcards.run} {params.stage}"
    " --train-shards {input.train} --val-shards {input.val} --tokenizer {input.tokenizer}"
    " --out {params.out} {params.init} > {log} 2>&1"
)


rule train_stage:
    input:
        unpack(lambda w: train_inputs(w.run, w.stage)),
    output:
        model="runs/{run}/stage{stage}/model.safetensors",
        config="runs/{run}/stage{stage}/config.json",
        metrics="runs/{run}/stage{stage}/metrics.csv",
    wildcard_constraints:
        run="|".join(CASCADE_RUNS) or NEVER,
        stage="[123]",
    params:
        launch=lambda w: train_launcher(w.run, w.stage),
        init=lambda w: init_arg(w.run, w.stage),
        stage=lambda w: f"--stage {w.stage}",
        out=lambda w: f"runs/{w.run}/stage{w.stage}",
    conda:
        "../envs/train.yaml"
    log:
        "logs/train/{run}/stage{stage}.log",
    benchmark:
        "benchmarks/train/{run}/stage{stage}.tsv"
    threads: lambda w: train_threads(w.run, w.stage)
    resources:
        gpu=train_gpus,
        cpus_per_task=lambda w, threads: threads,
        mem_mb=train_resource("mem_mb", 8000, 64000),
        runtime=train_resource("runtime", 60, 24 * 60),
    shell:
        TRAIN_SHELL


rule train_single:
    input:
        unpack(lambda w: train_inputs(w.run, None)),
    output:
        model="runs/{run}/model/model.safetensors",
        config="runs/{run}/model/config.json",
        metrics="runs/{run}/model/metrics.csv",
    wildcard_constraints:
        run="|".join(MODEL_RUNS) or NEVER,
    params:
        launch=lambda w: train_launcher(w.run, None),
        init="",
        stage="--stage 3",
        out=lambda w: f"runs/{w.run}/model",
    conda:
        "../envs/train.yaml"
    log:
        "logs/train/{run}/model.log",
    benchmark:
        "benchmarks/train/{run}/model.tsv"
    threads: lambda w: train_threads(w.run, None)
    resources:
        gpu=train_gpus,
        cpus_per_task=lambda w, threads: threads,
        mem_mb=train_resource("mem_mb", 8000, 64000),
        runtime=train_resource("runtime", 60, 24 * 60),
    shell:
        TRAIN_SHELL
