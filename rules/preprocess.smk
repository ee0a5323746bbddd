# Preprocessing: corpus -> raw shards -> tokenizer -> annotated shards (one job per method, split, shard)
# -> stage shards. Rerun one shard by asking for its file, e.g.
#   snakemake --cores 2 data/pydoc/annot-<tag>/keybert/train/shard_00001.parquet --forcerun annotate
# (the <tag> of each data folder: common/layout.py; `ls data/pydoc` or `snakemake -n` shows them)


# One job per split writes all of that split's shards: a source is read once, as a stream.
for _split in SPLITS:

    rule:
        name:
            f"corpus_{_split}"
        input:
            # corpus: local reads a file or folder on this disk: editing it reruns the corpus
            local_files(config["corpus"]["path"]) if config["corpus"]["name"] == "local" else [],
        output:
            shards=PLAN.raw_shards(_split),
            stats=f"{LAYOUT.raw(_split)}/stats.json",
        log:
            f"logs/{layout_log(LAYOUT.raw(_split))}.log",
        benchmark:
            f"benchmarks/{layout_log(LAYOUT.raw(_split))}.tsv"
        conda:
            "../envs/preprocess.yaml"
        resources:
            mem_mb=8000,
            runtime=240,
        params:
            config=CONFIG_FILE,
            split=_split,
            settings=trigger(config["corpus"]),
        shell:
            "python -m preprocess.corpus --config {params.config} --split {params.split}"
            " --out {output.shards} --stats {output.stats} > {log} 2>&1"


rule tokenizer:
    input:
        PLAN.tokenizer_inputs(),
    output:
        directory(LAYOUT.tokenizer),
    log:
        f"logs/{layout_log(LAYOUT.tokenizer)}.log",
    benchmark:
        f"benchmarks/{layout_log(LAYOUT.tokenizer)}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        config=CONFIG_FILE,
        settings=trigger(config["tokenizer"]),
        # a pretrained tokenizer is loaded by name: no training shards to pass
        shards=f"--train-shards {' '.join(PLAN.raw_shards('train'))}" if config["tokenizer"]["kind"] == "bpe" else "",
    shell:
        "python -m preprocess.tokenizer --config {params.config} {params.shards} --out {output} > {log} 2>&1"


rule annotate:
    input:
        raw=f"{LAYOUT.raw_root}/{{split}}/{{shard}}.parquet",
        tokenizer=LAYOUT.tokenizer,
    output:
        shard=f"{LAYOUT.annot_root}/{{method}}/{{split}}/{{shard}}.parquet",
        stats=f"{LAYOUT.annot_root}/{{method}}/{{split}}/{{shard}}.stats.json",
    log:
        f"logs/{layout_log(LAYOUT.annot_root)}/{{method}}/{{split}}/{{shard}}.log",
    benchmark:
        f"benchmarks/{layout_log(LAYOUT.annot_root)}/{{method}}/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    threads: config["annotate"]["threads"]
    resources:
        cpus_per_task=config["annotate"]["threads"],
        mem_mb=config["annotate"]["mem_mb"],
        runtime=config["annotate"]["runtime"],
    params:
        config=CONFIG_FILE,
        settings=lambda w: trigger(PLAN.annotate_settings(w.method)),
    shell:
        "python -m preprocess.annotate --config {params.config} --method {wildcards.method}"
        " --input {input.raw} --tokenizer {input.tokenizer} --out {output.shard} > {log} 2>&1"


rule stages:
    input:
        f"{LAYOUT.annot_root}/{{method}}/{{split}}/{{shard}}.parquet",
    output:
        shard=f"{LAYOUT.stages_root}/{{method}}/{{lengths}}/{{split}}/{{shard}}.parquet",
        stats=f"{LAYOUT.stages_root}/{{method}}/{{lengths}}/{{split}}/{{shard}}.stats.json",
    log:
        f"logs/{layout_log(LAYOUT.stages_root)}/{{method}}/{{lengths}}/{{split}}/{{shard}}.log",
    benchmark:
        f"benchmarks/{layout_log(LAYOUT.stages_root)}/{{method}}/{{lengths}}/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        lengths=lambda wc: wc.lengths.replace("_", " "),
    shell:
        "python -m preprocess.stages --lengths {params.lengths} --input {input} --out {output.shard} > {log} 2>&1"


# Unannotated blocks (no spaCy, no KeyBERT) for single / AR runs with data: wrap | doc; length in the path.
rule blocks:
    input:
        raw=f"{LAYOUT.raw_root}/{{split}}/{{shard}}.parquet",
        tokenizer=LAYOUT.tokenizer,
    output:
        shard=f"{LAYOUT.blocks_root}/{{packing}}/{{block_length}}/{{split}}/{{shard}}.parquet",
        stats=f"{LAYOUT.blocks_root}/{{packing}}/{{block_length}}/{{split}}/{{shard}}.stats.json",
    log:
        f"logs/{layout_log(LAYOUT.blocks_root)}/{{packing}}/{{block_length}}/{{split}}/{{shard}}.log",
    benchmark:
        f"benchmarks/{layout_log(LAYOUT.blocks_root)}/{{packing}}/{{block_length}}/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m preprocess.blocks --packing {wildcards.packing} --length {wildcards.block_length}"
        " --tokenizer {input.tokenizer} --input {input.raw} --out {output.shard} > {log} 2>&1"


