"""A model folder's record as eval/ reads it: who trained the model and how, from its config.json. The one place
eval/ gives the record's keys a meaning (their defaults in older folders included); the evaluation JSONs, the
report and the SFT, DPO, ATAT and inserting-stage tables take them from here.

    from eval.record import ModelRecord, run_record
    r = ModelRecord.read("runs/demo/single/model")   # config.json, checked by train.checkpoint.read_meta
    r = run_record("runs/demo/cascade")              # the run's last model folder: stage3 of a cascade
    r.meta                config.json as read_meta checks it
    r.run                 config.json run; the run folder's name (the model folder's parent) where absent
    r.kind                cascade | single | ar | sft | dpo (None where absent)
    r.method, r.steps     the stage shards' priority method, the optimizer steps trained (None where absent)
    r.stages              the run's model folders (run_record: 3 for a cascade); 1 for a folder read alone
    r.objective           the network's parameterization: mdlm | sedd | ar
    r.training_objective  the run's objective: config.json training_objective, else objective (older folders)
    r.atat_importance     training objective atat: atat.importance (full | learned | frequency | uniform); else None
    r.stage_form          repredict | insert (config.json stage_form; repredict where absent: older folders,
                          stage 1, single runs)
    r.placement           stage_form insert: uniform | learned (config.json placement); else None
    r.backbone            the backbone spec (train.backbones.recorded_backbone: no "backbone" key = {"kind": "dit"})
    r.backbone_kind       "dit" | "masked_lm"
    r.seed                train.seed (None where absent)
    r.provenance          {"settings_digest": config.json settings_digest, "seed": train.seed,
                           "code_commit": config.json code_commit}, each None where an older folder lacks it
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROVENANCE = ("settings_digest", "seed", "code_commit")  # the keys of every eval JSON's "provenance"


@dataclass(frozen=True)
class ModelRecord:
    path: Path  # the model folder
    meta: dict
    stages: int = 1

    @classmethod
    def read(cls, model_dir, stages: int = 1) -> ModelRecord:
        from train.checkpoint import read_meta

        return cls(Path(model_dir), read_meta(model_dir), stages)

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def run(self) -> str:
        return self.meta.get("run") or self.path.parent.name

    @property
    def kind(self) -> str | None:
        return self.meta.get("kind")

    @property
    def method(self) -> str | None:
        return self.meta.get("method")

    @property
    def data(self) -> str | None:
        """What the model trained on (common.config.run_data): stages | wrap | doc | sft | preference | own_pairs."""
        return self.meta.get("data")

    @property
    def steps(self) -> int | None:
        return self.meta.get("steps")

    @property
    def objective(self) -> str:
        return self.meta["objective"]

    @property
    def training_objective(self) -> str:
        return self.meta.get("training_objective") or self.objective

    @property
    def atat_importance(self) -> str | None:
        if self.training_objective != "atat":
            return None
        atat = self.meta.get("atat")
        if not isinstance(atat, dict) or not isinstance(atat.get("importance"), str):
            raise ValueError(
                f"{self.config}: key 'atat' should be an object with an 'importance' (training_objective atat), "
                f"got {atat!r}"
            )
        return atat["importance"]

    @property
    def stage_form(self) -> str:
        return self.meta.get("stage_form") or "repredict"

    @property
    def placement(self) -> str | None:
        return self.meta.get("placement") if self.stage_form == "insert" else None

    @property
    def backbone(self) -> dict:
        from train.backbones import recorded_backbone

        return recorded_backbone(self.meta)

    @property
    def backbone_kind(self) -> str:
        return self.backbone["kind"]

    @property
    def seed(self) -> int | None:
        train = self.meta.get("train")
        return train.get("seed") if isinstance(train, dict) else None

    @property
    def provenance(self) -> dict:
        return {
            "settings_digest": self.meta.get("settings_digest"),
            "seed": self.seed,
            "code_commit": self.meta.get("code_commit"),
        }


def run_record(run_dir) -> ModelRecord:
    """The record of a run: its last model folder's (eval.runs.run_model_dirs: stage3 of a cascade, else model/),
    with the run's number of model folders as `stages`."""
    from eval.runs import run_model_dirs

    dirs = run_model_dirs(run_dir)
    return ModelRecord.read(dirs[-1], stages=len(dirs))


def provenance_differs(a: dict, b: dict) -> bool:
    """Whether two provenances (ModelRecord.provenance, or an eval JSON's copy of one) name different trainings:
    some key set in both (not None: older files lack them) differs."""
    return any(a.get(k) != b.get(k) for k in PROVENANCE if None not in (a.get(k), b.get(k)))
