# Preprocessing: corpus -> raw shards -> tokenizer -> annotated shards (one job per method, split, shard)
# -> stage shards. Rerun one shard by asking for its file, e.g.
#   snakemake --cores 2 data/pydoc/annot/keybert/train/shard_00001.parquet --forcerun annotate


def preprocess_outputs():
    """Every stage shard of every method and split (with the annotated shards and tokenizer they need), and the
    block shards of every packing a run reads."""
    packings = sorted({run_data(spec) for spec in RUNS.values()} & {"wrap", "doc"})
    return ([p for m in METHODS for split in SPLITS for p in stage_shards(m, split)]
            + [p for packing in packings for split in SPLITS for p in block_shards(packing, split)])


def annotate_settings(method):
    """The annotate keys that change a shard of ``method``: the models it runs and the piece size (threads and
    batch size change only the speed). constituency runs no KeyBERT."""
    cfg = config["annotate"]
    settings = {"spacy_model": cfg["spacy_model"], "max_doc_chars": cfg["max_doc_chars"]}
    if method != "constituency":
        settings["keybert_model"] = cfg["keybert_model"]
    return settings


# One job per split writes all of that split's shards: a source is read once, as a stream.
for _split in SPLITS:

    rule:
        name:
            f"corpus_{_split}"
        output:
            shards=raw_shards(_split),
            stats=f"{DATA}/raw/{_split}/stats.json",
        params:
            split=_split,
            settings=config["corpus"],
        log:
            f"logs/{CORPUS}/corpus/{_split}.log",
        benchmark:
            f"benchmarks/{CORPUS}/corpus/{_split}.tsv"
        conda:
            "../envs/preprocess.yaml"
        resources:
            mem_mb=8000,
            runtime=240,
        shell:
            "python -m preprocess.corpus --config {CONFIG_FILE} --split {params.split}"
            " --out {output.shards} --stats {output.stats} > {log} 2>&1"


rule tokenizer:
    input:
        raw_shards("train") if config["tokenizer"]["kind"] == "bpe" else [],
    output:
        directory(tokenizer_dir()),
    params:
        settings=config["tokenizer"],
    log:
        f"logs/{CORPUS}/tokenizer.log",
    benchmark:
        f"benchmarks/{CORPUS}/tokenizer.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m preprocess.tokenizer --config {CONFIG_FILE} --train-shards {input} --out {output} > {log} 2>&1"


rule annotate:
    input:
        raw=f"{DATA}/raw/{{split}}/{{shard}}.parquet",
        tokenizer=tokenizer_dir(),
    output:
        shard=f"{DATA}/annot/{{method}}/{{split}}/{{shard}}.parquet",
        stats=f"{DATA}/annot/{{method}}/{{split}}/{{shard}}.stats.json",
    params:
        settings=lambda w: annotate_settings(w.method),
    log:
        f"logs/{CORPUS}/annotate/{{method}}/{{split}}/{{shard}}.log",
    benchmark:
        f"benchmarks/{CORPUS}/annotate/{{method}}/{{split}}/{{shard}}.tsv"
    threads: config["annotate"]["threads"]
    conda:
        "../envs/preprocess.yaml"
    resources:
        cpus_per_task=config["annotate"]["threads"],
        mem_mb=config["annotate"]["mem_mb"],
        runtime=config["annotate"]["runtime"],
    shell:
        "python -m preprocess.annotate --config {CONFIG_FILE} --method {wildcards.method}"
        " --input {input.raw} --tokenizer {input.tokenizer} --out {output.shard} > {log} 2>&1"


