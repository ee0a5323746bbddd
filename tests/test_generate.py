"""eval/generate.py on a hand-made tiny model folder and on stand-in networks with fixed logits: the prompt never
changes, no mask survives, commits follow the schedule, each remasking rule picks what its formula says,
blocks fill left to right, the EOS guard, batching does not change answers, stopping at the answer is exact,
the recordings and the command line."""

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.denoiser import Denoiser
from eval.generate import build_parser, generate, main, prompt_seeds
from eval.samplers import REMASKING, block_plan, commit_schedule, remask
from eval.trained import Trained, load_trained
from eval.views import canvas_segments
from preprocess.tokenizer import train_bpe
from train.checkpoint import save_model
from train.model import DiffusionTransformer, ModelConfig
from train.noise import LogLinearNoise

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def write_folder(folder, tok_dir, tok, objective="mdlm", seed=0, eos_bias=0.0):
    """A random tiny diffusion model folder (weights far from uniform; ``eos_bias`` favours EOS)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, cond_dim=16)
    model = DiffusionTransformer(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        model.output_layer.linear.bias[tok.eos_token_id] += eos_bias
    meta = {
        "model": cfg.to_dict(),
        "objective": objective,
        "noise": {"type": "loglinear", "eps": 1e-3},
        "stage": 3,
        "prefix_len": 0,
        "target_len": 16,
        "vocab_size": len(tok),
        "mask_id": tok.mask_token_id,
        "eos_id": tok.eos_token_id,
        "bos_id": tok.eos_token_id,
        "tokenizer": str(tok_dir),
        "run": "single",
        "kind": "single",
        "method": "keybert",
    }
    save_model(folder, model.state_dict(), meta)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    texts = [
        "def f(x): return x + 1",
        "The quick brown fox jumps over the lazy dog.",
        "import os and sys for the path of a module",
        "What is a list? A list holds items.",
    ] * 20
    tok = train_bpe([texts], vocab_size=300, min_frequency=1)
    tok_dir = root / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    return {
        "root": root,
        "tok": tok,
        "model": write_folder(root / "model", tok_dir, tok),
        "sedd": write_folder(root / "sedd", tok_dir, tok, objective="sedd", seed=1),
        "eosy": write_folder(root / "eosy", tok_dir, tok, seed=2, eos_bias=1.5),
    }


@pytest.fixture(scope="module")
def trained(project):
    return load_trained(project["model"])


def with_model(trained, model):
    """``trained`` with another network, its denoiser view wrapping it (as load_trained builds it)."""
    m = trained.meta
    denoiser = Denoiser(model, m["objective"], m["mask_id"], m["prefix_len"])
    return Trained(**{**trained.__dict__, "model": model, "denoiser": denoiser})


def prompts_of(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


TEXTS = ["def f(x):", "The quick brown fox", "import os", "The lazy dog."]


def commits(trajectory, mask_id):
    """Per step, the canvas offsets committed at that step."""
    out = []
    for before, after in zip(trajectory, trajectory[1:]):
        out.append([i for i, (a, b) in enumerate(zip(before, after)) if a == mask_id and b != mask_id])
    return out


# ----------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("n,steps", [(8, 8), (8, 3), (12, 5), (5, 12), (1, 4), (32, 32)])
def test_commit_schedule_sums_and_is_even(n, steps):
    k = commit_schedule(n, steps)
    assert len(k) == steps and sum(k) == n and max(k) - min(k) <= 1
    assert all(sum(k[:s]) == s * n // steps for s in range(steps + 1))  # cumulative = floor(s n / S)


def test_commit_schedule_spreads_the_remainder():
    """Not LLaDA's get_num_transfer_tokens, which gives the remainder to the first steps (3, 3, 2 and 3, 3, 2, 2, 2)."""
    assert commit_schedule(8, 3) == [2, 3, 3] and commit_schedule(12, 5) == [2, 2, 3, 2, 3]
    assert commit_schedule(12, 4) == [3, 3, 3, 3]  # steps divide n: n / S each, as LLaDA


def test_block_plan_errors_name_the_numbers():
    assert block_plan(12, 6, 4) == (3, 2) and block_plan(12, 5, None) == (1, 5)
    with pytest.raises(ValueError, match="gen_length 12 is not divisible by block_length 5"):
        block_plan(12, 6, 5)
    with pytest.raises(ValueError, match="steps 7 is not divisible by the number of blocks 3"):
        block_plan(12, 7, 4)


