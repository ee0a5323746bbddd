# Training: stage shards -> one model folder per cascade stage (runs/{profile}/{run}/stage{k}/) or per single-stage /
# AR run (runs/{profile}/{run}/model/). Each job runs `python -m train` (train/__main__.py), under `accelerate launch`
# with one process per GPU when the run asks for GPUs.
#
#   snakemake --cores 2 runs/demo/cascade/stage2/model.safetensors     # one stage (runs/{profile}/{run}/...)
#   snakemake --cores 2 runs/demo/single/model/model.safetensors       # the single-stage baseline
#
# Declared outputs are written only when training finishes; resumable state lives in {out}/checkpoints/,
# which is not an output, so Snakemake never deletes it and a rerun (--retries, SLURM requeue) resumes it,
# when the checkpoint was written under the same settings (train/trainer.py compares their digest).
# A job stopped by SIGTERM / SIGUSR1 checkpoints and exits 75 (a failure to Snakemake, so it is retried).
# Uses from the Snakefile / rules/common.smk: config, RUNS, CONFIG_FILE, stage_shards(), tokenizer_dir().
from common.config import dpo_reference  # noqa: E402 (the Snakefile put the repo on sys.path)
from train.settings import resolve as resolve_train_settings  # noqa: E402

# Every model's settings, resolved (and checked) once, when the workflow is parsed: a bad run stops the
# workflow before any job, naming the run and the key.
TRAIN = {
    (run, name): resolve_train_settings(config, run, int(name[len("stage") :]) if name != "model" else None)
    for run in RUNS
    for name in model_names(run)
}


def train_settings(wildcards):
    key = (wildcards.run, wildcards.model)
    if key not in TRAIN:
        names = {run: model_names(run) for run in RUNS}
        raise ValueError(f"{run_dir(wildcards.run)}/{wildcards.model}: no such model; the config's runs have {names}")
    return TRAIN[key]


def previous_stage(s):
    """The model folder this one starts from: runs/{profile}/{run}/stage{k-1} when cascade stage k warm-starts from
    it, runs/{profile}/{init_from}/model for an sft or dpo run with init_from; else None."""
    if s.kind == "cascade" and s.stage > 1 and s.warm_start:
        return f"{run_dir(s.run)}/stage{s.stage - 1}"
    if s.kind in ("sft", "dpo") and s.init_from:
        return f"{run_dir(s.init_from)}/model"
    return None


def train_inputs(wildcards):
    """The run's data (stage shards of its method, block shards, SFT canvases or preference pairs), the tokenizer,
    the model it starts from (previous_stage) and a dpo run's reference model."""
    s = train_settings(wildcards)
    inputs = {
        "train": run_data_shards(s.run, "train"),
        "val": run_data_shards(s.run, "validation"),
        "tokenizer": tokenizer_dir(),
    }
    if previous_stage(s):
        inputs["init"] = [f"{previous_stage(s)}/model.safetensors", f"{previous_stage(s)}/config.json"]
    if s.kind == "dpo":  # the frozen reference: a run's model folder (built by this DAG) or a folder on disk
        reference = dpo_reference(config, s.run, run_dir)
        inputs["reference"] = [f"{reference}/model.safetensors", f"{reference}/config.json"]
    return inputs


def train_launcher(s):
    """`python -m train` on CPU (gpus: 0); `accelerate launch` with one process per GPU otherwise."""
    if s.gpus == 0:
        return "python -m train"
    multi = "--multi_gpu " if s.gpus > 1 else ""
    return (
        f"accelerate launch {multi}--num_processes {s.gpus} --num_machines 1 --mixed_precision no"
        f" --dynamo_backend no -m train"
    )


def train_resource(key):
    return lambda wildcards: job_resources(train_settings(wildcards).to_dict())[key]


rule train:
    input:
        unpack(train_inputs),
    output:
        model=f"runs/{PROFILE}/{{run}}/{{model}}/model.safetensors",
        config=f"runs/{PROFILE}/{{run}}/{{model}}/config.json",
        metrics=f"runs/{PROFILE}/{{run}}/{{model}}/metrics.csv",
    log:
        f"logs/{PROFILE}/train/{{run}}/{{model}}.log",
    benchmark:
        f"benchmarks/{PROFILE}/train/{{run}}/{{model}}.tsv"
    wildcard_constraints:
        run="|".join(RUNS),
        model="stage[123]|model",
    conda:
        "../envs/train.yaml"
    # train.cpus threads (1 by default: a tiny model gains little from a second thread, and on a 2-core
    # laptop two single-threaded stages side by side beat two oversubscribed OpenMP teams)
    threads: lambda w: train_settings(w).cpus
    resources:
        gpu=train_resource("gpu"),
        cpus_per_task=lambda w, threads: threads,
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
    params:
        # the rerun trigger: every setting that changes what this job computes (train/settings.py)
        settings=lambda w: trigger(train_settings(w).computing()),
        launch=lambda w: train_launcher(train_settings(w)),
        stage=lambda w: f"--stage {train_settings(w).stage}",
        init=lambda w: f"--init {previous_stage(train_settings(w))}" if previous_stage(train_settings(w)) else "",
        reference=lambda w: (
            f"--reference {dpo_reference(config, w.run, run_dir)}" if RUNS[w.run]["kind"] == "dpo" else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} --config {CONFIG_FILE} --run {wildcards.run} {params.stage}"
        " --train-shards {input.train} --val-shards {input.val} --tokenizer {input.tokenizer}"
        " --out runs/{PROFILE}/{wildcards.run}/{wildcards.model} {params.init} {params.reference} > {log} 2>&1"
