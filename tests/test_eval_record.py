"""A model folder's record as eval/ reads it (eval/record.py): the defaults of older folders (no backbone = dit,
no training_objective = the objective, no provenance keys = None), a cascade run read through its last stage, and
a malformed atat section named with its file."""

import json

import pytest
from test_atat_pipeline import fake_record, fake_run

from eval.record import ModelRecord, provenance_differs, run_record


def write(folder, meta):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").touch()
    return folder


def test_an_older_folder_reads_with_the_documented_defaults(tmp_path):
    meta = fake_record("old", "single", 3, 0, "mdlm")
    for key in ("training_objective", "atat", "run", "kind", "settings_digest", "code_commit", "train"):
        del meta[key]
    record = ModelRecord.read(write(tmp_path / "runs" / "old" / "model", meta))
    assert record.backbone == {"kind": "dit"} and record.backbone_kind == "dit"
    assert record.training_objective == "mdlm" and record.atat_importance is None
    assert record.run == "old" and record.kind is None and record.stages == 1
    assert record.seed is None
    assert record.provenance == {"settings_digest": None, "seed": None, "code_commit": None}


def test_a_cascade_run_is_read_through_its_last_stage(tmp_path):
    fake_run(tmp_path, "casc", "learned", 7, [1.0, 2.0, 3.0], kind="cascade")
    record = run_record(tmp_path / "runs" / "casc")
    assert record.path == tmp_path / "runs" / "casc" / "stage3" and record.meta["stage"] == 3
    assert record.stages == 3 and record.kind == "cascade" and record.run == "casc"
    assert record.training_objective == "atat" and record.objective == "mdlm"
    assert record.atat_importance == "learned"
    assert record.provenance == {"settings_digest": "casc-digest", "seed": 7, "code_commit": "c0ffee"}


def test_a_masked_lm_backbone_and_a_bad_atat_section(tmp_path):
    meta = {**fake_record("bert", "single", 3, 0, "full"), "backbone": {"kind": "masked_lm", "name": "bert"}}
    record = ModelRecord.read(write(tmp_path / "bert" / "model", meta))
    assert record.backbone_kind == "masked_lm" and record.backbone["name"] == "bert"
    bad = ModelRecord.read(write(tmp_path / "bad" / "model", {**meta, "atat": None}))
    with pytest.raises(ValueError, match=r"bad/model/config.json: key 'atat' should be an object with an 'importance'"):
        _ = bad.atat_importance
    weird = ModelRecord.read(write(tmp_path / "weird" / "model", {**meta, "backbone": {"kind": "rnn"}}))
    with pytest.raises(ValueError, match="backbone.kind must be one of"):
        _ = weird.backbone


def test_provenances_differ_only_on_keys_both_have():
    a = {"settings_digest": "d1", "seed": 0, "code_commit": None}
    assert not provenance_differs(a, {"settings_digest": "d1", "seed": 0, "code_commit": "c"})
    assert not provenance_differs(a, {})
    assert provenance_differs(a, {"seed": 1})


def test_a_loaded_model_reads_its_record_alike(tmp_path):
    """eval.trained.Trained (what sft / dpo scoring hold) gives the same record: backbone and provenance."""
    from eval.trained import Trained

    meta = fake_record("sft", "sft", 3, 5, "mdlm")
    trained = Trained("stage3", tmp_path / "runs" / "sft" / "model", None, meta, None, tmp_path / "tokenizer")
    assert trained.backbone == "dit" and trained.record.backbone == {"kind": "dit"}
    assert trained.record.provenance == {"settings_digest": "sft-digest", "seed": 5, "code_commit": "c0ffee"}
    assert trained.record.run == "sft" and trained.record.steps is None