# ---------------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("remasking", REMASKING)
@pytest.mark.parametrize("block_length", [None, 4])
@pytest.mark.parametrize("temperature,eos_guard", [(0.0, False), (0.8, True)])
def test_prompt_never_changes_and_no_mask_survives(trained, project, remasking, block_length, temperature, eos_guard):
    tok, mask = project["tok"], trained.meta["mask_id"]
    prompts = prompts_of(tok, TEXTS)
    inner, seen = trained.model, []

    class Spy(torch.nn.Module):  # the prompt the network sees at every call is the clean one
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x, sigma, prefix_len=0, select=None):
            seen.append(x.clone())
            return self.inner(x, sigma, prefix_len, select=select)

    spy = with_model(trained, Spy())
    results = generate(
        spy,
        prompts,
        gen_length=12,
        steps=6,
        remasking=remasking,
        block_length=block_length,
        temperature=temperature,
        eos_guard=eos_guard,
        record=True,
        batch_size=2,
    )
    clean = {tuple(p) for p in prompts}
    assert seen and all(
        tuple(row[: len(p)].tolist()) in clean for x in seen for row in x for p in prompts if len(p) == len(row) - 12
    )
    for p, r in zip(prompts, results):
        assert r["prompt_ids"] == p and len(r["ids"]) == 12 and mask not in r["ids"]
        assert len(r["trajectory"]) == 7 and r["trajectory"][0] == [mask] * 12 and r["trajectory"][-1] == r["ids"]
        assert r["answer"] == project["tok"].decode(r["answer_ids"], skip_special_tokens=True).strip()


def test_prompt_change_is_caught(trained, project, monkeypatch):
    """The end-of-generation check fires when a step writes into the prompt."""
    real = trained.denoiser.masked_x0_log_probs

    def corrupt(x, *args):
        out = real(x, *args)
        x[:, 0] = 7  # a bug that writes into the prompt in place
        return out

    monkeypatch.setattr(trained.denoiser, "masked_x0_log_probs", corrupt)
    with pytest.raises(AssertionError, match=r"changed the clean prefix \(the prompt\)"):
        generate(trained, [[10, 11, 12]], gen_length=4, steps=2)


@pytest.mark.parametrize("remasking", REMASKING)
@pytest.mark.parametrize(
    "gen_length,steps,block_length", [(12, 12, None), (12, 5, None), (8, 12, None), (12, 6, 4), (12, 3, 4)]
)
def test_commits_per_step_follow_the_schedule(trained, project, remasking, gen_length, steps, block_length):
    prompts = prompts_of(project["tok"], TEXTS[:2])
    results = generate(
        trained, prompts, gen_length, steps, remasking, block_length, temperature=0.7, record=True, stop_at_answer=False
    )
    blocks, per_block = block_plan(gen_length, steps, block_length)
    expected = commit_schedule(gen_length // blocks, per_block) * blocks
    for r in results:
        assert [len(c) for c in commits(r["trajectory"], trained.meta["mask_id"])] == expected
        assert r["network_calls"] == sum(1 for k in expected if k)  # a step that commits nothing calls nothing


@pytest.mark.parametrize("remasking", REMASKING)
def test_blocks_fill_left_to_right(trained, project, remasking):
    mask = trained.meta["mask_id"]
    results = generate(
        trained,
        prompts_of(project["tok"], TEXTS),
        12,
        6,
        remasking,
        block_length=4,
        temperature=1.0,
        record=True,
        stop_at_answer=False,
    )
    for r in results:
        for canvas in r["trajectory"]:
            for b in range(2):
                later_started = any(t != mask for t in canvas[4 * (b + 1) : 4 * (b + 2)])
                if later_started:
                    assert mask not in canvas[4 * b : 4 * (b + 1)]


def test_network_is_told_the_masked_share(trained, project):
    """sigma = sigma_bar(t*) with move(t*) = masked share of the canvas (clamped to t* <= 1)."""
    seen = []
    inner = trained.model

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x, sigma, prefix_len=0, select=None):
            seen.append((int((x[0, -8:] == trained.meta["mask_id"]).sum()), float(sigma[0])))
            return self.inner(x, sigma, prefix_len, select=select)

    generate(with_model(trained, Spy()), [[5, 6, 7]], 8, 4, block_length=4, stop_at_answer=False)
    noise = LogLinearNoise(1e-3)
    assert [m for m, _ in seen] == [8, 6, 4, 2]
    for masked, sigma in seen:
        t = min(1.0, masked / 8 / (1 - 1e-3))
        assert sigma == pytest.approx(float(noise.total(torch.tensor(t, dtype=torch.float64))), rel=1e-5)


@pytest.mark.parametrize("which", ["model", "sedd"])
def test_masked_log_probs_equal_the_denoiser(project, which):
    """One call with select gives the denoiser's p_theta(x_0 | x_t) at the masked positions, for both objectives."""
    t = load_trained(project[which])
    mask = t.meta["mask_id"]
    x = torch.tensor([[5, 6, 7, mask, 9, mask, mask], [8, mask, 7, 6, mask, mask, 1]])
    sigma = torch.tensor([0.7, 1.3])
    with torch.no_grad():
        mine = t.denoiser.masked_x0_log_probs(x, sigma, x == mask)
        ref = t.denoiser.x0_log_probs(x, sigma)[x == mask]
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(mine))
    assert torch.allclose(mine[finite], ref[finite], atol=1e-5)


