"""A run's training settings: one typed object, built once from the config by resolve().

The `train:` section gives every training key (its defaults come from the schema); a run under `runs:` may
override any of them. resolve() merges the two for one model (a cascade stage, or the single / AR model),
adds what the run kind decides (which stage columns, prefix and target lengths, the number of steps), and
runs the cross-field checks once, here. The Snakemake rules (resources, inputs, rerun triggers) and the
training command both build their settings with resolve(), so they read one truth.

Run kinds:
    cascade  stages 1, 2, 3; stage k > 1 sees [stage k-1 clean ; noisy stage k] (stage_form repredict), or, with
             stage_form insert, the stage-k canvas with the stage k-1 tokens clean at their positions and a
             placement law for those positions (train/inserting.py)
    single   the stage-3 blocks with no prefix
    ar       a causal LM on the stage-3 blocks (objective ar, cross-entropy)
A single or ar run with `data: wrap | doc` reads unannotated block shards of blocks.length tokens instead of
the stage-3 blocks (preprocess/blocks.py); it has no method.
    sft      question/answer canvases of sft.length tokens (preprocess/sft.py; data "sft"): only answer tokens
             are masked and carry loss; starts from init_from's model folder or the backbone's own weights
    dpo      Diffusion-DPO on preference pairs of sft.length-token canvases (preprocess/preference.py; data
             "preference"; with pairs: own_answers, pairs of its start model's own answers, data "own_pairs",
             eval/own_pairs.py), from init_from's model folder against a frozen reference (train/dpo.py)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from common.config import DPO_TRAIN_KEYS, block_length, run_data

KINDS = ("cascade", "single", "ar", "sft", "dpo")
DIFFUSION_OBJECTIVES = ("mdlm", "sedd", "atat")
# Keys that change where and how fast a job runs, never what it computes: left out of the settings digest,
# so changing them reruns nothing and a checkpoint written under other values still resumes.
# `fused` is one of them: the fused kernels compute the plain formulas (equal to float rounding, pinned by
# tests/test_train_model_equivalence.py), so switching them is a speed choice.
# dpo_cache_reference likewise: cached reference scores are those the steps would compute (tests/test_dpo.py).
JOB_ONLY_KEYS = ("gpus", "cpus", "mem_mb", "runtime", "log_with", "fused", "dpo_cache_reference")
# Fields of one kind, objective or form (dpo runs, objective atat, inserting cascade stages), left out of
# computing() where they hold the value that means "not used here", so adding such a field changes no other run's
# settings digest: nothing reruns, every checkpoint still resumes.
ABSENT_VALUES = {"dpo": None, "atat": None, "stage_form": "repredict", "placement": None}
STAGE_FORMS = ("repredict", "insert")
PLACEMENTS = ("uniform", "learned")


class SettingsError(ValueError):
    """Settings that cannot train; the message names the run and the key."""


def compute_matched_steps(
    stage_steps: list[int], lengths: list[int], block: int | None = None, inserting: bool = False
) -> int:
    """Steps for a single-stage model on `block`-token blocks (default l3) that costs what a cascade costs.

    Cascade stage k trains on sequences of prefix + target = l_{k-1} + l_k tokens (l_0 = 0), so with the
    same batch size its compute is proportional to steps_k * (l_{k-1} + l_k). The single-stage model sees
    `block` tokens per example, so it gets

        steps_single = ceil( sum_k steps_k * (l_{k-1} + l_k) / block ).

    Example (demo): 800 * (8 + 24 + 48) / 32 = 2,000 steps. (Tokens, not FLOPs: attention's quadratic
    term is ignored, which is small at these lengths.) An inserting cascade (``inserting``, stage_form insert)
    reads only the l_k canvas per example (the given tokens are in it), so its stages count steps_k * l_k.
    """
    if len(stage_steps) != len(lengths):
        raise ValueError(f"one step count per stage: {stage_steps} vs lengths {lengths}")
    tokens, previous = 0, 0
    for steps, length in zip(stage_steps, lengths):
        tokens += steps * ((0 if inserting else previous) + length)
        previous = length
    return -(-tokens // (block or lengths[-1]))


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training job needs to know, checked. Field meanings: schemas/config.schema.yaml."""

    # what is trained
    run: str
    kind: str
    data: str  # stages | wrap | doc | sft | preference | own_pairs (common.config.run_data; cascades: stages)
    method: str | None  # the stage shards' priority method (None for data wrap | doc)
    objective: str
    stage: int  # 1..3 for a cascade; 3 for single / ar (they model the stage-3 blocks)
    lengths: tuple[int, int, int] | None  # stages.lengths (None when the config has no stages section)
    prefix_len: int  # l_{k-1} (0 for stage 1, single and ar)
    target_len: int  # l_k
    max_steps: int
    steps_source: str  # how max_steps was decided, printed with the settings
    match_compute: str | None
    init_from: str | None  # sft: the run whose model folder starts it
    sft_normalization: str | None  # sft: token | sequence (sft.loss_normalization)
    dpo: dict | None  # dpo: the dpo section's DPO_TRAIN_KEYS
    dpo_cache_reference: bool  # dpo: dpo.cache_reference (a speed / memory choice, JOB_ONLY_KEYS)
    atat: dict | None  # objective atat: the atat section (train/atat.py)
    stage_form: str  # repredict | insert (cascade stages > 1 only; train/inserting.py)
    placement: str | None  # insert: uniform | learned (train/placement.py); None otherwise
    # the train: keys
    model: str
    backbone: dict
    noise: dict
    global_batch_size: int
    micro_batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    ema: float
    dropout: float
    eval_every: int
    eval_batches: int
    save_every: int
    shuffle_prefix: bool
    warm_start: bool
    antithetic: bool
    precision: str
    fused: object  # "auto" | True | False
    deepspeed: str | None
    seed: int
    max_nonfinite_steps: int
    log_with: list = field(default_factory=list)
    pretrained: str | None = None
    pretrained_format: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem_mb: int = 8000
    runtime: int = 60

    def __post_init__(self):
        where = f"runs.{self.run}"
        if self.kind not in KINDS:
            raise SettingsError(f"{where}.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "ar" and self.objective != "ar":
            raise SettingsError(f"{where}: kind ar trains objective ar, got objective {self.objective!r}")
        if self.kind != "ar" and self.objective not in DIFFUSION_OBJECTIVES:
            raise SettingsError(
                f"{where}.objective must be one of {DIFFUSION_OBJECTIVES} for kind {self.kind}, got {self.objective!r}"
            )
        if self.match_compute is not None and self.kind != "single":
            raise SettingsError(f"{where}.match_compute applies to single runs, this run is kind {self.kind}")
        if self.warm_start and self.kind != "cascade":
            raise SettingsError(f"{where}.warm_start chains cascade stages; this run is kind {self.kind}")
        if self.kind in ("sft", "dpo") and self.objective != "mdlm":
            raise SettingsError(
                f"{where}: kind {self.kind} trains the masked-diffusion objective mdlm on answer "
                f"tokens, got objective {self.objective!r}"
            )
        if self.objective == "atat":
            if self.kind not in ("cascade", "single"):
                raise SettingsError(f"{where}: objective atat trains cascade or single runs, got kind {self.kind}")
            if self.max_steps and self.atat["stages"] > self.max_steps:
                raise SettingsError(
                    f"{where}: atat.stages ({self.atat['stages']}) must not exceed max_steps "
                    f"({self.max_steps}): the last stage, the plain objective, would get no step"
                )
            if self.atat["estimator_kernel"] % 2 == 0:
                raise SettingsError(f"{where}: atat.estimator_kernel must be odd, got {self.atat['estimator_kernel']}")
            if self.deepspeed:
                raise SettingsError(
                    f"{where}: objective atat trains a second network (the importance estimator) "
                    f"beside the model; deepspeed is not supported for it, got {self.deepspeed!r}"
                )
        if self.kind == "dpo":
            if self.init_from is None:
                raise SettingsError(f"{where}.init_from is missing: a dpo run starts from a model folder")
            if self.dropout != 0:
                # policy = reference must give margins of exactly 0 at step 0; dropout in the policy's forward
                # would make its scores differ from the reference's on the same draws
                raise SettingsError(
                    f"{where}.dropout must be 0 for kind dpo (the policy's scores are compared "
                    f"draw for draw with the frozen reference's), got {self.dropout}"
                )
        if self.backbone["kind"] == "masked_lm":
            if (self.backbone.get("name") is None) == (self.backbone.get("config") is None):
                raise SettingsError(
                    f"{where}.backbone: a masked_lm backbone needs exactly one of name (hub id or "
                    f"folder) and config (transformers config keys), got {self.backbone}"
                )
            if self.objective == "ar" or self.pretrained is not None:
                raise SettingsError(
                    f"{where}.backbone: a masked_lm backbone trains a diffusion objective from its "
                    f"own weights (backbone.name); objective {self.objective!r}, pretrained "
                    f"{self.pretrained!r}"
                )
        if self.stage_form not in STAGE_FORMS:
            raise SettingsError(f"{where}.stage_form must be one of {STAGE_FORMS}, got {self.stage_form!r}")
        if self.stage_form == "insert":
            if self.kind != "cascade":
                raise SettingsError(f"{where}.stage_form insert applies to cascade runs, this run is kind {self.kind}")
            if self.objective not in ("mdlm", "sedd"):
                raise SettingsError(
                    f"{where}.stage_form insert trains objective mdlm or sedd on the inserted tokens, "
                    f"got objective {self.objective!r}"
                )
            if self.shuffle_prefix:
                raise SettingsError(
                    f"{where}.shuffle_prefix: an inserting stage keeps the given tokens at their positions "
                    f"(stage_form insert), so there is no prefix order to shuffle; expected false, got true"
                )
            if self.stage > 1 and self.placement not in PLACEMENTS:
                raise SettingsError(f"{where}.placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.placement is not None and not (self.stage_form == "insert" and self.stage > 1):
            raise SettingsError(
                f"{where}.placement is the placement law of an inserting stage (stage_form insert, stage 2 or "
                f"3); this model is {self.name} with stage_form {self.stage_form}, got placement {self.placement!r}"
            )
        if self.kind == "cascade" and self.data != "stages":
            raise SettingsError(f"{where}.data: a cascade trains on the stage datasets, got {self.data!r}")
        if self.global_batch_size % self.micro_batch_size:
            raise SettingsError(
                f"{where}: global_batch_size {self.global_batch_size} is not a multiple of "
                f"micro_batch_size {self.micro_batch_size}"
            )
        if self.max_steps == 0 and self.pretrained is None:
            raise SettingsError(f"{where}.max_steps is 0 (evaluate a checkpoint as is) but pretrained is not set")
        if self.pretrained_format is not None and self.pretrained is None:
            raise SettingsError(f"{where}.pretrained_format is {self.pretrained_format!r} but pretrained is not set")

    @property
    def name(self) -> str:
        """stage{k} for a cascade stage, model for a single / AR run: the run's output folder."""
        return f"stage{self.stage}" if self.kind == "cascade" else "model"

    def accumulation_steps(self, num_processes: int) -> int:
        """global batch = micro batch x processes x accumulation; the division must be exact."""
        per_step = self.micro_batch_size * num_processes
        if self.global_batch_size % per_step:
            raise SettingsError(
                f"runs.{self.run}: global_batch_size {self.global_batch_size} is not a multiple "
                f"of micro_batch_size {self.micro_batch_size} x {num_processes} processes"
            )
        return self.global_batch_size // per_step

    def replace(self, **changes) -> TrainSettings:
        """A copy with some fields changed, checked again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise SettingsError(f"unknown training setting(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def computing(self) -> dict:
        """The settings that decide what the job computes (all but JOB_ONLY_KEYS). The fields only some runs
        read (ABSENT_VALUES) are left out where they hold their unused value, so adding such a field to the code
        changes no other run's settings: nothing reruns, every checkpoint still resumes."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in JOB_ONLY_KEYS and not (k in ABSENT_VALUES and v == ABSENT_VALUES[k])
        }

    def digest(self) -> str:
        """sha256 of computing(): equal digests, equal training. Recorded in checkpoints and compared on resume."""
        text = json.dumps(self.computing(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """The resolved settings, one per line, for the training log."""
        width = max(len(k) for k in self.to_dict())
        return "\n".join(f"  {k:<{width}} {v}" for k, v in self.to_dict().items())


def resolve(config: dict, run: str, stage: int | None = None) -> TrainSettings:
    """Settings of ``run`` at ``stage`` (1..3 for cascade runs; 3 or None for single / ar runs) from a config
    read by common.config (every key present)."""
    runs = config["runs"]
    if run not in runs:
        raise SettingsError(f"run {run!r} is not in config runs (have {sorted(runs)})")
    spec = runs[run]
    kind = spec["kind"]
    values = {
        **config["train"],
        **{
            k: v
            for k, v in spec.items()
            if k
            not in (
                "kind",
                "data",
                "pairs",  # read through run_data: data preference | own_pairs
                "method",
                "objective",
                "match_compute",
                "init_from",
                "atat",
                "dpo",
                "stage_form",
                "placement",
            )
        },
    }
    lengths = tuple(config["stages"]["lengths"]) if config.get("stages") else None
    data = run_data(spec)
    if kind == "cascade":
        if stage not in (1, 2, 3):
            raise SettingsError(f"run {run!r} is a cascade: stage must be 1, 2 or 3, got {stage!r}")
        prefix_len, target_len = (0 if stage == 1 else lengths[stage - 2]), lengths[stage - 1]
    else:
        if stage not in (None, 3):
            raise SettingsError(f"run {run!r} is kind {kind}: it models the stage-3 blocks (stage 3), got {stage!r}")
        stage, prefix_len = 3, 0
        target_len = {
            "stages": lengths[2] if lengths else None,
            "sft": config["sft"]["length"],
            "preference": config["sft"]["length"],
            "own_pairs": config["sft"]["length"],
        }.get(data, block_length(config))
    steps_source = f"runs.{run}.max_steps" if "max_steps" in spec else "train.max_steps"
    target = spec.get("match_compute")
    if target is not None:
        stage_steps = [resolve(config, target, k).max_steps for k in (1, 2, 3)]
        inserting = runs[target].get("stage_form") == "insert"
        values["max_steps"] = compute_matched_steps(stage_steps, list(lengths), target_len, inserting)
        read = "l_k" if inserting else "(l_(k-1) + l_k)"
        steps_source = (
            f"match_compute: {target} (ceil(sum_k steps_k {read} / {target_len}) with steps "
            f"{stage_steps}, lengths {list(lengths)})"
        )
    method = spec.get("method") if data == "stages" else None
    stage_form, placement = spec.get("stage_form") or "repredict", spec.get("placement")
    if kind == "cascade" and stage == 1:
        # stage 1 has no given tokens: the same model in both forms, trained (and digested) as repredict
        stage_form, placement = "repredict", None
    elif stage_form == "insert":
        placement = placement or "uniform"
    return TrainSettings(
        run=run,
        kind=kind,
        data=data,
        method=method,
        objective=spec["objective"],
        stage=stage,
        lengths=lengths,
        prefix_len=prefix_len,
        target_len=target_len,
        steps_source=steps_source,
        match_compute=target,
        init_from=spec.get("init_from"),
        sft_normalization=config["sft"]["loss_normalization"] if kind == "sft" else None,
        dpo={k: {**config["dpo"], **spec.get("dpo", {})}[k] for k in DPO_TRAIN_KEYS} if kind == "dpo" else None,
        dpo_cache_reference=kind == "dpo" and config["dpo"]["cache_reference"],
        atat={**config["atat"], **spec.get("atat", {})} if spec["objective"] == "atat" else None,
        stage_form=stage_form,
        placement=placement,
        **values,
    )
