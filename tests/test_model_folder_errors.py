"""Bad model folders and bad eval.generate input end in one line naming the path, line or option, not a traceback:
a missing folder, a data or transformers folder given as a model folder, a truncated model.safetensors, NaN / inf
weights (train.checkpoint.read_weights), an option out of range, a malformed --prompts line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_generate import write_folder

from eval.generate import main
from preprocess.tokenizer import train_bpe
from train.checkpoint import load_model, read_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    tok = train_bpe(
        [["The quick brown fox jumps over the lazy dog.", "import os and sys"] * 20], vocab_size=300, min_frequency=1
    )
    tok.save_pretrained(str(root / "tokenizer"))
    data = root / "data" / "sft" / "64" / "train"  # what a data folder holds: shards, no config.json
    data.mkdir(parents=True)
    (data / "shard_00000.parquet").write_bytes(b"PAR1")
    (data / "shard_00000.stats.json").write_text("{}")
    return {
        "root": root,
        "model": write_folder(root / "model", root / "tokenizer", tok),
        "data": data,
        "tokenizer": root / "tokenizer",
    }


def broken_copy(folders, tmp_path, name="broken"):
    """A copy of the good model folder whose model.safetensors the test then spoils."""
    import shutil

    folder = tmp_path / name
    shutil.copytree(folders["model"], folder)
    return folder


def generate(*argv):
    return main([*argv, "--device", "cpu"])


# ------------------------------------------------------------------------------------------ the folder
def test_missing_folder_file_and_data_folder_name_the_path(folders, tmp_path):
    missing = tmp_path / "runs" / "sft" / "model"
    with pytest.raises(FileNotFoundError, match=f"^{missing}: no such folder; expected a model folder"):
        load_model(missing)
    afile = tmp_path / "model.safetensors"
    afile.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=f"^{afile}: a file, not a folder"):
        load_model(afile)
    data = folders["data"]
    with pytest.raises(
        FileNotFoundError,
        match=f"^{data / 'config.json'}: no config.json; .* found shard_00000.parquet, shard_00000.stats.json",
    ):
        load_model(data)


def test_a_transformers_folder_is_not_a_model_folder(folders, tmp_path):
    hf = tmp_path / "bert"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(
        ValueError,
        match=f"^{hf / 'config.json'}: not a model folder written by python -m train "
        f"\\(its config.json has no 'objective'",
    ):
        load_model(hf)


@pytest.mark.parametrize("which", ["missing", "data", "tokenizer"])
def test_generate_names_a_bad_model_folder_in_one_line(folders, tmp_path, which):
    folder = {"missing": tmp_path / "nowhere", "data": folders["data"], "tokenizer": folders["tokenizer"]}[which]
    with pytest.raises(SystemExit) as caught:
        generate("--model-dir", str(folder), "--prompt", "hi")
    message = str(caught.value.code)
    assert message.startswith(f"eval.generate: --model-dir {folder}: {folder}") and "\n" not in message


def test_the_command_prints_no_traceback(tmp_path):
    missing = tmp_path / "runs" / "sft" / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.generate", "--model-dir", str(missing), "--prompt", ""],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"eval.generate: --model-dir {missing}: {missing}: no such folder; "
        f"expected a model folder written by python -m train (runs/{{run}}/"
        f"model or runs/{{run}}/stage{{k}})"
    ]


# ----------------------------------------------------------------------------------------- the weights
@pytest.mark.parametrize("keep", [0, 4, 0.5])
def test_truncated_weights_name_the_file(folders, tmp_path, keep):
    folder = broken_copy(folders, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(
        ValueError, match=f"^{weights}: cannot read the weights \\(.*\\); the file .* is truncated or corrupt"
    ):
        load_model(folder)
    with pytest.raises(SystemExit, match=f"^eval.generate: --model-dir {folder}: {weights}: cannot read"):
        generate("--model-dir", str(folder), "--prompt", "hi")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_name_the_file_and_the_tensor(folders, tmp_path, bad):
    folder = broken_copy(folders, tmp_path)
    weights = folder / "model.safetensors"
    state = read_weights(weights)
    names = sorted(state)
    state[names[3]] = state[names[3]].clone()
    state[names[3]].view(-1)[1] = bad
    state[names[5]] = torch.full_like(state[names[5]], bad)
    save_file(state, str(weights))
    with pytest.raises(
        ValueError,
        match=f"^{weights}: non-finite weights: tensor '{names[3]}' has 1 NaN/inf "
        f"value\\(s\\) of \\d+ \\(1 more tensor\\(s\\) too: \\['{names[5]}'\\]\\)",
    ):
        load_model(folder)
    with pytest.raises(SystemExit, match=f"^eval.generate: --model-dir {folder}: {weights}: non-finite weights"):
        generate("--model-dir", str(folder), "--prompt", "hi")


def test_finite_weights_whose_sum_overflows_load(tmp_path):
    """The cheap check sums each tensor; a float16 sum past 65504 is inf though every value is finite."""
    path = tmp_path / "model.safetensors"
    save_file({"big": torch.full((64,), 60000.0, dtype=torch.float16), "ids": torch.arange(4)}, str(path))
    state = read_weights(path)
    assert not torch.isfinite(state["big"].sum()) and torch.isfinite(state["big"]).all()


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--temperature", "-1", "--temperature must be a finite number >= 0 (0 = argmax), got -1.0"),
        ("--temperature", "nan", "--temperature must be a finite number >= 0"),
        ("--gen-length", "0", "--gen-length must be >= 1, got 0"),
        ("--steps", "-3", "--steps must be >= 1, got -3"),
        ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ],
)
def test_options_out_of_range_are_one_line(folders, capsys, option, value, message):
    with pytest.raises(SystemExit) as caught:
        generate("--model-dir", str(folders["model"]), "--prompt", "hi", option, value)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"python -m eval.generate: error: {message}")
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "ok"}\n{"prompt": "no"\n', r"p.jsonl:2: not JSON \("),
        ('{"prompt": "ok"}\n\n{"text": "no"}\n', r"p.jsonl:3: expected an object with 'messages' or 'prompt'"),
        ('["a list"]\n', r"p.jsonl:1: expected an object with 'messages' or 'prompt'"),
        ('{"prompt": "a", "messages": []}\n', r"p.jsonl:1: expected an object with 'messages' or 'prompt' \(one of"),
        ('{"messages": []}\n', r"p.jsonl:1: 'messages' must be a non-empty list of objects"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
            r"p.jsonl:1: the last message is the assistant's; end with a user turn",
        ),
        ('{"prompt": 3}\n', r"p.jsonl:1: 'prompt' must be a string, got 3"),
        ("\n\n", r"p.jsonl: no prompts \(an empty file\)"),
    ],
)
def test_malformed_prompts_lines_name_the_file_and_line(folders, tmp_path, text, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(text)
    with pytest.raises(SystemExit) as caught:
        generate("--model-dir", str(folders["model"]), "--prompts", str(prompts), "--gen-length", "4", "--steps", "4")
    code = str(caught.value.code)
    assert re.match(f"^eval.generate: {re.escape(str(tmp_path))}/{message}", code) and "\n" not in code


def test_missing_prompts_file_and_messages_with_raw_prompt(folders, tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(SystemExit, match=f"^eval.generate: {missing}: cannot read the prompts \\(No such file"):
        generate("--model-dir", str(folders["model"]), "--prompts", str(missing))
    prompts = tmp_path / "m.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(SystemExit, match=f"^eval.generate: {prompts}, prompt 2: --raw-prompt needs plain prompts"):
        generate(
            "--model-dir",
            str(folders["model"]),
            "--prompts",
            str(prompts),
            "--raw-prompt",
            "--gen-length",
            "4",
            "--steps",
            "4",
        )