@pytest.mark.parametrize("remasking", REMASKING)
@pytest.mark.parametrize("block_length,temperature,eos_guard", [(None, 0.0, False), (4, 0.8, True), (None, 1.0, True)])
@pytest.mark.parametrize("which", ["eosy", "sedd"])
def test_generate_is_remask_over_the_prompt_as_prefix(project, which, remasking, block_length, temperature, eos_guard):
    """generate() on a batch of prompts of mixed lengths equals the sampler library's remask run on each prompt
    alone as the clean prefix, with the generator prompt_seeds gives it: the same ids, network calls and
    trajectory (the all-mask canvas, then one per step)."""
    t = load_trained(project[which])
    prompts = prompts_of(project["tok"], TEXTS + ["def g(y):"]) + [[5, 6, 7]] * 2
    kwargs = dict(remasking=remasking, temperature=temperature, eos_guard=eos_guard)
    results = generate(t, prompts, 12, 6, block_length=block_length, seed=4, record=True, batch_size=3, **kwargs)
    for prompt, row_seed, r in zip(prompts, prompt_seeds(prompts, 4), results):
        canvases = [[t.meta["mask_id"]] * 12]
        with torch.no_grad():
            ids, calls = remask(
                t.denoiser,
                t.noise,
                torch.tensor([prompt]).reshape(1, len(prompt)),
                12,
                6,
                [torch.Generator().manual_seed(row_seed)],
                block_size=block_length,
                eos_id=t.meta["eos_id"],
                stop_at_answer=True,
                on_step=lambda info, seen=canvases: seen.append(info["canvas"][0].tolist()),
                **kwargs,
            )
        assert r["row_seed"] == row_seed
        assert (r["ids"], r["network_calls"], r["trajectory"]) == (ids[0].tolist(), int(calls[0]), canvases)


