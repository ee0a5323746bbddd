"""eval/harness.py, the cascade-dllm model of lm-evaluation-harness, on hand-made tiny model folders: the AR
log-likelihood is the exact sum of log-probs, a one-token continuation under a time-blind network is -log p with
zero standard error, choices share their draws, the standard error shrinks as 1/sqrt(mc_num), generation stops at
the until string, bad folders are one-line errors, and a local multiple-choice and generation task run through
lm_eval.simple_evaluate and through the command line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.harness import CascadeLM, HarnessError, cut_at, draw_seed, main
from preprocess.tokenizer import train_bpe
from train.checkpoint import save_model
from train.model import DiffusionTransformer, ModelConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A red apple and a green pear sit on the table.",
    "What colour is the sky? The sky is blue.",
    "Two plus two is four. Three plus three is six.",
] * 20
MC_DOCS = [
    {"question": "The sky is", "choices": [" blue.", " green.", " a table."], "answer": 0},
    {"question": "Two plus two is", "choices": [" four.", " six.", " blue."], "answer": 0},
    {"question": "The quick brown", "choices": [" fox", " apple", " pear"], "answer": 0},
    {"question": "A red apple and a green", "choices": [" dog.", " pear", " sky"], "answer": 1},
]
GEN_DOCS = [{"prompt": "The sky is", "target": "blue"}, {"prompt": "Two plus two is", "target": "four"}]


def write_folder(folder, tok_dir, tok, objective="mdlm", seed=0, time_conditioning=True, **meta_extra):
    """A random tiny DiT model folder (causal for objective ar), trained length 24."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=len(tok),
        dim=32,
        n_layers=1,
        n_heads=2,
        cond_dim=16,
        causal=objective == "ar",
        time_conditioning=time_conditioning,
    )
    model = DiffusionTransformer(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    meta = {
        "model": cfg.to_dict(),
        "objective": objective,
        "noise": {"type": "loglinear", "eps": 1e-3},
        "stage": 3,
        "prefix_len": 0,
        "target_len": 24,
        "vocab_size": len(tok),
        "mask_id": tok.mask_token_id,
        "eos_id": tok.eos_token_id,
        "bos_id": tok.eos_token_id,
        "tokenizer": str(tok_dir),
        "run": "single",
        "kind": "ar" if objective == "ar" else "single",
        "method": "keybert",
        **meta_extra,
    }
    save_model(folder, model.state_dict(), meta)
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tasks(folder: Path) -> Path:
    """A multiple-choice and a generate_until task over local JSONL files (lm_eval's json dataset builder)."""
    folder.mkdir(exist_ok=True)
    mc = write_jsonl(folder / "mc.jsonl", MC_DOCS)
    gen = write_jsonl(folder / "gen.jsonl", GEN_DOCS)
    (folder / "toy_mc.yaml").write_text(
        f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""
    )
    (folder / "toy_gen.yaml").write_text(
        f"""task: toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gen}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""
    )
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    tok = train_bpe([TEXTS], vocab_size=300, min_frequency=1)
    tok_dir = root / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    return {
        "root": root,
        "tok": tok,
        "mdlm": write_folder(root / "mdlm" / "model", tok_dir, tok),
        "blind": write_folder(root / "blind" / "model", tok_dir, tok, seed=1, time_conditioning=False),
        "ar": write_folder(root / "ar" / "model", tok_dir, tok, objective="ar", seed=2),
        "stage": write_folder(root / "cascade" / "stage2", tok_dir, tok, seed=3, kind="cascade", stage=2),
        "tasks": write_tasks(root / "tasks"),
    }


@pytest.fixture(scope="module")
def mdlm(project):
    return CascadeLM(path=str(project["mdlm"]), mc_num=32, batch_size=4, device="cpu")


def ids(project, text):
    return project["tok"](text, add_special_tokens=False)["input_ids"]


def test_ar_loglikelihood_is_the_exact_sum_of_log_probs(project):
    lm = CascadeLM(path=str(project["ar"]), batch_size=2, device="cpu")
    context, continuation = ids(project, "The sky is"), ids(project, " blue. The quick")
    value, greedy, se = lm.score([(context, continuation, 0)])[0]
    x = torch.tensor([[lm.trained.meta["bos_id"], *context, *continuation]])
    with torch.no_grad():
        log_p = lm.trained.model(x[:, :-1]).double().log_softmax(-1)[0]
    start = len(context)  # logits row i predicts token i + 1 of [bos ; c ; y]
    by_hand = sum(float(log_p[start + i, token]) for i, token in enumerate(continuation))
    argmax = all(int(log_p[start + i].argmax()) == token for i, token in enumerate(continuation))
    assert value == pytest.approx(by_hand, rel=1e-6) and se == 0.0 and greedy == argmax


def test_one_token_under_a_time_blind_network_is_minus_log_p_with_zero_error(project):
    lm = CascadeLM(path=str(project["blind"]), mc_num=8, device="cpu")
    context = ids(project, "Two plus two is")
    token = ids(project, " four")[0]
    value, greedy, se = lm.score([(context, [token], 0)])[0]
    x = torch.tensor([[*context, lm.trained.meta["mask_id"]]])
    with torch.no_grad():
        log_p = lm.trained.denoiser.x0_log_probs(x, lm.trained.noise.total(torch.ones(1)))[0, -1].double()
    assert value == pytest.approx(float(log_p[token]), abs=1e-4)
    assert se == pytest.approx(0.0, abs=1e-6)
    assert greedy == (int(log_p.argmax()) == token)


def test_choices_share_their_draws(mdlm, project):
    """Same context: the draws are the same (identical continuations, identical estimates), and the difference
    between two choices varies less over seeds than with independent draws."""
    context = ids(project, "What colour is the sky? The sky")
    first, second = ids(project, " is blue."), ids(project, " is green.")
    key = draw_seed(0, context, "context")
    a, b = mdlm.score([(context, first, key), (context, first, key)])
    assert a == b
    shared, independent = [], []
    for seed in range(12):
        key = draw_seed(seed, context, "context")
        x, y = mdlm.score([(context, first, key), (context, second, key)])
        shared.append(x[0] - y[0])
        x, y = mdlm.score([(context, first, key), (context, second, key + 1)])
        independent.append(x[0] - y[0])
    assert torch.tensor(shared).var() < 0.5 * torch.tensor(independent).var()


def test_standard_error_shrinks_as_one_over_sqrt_mc_num(project):
    context, continuation = ids(project, "The quick brown fox"), ids(project, " jumps over the lazy dog.")
    errors = {}
    for k in (8, 32):
        lm = CascadeLM(path=str(project["mdlm"]), mc_num=k, device="cpu")
        errors[k] = sum(lm.score([(context, continuation, seed)])[0][2] for seed in range(6)) / 6
    assert errors[8] / errors[32] == pytest.approx(2.0, rel=0.35)


def test_generation_stops_at_the_until_string(mdlm, project):
    class Request:
        def __init__(self, args):
            self.args = args

    free = mdlm.generate_until([Request(("The sky is", {"max_gen_toks": 12, "until": []}))])[0]
    assert len(free) >= 4, free
    stop = free[2:4]  # a string the uncut answer holds
    cut = mdlm.generate_until([Request(("The sky is", {"max_gen_toks": 12, "until": [stop]}))])[0]
    assert cut == free[: free.index(stop)] and stop not in cut
    assert cut_at("a. b. c", ["x", ". "]) == "a"


def local_tasks_only(monkeypatch):
    """lm_eval's command line indexes its ~10,000 built-in task files (~10 s) before it builds the model; the
    in-process command tests need only the local ones."""
    import lm_eval.tasks

    class LocalTasks(lm_eval.tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTasks)


def test_bad_folders_are_one_line_errors_naming_the_path(project, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(HarnessError, match=f"^{missing}: no such model folder"):
        CascadeLM(path=str(missing))
    with pytest.raises(HarnessError, match=f"^{project['stage']}: a cascade stage folder"):
        CascadeLM(path=str(project["stage"]), device="cpu")
    run = project["stage"].parent
    with pytest.raises(HarnessError, match=f"^{run}: a cascade run folder"):
        CascadeLM(path=str(run))
    with pytest.raises(HarnessError, match="did you mean"):
        CascadeLM(path=str(project["mdlm"].parent))
    with pytest.raises(HarnessError, match="unknown key"):
        CascadeLM(path=str(project["mdlm"]), mcnum=3)
    local_tasks_only(monkeypatch)
    command = ["run", "--model", "cascade-dllm", "--model_args", f"path={missing}", "--tasks", "toy_mc"]
    status = main([*command, "--include_path", str(project["tasks"]), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("cascade-lm-eval: error: ") and str(missing) in err[-1]


def test_local_tasks_through_simple_evaluate(project):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="cascade-dllm",
        model_args=f"path={project['mdlm']},mc_num=4",
        tasks=["toy_mc", "toy_gen"],
        task_manager=TaskManager(include_path=str(project["tasks"]), include_defaults=False),
        batch_size=4,
        device="cpu",
    )
    assert 0.0 <= results["results"]["toy_mc"]["acc,none"] <= 1.0
    assert "exact_match,remove_whitespace" in results["results"]["toy_gen"] or any(
        k.startswith("exact_match") for k in results["results"]["toy_gen"]
    )
    summary = results["config"]["mc_standard_error"]
    assert summary["mc_num"] == 4 and summary["tasks"]["toy_mc"]["requests"] == sum(len(d["choices"]) for d in MC_DOCS)
    assert 0 < summary["tasks"]["toy_mc"]["mean"] <= summary["tasks"]["toy_mc"]["max"]


def test_command_line_runs_the_local_tasks_and_writes_the_summary(project, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "eval.harness", "run", "--model", "cascade-dllm"]
    command += ["--model_args", f"path={project['ar']}", "--tasks", "toy_mc", "--include_path", str(project["tasks"])]
    command += ["--batch_size", "4", "--device", "cpu", "--output_path", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    [written] = out.rglob("results_*.json")
    result = json.loads(written.read_text())
    assert math.isfinite(result["results"]["toy_mc"]["acc,none"])
    assert result["config"]["mc_standard_error"]["tasks"]["toy_mc"]["max"] == 0.0  # AR: exact


def test_the_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cascade-lm-eval"] == "eval.harness:main"
