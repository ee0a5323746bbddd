# Sampling, evaluation and the paper tables: trained models -> samples JSONL -> metrics JSON -> tables/plots.
#   snakemake --cores 2 runs/demo/cascade/samples/ddpm_cache-64.jsonl  # one sampling job (runs/{profile}/{run}/...)
#   snakemake --cores 2 report                                         # tables and plots of every run
#   snakemake --report report.zip                                      # the tables and plots as a browsable report
# Uses from rules/common.smk: config, PLAN (common/workflow.py), PROFILE, LAYOUT, trigger(), job_resources(),
# device_arg(), parent_dir().
SAMPLE = config["sample"]
EVALUATE = config["evaluate"]
SAMPLE_SETTINGS = {k: SAMPLE[k] for k in ("n", "batch_size", "temperature", "block_size", "seed")}
TABLES = PLAN.tables
PLOTS = PLAN.plots


wildcard_constraints:
    run="|".join(RUNS),
    sampler=r"[a-z_]+",
    steps=r"\d+",


rule sample:
    input:
        models=lambda w: PLAN.model_files(w.run),
        tokenizer=LAYOUT.tokenizer,
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
        run_dir=lambda w, output: parent_dir(output[0], 2),
        settings=trigger(SAMPLE_SETTINGS),
        block=f"--block-size {SAMPLE['block_size']}" if SAMPLE["block_size"] else "",
        device=device_arg(SAMPLE),
    shell:
        "python -m eval.sample --run-dir {params.run_dir} --sampler {wildcards.sampler} --steps {wildcards.steps}"
        " --n {params.settings[n]} --batch-size {params.settings[batch_size]} --temperature {params.settings[temperature]} --seed {params.settings[seed]}"
        " {params.block} {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        samples=f"runs/{PROFILE}/{{run}}/samples/{{sampler}}-{{steps}}.jsonl",
        models=lambda w: PLAN.model_files(w.run),
        scorer=PLAN.scorer_files(),
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
        run_dir=lambda w, output: parent_dir(output[0], 2),
        settings=trigger({"scorer": EVALUATE["scorer"]}),
        scorer=lambda w, input: PLAN.scorer_arg(input.scorer),
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.evaluate samples --run-dir {params.run_dir} --samples {input.samples}"
        " --scorer {params.scorer} {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_val:
    input:
        models=lambda w: PLAN.model_files(w.run),
        shards=lambda w: PLAN.run_data_shards(w.run, "validation"),
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
        run_dir=lambda w, output: parent_dir(output[0], 2),
        settings=trigger({k: EVALUATE[k] for k in ("val_time_samples", "val_batches", "batch_size", "discrete_steps")}),
        discrete=f"--discrete-steps {EVALUATE['discrete_steps']}" if EVALUATE["discrete_steps"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.evaluate val --run-dir {params.run_dir} --val-shards {input.shards}"
        " --time-samples {params.settings[val_time_samples]} --batch-size {params.settings[batch_size]}"
        " --max-batches {params.settings[val_batches]} {params.discrete} {params.device} --threads {threads} --out {output}"
        " > {log} 2>&1"


rule report:
    input:
        **PLAN.report_inputs(),
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
    params:
        tables=lambda w, output: parent_dir(output.md),
        plots=lambda w, output: parent_dir(output.loss),
    shell:
        "python -m eval.report --sample-metrics {input.samples} --val-metrics {input.val}"
        " --train-metrics {input.train} --tables {params.tables} --plots {params.plots} > {log} 2>&1"


# SFT: held-out questions answered by generation (eval/generate.py) and scored by exact match against the
# reference, plus the answer NELBO, for the SFT model and for the model it started from (before / after).
SFT = config["sft"]
SFT_EVAL_SETTINGS = {k: SFT[k] for k in ("eval_n", "gen_length", "eval_steps", "remasking", "eos_guard")}


rule evaluate_sft:
    input:
        models=lambda w: PLAN.sft_model_files(w.run),
        shards=PLAN.sft_shards("validation"),
    output:
        f"runs/{PROFILE}/{{run}}/eval/sft.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/sft.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/sft.tsv"
    wildcard_constraints:
        run="|".join(PLAN.sft_runs) or "(?!)",
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        run_dir=lambda w, output: parent_dir(output[0], 2),
        settings=trigger(SFT_EVAL_SETTINGS | {k: EVALUATE[k] for k in ("val_time_samples", "batch_size")}),
        before=lambda w: f"--before-dir {PLAN.sft_before_dir(w.run)}" if PLAN.sft_before_dir(w.run) else "",
        eos_guard="--eos-guard" if SFT["eos_guard"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.sft score --run-dir {params.run_dir} {params.before} --sft-shards {input.shards}"
        " --n {params.settings[eval_n]} --gen-length {params.settings[gen_length]} --steps {params.settings[eval_steps]}"
        " --remasking {params.settings[remasking]} {params.eos_guard}"
        " --time-samples {params.settings[val_time_samples]} --batch-size {params.settings[batch_size]}"
        " {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule sft_report:
    input:
        [f"{LAYOUT.run(run)}/eval/sft.json" for run in PLAN.sft_runs],
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
    params:
        tables=lambda w, output: parent_dir(output.md),
    shell:
        "python -m eval.sft table --sft-metrics {input} --tables {params.tables} > {log} 2>&1"


# DPO: held-out pairs scored under the DPO model, its reference and its start (reward accuracy, ELBO preference),
# and held-out prompts answered by the start and by the DPO model with the SFT table's sampler and steps, judged
# by the task's check (eval/dpo.py): the before / after of preference tuning.
DPO = config["dpo"]


rule evaluate_dpo:
    input:
        models=lambda w: PLAN.dpo_model_files(w.run),
        shards=PLAN.preference_shards("validation"),
    output:
        f"runs/{PROFILE}/{{run}}/eval/dpo.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/dpo.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/dpo.tsv"
    wildcard_constraints:
        run="|".join(PLAN.dpo_runs) or "(?!)",
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        run_dir=lambda w, output: parent_dir(output[0], 2),
        settings=trigger(
            SFT_EVAL_SETTINGS
            | {k: DPO[k] for k in ("eval_pairs", "eval_time_samples")}
            | {"batch_size": EVALUATE["batch_size"]}
        ),
        before=lambda w: PLAN.dpo_dirs(w.run)[0],
        reference=lambda w: PLAN.dpo_dirs(w.run)[1],
        eos_guard="--eos-guard" if SFT["eos_guard"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.dpo score --run-dir {params.run_dir} --before-dir {params.before}"
        " --reference-dir {params.reference} --pair-shards {input.shards} --n-pairs {params.settings[eval_pairs]}"
        " --time-samples {params.settings[eval_time_samples]} --n-gen {params.settings[eval_n]}"
        " --gen-length {params.settings[gen_length]} --steps {params.settings[eval_steps]}"
        " --remasking {params.settings[remasking]} {params.eos_guard} --batch-size {params.settings[batch_size]}"
        " {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule dpo_report:
    input:
        metrics=[f"{LAYOUT.run(run)}/eval/dpo.json" for run in PLAN.dpo_runs],
        # the table names each run's variant from its record (and a round from its start's)
        models=sorted({f for run in PLAN.dpo_runs for f in PLAN.dpo_model_files(run)}),
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
    params:
        tables=lambda w, output: parent_dir(output.md),
    shell:
        "python -m eval.dpo table --dpo-metrics {input.metrics} --tables {params.tables} > {log} 2>&1"


# ATAT: the ablation table over every run of objective atat, grouped by importance variant, mean and spread over
# seeds of the plain validation NELBO and each sampler's gen ppl and entropy (eval/atat.py).
rule atat_report:
    input:
        val=[PLAN.val_metrics(run) for run in PLAN.atat_runs],
        samples=[f for run in PLAN.atat_runs for f in PLAN.sample_metrics(run)],
        models=[f for run in PLAN.atat_runs for f in PLAN.model_files(run)],
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
    params:
        tables=lambda w, output: parent_dir(output.md),
    shell:
        "python -m eval.atat table --val-metrics {input.val} --sample-metrics {input.samples} --tables {params.tables}"
        " > {log} 2>&1"


# The inserting comparison: the seed's cascade, the inserting cascades (per placement law) and the single model,
# mean and spread over seeds of the bound and its split per stage, and each sampler's gen ppl, retention and
# entropy (eval/insert.py); planned when the config has an inserting cascade (configs/insert.yaml).
rule insert_report:
    input:
        val=[PLAN.val_metrics(run) for run in PLAN.insert_runs],
        samples=[f for run in PLAN.insert_runs for f in PLAN.sample_metrics(run)],
        models=[f for run in PLAN.insert_runs for f in PLAN.model_files(run)],
    output:
        md=report(f"{TABLES}/insert.md", category="Tables", labels={"table": "insert", "format": "md"}),
        csv=report(f"{TABLES}/insert.csv", category="Tables", labels={"table": "insert", "format": "csv"}),
    log:
        f"logs/report/{PROFILE}-insert.log",
    benchmark:
        f"benchmarks/report/{PROFILE}-insert.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=10,
    params:
        tables=lambda w, output: parent_dir(output.md),
    shell:
        "python -m eval.insert table --val-metrics {input.val} --sample-metrics {input.samples} --tables {params.tables}"
        " > {log} 2>&1"


# The zero-shot table (MDLM's): each single and AR run's validation bound on the zero-shot corpora's blocks
# (eval.evaluate val --blocks: the blocks' ids scored as the model's own target, whatever data it trained on),
# then one table of the bound per token, perplexity and tokens per (run, corpus), with the corpora's provenance.
rule evaluate_zero_shot:
    input:
        models=lambda w: PLAN.model_files(w.run),
        shards=lambda w: PLAN.zero_shot_block_shard(w.run, w.zs_corpus),
    output:
        f"runs/{PROFILE}/{{run}}/eval/zero_shot/{{zs_corpus}}.json",
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/zero_shot/{{zs_corpus}}.log",
    benchmark:
        f"benchmarks/{PROFILE}/evaluate/{{run}}/zero_shot/{{zs_corpus}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: EVALUATE["cpus"]
    resources:
        **job_resources(EVALUATE),
    params:
        run_dir=lambda w, output: parent_dir(output[0], 3),
        settings=trigger(
            {
                **{k: EVALUATE[k] for k in ("val_time_samples", "batch_size", "discrete_steps")},
                "max_batches": config["zero_shot"]["max_batches"],
            }
        ),
        max_batches=(
            f"--max-batches {config['zero_shot']['max_batches']}" if config["zero_shot"]["max_batches"] else ""
        ),
        discrete=f"--discrete-steps {EVALUATE['discrete_steps']}" if EVALUATE["discrete_steps"] else "",
        device=device_arg(EVALUATE),
    shell:
        "python -m eval.evaluate val --blocks --run-dir {params.run_dir} --val-shards {input.shards}"
        " --time-samples {params.settings[val_time_samples]} --batch-size {params.settings[batch_size]}"
        " {params.max_batches} {params.discrete} {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule zero_shot_report:
    input:
        metrics=PLAN.zero_shot_results(),
        corpora=[f"{LAYOUT.zero_shot_raw(label)}/stats.json" for label in PLAN.zero_shot_corpora],
    output:
        md=report(f"{TABLES}/zero_shot.md", category="Tables", labels={"table": "zero-shot", "format": "md"}),
        csv=report(f"{TABLES}/zero_shot.csv", category="Tables", labels={"table": "zero-shot", "format": "csv"}),
    log:
        f"logs/report/{PROFILE}-zero_shot.log",
    benchmark:
        f"benchmarks/report/{PROFILE}-zero_shot.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=10,
    params:
        tables=lambda w, output: parent_dir(output.md),
        labels=PLAN.zero_shot_corpora,
    shell:
        "python -m eval.zero_shot --metrics {input.metrics} --corpus-stats {input.corpora}"
        " --corpora {params.labels} --tables {params.tables} > {log} 2>&1"