def test_proposals_are_gumbel_max_from_the_row_generator(trained):
    """One step commits the whole canvas with its proposals, x0_i = argmax_y [log p_i(y) / T + g_iy], g = -log(-log
    U) with U [G, V] the row generator's first float64 uniforms: the draw in the additive form, computed here."""
    mask, temperature, seed = trained.meta["mask_id"], 0.7, 11
    prompt = torch.tensor([[5, 6, 7]])
    x = torch.cat([prompt, torch.full((1, 8), mask)], 1)
    with torch.no_grad():
        ids, _ = remask(
            trained.denoiser,
            trained.noise,
            prompt,
            8,
            1,
            [torch.Generator().manual_seed(seed)],
            temperature=temperature,
        )
        sigma = trained.noise.total(torch.ones(1, dtype=torch.float64)).float()
        log_p = trained.denoiser.masked_x0_log_probs(x, sigma, x == mask).double()
    uniform = torch.rand(log_p.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert ids[0].tolist() == (log_p / temperature - torch.log(-torch.log(uniform))).argmax(-1).tolist()


# ------------------------------------------------------------------------------------ stand-in networks
V, MASK, EOS = 6, 5, 4


class FixedLogits(torch.nn.Module):
    """Returns a fixed logit row per canvas position, whatever the input (the prompt gets zeros)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, x, sigma, prefix_len=0, select=None):
        B, L = x.shape
        G = self.table.shape[0]
        logits = torch.cat([torch.zeros(L - G, V), self.table]).expand(B, L, V)
        return logits[select] if select is not None else logits


def stand_in(table):
    meta = {"objective": "mdlm", "mask_id": MASK, "eos_id": EOS, "prefix_len": 0}
    model = FixedLogits(table)
    return Trained(
        name="stage3",
        model_dir=Path("fixed"),
        model=model,
        meta=meta,
        loaded_tokenizer=None,
        tokenizer_dir=None,
        noise=LogLinearNoise(),
        denoiser=Denoiser(model, "mdlm", MASK, 0),
    )


def hand_confidence(table, remasking):
    """c_i from the formulas, in plain Python, for a fixed table (argmax proposals)."""
    out = []
    for row in table:
        logits = [v if y != MASK else -math.inf for y, v in enumerate(row)]
        z = sum(math.exp(v) for v in logits if v > -math.inf)
        p = sorted((math.exp(v) / z for v in logits if v > -math.inf), reverse=True)
        out.append(
            {"low_confidence": p[0], "margin": p[0] - p[1], "entropy": sum(q * math.log(q) for q in p if q > 0)}[
                remasking
            ]
        )
    return out


# token 0 is every row's argmax; the three rules rank the rows 2 1 3 0 (p1), 2 3 1 0 (margin), 2 1 0 3 (-H)
TABLE = [
    [1.7, 1.1, 1.1, -1.5, 0.7, 0.0],
    [3.1, 1.9, 0.5, 2.4, 1.1, 0.0],
    [2.6, -0.3, -1.4, 1.4, 1.1, 0.0],
    [3.6, 2.6, 2.0, 2.6, 2.4, 0.0],
]


@pytest.mark.parametrize("remasking", ["low_confidence", "margin", "entropy"])
def test_each_rule_commits_its_most_confident_position_first(remasking):
    c = hand_confidence(TABLE, remasking)
    expected = sorted(range(4), key=lambda i: (-c[i], i))
    r = generate(stand_in(TABLE), [[0, 1]], gen_length=4, steps=4, remasking=remasking, record=True)[0]
    assert [c[0] for c in commits(r["trajectory"], MASK)] == expected
    assert r["ids"] == [0, 0, 0, 0]


def test_orders_differ_between_rules():
    """The table separates the rules (else the test above would not tell them apart)."""
    orders = {
        rule: sorted(range(4), key=lambda i: -hand_confidence(TABLE, rule)[i])
        for rule in ("low_confidence", "margin", "entropy")
    }
    assert len({tuple(o) for o in orders.values()}) == 3


def test_random_remasking_is_uniform_over_positions():
    counts = [0] * 4
    for seed in range(400):
        r = generate(stand_in(TABLE), [[0, 1]], 4, 4, "random", seed=seed, record=True)[0]
        counts[commits(r["trajectory"], MASK)[0][0]] += 1
    assert min(counts) > 70  # 100 expected each


# answer tokens (0) at the left are unsure; EOS on the right is nearly certain
EOS_TABLE = [[0.5, 0.0, 0.0, 0.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 0.0, 0.0, 6.0, 0.0]] * 5


def eos_left_of_mask(canvas):
    return any(t == EOS and MASK in canvas[:i] for i, t in enumerate(canvas))


@pytest.mark.parametrize("steps", [8, 4, 2])
def test_eos_guard_never_commits_eos_with_a_mask_to_its_left(steps):
    plain = generate(stand_in(EOS_TABLE), [[0]], 8, steps, record=True, stop_at_answer=False)[0]
    assert any(eos_left_of_mask(c) for c in plain["trajectory"])  # LLaDA's problem: EOS first, on the right
    guarded = generate(stand_in(EOS_TABLE), [[0]], 8, steps, eos_guard=True, record=True, stop_at_answer=False)[0]
    assert not any(eos_left_of_mask(c) for c in guarded["trajectory"])
    assert guarded["ids"][:3] == [0, 0, 0] and EOS in guarded["ids"]
    if steps == 8:  # one commit per step: every EOS waits until it is the leftmost mask
        assert guarded["ids"] == [0, 0, 0] + [EOS] * 5


def test_stop_at_answer_is_exact_and_saves_calls(project):
    t = load_trained(project["eosy"])
    prompts = prompts_of(project["tok"], TEXTS)
    for remasking in REMASKING:
        for block_length in (None, 4):
            kwargs = dict(gen_length=16, steps=16, remasking=remasking, block_length=block_length, temperature=1.0)
            stop = generate(t, prompts, stop_at_answer=True, **kwargs)
            full = generate(t, prompts, stop_at_answer=False, **kwargs)
            for a, b in zip(stop, full):
                assert a["answer_ids"] == b["answer_ids"] and a["answer"] == b["answer"]
                assert a["network_calls"] <= b["network_calls"] == 16
    stop = generate(t, prompts, 16, 16, eos_guard=True)
    assert any(r["network_calls"] < 16 for r in stop) and all(t.meta["eos_id"] in r["ids"] for r in stop)


# ----------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("remasking", ["random", "low_confidence", "entropy"])
@pytest.mark.parametrize("block_length", [None, 4])
def test_batched_prompts_of_different_lengths_equal_one_at_a_time(trained, project, remasking, block_length):
    prompts = prompts_of(project["tok"], TEXTS + ["def g(y):", "import sys"])
    assert len({len(p) for p in prompts}) >= 3
    kwargs = dict(gen_length=8, steps=4, remasking=remasking, block_length=block_length, temperature=0.9, seed=3)
    batched = generate(trained, prompts, batch_size=2, **kwargs)
    alone = [generate(trained, [p], **kwargs)[0] for p in prompts]
    assert [r["index"] for r in batched] == list(range(len(prompts)))
    assert [r["ids"] for r in batched] == [r["ids"] for r in alone]
    assert [r["prompt_ids"] for r in batched] == prompts


def test_empty_prompt_generates_unconditionally(trained):
    r = generate(trained, [[], [5, 6]], 8, 4, temperature=1.0)
    assert r[0]["prompt_ids"] == [] and len(r[0]["ids"]) == 8 and trained.meta["mask_id"] not in r[0]["ids"]


def test_seeds_depend_on_prompt_seed_and_repeat():
    a = prompt_seeds([[1, 2], [3], [1, 2]], 0)
    assert a[0] != a[2] and a[0] == prompt_seeds([[1, 2]], 0)[0] and a[0] != prompt_seeds([[1, 2]], 1)[0]
    assert prompt_seeds([[3], [1, 2]], 0) == [a[1], a[0]]


def test_repeated_prompt_gives_distinct_samples_when_temperature_positive(trained):
    r = generate(trained, [[5, 6, 7]] * 3, 12, 6, temperature=1.0)
    assert len({tuple(x["ids"]) for x in r}) > 1
    r0 = generate(trained, [[5, 6, 7]] * 2, 12, 6, temperature=0.0)
    assert r0[0]["ids"] == r0[1]["ids"]  # argmax is deterministic


def test_ar_model_and_mask_in_prompt_are_refused(trained):
    with pytest.raises(ValueError, match="mask token"):
        generate(trained, [[1, trained.meta["mask_id"]]], 4, 4)
    ar = Trained(**{**trained.__dict__, "meta": {**trained.meta, "objective": "ar"}, "noise": None})
    with pytest.raises(ValueError, match="autoregressive"):
        generate(ar, [[1]], 4, 4)


# --------------------------------------------------------------------------------------------- recording
def test_canvas_segments(project):
    tok = project["tok"]
    ids = tok("The fox", add_special_tokens=False)["input_ids"]
    segs = canvas_segments(tok, ids + [tok.mask_token_id] * 2 + [tok.eos_token_id], tok.mask_token_id, tok.eos_token_id)
    assert segs == [("text", "The fox"), ("mask", "░░"), ("eos", "∎")]


def test_record_gif_and_html(project, tmp_path):
    from PIL import Image

    for suffix in ("gif", "html"):
        out = tmp_path / f"t.{suffix}"
        main(
            [
                "--model-dir",
                str(project["model"]),
                "--prompt",
                "The fox",
                "--prompt",
                "import os",
                "--gen-length",
                "12",
                "--steps",
                "6",
                "--block-length",
                "4",
                "--record",
                str(out),
                "--out",
                str(tmp_path / f"{suffix}.jsonl"),
                "--device",
                "cpu",
            ]
        )
        if suffix == "gif":
            with Image.open(out) as img:
                assert img.n_frames == 7
        else:
            page = out.read_text()
            data = json.loads(
                re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1)
            )
            assert len(data["frames"]) == 7 and len(data["frames"][0]) == 2
            assert data["frames"][0][0] == [["mask", "░" * 12]]
            assert "<input id=\"slider\"" in page and "http" not in page  # self-contained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gif.jsonl", "html.jsonl", "t.gif", "t.html"]


def test_show_redraws_when_forced(project, capsys, tmp_path):
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompt",
            "The fox",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--show",
            "always",
            "--out",
            str(tmp_path / "answers.jsonl"),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("\x1b[2J\x1b[H") == 4 and "░" in out and "step 4/4" in out


def test_show_auto_stays_quiet_off_a_terminal(project, capsys):
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompt",
            "The fox",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--show",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert "\x1b[2J" not in out and json.loads(out)["answer_ids"] is not None


# --------------------------------------------------------------------------------------------- the command
def test_help_documents_every_option():
    proc = subprocess.run(
        [sys.executable, "-m", "eval.generate", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for action in build_parser()._actions:
        assert action.help
        for flag in action.option_strings:
            assert flag in proc.stdout
    for word in ("low_confidence", "margin", "entropy", "EOS guard", "k_s = floor", "Gumbel"):
        assert word in proc.stdout


def test_cli_prompt_and_prompts(project, tmp_path):
    out = tmp_path / "a.jsonl"
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompt",
            "What is a list?",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--system",
            "Be brief.",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["prompt"] == "What is a list?" and record["messages"][0] == {"role": "system", "content": "Be brief."}
    from common.chat import prompt_ids

    assert record["prompt_ids"] == prompt_ids(project["tok"], record["messages"])
    for key in ("answer", "ids", "answer_ids", "steps", "network_calls", "seconds", "remasking"):
        assert key in record

    prompts = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "The fox"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "import os"},
        {"prompt": "The fox"},
    ]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    out2 = tmp_path / "b.jsonl"
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompts",
            str(prompts),
            "--gen-length",
            "8",
            "--steps",
            "8",
            "--block-length",
            "4",
            "--remasking",
            "margin",
            "--temperature",
            "0.5",
            "--batch-size",
            "2",
            "--eos-guard",
            "--out",
            str(out2),
            "--device",
            "cpu",
        ]
    )
    records = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[1]["messages"] == lines[1]["messages"] and records[2]["prompt"] == "import os"
    assert all(r["remasking"] == "margin" and r["block_length"] == 4 and r["eos_guard"] for r in records)


def test_cli_raw_prompt_and_bad_input(project, tmp_path, capsys):
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompt",
            "The fox",
            "--raw-prompt",
            "--gen-length",
            "4",
            "--steps",
            "4",
            "--device",
            "cpu",
        ]
    )
    record = json.loads(capsys.readouterr().out)
    assert record["prompt_ids"] == project["tok"]("The fox", add_special_tokens=False)["input_ids"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no"}\n')
    with pytest.raises(SystemExit, match=r"^eval.generate: .*bad.jsonl:2: expected an object"):
        main(["--model-dir", str(project["model"]), "--prompts", str(bad), "--device", "cpu"])
    with pytest.raises(SystemExit):
        main(["--model-dir", str(project["model"]), "--prompt", "x", "--gen-length", "12", "--block-length", "5"])


def test_cli_chat_keeps_the_dialogue(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\nand again\n\nnot read\n"))
    out = tmp_path / "chat.jsonl"
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--chat",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("assistant> ")]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(printed) == 2 and len(records) == 2
    first, second = records
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == first["answer"] and second["messages"][2]["content"] == "and again"
    assert printed[0] == f"assistant> {first['answer']}"


def test_masked_lm_backbone_generates_through_the_same_call(project, tmp_path):
    """A tiny transformers BERT behind model(x, sigma, prefix_len, select) (train/backbones.py): it generates,
    keeps the prompt, fills every mask, batches exactly, and its select view equals the denoiser's."""
    from train.backbones import backbone_meta, build_backbone

    tok = project["tok"]
    spec = {
        "kind": "masked_lm",
        "name": None,
        "config": {
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    }
    torch.manual_seed(0)
    model = build_backbone(spec, len(tok), "tiny", 0.0, False)
    meta = {
        "objective": "mdlm",
        "noise": {"type": "loglinear"},
        "stage": 3,
        "prefix_len": 0,
        "target_len": 16,
        "vocab_size": len(tok),
        "mask_id": tok.mask_token_id,
        "eos_id": tok.eos_token_id,
        "bos_id": tok.eos_token_id,
        "tokenizer": str(project["root"] / "tokenizer"),
        **backbone_meta(model, spec),
    }
    save_model(tmp_path / "bert", model.state_dict(), meta)
    t = load_trained(tmp_path / "bert")
    prompts = prompts_of(tok, TEXTS)
    kwargs = dict(gen_length=8, steps=4, block_length=4, temperature=1.0, eos_guard=True)
    batched = generate(t, prompts, **kwargs)
    alone = [generate(t, [p], **kwargs)[0] for p in prompts]
    assert [r["ids"] for r in batched] == [r["ids"] for r in alone]
    assert all(r["prompt_ids"] == p and tok.mask_token_id not in r["ids"] for r, p in zip(batched, prompts))
    mask = tok.mask_token_id
    x = torch.tensor([[5, 6, mask, 9, mask], [8, mask, 7, mask, mask]])
    with torch.no_grad():
        mine = t.denoiser.masked_x0_log_probs(x, torch.ones(2), x == mask)
        ref = t.denoiser.x0_log_probs(x, torch.ones(2))[x == mask]
    finite = torch.isfinite(ref)
    assert torch.allclose(mine[finite], ref[finite], atol=1e-5)


# ------------------------------------------------------------------- empty prompts, defaults, positions, chat
def write_bert_folder(folder, project, positions):
    """A tiny transformers BERT model folder whose backbone takes ``positions`` tokens (no generation record)."""
    from train.backbones import backbone_meta, build_backbone

    tok = project["tok"]
    spec = {
        "kind": "masked_lm",
        "name": None,
        "config": {
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": positions,
        },
    }
    torch.manual_seed(0)
    model = build_backbone(spec, len(tok), "tiny", 0.0, False)
    meta = {
        "objective": "mdlm",
        "noise": {"type": "loglinear"},
        "stage": 3,
        "prefix_len": 0,
        "target_len": 16,
        "vocab_size": len(tok),
        "mask_id": tok.mask_token_id,
        "eos_id": tok.eos_token_id,
        "bos_id": tok.eos_token_id,
        "tokenizer": str(project["root"] / "tokenizer"),
        "kind": "sft",
        **backbone_meta(model, spec),
    }
    save_model(folder, model.state_dict(), meta)
    return folder


def records_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_empty_prompt_is_an_empty_user_turn_or_with_raw_prompt_the_empty_context(project, tmp_path):
    """--prompt "" used to end in KeyError: 'messages' (the label of a falsy prompt)."""
    from common.chat import prompt_ids

    out = tmp_path / "empty.jsonl"
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompt",
            "",
            "--prompt",
            "The fox",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--out",
            str(out),
            "--record",
            str(tmp_path / "t.html"),
            "--device",
            "cpu",
        ]
    )
    empty, other = records_of(out)
    assert empty["prompt"] == "" and empty["messages"] == [{"role": "user", "content": ""}]
    assert empty["prompt_ids"] == prompt_ids(project["tok"], empty["messages"]) and len(empty["ids"]) == 8
    assert other["prompt"] == "The fox" and "(empty prompt)" in (tmp_path / "t.html").read_text()

    raw = tmp_path / "raw.jsonl"
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompt",
            "",
            "--raw-prompt",
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--out",
            str(raw),
            "--device",
            "cpu",
        ]
    )
    (record,) = records_of(raw)
    assert record["prompt_ids"] == [] and len(record["ids"]) == 8 and "messages" not in record

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": ""}) + "\n")
    main(
        [
            "--model-dir",
            str(project["model"]),
            "--prompts",
            str(prompts),
            "--gen-length",
            "8",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "f.jsonl"),
            "--device",
            "cpu",
        ]
    )
    assert records_of(tmp_path / "f.jsonl")[0]["messages"] == [{"role": "user", "content": ""}]


