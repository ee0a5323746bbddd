"""Two configs in one checkout: configs/tiny.yaml and configs/sft.yaml's twin run one after the other in the same
working directory, in both orders, and neither changes, invalidates or misleads the other's outputs (data folders
are named by their settings, runs live under runs/{profile}/, a model folder carries its tokenizer). A model
folder works from any directory and refuses a tokenizer that is not its own."""

import json
import shutil

import pytest
from conftest import (
    ROOT,
    TINY,
    TINY_GENERATE,
    dry_run_counts,
    generate,
    layout,
    merged_config,
    snakemake,
    tree_digest,
    twin,
)

from common.layout import Layout

SFT = twin("sft")
SFT_GENERATE = (
    "--prompt",
    "Reverse the words: locals str",
    "--gen-length",
    "8",
    "--steps",
    "4",
    "--temperature",
    "1",
    "--no-eos-guard",
    "--fill-canvas",
)


@pytest.mark.slow
def test_the_second_config_leaves_the_first_valid(sft_twin, tmp_path):
    """tiny, then the sft twin (which also has a run named ar, and a 512-token BPE with other settings): tiny's
    runs, tables and generations are byte for byte what they were, and tiny has nothing to rerun."""
    workspace, before = sft_twin
    assert tree_digest(workspace, "runs/tiny", "results/tiny") == before["files"]
    assert generate(workspace / "runs/tiny/single/model", tmp_path, *TINY_GENERATE) == before["generate"]
    assert dry_run_counts(workspace, TINY) == {}
    # both runs named ar stand side by side; the tokenizer (same corpus, same settings) was built once, for both
    tiny_ar = json.loads((workspace / "runs/tiny/ar/model/config.json").read_text())
    sft_ar = json.loads((workspace / "runs/sft-twin/ar/model/config.json").read_text())
    assert tiny_ar["run"] == sft_ar["run"] == "ar" and tiny_ar["settings_digest"] != sft_ar["settings_digest"]
    assert tiny_ar["tokenizer_sha256"] == sft_ar["tokenizer_sha256"] and layout(TINY).tokenizer == layout(SFT).tokenizer


def test_data_folders_are_shared_exactly_when_their_settings_agree():
    """The demo and tiny differ in corpus size and vocabulary: no data folder in common. tiny and the sft twin
    agree on corpus and tokenizer: the same folders. A setting changes only the folders downstream of it."""
    demo, tiny, sft = layout((ROOT / "config.yaml",)), layout(TINY), layout(SFT)
    assert {demo.raw_root, demo.tokenizer, demo.annot_root}.isdisjoint({tiny.raw_root, tiny.tokenizer, tiny.annot_root})
    assert (tiny.raw_root, tiny.tokenizer) == (sft.raw_root, sft.tokenizer)
    other = Layout(merged_config(TINY) | {"annotate": {**merged_config(TINY)["annotate"], "max_doc_chars": 99}})
    assert (other.raw_root, other.tokenizer) == (tiny.raw_root, tiny.tokenizer)
    assert other.annot_root != tiny.annot_root and other.stages_root != tiny.stages_root


@pytest.mark.slow
def test_the_first_config_rerun_after_the_second_leaves_the_second_valid(sft_twin, tmp_path):
    """The other order: with the sft twin built, tiny retrains its run ar (the name both configs use): the twin's
    runs, tables and generations do not change and it has nothing to rerun."""
    workspace, _ = sft_twin
    assert dry_run_counts(workspace, SFT) == {}
    files = tree_digest(workspace, "runs/sft-twin", "results/sft-twin")
    answers = generate(workspace / "runs/sft-twin/sft/model", tmp_path, *SFT_GENERATE)
    snakemake(workspace, "runs/tiny/ar/model/model.safetensors", "--forcerun", "train", configfiles=TINY)
    assert tree_digest(workspace, "runs/sft-twin", "results/sft-twin") == files
    assert generate(workspace / "runs/sft-twin/sft/model", tmp_path, *SFT_GENERATE) == answers
    assert dry_run_counts(workspace, SFT) == {}


@pytest.mark.slow
def test_a_model_folder_is_self_contained_and_checks_its_tokenizer(sft_twin, tmp_path):
    """Copied anywhere, a model folder generates as it did in place; with another tokenizer swapped in, it is
    refused with the file named, not decoded wrong."""
    workspace, _ = sft_twin
    moved = tmp_path / "moved"
    shutil.copytree(workspace / "runs/sft-twin/sft/model", moved)
    assert generate(moved, tmp_path, *SFT_GENERATE) == generate(
        workspace / "runs/sft-twin/sft/model", tmp_path, *SFT_GENERATE
    )
    # another tokenizer of the same size, the case that would decode silently wrong: two tokens' ids swapped
    path = moved / "tokenizer" / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(tokenizer))
    from train.checkpoint import model_tokenizer_dir, read_meta

    with pytest.raises(ValueError, match="does not match the model"):
        model_tokenizer_dir(moved, read_meta(moved))
