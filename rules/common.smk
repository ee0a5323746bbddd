# Paths and helpers shared by every phase. Layout: docs/design.md ("Files").
#
# Rerun triggers: each rule declares, as `params: settings`, exactly the config keys its job reads, so that
# changing one reruns that job (Snakemake's `params` rerun trigger) and, through the newer outputs, everything
# downstream, and nothing else. The jobs read the whole merged config file (CONFIG_FILE), but only those keys.
import hashlib
import os

import yaml

from common.config import block_length, run_data  # noqa: E402 (the Snakefile put the repo on sys.path)
from common.layout import ANNOTATE_KEYS, PREFERENCE_DATA_KEYS, SFT_DATA_KEYS, Layout, split_settings  # noqa: E402

SPLITS = ["train", "validation"]
CORPUS = config["corpus"]["name"]
# Every output path of this config (common/layout.py): data folders named by the settings that make them, runs
# under the config's profile, so that two configs in one checkout never overwrite each other.
LAYOUT = Layout(config)
PROFILE = config["profile"]
# The stage datasets exist only in a config with a stages section (all cascades need one); without it nothing
# is annotated and every run reads unannotated block shards (data: wrap | doc).
HAS_STAGES = "stages" in config
LENGTHS = "_".join(map(str, config["stages"]["lengths"])) if HAS_STAGES else None
METHODS = config["annotate"]["methods"] if HAS_STAGES else []
BLOCK_LENGTH = block_length(config)
RUNS = config["runs"]


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"shard_\d{5}",
    method="|".join(METHODS) or "(?!)",
    lengths=r"\d+_\d+_\d+",
    packing="wrap|doc",
    block_length=r"\d+",


def trigger(settings):
    """A rule's `params: settings` in one canonical form, keys sorted at every level: Snakemake compares params
    with their key order, and a config section's order depends on how its files were merged, so two configs with
    equal settings would otherwise rerun each other's shared jobs."""
    if isinstance(settings, dict):
        return {key: trigger(settings[key]) for key in sorted(settings)}
    if isinstance(settings, (list, tuple)):
        return [trigger(value) for value in settings]
    return settings


def _effective_config_path():
    """The merged, validated config (config.yaml + --configfile + --config, defaults filled in) as one file
    that every job reads. Named by its content hash, so it never changes under a running job; the path is not
    a rerun trigger (the rules' `params: settings` are)."""
    text = yaml.safe_dump(config, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = f".snakemake/cascade/config-{digest}.yaml"
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


CONFIG_FILE = _effective_config_path()


def job_resources(section):
    """threads and resources of a job from a config section's gpus / cpus / mem_mb / runtime (one block for
    training, sampling and evaluation). gpu is the SLURM plugin's --gpus; cpus_per_task follows threads."""
    return dict(
        gpu=section["gpus"], cpus_per_task=section["cpus"], mem_mb=section["mem_mb"], runtime=section["runtime"]
    )


def device_arg(section):
    return "--device auto" if section["gpus"] else "--device cpu"


def n_shards(split):
    return config["corpus"]["shards"][split]


def shard_names(split):
    return [f"shard_{i:05d}" for i in range(n_shards(split))]


def raw_shards(split):
    return [f"{LAYOUT.raw(split)}/{s}.parquet" for s in shard_names(split)]


def stage_shards(method, split):
    """The stage shards of one method and split, at the configured lengths."""
    return [f"{LAYOUT.stages(method, split)}/{s}.parquet" for s in shard_names(split)]


def block_shards(packing, split):
    """The unannotated block shards of one packing (wrap | doc) and split, at blocks.length tokens."""
    return [f"{LAYOUT.blocks(packing, split)}/{s}.parquet" for s in shard_names(split)]


def sft_shards(split):
    """The question/answer canvases of sft runs (preprocess/sft.py), one shard per split, at sft.length tokens."""
    return [f"{LAYOUT.sft(split)}/shard_00000.parquet"]


def preference_shards(split):
    """The preference pairs of dpo runs (preprocess/preference.py), one shard per split, canvases of sft.length."""
    return [f"{LAYOUT.preference(split)}/shard_00000.parquet"]


def run_data_shards(run, split):
    """What a run trains and validates on: its method's stage shards, the block shards of its packing, the
    SFT canvases or the preference pairs."""
    data = run_data(RUNS[run])
    if data == "sft":
        return sft_shards(split)
    if data == "preference":
        return preference_shards(split)
    return stage_shards(RUNS[run]["method"], split) if data == "stages" else block_shards(data, split)


def tokenizer_dir():
    return LAYOUT.tokenizer


def local_files(source):
    """The files of a local source (a file, or every file under a folder, sorted) as job inputs, so that editing,
    adding or removing one reruns the job; [] for a task or a hub id (nothing on this disk to watch)."""
    if not source or not os.path.exists(source):
        return []
    if os.path.isfile(source):
        return [source]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(source) for f in files if not f.startswith("."))


def run_dir(run):
    return LAYOUT.run(run)


def model_names(run):
    """The trained model folders of a run, under runs/{run}/: stage1..3 for a cascade, model otherwise."""
    return ["stage1", "stage2", "stage3"] if RUNS[run]["kind"] == "cascade" else ["model"]


def run_model_dirs(run):
    return [f"{run_dir(run)}/{name}" for name in model_names(run)]