def test_a_chat_template_that_cannot_render_the_prompt_is_one_line(project, tmp_path, monkeypatch):
    import common.chat

    def refuse(tokenizer, messages):
        from jinja2 import TemplateError

        raise TemplateError("content must not be empty")

    monkeypatch.setattr(common.chat, "prompt_ids", refuse)
    with pytest.raises(
        SystemExit,
        match=r"^eval.generate: --prompt '': the chat template cannot render it "
        r"\(content must not be empty\); --raw-prompt",
    ):
        main(
            [
                "--model-dir",
                str(project["model"]),
                "--prompt",
                "",
                "--gen-length",
                "8",
                "--steps",
                "4",
                "--device",
                "cpu",
            ]
        )


def test_parser_defaults_mean_from_the_model_folder():
    args = build_parser().parse_args(["--model-dir", "m", "--prompt", "x"])
    assert (args.gen_length, args.steps, args.remasking, args.eos_guard) == (None, None, None, None)
    args = build_parser().parse_args(["--model-dir", "m", "--prompt", "x", "--no-eos-guard"])
    assert args.eos_guard is False


def test_defaults_come_from_the_generation_the_folder_records(project, tmp_path, capsys):
    """An sft folder answers as the pipeline's SFT evaluation does (sft.gen_length, eval_steps, remasking, EOS
    guard on), not with 128 / 128 / no guard; options still win; folders without the record fall back."""
    folder = tmp_path / "sft"
    write_folder(folder, project["root"] / "tokenizer", project["tok"], seed=3)
    meta = json.loads((folder / "config.json").read_text())
    meta["generation"] = {"gen_length": 12, "steps": 6, "remasking": "margin", "eos_guard": True}
    (folder / "config.json").write_text(json.dumps(meta))
    out = tmp_path / "a.jsonl"
    main(["--model-dir", str(folder), "--prompt", "The fox", "--out", str(out), "--device", "cpu"])
    (r,) = records_of(out)
    assert (r["gen_length"], r["steps"], r["remasking"], r["eos_guard"]) == (12, 6, "margin", True)
    assert "gen_length 12, steps 6, remasking margin, eos_guard on from " in capsys.readouterr().err

    main(
        [
            "--model-dir",
            str(folder),
            "--prompt",
            "The fox",
            "--gen-length",
            "8",
            "--steps",
            "8",
            "--remasking",
            "entropy",
            "--no-eos-guard",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    (r,) = records_of(out)
    assert (r["gen_length"], r["steps"], r["remasking"], r["eos_guard"]) == (8, 8, "entropy", False)

    main(["--model-dir", str(project["model"]), "--prompt", "The fox", "--out", str(out), "--device", "cpu"])
    (r,) = records_of(out)
    assert (r["gen_length"], r["steps"], r["remasking"], r["eos_guard"]) == (128, 128, "low_confidence", False)
    assert "records no generation settings" in capsys.readouterr().err

    meta["generation"]["steps"] = "six"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        SystemExit,
        match=re.escape(f"{folder / 'config.json'}: key 'generation.steps' should be an integer >= 1, got 'six'"),
    ):
        main(["--model-dir", str(folder), "--prompt", "The fox", "--device", "cpu"])


def test_train_records_the_sft_generation_settings(tmp_path, monkeypatch):
    """python -m train puts the config's SFT evaluation settings into an sft / dpo folder's config.json."""
    import train.__main__ as train_main
    import train.trainer

    config = tmp_path / "c.yaml"
    config.write_text(
        "blocks: {length: 16}\nruns:\n  base: {kind: single, objective: mdlm, data: wrap}\n"
        "  tuned: {kind: sft, objective: mdlm, init_from: base}\n"
        "sft: {gen_length: 12, eval_steps: 6, eos_guard: false, remasking: margin}\n"
    )
    saved = {}

    class Recorder:  # the trainer's meta as run() (which writes config.json at the end) would see it
        def __init__(self, settings, *args, **kwargs):
            self.meta = {"kind": settings.kind}

        def run(self, on_step=None):
            saved[self.meta["kind"]] = dict(self.meta)
            return 0

    monkeypatch.setattr(train.trainer, "Trainer", Recorder)
    common = ["--config", str(config), "--train-shards", "t", "--val-shards", "v", "--tokenizer", "k"]
    assert train_main.main(common + ["--run", "tuned", "--out", "o", "--init", "runs/base/model"]) == 0
    assert train_main.main(common + ["--run", "base", "--out", "b"]) == 0
    assert saved["sft"]["generation"] == {"gen_length": 12, "steps": 6, "remasking": "margin", "eos_guard": False}
    assert "generation" not in saved["single"]


def test_gen_length_is_capped_at_the_backbone_positions(project, tmp_path, capsys):
    """A 40-position BERT with the fallback 128 masks used to fail in its forward ("exceeds ...
    max_position_embeddings"); now G = 40 - the longest prompt, said on stderr."""
    from common.chat import prompt_ids

    bert = write_bert_folder(tmp_path / "bert", project, positions=40)
    out = tmp_path / "a.jsonl"
    main(
        [
            "--model-dir",
            str(bert),
            "--prompt",
            "The fox",
            "--prompt",
            "import os and sys",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    records = records_of(out)
    longest = max(len(prompt_ids(project["tok"], r["messages"])) for r in records)
    assert all(r["gen_length"] == 40 - longest == len(r["ids"]) for r in records)
    assert (
        f"gen_length 128 capped to {40 - longest}: the longest prompt takes {longest} of the 40 positions of "
        f"the bert backbone of {bert}" in capsys.readouterr().err
    )
    main(
        [
            "--model-dir",
            str(bert),
            "--prompt",
            "The fox",
            "--block-length",
            "4",
            "--gen-length",
            "64",
            "--steps",
            "16",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    (r,) = records_of(out)
    assert (
        r["gen_length"] % 4 == 0
        and len(r["prompt_ids"]) + r["gen_length"] <= 40 < len(r["prompt_ids"]) + r["gen_length"] + 4
    )
    with pytest.raises(
        SystemExit,
        match=r"^eval.generate: prompt 1 \('import os and sys import os and sys.*\) "
        r"takes \d+ of the 40 positions of the bert backbone of .*: no room",
    ):
        main(["--model-dir", str(bert), "--prompt", "import os and sys " * 4, "--device", "cpu"])


def test_chat_past_the_backbone_positions_drops_the_oldest_turns(project, tmp_path, monkeypatch, capsys):
    """A 72-position BERT used to crash on turn 3 (the history past its positions) and write no transcript."""
    bert = write_bert_folder(tmp_path / "bert", project, positions=72)
    turns = ["The fox", "import os", "The lazy dog.", "def f(x):", "What is a list?"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(turns) + "\n"))
    out = tmp_path / "chat.jsonl"
    assert (
        main(
            [
                "--model-dir",
                str(bert),
                "--chat",
                "--system",
                "Be brief.",
                "--gen-length",
                "8",
                "--steps",
                "4",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    records = records_of(out)
    assert len(records) == len(turns) and [r["index"] for r in records] == list(range(len(turns)))
    assert all(len(r["prompt_ids"]) + r["gen_length"] <= 72 for r in records)
    assert "outgrows the 72 positions of the bert backbone of" in err and "dropped the oldest" in err
    last = records[-1]["messages"]
    assert last[0] == {"role": "system", "content": "Be brief."} and last[-1]["content"] == turns[-1]
    assert last[1] != {"role": "user", "content": turns[0]}  # the first turn was dropped, the system kept
    assert [m["role"] for m in last[1:]] == ["user", "assistant"] * ((len(last) - 2) // 2) + ["user"]


def test_chat_turn_too_long_for_the_backbone_is_skipped(project, tmp_path, monkeypatch, capsys):
    bert = write_bert_folder(tmp_path / "bert", project, positions=40)
    monkeypatch.setattr(sys, "stdin", io.StringIO("import os and sys " * 4 + "\nThe fox\n"))
    out = tmp_path / "chat.jsonl"
    main(
        ["--model-dir", str(bert), "--chat", "--gen-length", "16", "--steps", "4", "--out", str(out), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    (record,) = records_of(out)
    assert "of the 40 positions of the bert backbone of" in err and "no room for an answer; the turn is skipped" in err
    assert record["messages"] == [{"role": "user", "content": "The fox"}]
    assert len(record["prompt_ids"]) + record["gen_length"] <= 40


class Interrupting(io.StringIO):
    """stdin whose readline raises KeyboardInterrupt (Ctrl-C) once its lines are used up."""

    def readline(self, *args):
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_chat_transcript_is_written_turn_by_turn(project, tmp_path, monkeypatch, capsys):
    """Ctrl-C after two turns keeps both on disk; a crash in turn 2 keeps turn 1 (the transcript used to be
    written only at the end)."""
    import eval.chat

    out = tmp_path / "chat.jsonl"
    monkeypatch.setattr(sys, "stdin", Interrupting("hello there\nand again\n"))
    argv = [
        "--model-dir",
        str(project["model"]),
        "--chat",
        "--gen-length",
        "8",
        "--steps",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    try:
        code = main(argv)
    except KeyboardInterrupt:  # let a regression fail this test, not end the pytest session
        pytest.fail("Ctrl-C in --chat escaped eval.generate.main")
    assert code == 130
    assert f"interrupted; 2 finished turn(s) in {out}" in capsys.readouterr().err
    assert [r["messages"][-1]["content"] for r in records_of(out)] == ["hello there", "and again"]

    real, calls = eval.chat.generate, []

    def crash_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            assert len(records_of(out)) == 1  # turn 1 is on disk before turn 2 starts
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(eval.chat, "generate", crash_on_the_second)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\nthird\n"))
    with pytest.raises(RuntimeError, match="out of memory"):
        main(argv)
    assert [r["messages"][-1]["content"] for r in records_of(out)] == ["first"]
