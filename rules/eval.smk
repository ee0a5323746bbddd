# Sampling, evaluation and the paper tables: trained models -> samples JSONL -> metrics JSON -> tables/plots.
#   snakemake --cores 2 runs/demo/cascade/samples/ddpm_cache-64.jsonl  # one sampling job (runs/{profile}/{run}/...)
#   snakemake --cores 2 report                                         # tables and plots of every run
#   snakemake --report report.zip                                      # the tables and plots as a browsable report
# Uses from the Snakefile / rules/common.smk and rules/train.smk: config, RUNS, TRAIN, previous_stage(), run_data_shards(),
# tokenizer_dir(), run_model_dirs(), job_resources(), device_arg().

from common.config import ar_scorer_run, dpo_reference  # noqa: E402

SAMPLE = config["sample"]
EVALUATE = config["evaluate"]
SAMPLE_SETTINGS = {k: SAMPLE[k] for k in ("n", "batch_size", "temperature", "block_size", "seed")}
TABLES = f"results/{PROFILE}/tables"
PLOTS = f"results/{PROFILE}/plots"


wildcard_constraints:
    run="|".join(RUNS),
    sampler=r"[a-z_]+",
    steps=r"\d+",


def run_samplings(run):
    """(sampler, steps) pairs sampled for a run: every configured pair for diffusion runs, left-to-right
    sampling of the whole block for an AR run."""
    if RUNS[run]["kind"] == "ar":
        return [("ar", TRAIN[(run, "model")].target_len)]
    return [(s, n) for s in SAMPLE["samplers"] for n in SAMPLE["steps"]]


def model_files(run):
    return [f"{d}/{name}" for d in run_model_dirs(run) for name in ("model.safetensors", "config.json")]


def scorer_spec():
    """evaluate.scorer: 'ar' -> the model folder of the config's run of kind ar (common.config checked that
    one exists); anything else is passed on (a hub id or a local folder of a causal LM, not a DAG input)."""
    if EVALUATE["scorer"] == "ar":
        return run_model_dirs(ar_scorer_run(config))[0]
    return EVALUATE["scorer"]


def scorer_files():
    if EVALUATE["scorer"] != "ar":
        return []
    return [f"{scorer_spec()}/model.safetensors", f"{scorer_spec()}/config.json"]


SFT_RUNS = [run for run, spec in RUNS.items() if spec["kind"] == "sft"]
DPO_RUNS = [run for run, spec in RUNS.items() if spec["kind"] == "dpo"]
ATAT_RUNS = [run for run, spec in RUNS.items() if spec["objective"] == "atat"]


def report_inputs():
    """Every file the report reads: sample metrics of every (run, sampler, steps), val.json of every run,
    and the training log of every trained model. SFT runs are scored on their task instead (sft.json); DPO runs,
    whose loss is not a NELBO, only in their own table (dpo.json)."""
    files = []
    for run in RUNS:
        if run in DPO_RUNS:
            continue
        files += [f"{d}/metrics.csv" for d in run_model_dirs(run)]
        if run in SFT_RUNS:
            continue
        files += [f"{run_dir(run)}/eval/{s}-{n}.json" for s, n in run_samplings(run)]
        files.append(f"{run_dir(run)}/eval/val.json")
    return files


def report_outputs():
    """The tables and plots (the end of the default target); the SFT / DPO / ATAT tables when the config has such
    runs."""
    return (
        [f"{TABLES}/main.{ext}" for ext in ("md", "csv", "tex")]
        + [f"{PLOTS}/loss.png", f"{PLOTS}/gen_ppl_steps.png"]
        + ([f"{TABLES}/sft.{ext}" for ext in ("md", "csv")] if SFT_RUNS else [])
        + ([f"{TABLES}/dpo.{ext}" for ext in ("md", "csv")] if DPO_RUNS else [])
        + ([f"{TABLES}/atat.{ext}" for ext in ("md", "csv")] if ATAT_RUNS else [])
    )


