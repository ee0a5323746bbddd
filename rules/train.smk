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
# Uses from rules/common.smk: config, PLAN (common/workflow.py), CONFIG_FILE, RUNS, PROFILE, trigger(), train_launcher(),
# parent_dir().

# Every model's settings, resolved (and checked) once, when the workflow is parsed: a bad run stops the
# workflow before any job, naming the run and the key.
TRAIN = PLAN.train


# The training pairs of a dpo run with pairs: own_answers: its start model answers dpo.source's training prompts
# dpo.own_answers.samples times, the task's judge picks a chosen and a rejected answer (eval/own_pairs.py). The
# start model's files are inputs, so a new start model (a retrained SFT run, or round r - 1's DPO model) means
# new pairs.
rule own_pairs:
    input:
        unpack(PLAN.own_pairs_inputs),
        source=local_files(config["dpo"]["source"]),
    output:
        shard=f"runs/{PROFILE}/{{run}}/pairs/train/shard_00000.parquet",
        stats=f"runs/{PROFILE}/{{run}}/pairs/train/shard_00000.stats.json",
    log:
        f"logs/{PROFILE}/own_pairs/{{run}}.log",
    benchmark:
        f"benchmarks/{PROFILE}/own_pairs/{{run}}.tsv"
    wildcard_constraints:
        run=one_of(PLAN.own_pairs_runs),
    conda:
        "../envs/train.yaml"
    threads: config["evaluate"]["cpus"]
    resources:
        **job_resources(config["evaluate"]),
    params:
        config=CONFIG_FILE,
        settings=lambda w: trigger(PLAN.own_pairs_settings(w.run)),
        model=lambda w: PLAN.dpo_dirs(w.run)[0],
        seed=lambda w: PLAN.own_pairs_seed(w.run),
        device=device_arg(config["evaluate"]),
    shell:
        "python -m eval.own_pairs --config {params.config} --model-dir {params.model} --tokenizer {input.tokenizer}"
        " --seed {params.seed} --out {output.shard} --stats {output.stats} {params.device} --threads {threads} > {log} 2>&1"


rule train:
    input:
        unpack(PLAN.train_inputs),
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
    threads: lambda w: PLAN.train_settings(w).cpus
    resources:
        gpu=PLAN.train_resource("gpu"),
        cpus_per_task=lambda w, threads: threads,
        mem_mb=PLAN.train_resource("mem_mb"),
        runtime=PLAN.train_resource("runtime"),
    params:
        config=CONFIG_FILE,
        # the model folder of the outputs
        out=lambda w, output: parent_dir(output.model),
        # the rerun trigger: every setting that changes what this job computes (train/settings.py)
        settings=lambda w: trigger(PLAN.train_settings(w).computing()),
        launch=lambda w: train_launcher(PLAN.train_settings(w)),
        stage=lambda w: f"--stage {PLAN.train_settings(w).stage}",
        init=lambda w: (
            f"--init {PLAN.previous_stage(PLAN.train_settings(w))}"
            if PLAN.previous_stage(PLAN.train_settings(w))
            else ""
        ),
        reference=lambda w: (f"--reference {PLAN.dpo_reference(w.run)}" if RUNS[w.run]["kind"] == "dpo" else ""),
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} --config {params.config} --run {wildcards.run} {params.stage}"
        " --train-shards {input.train} --val-shards {input.val} --tokenizer {input.tokenizer}"
        " --out {params.out} {params.init} {params.reference} > {log} 2>&1"
