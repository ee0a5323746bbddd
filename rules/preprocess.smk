# Preprocessing: corpus -> raw shards -> tokenizer -> annotated shards (one job per method, split, shard)
# -> stage shards. Rerun one shard by asking for its file, e.g.
#   snakemake --cores 2 data/pydoc/annot-<tag>/keybert/train/shard_00001.parquet --forcerun annotate
# (the <tag> of each data folder: common/layout.py; `ls data/pydoc` or `snakemake -n` shows them)


def preprocess_outputs():
    """Every stage shard of every method and split (with the annotated shards and tokenizer they need), and the
    block shards of every packing a run reads."""
    packings = sorted({run_data(spec) for spec in RUNS.values()} & {"wrap", "doc"})
    return [p for m in METHODS for split in SPLITS for p in stage_shards(m, split)] + [
        p for packing in packings for split in SPLITS for p in block_shards(packing, split)
    ]


def annotate_settings(method):
    """The annotate keys that change a shard of ``method`` (common/layout.py's ANNOTATE_KEYS; constituency runs
    no KeyBERT)."""
    return {k: config["annotate"][k] for k in ANNOTATE_KEYS if not (method == "constituency" and k == "keybert_model")}


def layout_log(path):
    """A data folder's log or benchmark file: the data path under logs/ or benchmarks/, minus data/."""
    return path[len("data/") :]


# One job per split writes all of that split's shards: a source is read once, as a stream.
for _split in SPLITS:

    rule:
        name:
            f"corpus_{_split}"
        input:
            # corpus: local reads a file or folder on this disk: editing it reruns the corpus
            local_files(config["corpus"]["path"]) if config["corpus"]["name"] == "local" else [],
        output:
            shards=raw_shards(_split),
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
            split=_split,
            settings=trigger(config["corpus"]),
        shell:
            "python -m preprocess.corpus --config {CONFIG_FILE} --split {params.split}"
            " --out {output.shards} --stats {output.stats} > {log} 2>&1"


def tokenizer_inputs():
    """What the tokenizer job reads: the train shards for a BPE it trains; a local folder of a pretrained one."""
    if config["tokenizer"]["kind"] == "bpe":
        return raw_shards("train")
    return local_files(config["tokenizer"]["name"])


rule tokenizer:
    input:
        tokenizer_inputs(),
    output:
        directory(tokenizer_dir()),
    log:
        f"logs/{layout_log(tokenizer_dir())}.log",
    benchmark:
        f"benchmarks/{layout_log(tokenizer_dir())}.tsv"
    conda:
        "../envs/preprocess.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=trigger(config["tokenizer"]),
        # a pretrained tokenizer is loaded by name: no training shards to pass
        shards=f"--train-shards {' '.join(raw_shards('train'))}" if config["tokenizer"]["kind"] == "bpe" else "",
    shell:
        "python -m preprocess.tokenizer --config {CONFIG_FILE} {params.shards} --out {output} > {log} 2>&1"


rule annotate:
    input:
        raw=f"{LAYOUT.raw_root}/{{split}}/{{shard}}.parquet",
        tokenizer=tokenizer_dir(),
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
        settings=lambda w: trigger(annotate_settings(w.method)),
    shell:
        "python -m preprocess.annotate --config {CONFIG_FILE} --method {wildcards.method}"
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
        tokenizer=tokenizer_dir(),
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
def checked_tag(tag, expected, what):
    """A {tag} wildcard is only ever this config's tag: a path with another one is a stale or foreign folder."""
    if tag != expected:
        raise ValueError(f"{what}: tag {tag!r} is not this config's ({expected!r}); see common/layout.py")
    return tag


rule sft_data:
    input:
        tokenizer=tokenizer_dir(),
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
        settings=lambda w: trigger(split_settings(config["sft"], SFT_DATA_KEYS, w.split)),
        tag=lambda w: checked_tag(w.tag, LAYOUT.sft_tag(w.split), f"sft data of split {w.split}"),
    shell:
        "python -m preprocess.sft --config {CONFIG_FILE} --split {wildcards.split} --tokenizer {input.tokenizer}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"


# Preference pairs for dpo runs (the dpo section: the SFT task with a rule-made wrong answer, local files or a hub
# dataset), on the SFT canvas (sft.length); each answer's mask marks the final answer, the part DPO scores.
rule preference_data:
    input:
        tokenizer=tokenizer_dir(),
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
        settings=lambda w: trigger(split_settings(config["dpo"], PREFERENCE_DATA_KEYS, w.split)),
        tag=lambda w: checked_tag(w.tag, LAYOUT.preference_tag(w.split), f"preference data of split {w.split}"),
    shell:
        "python -m preprocess.preference --config {CONFIG_FILE} --split {wildcards.split} --tokenizer {input.tokenizer}"
        " --out {output.shard} --stats {output.stats} > {log} 2>&1"