rule sample:
    input:
        models=lambda w: model_files(w.run),
        tokenizer=tokenizer_dir(),
    output:
        f"runs/{PROFILE}/{{run}}/samples/{{sampler}}-{{steps}}.jsonl",
    log:
        f"logs/{PROFILE}/sample/{{run}}/{{sampler}}-{{steps}}.log",
    benchmark:
        f"benchmarks/{PROFILE}/sample/{{run}}/{{sampler}}-{{steps}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: SAMPLE["cpus"]
    resources:
        **job_resources(SAMPLE),
    params:
        settings=trigger(SAMPLE_SETTINGS),
        block=f"--block-size {SAMPLE['block_size']}" if SAMPLE["block_size"] else "",
        device=device_arg(SAMPLE),
    shell:
        "python -m eval.sample --run-dir runs/{PROFILE}/{wildcards.run} --sampler {wildcards.sampler} --steps {wildcards.steps}"
        " --n {SAMPLE[n]} --batch-size {SAMPLE[batch_size]} --temperature {SAMPLE[temperature]} --seed {SAMPLE[seed]}"
        " {params.block} {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        samples=f"runs/{PROFILE}/{{run}}/samples/{{sampler}}-{{steps}}.jsonl",
        models=lambda w: model_files(w.run),
        scorer=scorer_files(),
    output:
        f"runs/{PROFILE}/{{run}}/eval/{{sampler}}-{{steps}}.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/{{sampler}}-{{steps}}.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/{{sampler}}-{{steps}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        settings=trigger({"scorer": EVALUATE["scorer"]}),
        scorer=scorer_spec(),
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.evaluate samples --run-dir runs/{PROFILE}/{wildcards.run} --samples {input.samples}"
        " --scorer {params.scorer} {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_val:
    input:
        models=lambda w: model_files(w.run),
        shards=lambda w: run_data_shards(w.run, "validation"),
    output:
        f"runs/{PROFILE}/{{run}}/eval/val.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/val.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/val.tsv"
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        settings=trigger({k: EVALUATE[k] for k in ("val_time_samples", "val_batches", "batch_size", "discrete_steps")}),
        discrete=f"--discrete-steps {EVALUATE['discrete_steps']}" if EVALUATE["discrete_steps"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.evaluate val --run-dir runs/{PROFILE}/{wildcards.run} --val-shards {input.shards}"
        " --time-samples {EVALUATE[val_time_samples]} --batch-size {EVALUATE[batch_size]}"
        " --max-batches {EVALUATE[val_batches]} {params.discrete} {params.device} --threads {threads} --out {output}"
        " > {log} 2>&1"


rule report:
    input:
        samples=[f for f in report_inputs() if f.endswith(".json") and not f.endswith("/val.json")],
        val=[f for f in report_inputs() if f.endswith("/val.json")],
        train=[f for f in report_inputs() if f.endswith("metrics.csv")],
    output:
        md=report(f"{TABLES}/main.md", category="Tables", labels={"table": "main", "format": "md"}),
        csv=report(f"{TABLES}/main.csv", category="Tables", labels={"table": "main", "format": "csv"}),
        tex=f"{TABLES}/main.tex",
        loss=report(f"{PLOTS}/loss.png", category="Plots", labels={"plot": "train and val loss per stage"}),
        gen_ppl=report(f"{PLOTS}/gen_ppl_steps.png", category="Plots", labels={"plot": "gen ppl vs steps"}),
    log:
        f"logs/report/{PROFILE}.log",
    benchmark:
        f"benchmarks/report/{PROFILE}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m eval.report --sample-metrics {input.samples} --val-metrics {input.val}"
        " --train-metrics {input.train} --tables {TABLES} --plots {PLOTS} > {log} 2>&1"


# SFT: held-out questions answered by generation (eval/generate.py) and scored by exact match against the
# reference, plus the answer NELBO, for the SFT model and for the model it started from (before / after).
SFT = config["sft"]
SFT_EVAL_SETTINGS = {k: SFT[k] for k in ("eval_n", "gen_length", "eval_steps", "remasking", "eos_guard")}


def sft_before_dir(run):
    """The model folder an sft run started from (rules/train.smk's previous_stage), or None."""
    return previous_stage(TRAIN[(run, "model")])


def sft_model_files(run):
    before = sft_before_dir(run)
    return model_files(run) + ([f"{before}/{name}" for name in ("model.safetensors", "config.json")] if before else [])


rule evaluate_sft:
    input:
        models=lambda w: sft_model_files(w.run),
        shards=sft_shards("validation"),
    output:
        f"runs/{PROFILE}/{{run}}/eval/sft.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/sft.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/sft.tsv"
    wildcard_constraints:
        run="|".join(SFT_RUNS) or "(?!)",
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        settings=trigger(SFT_EVAL_SETTINGS | {k: EVALUATE[k] for k in ("val_time_samples", "batch_size")}),
        before=lambda w: f"--before-dir {sft_before_dir(w.run)}" if sft_before_dir(w.run) else "",
        eos_guard="--eos-guard" if SFT["eos_guard"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.sft score --run-dir runs/{PROFILE}/{wildcards.run} {params.before} --sft-shards {input.shards}"
        " --n {SFT[eval_n]} --gen-length {SFT[gen_length]} --steps {SFT[eval_steps]} --remasking {SFT[remasking]} {params.eos_guard}"
        " --time-samples {EVALUATE[val_time_samples]} --batch-size {EVALUATE[batch_size]}"
        " {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule sft_report:
    input:
        [f"{run_dir(run)}/eval/sft.json" for run in SFT_RUNS],
    output:
        md=report(f"{TABLES}/sft.md", category="Tables", labels={"table": "sft", "format": "md"}),
        csv=report(f"{TABLES}/sft.csv", category="Tables", labels={"table": "sft", "format": "csv"}),
    log:
        f"logs/report/{PROFILE}-sft.log",
    benchmark:
        f"benchmarks/report/{PROFILE}-sft.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m eval.sft table --sft-metrics {input} --tables {TABLES} > {log} 2>&1"


# DPO: held-out pairs scored under the DPO model, its reference and its start (reward accuracy, ELBO preference),
# and held-out prompts answered by the start and by the DPO model with the SFT table's sampler and steps, judged
# by the task's check (eval/dpo.py): the before / after of preference tuning.
DPO = config["dpo"]


def dpo_dirs(run):
    """(the model folder a dpo run started from, its frozen reference)."""
    return previous_stage(TRAIN[(run, "model")]), dpo_reference(config, run, run_dir)


def dpo_model_files(run):
    folders = sorted(set(dpo_dirs(run)))
    return model_files(run) + [f"{d}/{name}" for d in folders for name in ("model.safetensors", "config.json")]


rule evaluate_dpo:
    input:
        models=lambda w: dpo_model_files(w.run),
        shards=preference_shards("validation"),
    output:
        f"runs/{PROFILE}/{{run}}/eval/dpo.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/dpo.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/dpo.tsv"
    wildcard_constraints:
        run="|".join(DPO_RUNS) or "(?!)",
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        settings=trigger(
            SFT_EVAL_SETTINGS
            | {k: DPO[k] for k in ("eval_pairs", "eval_time_samples")}
            | {"batch_size": EVALUATE["batch_size"]}
        ),
        before=lambda w: dpo_dirs(w.run)[0],
        reference=lambda w: dpo_dirs(w.run)[1],
        eos_guard="--eos-guard" if SFT["eos_guard"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.dpo score --run-dir runs/{PROFILE}/{wildcards.run} --before-dir {params.before}"
        " --reference-dir {params.reference} --pair-shards {input.shards} --n-pairs {DPO[eval_pairs]}"
        " --time-samples {DPO[eval_time_samples]} --n-gen {SFT[eval_n]} --gen-length {SFT[gen_length]}"
        " --steps {SFT[eval_steps]} --remasking {SFT[remasking]} {params.eos_guard} --batch-size {EVALUATE[batch_size]}"
        " {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule dpo_report:
    input:
        [f"{run_dir(run)}/eval/dpo.json" for run in DPO_RUNS],
    output:
        md=report(f"{TABLES}/dpo.md", category="Tables", labels={"table": "dpo", "format": "md"}),
        csv=report(f"{TABLES}/dpo.csv", category="Tables", labels={"table": "dpo", "format": "csv"}),
    log:
        f"logs/report/{PROFILE}-dpo.log",
    benchmark:
        f"benchmarks/report/{PROFILE}-dpo.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m eval.dpo table --dpo-metrics {input} --tables {TABLES} > {log} 2>&1"


# ATAT: the ablation table over every run of objective atat, grouped by importance variant, mean and spread over
# seeds of the plain validation NELBO and each sampler's gen ppl and entropy (eval/atat.py).
rule atat_report:
    input:
        val=[f"{run_dir(run)}/eval/val.json" for run in ATAT_RUNS],
        samples=[f"{run_dir(run)}/eval/{s}-{n}.json" for run in ATAT_RUNS for s, n in run_samplings(run)],
        models=[f for run in ATAT_RUNS for f in model_files(run)],
    output:
        md=report(f"{TABLES}/atat.md", category="Tables", labels={"table": "atat", "format": "md"}),
        csv=report(f"{TABLES}/atat.csv", category="Tables", labels={"table": "atat", "format": "csv"}),
    log:
        f"logs/report/{PROFILE}-atat.log",
    benchmark:
        f"benchmarks/report/{PROFILE}-atat.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m eval.atat table --val-metrics {input.val} --sample-metrics {input.samples} --tables {TABLES}"
        " > {log} 2>&1"
