# Paths and helpers shared by every phase. Layout: ../shared/DESIGN.md ("The DAG").
import hashlib
import json
import os

import yaml

SPLITS = ["train", "validation"]
CORPUS = config["corpus"]["name"]
DATA = f"data/{CORPUS}"
L1, L2, L3 = config["stages"]["lengths"]
LENGTHS = f"{L1}_{L2}_{L3}"
METHODS = config["annotate"]["methods"]
RUNS = config["runs"]

if not L1 < L2 < L3:
    raise ValueError(f"config stages.lengths must be increasing (l1 < l2 < l3), got {config['stages']['lengths']}")
for _run, _spec in RUNS.items():
    if _spec["method"] not in METHODS:
        raise ValueError(
            f"config runs.{_run}.method = {_spec['method']!r} is not among annotate.methods {METHODS}"
        )


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"shard_\d{5}",
    method="|".join(METHODS),
    lengths=r"\d+_\d+_\d+",


def _effective_config_path():
    """The merged, validated config (config.yaml + --configfile + --config) as one file that every job
    reads. Named by its content hash, so it never changes under a running job and triggers no reruns."""
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


def n_shards(split):
    return config["corpus"]["shards"][split]


def shard_names(split):
    return [f"shard_{i:05d}" for i in range(n_shards(split))]


def raw_shards(split):
    return [f"{DATA}/raw/{split}/{s}.parquet" for s in shard_names(split)]


def annot_shards(method, split):
    return [f"{DATA}/annot/{method}/{split}/{s}.parquet" for s in shard_names(split)]


def stage_shards(method, split):
    """The stage shards of one method and split, at the configured lengths."""
    return [f"{DATA}/stages/{method}/{LENGTHS}/{split}/{s}.parquet" for s in shard_names(split)]


def tokenizer_dir():
    return f"{DATA}/tokenizer"


def run_model_dirs(run):
    """The trained model folders of a run: stage1..3 for a cascade, one folder otherwise."""
    if RUNS[run]["kind"] == "cascade":
        return [f"runs/{run}/stage{k}" for k in (1, 2, 3)]
    return [f"runs/{run}/model"]
