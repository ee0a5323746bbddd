"""What the Snakemake workflow plans for one validated config: the input and output file lists of its rules, its
rerun triggers and job settings. The rule files (rules/*.smk) hold only rules and the names they share
(rules/common.smk makes ``PLAN = Plan(config)``); everything they compute is here, so that `snakemake --lint`
finds no functions mixed with rules, and the helpers are importable and testable without Snakemake.

Paths come from common/layout.py (one place for every output folder's name); the config is read through
common/config.py and train/settings.py. Layout: docs/design.md ("Files").

Rerun triggers: each rule declares, as `params: settings`, exactly the config keys its job reads (``trigger``),
so that changing one reruns that job (Snakemake's `params` rerun trigger) and, through the newer outputs,
everything downstream, and nothing else. The jobs read the whole merged config file (``effective_config_path``),
but only those keys; its path is passed as an ``untracked`` param, which is not a rerun trigger.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cached_property
from pathlib import Path

import yaml

from common.config import PLACED, ar_scorer_run, dpo_reference, places_prefix, run_data
from common.layout import ANNOTATE_KEYS, PREFERENCE_DATA_KEYS, Layout, split_settings

SPLITS = ["train", "validation"]
WEIGHTS = ("model.safetensors", "config.json")  # the files of a trained model folder (docs/contracts.md)


def trigger(settings):
    """A rule's `params: settings` in one canonical form, keys sorted at every level: Snakemake compares params
    with their key order, and a config section's order depends on how its files were merged, so two configs with
    equal settings would otherwise rerun each other's shared jobs."""
    if isinstance(settings, dict):
        return {key: trigger(settings[key]) for key in sorted(settings)}
    if isinstance(settings, (list, tuple)):
        return [trigger(value) for value in settings]
    return settings


def untracked(value):
    """A rule param that the job gets but that is not a params rerun trigger: Snakemake records (and compares) only
    the params that are not functions of input, output, threads or resources (snakemake/rules.py
    _is_deriving_function, persistence._params), so the value is returned by such a function. For the effective
    config file, whose path changes with every key of the config: the keys a job reads are its `params: settings`."""
    return lambda wildcards, input: value


def effective_config_path(config: dict) -> str:
    """The merged, validated config (config.yaml + --configfile + --config, defaults filled in) as one file
    that every job reads, relative to the working directory. Named by its content hash, so it never changes
    under a running job; the path is not a rerun trigger (``untracked``; the rules' `params: settings` are)."""
    text = yaml.safe_dump(config, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = os.path.join(".snakemake", "cascade", f"config-{digest}.yaml")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def job_resources(section: dict) -> dict:
    """threads and resources of a job from a config section's gpus / cpus / mem_mb / runtime (one block for
    training, sampling and evaluation). gpu is the SLURM plugin's --gpus; cpus_per_task follows threads."""
    return dict(
        gpu=section["gpus"], cpus_per_task=section["cpus"], mem_mb=section["mem_mb"], runtime=section["runtime"]
    )


def device_arg(section: dict) -> str:
    return "--device auto" if section["gpus"] else "--device cpu"


def local_files(source) -> list[str]:
    """The files of a local source (a file, or every file under a folder, sorted) as job inputs, so that editing,
    adding or removing one reruns the job; [] for a task or a hub id (nothing on this disk to watch)."""
    if not source or not os.path.exists(source):
        return []
    if os.path.isfile(source):
        return [source]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(source) for f in files if not f.startswith("."))


def one_of(names) -> str:
    """A wildcard constraint that matches exactly these strings ("(?!)", matching nothing, for none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def layout_log(path: str) -> str:
    """A data folder's log or benchmark file: the data path under logs/ or benchmarks/, minus data/."""
    return path[len("data/") :]


def checked_tag(tag: str, expected: str, what: str) -> str:
    """A {tag} wildcard is only ever this config's tag: a path with another one is a stale or foreign folder."""
    if tag != expected:
        raise ValueError(f"{what}: tag {tag!r} is not this config's ({expected!r}); see common/layout.py")
    return tag