rule stages:
    input:
        f"{DATA}/annot/{{method}}/{{split}}/{{shard}}.parquet",
    output:
        shard=f"{DATA}/stages/{{method}}/{{lengths}}/{{split}}/{{shard}}.parquet",
        stats=f"{DATA}/stages/{{method}}/{{lengths}}/{{split}}/{{shard}}.stats.json",
    params:
        lengths=lambda wc: wc.lengths.replace("_", " "),
    log:
        f"logs/{CORPUS}/stages/{{method}}/{{lengths}}/{{split}}/{{shard}}.log",
    benchmark:
        f"benchmarks/{CORPUS}/stages/{{method}}/{{lengths}}/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m preprocess.stages --lengths {params.lengths} --input {input} --out {output.shard} > {log} 2>&1"


# Unannotated blocks (no spaCy, no KeyBERT) for single / AR runs with data: wrap | doc; length in the path.
rule blocks:
    input:
        raw=f"{DATA}/raw/{{split}}/{{shard}}.parquet",
        tokenizer=tokenizer_dir(),
    output:
        shard=f"{DATA}/blocks/{{packing}}/{{block_length}}/{{split}}/{{shard}}.parquet",
        stats=f"{DATA}/blocks/{{packing}}/{{block_length}}/{{split}}/{{shard}}.stats.json",
    log:
        f"logs/{CORPUS}/blocks/{{packing}}/{{block_length}}/{{split}}/{{shard}}.log",
    benchmark:
        f"benchmarks/{CORPUS}/blocks/{{packing}}/{{block_length}}/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m preprocess.blocks --packing {wildcards.packing} --length {wildcards.block_length}"
        " --tokenizer {input.tokenizer} --input {input.raw} --out {output.shard} > {log} 2>&1"


# Question/answer canvases for sft runs (the sft section: a task, local files or a hub dataset), tokenized with the
# pipeline's tokenizer through its chat template; the answer mask marks what SFT masks and scores.
SFT_DATA_KEYS = ("source", "format", "length", "validation_fraction", "n_train", "n_validation", "seed")


rule sft_data:
    input:
        tokenizer=tokenizer_dir(),
    output:
        shard=f"{DATA}/sft/{{sft_length}}/{{split}}/shard_00000.parquet",
        stats=f"{DATA}/sft/{{sft_length}}/{{split}}/shard_00000.stats.json",
    wildcard_constraints:
        sft_length=r"\d+",
    params:
        # a split reads its own record count (n_train | n_validation), not the other one's
        settings=lambda w: {k: config["sft"][k] for k in SFT_DATA_KEYS if k != ("n_validation" if w.split == "train" else "n_train")},
    log:
        f"logs/{CORPUS}/sft/{{sft_length}}/{{split}}.log",
    benchmark:
        f"benchmarks/{CORPUS}/sft/{{sft_length}}/{{split}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m preprocess.sft --config {CONFIG_FILE} --split {wildcards.split} --tokenizer {input.tokenizer}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"


# Preference pairs for dpo runs (the dpo section: the SFT task with a rule-made wrong answer, local files or a hub
# dataset), on the SFT canvas (sft.length); each answer's mask marks the final answer, the part DPO scores.
PREFERENCE_DATA_KEYS = ("source", "validation_fraction", "n_train", "n_validation", "seed")


rule preference_data:
    input:
        tokenizer=tokenizer_dir(),
    output:
        shard=f"{DATA}/preference/{{sft_length}}/{{split}}/shard_00000.parquet",
        stats=f"{DATA}/preference/{{sft_length}}/{{split}}/shard_00000.stats.json",
    wildcard_constraints:
        sft_length=r"\d+",
    params:
        # a split reads its own record count (n_train | n_validation), not the other one's
        settings=lambda w: {k: config["dpo"][k] for k in PREFERENCE_DATA_KEYS if k != ("n_validation" if w.split == "train" else "n_train")},
    log:
        f"logs/{CORPUS}/preference/{{sft_length}}/{{split}}.log",
    benchmark:
        f"benchmarks/{CORPUS}/preference/{{sft_length}}/{{split}}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m preprocess.preference --config {CONFIG_FILE} --split {wildcards.split} --tokenizer {input.tokenizer}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"