# Question/answer canvases for sft runs (the sft section: a task, local files or a hub dataset), tokenized with the
# pipeline's tokenizer through its chat template; the answer mask marks what SFT masks and scores. Each split has
# its own folder tag (common/layout.py): a split reads its own record count (n_train | n_validation).
rule sft_data:
    input:
        tokenizer=LAYOUT.tokenizer,
        source=local_files(config["sft"]["source"]),
    output:
        shard=f"{LAYOUT.data}/sft-{{tag}}/{{sft_length}}/{{split}}/shard_00000.parquet",
        stats=f"{LAYOUT.data}/sft-{{tag}}/{{sft_length}}/{{split}}/shard_00000.stats.json",
    log:
        f"logs/{layout_log(LAYOUT.data)}/sft-{{tag}}/{{sft_length}}/{{split}}.log",
    benchmark:
        f"benchmarks/{layout_log(LAYOUT.data)}/sft-{{tag}}/{{sft_length}}/{{split}}.tsv"
    wildcard_constraints:
        sft_length=r"\d+",
        tag=r"[0-9a-f]{8}",
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=lambda w: trigger(split_settings(config["sft"], SFT_DATA_KEYS, w.split)),
        tag=lambda w: checked_tag(w.tag, LAYOUT.sft_tag(w.split), f"sft data of split {w.split}"),
    shell:
        "python -m preprocess.sft --config {params.config} --split {wildcards.split} --tokenizer {input.tokenizer}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"


# Preference pairs for dpo runs (the dpo section: the SFT task with a rule-made wrong answer, local files or a hub
# dataset), on the SFT canvas (sft.length); each answer's mask marks the final answer, the part DPO scores.
rule preference_data:
    input:
        tokenizer=LAYOUT.tokenizer,
        source=local_files(config["dpo"]["source"]),
    output:
        shard=f"{LAYOUT.data}/preference-{{tag}}/{{sft_length}}/{{split}}/shard_00000.parquet",
        stats=f"{LAYOUT.data}/preference-{{tag}}/{{sft_length}}/{{split}}/shard_00000.stats.json",
    log:
        f"logs/{layout_log(LAYOUT.data)}/preference-{{tag}}/{{sft_length}}/{{split}}.log",
    benchmark:
        f"benchmarks/{layout_log(LAYOUT.data)}/preference-{{tag}}/{{sft_length}}/{{split}}.tsv"
    wildcard_constraints:
        sft_length=r"\d+",
        tag=r"[0-9a-f]{8}",
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        config=CONFIG_FILE,
        settings=lambda w: trigger(split_settings(config["dpo"], PREFERENCE_DATA_KEYS, w.split)),
        tag=lambda w: checked_tag(w.tag, LAYOUT.preference_tag(w.split), f"preference data of split {w.split}"),
    shell:
        "python -m preprocess.preference --config {params.config} --split {wildcards.split} --tokenizer {input.tokenizer}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"


# Zero-shot corpora (the zero_shot section, preprocess/zero_shot.py): each corpus's evaluation text as one raw
# shard, with its own document grouping and detokenizer; then wrapped into blocks of a scored run's target length
# by the config's tokenizer (the blocks rule's code). {zs_tag} names the corpus entry (common/layout.py).
rule zero_shot_corpus:
    input:
        # a local path in the corpus's own format: editing its files reruns the job
        lambda w: local_files(config["zero_shot"]["corpora"][PLAN.zero_shot_label(w.zs_name, w.zs_tag)]["path"]),
    output:
        shard="data/{zs_name}/zero-shot-{zs_tag}/raw/shard_00000.parquet",
        stats="data/{zs_name}/zero-shot-{zs_tag}/raw/stats.json",
    log:
        "logs/{zs_name}/zero-shot-{zs_tag}/raw.log",
    benchmark:
        "benchmarks/{zs_name}/zero-shot-{zs_tag}/raw.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        config=CONFIG_FILE,
        # no settings trigger: the corpus entry's settings are the folder's {zs_tag}
        corpus=lambda w: PLAN.zero_shot_label(w.zs_name, w.zs_tag),
    shell:
        "python -m preprocess.zero_shot --config {params.config} --corpus {params.corpus}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"


rule zero_shot_blocks:
    input:
        raw="data/{zs_name}/zero-shot-{zs_tag}/raw/shard_00000.parquet",
        tokenizer=LAYOUT.tokenizer,
    output:
        shard="data/{zs_name}/zero-shot-{zs_tag}/blocks-{tag}/wrap/{block_length}/shard_00000.parquet",
        stats="data/{zs_name}/zero-shot-{zs_tag}/blocks-{tag}/wrap/{block_length}/shard_00000.stats.json",
    log:
        "logs/{zs_name}/zero-shot-{zs_tag}/blocks-{tag}/wrap/{block_length}.log",
    benchmark:
        "benchmarks/{zs_name}/zero-shot-{zs_tag}/blocks-{tag}/wrap/{block_length}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        tag=lambda w: checked_tag(
            w.tag,
            LAYOUT.zero_shot_blocks_tag(PLAN.zero_shot_label(w.zs_name, w.zs_tag)),
            f"zero-shot blocks of data/{w.zs_name}/zero-shot-{w.zs_tag}",
        ),
    shell:
        "python -m preprocess.blocks --packing wrap --length {wildcards.block_length}"
        " --tokenizer {input.tokenizer} --input {input.raw} --out {output.shard} > {log} 2>&1"