def parent_dir(path: str, levels: int = 1) -> str:
    """The folder ``levels`` up from a file: a job's output folder (levels=1), or the run folder
    runs/{profile}/{run} of a file in one of its subfolders (levels=2), derived from the job's own files."""
    return str(Path(path).parents[levels - 1])


def train_launcher(s) -> str:
    """`python -m train` on CPU (gpus: 0); `accelerate launch` with one process per GPU otherwise."""
    if s.gpus == 0:
        return "python -m train"
    multi = "--multi_gpu " if s.gpus > 1 else ""
    return (
        f"accelerate launch {multi}--num_processes {s.gpus} --num_machines 1 --mixed_precision no"
        f" --dynamo_backend no -m train"
    )


class Plan:
    """The files and settings of every job of one validated config (see the module docstring)."""

    def __init__(self, config: dict):
        self.config = config
        # Every output path of this config (common/layout.py): data folders named by the settings that make
        # them, runs under the config's profile, so that two configs in one checkout never overwrite each other.
        self.layout = Layout(config)
        self.runs = config["runs"]
        # The stage datasets exist only in a config with a stages section (all cascades need one); without it
        # nothing is annotated and every run reads unannotated block shards (data: wrap | doc).
        self.has_stages = "stages" in config
        self.methods = config["annotate"]["methods"] if self.has_stages else []
        self.sft_runs = [run for run, spec in self.runs.items() if spec["kind"] == "sft"]
        self.dpo_runs = [run for run, spec in self.runs.items() if spec["kind"] == "dpo"]
        self.own_pairs_runs = [run for run in self.dpo_runs if run_data(self.runs[run]) == "own_pairs"]
        self.atat_runs = [run for run, spec in self.runs.items() if spec["objective"] == "atat"]
        # The inserting comparison (eval/insert.py), in a config with an inserting cascade: every cascade and single
        # run on the stage shards, so the seed's cascades and the single models are its baselines.
        inserting = any(spec.get("stage_form") == "insert" for spec in self.runs.values())
        self.insert_runs = [
            run
            for run, spec in self.runs.items()
            if inserting and spec["kind"] in ("cascade", "single") and run_data(spec) == "stages"
        ]
        # The zero-shot table: single and AR runs scored on corpora they were not trained on (eval/zero_shot.py).
        # (zero_shot.runs names only single and AR runs: common.config checked it)
        zero_shot = config["zero_shot"]
        self.zero_shot_corpora = [label for label, corpus in zero_shot["corpora"].items() if corpus is not None]
        chosen = zero_shot["runs"]
        if chosen is None:
            chosen = [run for run, spec in self.runs.items() if spec["kind"] in ("single", "ar")]
        self.zero_shot_runs = chosen if self.zero_shot_corpora else []
        profile = config["profile"]
        self.tables = f"results/{profile}/tables"
        self.plots = f"results/{profile}/plots"

    # ---- data ----------------------------------------------------------------------------------------------

    def shard_names(self, split: str) -> list[str]:
        return [f"shard_{i:05d}" for i in range(self.config["corpus"]["shards"][split])]

    def raw_shards(self, split: str) -> list[str]:
        return [f"{self.layout.raw(split)}/{s}.parquet" for s in self.shard_names(split)]

    def stage_shards(self, method: str, split: str) -> list[str]:
        """The stage shards of one method and split, at the configured lengths."""
        return [f"{self.layout.stages(method, split)}/{s}.parquet" for s in self.shard_names(split)]

    def block_shards(self, packing: str, split: str) -> list[str]:
        """The unannotated block shards of one packing (wrap | doc) and split, at blocks.length tokens."""
        return [f"{self.layout.blocks(packing, split)}/{s}.parquet" for s in self.shard_names(split)]

    def sft_shards(self, split: str) -> list[str]:
        """The question/answer canvases of sft runs (preprocess/sft.py), one shard per split, at sft.length."""
        return [f"{self.layout.sft(split)}/shard_00000.parquet"]

    def preference_shards(self, split: str) -> list[str]:
        """The preference pairs of dpo runs (preprocess/preference.py), one shard per split, canvases of
        sft.length."""
        return [f"{self.layout.preference(split)}/shard_00000.parquet"]

    def own_pairs_shard(self, run: str) -> str:
        """The training pairs of a dpo run with pairs: own_answers (rule own_pairs)."""
        return f"{self.layout.own_pairs(run)}/shard_00000.parquet"

    def own_pairs_inputs(self, wildcards) -> dict:
        """Rule own_pairs: the files of the model whose answers make the pairs, the dpo run's start (dpo_dirs; a new
        start model means new pairs), and the tokenizer."""
        start = self.dpo_dirs(wildcards.run)[0]
        return {"model": [f"{start}/{name}" for name in WEIGHTS], "tokenizer": self.layout.tokenizer}

    def own_pairs_seed(self, run: str) -> int:
        """The seed of a dpo run's answer draws: dpo.own_answers.seed + the run's seed, so that the seeds of one round
        draw their own pairs and their spread covers the sampling of the pairs, not only the training."""
        return self.config["dpo"]["own_answers"]["seed"] + self.train[(run, "model")].seed

    def own_pairs_settings(self, run: str) -> dict:
        """What rule own_pairs computes from beside its input files: dpo.source's training prompts (the data keys
        of its train split), dpo.own_answers with the run's draw seed, and the sft section's canvas length and
        generation settings."""
        dpo, sft = self.config["dpo"], self.config["sft"]
        return {
            **split_settings(dpo, PREFERENCE_DATA_KEYS, "train"),
            "own_answers": {**dpo["own_answers"], "seed": self.own_pairs_seed(run)},
            **{k: sft[k] for k in ("length", "gen_length", "eval_steps", "remasking", "eos_guard")},
        }

    def run_data_shards(self, run: str, split: str) -> list[str]:
        """What a run trains and validates on: its method's stage shards, the block shards of its packing, the
        SFT canvases or the preference pairs (a dpo run with pairs: own_answers trains on its own pairs and
        validates on dpo.source's held-out pairs, as every dpo run of the config does)."""
        data = run_data(self.runs[run])
        if data == "sft":
            return self.sft_shards(split)
        if data == "preference" or (data == "own_pairs" and split == "validation"):
            return self.preference_shards(split)
        if data == "own_pairs":
            return [self.own_pairs_shard(run)]
        if data == "stages":
            return self.stage_shards(self.runs[run]["method"], split)
        return self.block_shards(data, split)

    def preprocess_outputs(self) -> list[str]:
        """Every stage shard of every method and split (with the annotated shards and tokenizer they need), and
        the block shards of every packing a run reads."""
        packings = sorted({run_data(spec) for spec in self.runs.values()} & {"wrap", "doc"})
        return [p for m in self.methods for split in SPLITS for p in self.stage_shards(m, split)] + [
            p for packing in packings for split in SPLITS for p in self.block_shards(packing, split)
        ]

    def annotate_settings(self, method: str) -> dict:
        """The annotate keys that change a shard of ``method`` (common/layout.py's ANNOTATE_KEYS; constituency
        runs no KeyBERT)."""
        annotate = self.config["annotate"]
        return {k: annotate[k] for k in ANNOTATE_KEYS if not (method == "constituency" and k == "keybert_model")}

    def tokenizer_inputs(self) -> list[str]:
        """What the tokenizer job reads: the train shards for a BPE it trains; a local folder of a pretrained
        one."""
        if self.config["tokenizer"]["kind"] == "bpe":
            return self.raw_shards("train")
        return local_files(self.config["tokenizer"]["name"])

    # ---- training ------------------------------------------------------------------------------------------

    def model_names(self, run: str) -> list[str]:
        """The trained model folders of a run, under runs/{profile}/{run}/: stage1..3 for a cascade, model
        otherwise."""
        return ["stage1", "stage2", "stage3"] if self.runs[run]["kind"] == "cascade" else ["model"]

    def run_model_dirs(self, run: str) -> list[str]:
        return [f"{self.layout.run(run)}/{name}" for name in self.model_names(run)]

    @cached_property
    def train(self) -> dict:
        """Every model's settings (train/settings.py), by (run, model folder name), resolved and checked once:
        rules/train.smk reads it when the workflow is parsed, so a bad run stops the workflow before any job,
        naming the run and the key."""
        from train.settings import resolve

        return {
            (run, name): resolve(self.config, run, int(name[len("stage") :]) if name != "model" else None)
            for run in self.runs
            for name in self.model_names(run)
        }

    def train_settings(self, wildcards):
        key = (wildcards.run, wildcards.model)
        if key not in self.train:
            names = {run: self.model_names(run) for run in self.runs}
            raise ValueError(
                f"{self.layout.run(wildcards.run)}/{wildcards.model}: no such model; the config's runs have {names}"
            )
        return self.train[key]

    def previous_stage(self, s) -> str | None:
        """The model folder this one starts from: runs/{profile}/{run}/stage{k-1} when cascade stage k
        warm-starts from it, runs/{profile}/{init_from}/model for an sft or dpo run with init_from; else None."""
        if s.kind == "cascade" and s.stage > 1 and s.warm_start:
            return f"{self.layout.run(s.run)}/stage{s.stage - 1}"
        if s.kind in ("sft", "dpo") and s.init_from:
            return f"{self.layout.run(s.init_from)}/model"
        return None

    def dpo_reference(self, run: str) -> str:
        """The frozen reference model folder of a dpo run (common.config.dpo_reference)."""
        return dpo_reference(self.config, run, self.layout.run)

    def train_inputs(self, wildcards) -> dict:
        """The run's data (stage shards of its method, block shards, SFT canvases or preference pairs), the
        tokenizer, the model it starts from (previous_stage) and a dpo run's reference model."""
        s = self.train_settings(wildcards)
        inputs = {
            "train": self.run_data_shards(s.run, "train"),
            "val": self.run_data_shards(s.run, "validation"),
            "tokenizer": self.layout.tokenizer,
        }
        if self.previous_stage(s):
            inputs["init"] = [f"{self.previous_stage(s)}/{name}" for name in WEIGHTS]
        if s.kind == "dpo":  # the frozen reference: a run's model folder (built by this DAG) or a folder on disk
            inputs["reference"] = [f"{self.dpo_reference(s.run)}/{name}" for name in WEIGHTS]
        return inputs

    def train_resource(self, key: str):
        return lambda wildcards: job_resources(self.train_settings(wildcards).to_dict())[key]

    # ---- sampling, evaluation, report ----------------------------------------------------------------------

    def run_samplings(self, run: str) -> list[tuple]:
        """(sampler, steps) pairs sampled for a run: every configured pair for re-predicting cascade runs, the same
        without the placing samplers ({sampler}_placed: they place stage k-1's tokens in a re-predicting stage's
        target, common.config.places_prefix) for single-stage runs (no stage k-1) and inserting cascades (which
        place them by their placement law), left-to-right sampling of the whole block for an AR run."""
        spec = self.runs[run]
        if spec["kind"] == "ar":
            return [("ar", self.train[(run, "model")].target_len)]
        sample = self.config["sample"]
        samplers = [s for s in sample["samplers"] if places_prefix(spec) or not s.endswith(PLACED)]
        return [(s, n) for s in samplers for n in sample["steps"]]

    def model_files(self, run: str) -> list[str]:
        return [f"{d}/{name}" for d in self.run_model_dirs(run) for name in WEIGHTS]

    def scorer_files(self) -> list[str]:
        """evaluate.scorer: 'ar' -> the files of the model folder of the config's run of kind ar (common.config
        checked that one exists), a DAG input; anything else (a hub id or a local folder of a causal LM) is
        passed on as it is, not a DAG input (``scorer_arg``)."""
        if self.config["evaluate"]["scorer"] != "ar":
            return []
        scorer = self.run_model_dirs(ar_scorer_run(self.config))[0]
        return [f"{scorer}/{name}" for name in WEIGHTS]

    def scorer_arg(self, input_scorer) -> str:
        """The evaluate job's --scorer: the folder of its scorer input files when the scorer is the config's ar
        run, else evaluate.scorer as it is."""
        return parent_dir(input_scorer[0]) if input_scorer else self.config["evaluate"]["scorer"]

    def report_inputs(self) -> dict[str, list[str]]:
        """Every file the report reads: the sample metrics of every (run, sampler, steps), the validation metrics
        of every run, and the training log of every trained model. SFT runs are scored on their task instead
        (sft.json); DPO runs, whose loss is not a NELBO, only in their own table (dpo.json)."""
        files = {"samples": [], "val": [], "train": []}
        for run in self.runs:
            if run in self.dpo_runs:
                continue
            files["train"] += [f"{d}/metrics.csv" for d in self.run_model_dirs(run)]
            if run in self.sft_runs:
                continue
            files["samples"] += self.sample_metrics(run)
            files["val"].append(self.val_metrics(run))
        return files

    def sample_metrics(self, run: str) -> list[str]:
        return [os.path.join(self.layout.run(run), "eval", f"{s}-{n}.json") for s, n in self.run_samplings(run)]

    def val_metrics(self, run: str) -> str:
        return os.path.join(self.layout.run(run), "eval", "val.json")

    def report_outputs(self) -> list[str]:
        """The tables and plots (the end of the default target); the SFT / DPO / ATAT tables when the config has
        such runs, the inserting comparison when it has an inserting cascade."""
        tables, plots = self.tables, self.plots
        return (
            [f"{tables}/main.{ext}" for ext in ("md", "csv", "tex")]
            + [f"{plots}/loss.png", f"{plots}/gen_ppl_steps.png"]
            + ([f"{tables}/sft.{ext}" for ext in ("md", "csv")] if self.sft_runs else [])
            + ([f"{tables}/dpo.{ext}" for ext in ("md", "csv")] if self.dpo_runs else [])
            + ([f"{tables}/atat.{ext}" for ext in ("md", "csv")] if self.atat_runs else [])
            + ([f"{tables}/insert.{ext}" for ext in ("md", "csv")] if self.insert_runs else [])
            + ([f"{tables}/zero_shot.{ext}" for ext in ("md", "csv")] if self.zero_shot_runs else [])
        )

    # ---- zero-shot -----------------------------------------------------------------------------------------

    def zero_shot_label(self, name: str, tag: str) -> str:
        """The zero-shot corpus label of data/{name}/zero-shot-{tag}/ (a ValueError for a folder that is not one of
        this config's)."""
        for label in self.zero_shot_corpora:
            if self.config["zero_shot"]["corpora"][label]["name"] == name and self.layout.zero_shot_tag(label) == tag:
                return label
        raise ValueError(f"data/{name}/zero-shot-{tag}: not a zero-shot corpus of this config; see common/layout.py")

    def zero_shot_raw_shard(self, label: str) -> str:
        return f"{self.layout.zero_shot_raw(label)}/shard_00000.parquet"

    def zero_shot_block_shard(self, run: str, label: str) -> str:
        """The zero-shot corpus wrapped into blocks of the run's target length (its single model's l)."""
        length = self.train[(run, "model")].target_len
        return f"{self.layout.zero_shot_blocks(label, length)}/shard_00000.parquet"

    def zero_shot_metrics(self, run: str, label: str) -> str:
        return os.path.join(self.layout.run(run), "eval", "zero_shot", f"{label}.json")

    def zero_shot_results(self) -> list[str]:
        return [self.zero_shot_metrics(run, label) for run in self.zero_shot_runs for label in self.zero_shot_corpora]

    def sft_before_dir(self, run: str) -> str | None:
        """The model folder an sft run started from (previous_stage), or None."""
        return self.previous_stage(self.train[(run, "model")])

    def sft_model_files(self, run: str) -> list[str]:
        before = self.sft_before_dir(run)
        return self.model_files(run) + ([f"{before}/{name}" for name in WEIGHTS] if before else [])

    def dpo_dirs(self, run: str) -> tuple[str, str]:
        """(the model folder a dpo run started from, its frozen reference)."""
        return self.previous_stage(self.train[(run, "model")]), self.dpo_reference(run)

    def dpo_model_files(self, run: str) -> list[str]:
        folders = sorted(set(self.dpo_dirs(run)))
        return self.model_files(run) + [f"{d}/{name}" for d in folders for name in WEIGHTS]
