r"""Answer prompts with a masked diffusion LM by iterative unmasking (LLaDA-style generation).

    python -m eval.generate --model-dir runs/demo/single/model --prompt "What is a list?" --gen-length 64 --steps 64
    python -m eval.generate --model-dir M --prompts prompts.jsonl --block-length 16 --out answers.jsonl
    python -m eval.generate --model-dir M --chat --show          # a dialogue on stdin, the canvas redrawn live
    python -m eval.generate --model-dir M --prompt "Hi" --record trajectory.gif   # or .html

The prompt is rendered with the chat template (common/chat.py: the tokenizer's own, else DEFAULT_TEMPLATE) with
the assistant generation prompt appended; after it comes a canvas of G = --gen-length mask tokens. Each of
--steps steps calls the network once on [prompt ; canvas], proposes a token for every masked position of the
current block and commits a fixed number of them; committed tokens never change. The answer is the canvas cut
at its first EOS (common.chat.answer_text). Works for every model folder eval.trained.load_trained loads
(mdlm or sedd; an AR folder is refused: use ``eval.sample --sampler ar``). An empty prompt (``--prompt ""``) is
an empty user turn, which the chat template renders and the model answers; with --raw-prompt it is the empty
context: unconditional generation.

Defaults (options left out). --gen-length, --steps, --remasking and --eos-guard / --no-eos-guard default to the
model folder's config.json "generation", which python -m train records for sft and dpo runs: the settings the
pipeline's SFT evaluation answers with (sft.gen_length, sft.eval_steps, sft.remasking, sft.eos_guard), so the
command answers as rule evaluate_sft does. A folder without it (base runs, older folders) gets gen_length 128,
128 steps, low_confidence, no EOS guard. stderr says which defaults were taken and from where.

Positions. A masked_lm backbone takes at most P = max_position_embeddings tokens (the DiT has no such limit): G
is capped to P - (the longest prompt's tokens) (with blocks: rounded down to a multiple of B), said on stderr; a
prompt that leaves no room is an error. In --chat, a dialogue that outgrows P loses its oldest user turns and
their answers (said on stderr) until prompt + G fits; a single turn too long for any answer is skipped.

The step, in formulas (x the canvas, M the masked positions of the current block, p = p_theta(x_0 | x_t)):

  network   at a masked position both objectives give p(y) = softmax_{y != m}(logits)_y (mdlm: SUBS; sedd:
            the score renormalised over y != m, where the 1/expm1(sigma) scale cancels), so one call with
            ``select`` = M projects only those positions to the vocabulary.
  noise     the network is told sigma = sigma_bar(t*) with move(t*) = 1 - exp(-sigma_bar(t*)) = the share of
            the canvas still masked (eval.samplers.time_of_mask_share, the schedule's ``time_of_move``): the
            state a uniformly noised training row is in. Models trained without time conditioning ignore it.
  proposal  x0_i = argmax_y [log p_i(y) / T + g_iy], g = -log(-log U) Gumbel noise from the prompt's own
            generator, in float64 (Gumbel-max: x0_i ~ p_i^(1/T) renormalised); T = 0: x0_i = argmax_y p_i(y).
  schedule  block b's n = B tokens are committed over its S_b = steps / blocks steps, k_s at step s:
                k_s = floor((s + 1) n / S_b) - floor(s n / S_b),     sum_s k_s = n
            (LLaDA's get_num_transfer_tokens spread evenly; steps beyond n commit nothing and call nothing).
  remasking which k_s of the masked positions are committed (each with its proposal), the k_s largest of:
                random          c_i = u_i, u_i ~ U(0, 1)                   ancestral: a uniform random subset
                low_confidence  c_i = p_i(x0_i)                            the most probable proposals first
                margin          c_i = p_i(y1) - p_i(y2)                    top-1 minus top-2 probability
                entropy         c_i = -H(p_i) = sum_y p_i(y) log p_i(y)    the most peaked distributions first
            ties go to the leftmost position. c uses the untempered p (as LLaDA).

EOS guard (``--eos-guard``). An SFT model is trained on answers filled with EOS up to the row length (common.chat,
LLaDA's EOS padding), so EOS at the right end of the canvas is its most confident proposal, and
low-confidence remasking commits those EOS first; the answer is then pushed into whatever is left and comes out
too short (LLaDA's low-confidence EOS problem). With the guard, a position whose proposal is EOS and that has a
masked position anywhere to its left (before this step) gets c_i = -inf: an EOS is committed only as the leftmost
mask, i.e. once everything before it is written. When the schedule asks for more positions than have a finite
c_i, the extra ones are committed with their best non-EOS proposal (the same Gumbel draw with EOS excluded),
chosen by that proposal's confidence; so no EOS is ever committed with a mask to its left.

Stopping (exact). The answer is fixed once some committed EOS has no mask to its left: committed tokens never
change and everything after the first EOS is cut. Such a row leaves the batch (its masks are filled with EOS)
and costs no more network calls; its answer is the one a full run gives. ``--fill-canvas`` keeps denoising
every position instead (the raw ids then hold the model's tokens after the EOS).

Blocks (``--block-length B``, semi-autoregressive): the canvas is filled in G / B blocks left to right, each
with steps / (G / B) steps; later blocks stay masked meanwhile. G must be divisible by B and steps by G / B.

Randomness. Each prompt has its own generator, seeded by sha256(seed, its token ids, how many identical prompts
came before it in the list): an answer depends on the model, the options, the seed and the prompt, not on its
position, its batch or the batch size. (The r-th repeat of a prompt gets its own stream, so repeats are
distinct samples when T > 0.) Per step a row draws (masked positions of the block) x V Gumbel numbers (T > 0)
and, for ``random``, one uniform per masked position: counts fixed by the schedule, never by the network.

Batches group prompts of equal token length (no padding: the DiT has no attention mask, so a padded row would
change the answer); the output is in input order. JSONL output, one object per prompt:

    {"index": 0, "prompt": "...", "messages": [...], "answer": "...", "prompt_ids": [...], "ids": [canvas],
     "answer_ids": [...], "gen_length": 64, "steps": 64, "block_length": 64, "remasking": "low_confidence",
     "temperature": 0.0, "eos_guard": false, "seed": 0, "network_calls": 41, "seconds": 0.12}

``network_calls`` counts the forward passes that computed this prompt's row; ``seconds`` is its batch's wall
time divided by the batch size. With --chat, --out is the transcript: the same object per turn ("messages" the
dialogue the model saw), each line written and flushed as its turn ends, so Ctrl-C or a crash keeps every
finished turn.

Errors. A missing folder, a folder that is not a model folder (data, tokenizer), a truncated or non-finite
model.safetensors (train.checkpoint.read_weights), a bad --prompts line or an option out of range end the
command with one line naming the path, line or option (``eval.generate: ...``), not a traceback.

--show redraws the canvas in the terminal after every step (masks as ░, EOS as ∎) when stdout is a terminal
(``--show always``: also when it is not). --record F.gif (Pillow) / F.html (self-contained page with a slider)
writes the trajectory, steps + 1 frames (the all-mask canvas, then one per step), of every prompt of the run
(stacked; meant for a few prompts); in --chat, the last turn's. Files are written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REMASKING = ("random", "low_confidence", "margin", "entropy")
MASK_GLYPH, EOS_GLYPH = "░", "∎"


# --------------------------------------------------------------------------------------------- the schedule
def transfer_schedule(n: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps so that all ``n`` are committed, spread evenly:
    k_s = floor((s + 1) n / steps) - floor(s n / steps)."""
    if steps < 1 or n < 0:
        raise ValueError(f"need steps >= 1 and n >= 0, got steps={steps}, n={n}")
    return [(s + 1) * n // steps - s * n // steps for s in range(steps)]


def block_plan(gen_length: int, steps: int, block_length: int | None) -> tuple[int, int]:
    """(number of blocks, steps per block), with the divisibility checks of semi-autoregressive generation."""
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    block_length = block_length or gen_length
    if block_length < 1 or gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not divisible by block_length {block_length}")
    blocks = gen_length // block_length
    if steps % blocks:
        raise ValueError(
            f"steps {steps} is not divisible by the number of blocks {blocks} "
            f"(gen_length {gen_length} / block_length {block_length}); steps are split evenly"
        )
    return blocks, steps // blocks


def prompt_seeds(prompt_id_lists: list[list[int]], seed: int) -> list[int]:
    """One 63-bit seed per prompt: sha256 of (seed, the r-th repeat of this prompt, its token ids)."""
    seen: dict[tuple, int] = {}
    seeds = []
    for ids in prompt_id_lists:
        key = tuple(int(i) for i in ids)
        repeat = seen.get(key, 0)
        seen[key] = repeat + 1
        digest = hashlib.sha256(f"{seed}/{repeat}/{','.join(map(str, key))}".encode()).digest()
        seeds.append(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return seeds


# ---------------------------------------------------------------------------------------------- one step
def masked_log_probs(
    model, x: torch.Tensor, sigma: torch.Tensor, prefix_len: int, select: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """log p_theta(x_0 | x_t) [N, V] at the ``select``ed (masked) positions, row-major: log_softmax of the
    logits with the mask entry at -inf (SUBS; for sedd the renormalised score, the same numbers). A network
    that ignores ``select`` and returns [B, L, V] is indexed here."""
    logits = model(x, sigma, prefix_len, select=select)
    if logits.dim() == 3:
        logits = logits[select]
    logits = logits.float().clone()
    logits[:, mask_id] = float("-inf")
    return logits.log_softmax(dim=-1)


def gumbel(generators: list[torch.Generator], rows: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, *shape] in float64, row r drawn from generators[r] alone."""
    out = [torch.rand(shape, generator=g, dtype=torch.float64, device=device) for g in generators]
    uniform = torch.stack(out) if out else torch.empty((rows, *shape), dtype=torch.float64, device=device)
    return -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))


def confidence(remasking: str, log_p: torch.Tensor, token: torch.Tensor, uniform: torch.Tensor | None):
    """c_i of the docstring for log_p [..., V] and the committed candidate ``token`` [...]."""
    if remasking == "random":
        return uniform
    if remasking == "low_confidence":
        return log_p.gather(-1, token[..., None]).squeeze(-1).exp()
    p = log_p.exp()
    if remasking == "margin":
        top = p.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if remasking == "entropy":
        return (p * log_p.clamp_min(-1e30)).nan_to_num(0.0).sum(-1)  # 0 log 0 = 0
    raise ValueError(f"unknown remasking {remasking!r}; choose one of {REMASKING}")


def choose(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [R, m]: per row the k positions with the largest (eligible, score), ties to the leftmost."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    order = order.gather(-1, (~eligible).gather(-1, order).long().argsort(dim=-1, stable=True))
    pick = torch.zeros_like(eligible)
    return pick.scatter(-1, order[:, :k], True)


def unmask_step(log_p, k, remasking, temperature, generators, positions, canvas_first_mask, eos_id, eos_guard):
    """Proposals and the k positions to commit, for R rows with m masked block positions each.

    log_p [R, m, V]; positions [R, m] (canvas offsets of the masked positions, increasing); canvas_first_mask
    [R] (offset of each row's leftmost mask). Returns (pick Bool[R, m], tokens Long[R, m])."""
    rows, m, vocab = log_p.shape
    device = log_p.device
    logits = log_p.double()
    if temperature > 0:
        logits = logits / temperature + gumbel(generators, rows, (m, vocab), device)
    proposal = logits.argmax(-1)
    uniform = None
    if remasking == "random":
        uniform = torch.stack([torch.rand(m, generator=g, dtype=torch.float64, device=device) for g in generators])
    score = confidence(remasking, log_p, proposal, uniform)
    eligible = torch.ones_like(proposal, dtype=torch.bool)
    tokens = proposal
    if eos_guard:
        guarded = (proposal == eos_id) & (positions > canvas_first_mask[:, None])
        alternative = logits.clone()
        alternative[..., eos_id] = float("-inf")
        alternative = alternative.argmax(-1)
        tokens = torch.where(guarded, alternative, proposal)
        score = torch.where(guarded, confidence(remasking, log_p, alternative, uniform), score)
        eligible = ~guarded
    return choose(score.double(), eligible, k), tokens


# ------------------------------------------------------------------------------------------- generation
def _answered(canvas: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """Bool [R]: some committed EOS has no mask to its left (the answer can no longer change)."""
    length = canvas.shape[1]
    pos = torch.arange(length, device=canvas.device).expand_as(canvas)
    first_eos = torch.where(canvas == eos_id, pos, length).min(-1).values
    first_mask = torch.where(canvas == mask_id, pos, length).min(-1).values
    return (first_eos < length) & (first_eos < first_mask)


def _generate_batch(
    trained,
    prompts: torch.Tensor,
    generators,
    gen_length,
    steps,
    blocks,
    remasking,
    temperature,
    eos_guard,
    stop_at_answer,
    record,
    on_step,
    indices,
):
    meta = trained.meta
    mask_id, eos_id, prefix_len = meta["mask_id"], meta["eos_id"], meta["prefix_len"]
    from eval.samplers import time_of_mask_share

    batch, plen = prompts.shape
    device = prompts.device
    x = torch.cat([prompts, torch.full((batch, gen_length), mask_id, dtype=torch.long, device=device)], dim=1)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    calls = [0] * batch
    batch_calls = 0
    trajectory = [[x[r, plen:].tolist()] for r in range(batch)] if record else None
    n_blocks, steps_per_block = blocks
    block_length = gen_length // n_blocks
    schedule = transfer_schedule(block_length, steps_per_block)
    step = 0
    for b in range(n_blocks):
        lo, hi = plen + b * block_length, plen + (b + 1) * block_length
        for k in schedule:
            step += 1
            rows = active.nonzero().squeeze(-1)
            if k and len(rows):
                xa = x[rows]
                masked_block = torch.zeros_like(xa, dtype=torch.bool)
                masked_block[:, lo:hi] = xa[:, lo:hi] == mask_id
                m = int(masked_block[0].sum())
                if not (masked_block.sum(-1) == m).all() or m < k:
                    raise AssertionError("rows of a batch left the shared unmasking schedule")
                share = (xa[:, plen:] == mask_id).double().mean(-1)
                sigma = trained.noise.total(time_of_mask_share(trained.noise, share)).float()
                log_p = masked_log_probs(trained.model, xa, sigma, prefix_len, masked_block, mask_id)
                batch_calls += 1
                for r in rows.tolist():
                    calls[r] += 1
                positions = masked_block[:, plen:].nonzero()[:, 1].view(len(rows), m)
                canvas_first_mask = (xa[:, plen:] == mask_id).int().argmax(-1)
                pick, tokens = unmask_step(
                    log_p.view(len(rows), m, -1),
                    k,
                    remasking,
                    temperature,
                    [generators[r] for r in rows.tolist()],
                    positions,
                    canvas_first_mask,
                    eos_id,
                    eos_guard,
                )
                canvas = xa[:, plen:]
                canvas.scatter_(-1, positions, torch.where(pick, tokens, canvas.gather(-1, positions)))
                if stop_at_answer:
                    done = _answered(canvas, mask_id, eos_id)
                    canvas[done] = torch.where(canvas[done] == mask_id, eos_id, canvas[done])
                    active[rows[done]] = False
                x[rows] = xa  # the whole row: a step that wrote into the prompt is caught below
            if record:
                for r in range(batch):
                    trajectory[r].append(x[r, plen:].tolist())
            if on_step is not None:
                on_step({"step": step, "steps": steps, "block": b, "indices": indices, "canvas": x[:, plen:]})
    if not torch.equal(x[:, :plen], prompts):
        raise AssertionError("generation changed the prompt")
    if (x[:, plen:] == mask_id).any():
        raise AssertionError("a mask token survived the last step")
    return x[:, plen:], calls, batch_calls, trajectory


def answer_conversations(
    trained,
    conversations: list[list[dict]],
    gen_length: int,
    steps: int,
    remasking: str,
    eos_guard: bool,
    batch_size: int,
) -> list[dict]:
    """The pipeline's answers to held-out conversations (evaluate_sft, evaluate_dpo): each message list through the
    chat template (common.chat.prompt_ids, tokenized as training rows are), then generate() at temperature 0 with
    seed 0, so the SFT and DPO tables answer alike."""
    from common.chat import prompt_ids

    prompts = [prompt_ids(trained.tokenizer, messages) for messages in conversations]
    return generate(
        trained,
        prompts,
        gen_length,
        steps,
        remasking=remasking,
        temperature=0.0,
        seed=0,
        batch_size=batch_size,
        eos_guard=eos_guard,
    )


def generate(
    trained,
    prompt_id_lists: list[list[int]],
    gen_length: int,
    steps: int,
    remasking: str = "low_confidence",
    block_length: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    eos_guard: bool = False,
    record: bool | None = None,
    batch_size: int | None = None,
    stop_at_answer: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Answer every prompt (token ids, chat template already applied); one dict per prompt, in input order:

    ids (the canvas, gen_length tokens), answer_ids (cut before the first EOS), answer (common.chat.answer_text,
    when the model has a tokenizer), prompt_ids, network_calls (forward passes over this row), batch_calls
    (forward passes of its batch), seconds (batch wall time / batch size), seed (the row's own), and the options;
    with ``record``: trajectory, steps + 1 canvases (all masks, then after each step).

    ``batch_size``: prompts per forward pass (default: all prompts of one token length). ``stop_at_answer``:
    a row whose answer is final leaves the batch (see the module docstring; exact). ``on_step(info)`` is called
    after every step with {step, steps, block, indices (input positions of the batch rows), canvas [R, G]}.
    """
    if trained.meta["objective"] == "ar" or trained.noise is None:
        raise ValueError(
            f"{trained.model_dir}: an autoregressive model; generate left to right with "
            f"`python -m eval.sample --sampler ar`"
        )
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; choose one of {REMASKING}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    blocks = block_plan(gen_length, steps, block_length)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask_id = trained.meta["mask_id"]
    for i, ids in enumerate(prompt_id_lists):
        if mask_id in ids:
            raise ValueError(f"prompt {i} contains the mask token {mask_id}")
    device = next(trained.model.parameters()).device
    seeds = prompt_seeds(prompt_id_lists, seed)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(prompt_id_lists):
        groups.setdefault(len(ids), []).append(i)
    results: list[dict | None] = [None] * len(prompt_id_lists)
    tokenizer = getattr(trained, "tokenizer", None)
    eos_id = trained.meta["eos_id"]
    for members in groups.values():
        size = batch_size or len(members)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            prompts = torch.tensor([list(prompt_id_lists[i]) for i in chunk], dtype=torch.long, device=device)
            prompts = prompts.reshape(len(chunk), len(prompt_id_lists[chunk[0]]))  # also an empty prompt
            generators = [torch.Generator(device=device).manual_seed(seeds[i]) for i in chunk]
            began = time.perf_counter()
            with torch.no_grad():
                out, calls, batch_calls, trajectory = _generate_batch(
                    trained,
                    prompts,
                    generators,
                    gen_length,
                    steps,
                    blocks,
                    remasking,
                    temperature,
                    eos_guard,
                    stop_at_answer,
                    record,
                    on_step,
                    chunk,
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - began) / len(chunk)
            for row, i in enumerate(chunk):
                ids = out[row].tolist()
                answer_ids = ids[: ids.index(eos_id)] if eos_id in ids else ids
                result = {
                    "index": i,
                    "prompt_ids": list(map(int, prompt_id_lists[i])),
                    "ids": ids,
                    "answer_ids": answer_ids,
                    "gen_length": gen_length,
                    "steps": steps,
                    "block_length": gen_length // blocks[0],
                    "remasking": remasking,
                    "temperature": temperature,
                    "eos_guard": eos_guard,
                    "stop_at_answer": stop_at_answer,
                    "seed": seed,
                    "row_seed": seeds[i],
                    "network_calls": calls[row],
                    "batch_calls": batch_calls,
                    "seconds": seconds,
                }
                if tokenizer is not None:
                    from common.chat import answer_text

                    result["answer"] = answer_text(tokenizer, ids)
                if record:
                    result["trajectory"] = trajectory[row]
                results[i] = result
    return results


# ------------------------------------------------------------------------------------- showing the canvas
def canvas_segments(tokenizer, ids: list[int], mask_id: int, eos_id: int) -> list[tuple[str, str]]:
    """The canvas as (kind, text) runs: ("text", decoded run of tokens), ("mask", one glyph per mask),
    ("eos", one glyph per EOS). Runs of ordinary tokens are decoded together, so multi-byte characters split
    over byte-level tokens come out whole."""
    segments: list[tuple[str, str]] = []
    run: list[int] = []

    def flush():
        if run:
            segments.append(("text", tokenizer.decode(run, skip_special_tokens=True) if tokenizer else str(run)))
            run.clear()

    for token in ids:
        if token == mask_id or token == eos_id:
            flush()
            kind, glyph = ("mask", MASK_GLYPH) if token == mask_id else ("eos", EOS_GLYPH)
            if segments and segments[-1][0] == kind:
                segments[-1] = (kind, segments[-1][1] + glyph)
            else:
                segments.append((kind, glyph))
        else:
            run.append(int(token))
    flush()
    return segments


def terminal_text(segments, color: bool = True) -> str:
    """ANSI text: masks dim, EOS dim cyan."""
    if not color:
        return "".join(text for _, text in segments)
    style = {"text": "", "mask": "\x1b[2m", "eos": "\x1b[2;36m"}
    return "".join(f"{style[kind]}{text}\x1b[0m" if style[kind] else text for kind, text in segments)


class TerminalShow:
    """on_step callback redrawing every row of the batch: clear the screen, home, the header, each canvas."""

    def __init__(self, tokenizer, mask_id, eos_id, stream=None, labels: list[str] | None = None):
        self.tokenizer, self.mask_id, self.eos_id = tokenizer, mask_id, eos_id
        self.stream = stream or sys.stdout
        self.labels = labels

    def __call__(self, info: dict) -> None:
        lines = [f"\x1b[2J\x1b[Hstep {info['step']}/{info['steps']}  block {info['block'] + 1}"]
        for row, index in enumerate(info["indices"]):
            label = self.labels[index] if self.labels else f"#{index}"
            segments = canvas_segments(self.tokenizer, info["canvas"][row].tolist(), self.mask_id, self.eos_id)
            lines += ["", f"\x1b[1m{label}\x1b[0m", terminal_text(segments)]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


def _trajectory_frames(tokenizer, trajectories: list[list[list[int]]], mask_id, eos_id):
    """[frame][prompt] -> segments."""
    n = len(trajectories[0])
    return [[canvas_segments(tokenizer, t[f], mask_id, eos_id) for t in trajectories] for f in range(n)]


def _font(size: int):
    from PIL import ImageFont

    for name in (
        "DejaVuSansMono.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
        "LiberationMono-Regular.ttf",
        "Menlo.ttc",
        "Consolas.ttf",
    ):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _cells(segments, columns: int) -> list[list[tuple[str, str]]]:
    """Wrap (kind, text) segments into lines of at most ``columns`` (kind, char) cells; newlines break."""
    lines: list[list[tuple[str, str]]] = [[]]
    for kind, text in segments:
        for ch in text:
            if ch == "\n":
                lines.append([])
                continue
            if len(lines[-1]) >= columns:
                lines.append([])
            lines[-1].append((kind, "\t" if ch == "\t" else ch))
    return lines


def write_gif(path, tokenizer, trajectories, labels, mask_id, eos_id, columns: int = 80, frame_ms: int = 150):
    """An animated GIF, one frame per trajectory entry (steps + 1), prompts stacked; masks as grey boxes."""
    from PIL import Image, ImageDraw

    from common.io import atomic_path

    font = _font(14)
    left, top, right, bottom = font.getbbox("M")
    cw, ch = max(right - left, 8), max(bottom - top, 14) + 6
    frames = _trajectory_frames(tokenizer, trajectories, mask_id, eos_id)
    laid = [[_cells(segs, columns) for segs in frame] for frame in frames]
    heights = [max(len(frame[p]) for frame in laid) for p in range(len(trajectories))]  # fixed per prompt
    width = columns * cw + 20
    height = 10 + ch + sum((h + 2) * ch for h in heights) + 10
    colors = {"text": (20, 20, 20), "eos": (0, 130, 150)}
    images = []
    for f, frame in enumerate(laid):
        img = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        draw.text((10, 10), f"step {f}/{len(laid) - 1}", fill=(90, 90, 90), font=font)
        y = 10 + ch
        for p, lines in enumerate(frame):
            y += ch // 2
            draw.text((10, y), labels[p][:columns], fill=(120, 40, 40), font=font)
            y += ch
            for line in lines:
                for c, (kind, char) in enumerate(line):
                    x0 = 10 + c * cw
                    if kind == "mask":
                        draw.rectangle([x0 + 1, y + 2, x0 + cw - 1, y + ch - 4], fill=(200, 200, 200))
                    elif not char.isspace():
                        draw.text((x0, y), char, fill=colors[kind], font=font)
                y += ch
            y += (heights[p] - len(lines)) * ch + ch // 2
        images.append(img.convert("P", palette=Image.ADAPTIVE, colors=16))
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, 1500)]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,
            disposal=1,
            optimize=False,
        )


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
pre {{ white-space: pre-wrap; font: 15px/1.5 monospace; border: 1px solid #ddd; padding: .7em; }}
.mask {{ color: #bbb; }} .eos {{ color: #08a; }} .label {{ color: #833; font-weight: bold; margin-top: 1em; }}
#controls {{ position: sticky; top: 0; background: white; padding: .5em 0; }}
input[type=range] {{ width: 60%; vertical-align: middle; }}
</style></head><body>
<h2>{title}</h2>
<p>{subtitle}</p>
<div id="controls"><button id="play">play</button>
<input id="slider" type="range" min="0" max="{last}" value="{last}"> <span id="label"></span></div>
<div id="panels"></div>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const panels = document.getElementById("panels"), slider = document.getElementById("slider");
const pres = data.labels.map(function (label) {{
  const head = document.createElement("div"); head.className = "label"; head.textContent = label;
  const pre = document.createElement("pre"); panels.appendChild(head); panels.appendChild(pre); return pre;
}});
function show(f) {{
  document.getElementById("label").textContent = "step " + f + " / " + (data.frames.length - 1);
  data.frames[f].forEach(function (segments, p) {{
    pres[p].textContent = "";
    segments.forEach(function (s) {{
      const span = document.createElement("span"); span.className = s[0]; span.textContent = s[1];
      pres[p].appendChild(span);
    }});
  }});
}}
slider.addEventListener("input", function () {{ show(+slider.value); }});
let timer = null;
document.getElementById("play").addEventListener("click", function () {{
  if (timer) {{ clearInterval(timer); timer = null; this.textContent = "play"; return; }}
  if (+slider.value >= data.frames.length - 1) slider.value = 0;
  this.textContent = "pause"; const button = this;
  timer = setInterval(function () {{
    if (+slider.value >= data.frames.length - 1) {{
      clearInterval(timer); timer = null; button.textContent = "play"; return;
    }}
    slider.value = +slider.value + 1; show(+slider.value);
  }}, {frame_ms});
}});
show(+slider.value);
</script></body></html>
"""


def write_html(path, tokenizer, trajectories, labels, mask_id, eos_id, subtitle: str = "", frame_ms: int = 150):
    """A self-contained HTML page: every frame's segments as JSON, a slider and a play button."""
    from common.io import atomic_path

    frames = _trajectory_frames(tokenizer, trajectories, mask_id, eos_id)
    data = json.dumps({"labels": labels, "frames": frames}, ensure_ascii=False).replace("</", "<\\/")
    page = HTML_PAGE.format(
        title="Denoising trajectory", subtitle=html.escape(subtitle), last=len(frames) - 1, data=data, frame_ms=frame_ms
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def write_record(path, trained, results: list[dict], labels: list[str], frame_ms: int = 150) -> None:
    """--record: the trajectories of ``results`` as .gif or .html (by the suffix)."""
    trajectories = [r["trajectory"] for r in results]
    mask_id, eos_id = trained.meta["mask_id"], trained.meta["eos_id"]
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        write_gif(path, trained.tokenizer, trajectories, labels, mask_id, eos_id, frame_ms=frame_ms)
    elif suffix in (".html", ".htm"):
        r = results[0]
        subtitle = (
            f"{trained.model_dir}: {r['remasking']}, {r['steps']} steps, gen_length {r['gen_length']}, "
            f"block_length {r['block_length']}, temperature {r['temperature']}, eos_guard {r['eos_guard']}"
        )
        write_html(path, trained.tokenizer, trajectories, labels, mask_id, eos_id, subtitle, frame_ms)
    else:
        raise ValueError(f"--record {path}: write .gif or .html")


# -------------------------------------------------------------------------------------------------- CLI
# what eval.generate uses where neither the command line nor the model folder's config.json "generation" says
FALLBACK = {"gen_length": 128, "steps": 128, "remasking": "low_confidence", "eos_guard": False}
GENERATION_CHECKS = {
    "gen_length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "remasking": (lambda v: v in REMASKING, f"one of {list(REMASKING)}"),
    "eos_guard": (lambda v: isinstance(v, bool), "true or false"),
}


class InputError(ValueError):
    """Bad input to the command (a file, a line, an option): main prints it as one line, without a traceback."""


def generation_defaults(trained) -> tuple[dict, str]:
    """(defaults, where they come from) for --gen-length, --steps, --remasking and --eos-guard of a model folder:
    config.json's "generation" (python -m train records it for sft and dpo runs: the pipeline's SFT evaluation
    settings sft.gen_length, eval_steps, remasking, eos_guard), the keys it lacks from FALLBACK; a folder without
    it gets FALLBACK. A recorded value of the wrong type is an error naming the file and the key."""
    path = Path(trained.model_dir) / "config.json"
    recorded = trained.meta.get("generation")
    if recorded is None:
        return dict(FALLBACK), f"built-in defaults ({path} records no generation settings)"
    if not isinstance(recorded, dict):
        raise InputError(f"{path}: key 'generation' should be an object, got {recorded!r}")
    for key, value in recorded.items():
        if key in GENERATION_CHECKS and not GENERATION_CHECKS[key][0](value):
            raise InputError(f"{path}: key 'generation.{key}' should be {GENERATION_CHECKS[key][1]}, got {value!r}")
    return {**FALLBACK, **{k: v for k, v in recorded.items() if k in FALLBACK}}, str(path)


def fit_gen_length(gen_length: int, prompt_len: int, max_positions: int | None, block_length: int | None) -> int:
    """The longest canvas G' <= gen_length with prompt_len + G' <= max_positions (None: no limit) and, with
    blocks, G' a multiple of block_length; 0 when none is >= 1 (the prompt leaves no room)."""
    if max_positions is None or prompt_len + gen_length <= max_positions:
        return gen_length
    room = max(0, max_positions - prompt_len)
    return room - room % block_length if block_length else room


def _backbone_note(trained) -> str:
    """'the 128 positions of the bert backbone of runs/x/model', for the messages about positions."""
    model_type = trained.meta["model"].get("model_type", "masked_lm")
    return f"the {trained.max_positions} positions of the {model_type} backbone of {trained.model_dir}"


def read_prompts(path) -> list[dict]:
    """--prompts JSONL: each line {"messages": [...]} (ending with a user turn) or {"prompt": "..."}.
    A bad line is an InputError naming the file and the line."""
    from common.io import jsonl_objects

    items = []
    try:
        for number, item in jsonl_objects(path):
            if not isinstance(item, dict) or not (("messages" in item) ^ ("prompt" in item)):
                raise InputError(
                    f"{path}:{number}: expected an object with 'messages' or 'prompt' (one of them), "
                    f"got {json.dumps(item)[:80]}"
                )
            if "messages" in item:
                messages = item["messages"]
                if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
                    raise InputError(f"{path}:{number}: 'messages' must be a non-empty list of objects")
                if messages[-1].get("role") == "assistant":
                    raise InputError(f"{path}:{number}: the last message is the assistant's; end with a user turn")
            elif not isinstance(item["prompt"], str):
                raise InputError(f"{path}:{number}: 'prompt' must be a string, got {item['prompt']!r}")
            items.append(item)
    except InputError:
        raise
    except ValueError as err:  # jsonl_objects: a line that is not JSON (the message names file and line)
        raise InputError(str(err)) from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the prompts ({err.strerror or err})") from None
    if not items:
        raise InputError(f"{path}: no prompts (an empty file)")
    return items


def _messages(item: dict, system: str | None) -> list[dict]:
    if "messages" in item:
        return list(item["messages"])
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": item["prompt"]}]


def _encode(tokenizer, item: dict, system: str | None, raw: bool) -> list[int]:
    """The prompt's token ids: with ``raw`` the text's own tokens (an empty text: the empty context, i.e.
    unconditional generation); else the chat template of the messages with the generation prompt (an empty
    prompt is an empty user turn, which the model answers)."""
    if raw:
        if "prompt" not in item:
            raise InputError("--raw-prompt needs plain prompts, not messages")
        return list(tokenizer(item["prompt"], add_special_tokens=False)["input_ids"])
    from jinja2 import TemplateError

    from common.chat import prompt_ids

    try:
        return prompt_ids(tokenizer, _messages(item, system))
    except (TemplateError, ValueError, TypeError) as err:
        raise InputError(
            f"the chat template cannot render it ({err}); --raw-prompt passes the text's tokens as "
            f"they are (an empty prompt then generates from an empty context)"
        ) from None


def _label(item: dict) -> str:
    text = item["prompt"] if "prompt" in item else item["messages"][-1].get("content", "")
    return text if isinstance(text, str) and text.strip() else "(empty prompt)"


def _options(args, gen_length: int | None = None) -> dict:
    return dict(
        gen_length=gen_length or args.gen_length,
        steps=args.steps,
        remasking=args.remasking,
        block_length=args.block_length,
        temperature=args.temperature,
        seed=args.seed,
        eos_guard=args.eos_guard,
        batch_size=args.batch_size,
        stop_at_answer=not args.fill_canvas,
    )


def _show_callback(args, trained, labels):
    if args.show is None or (args.show == "auto" and not sys.stdout.isatty()):
        return None
    return TerminalShow(trained.tokenizer, trained.meta["mask_id"], trained.meta["eos_id"], labels=labels)


def _output_record(item: dict, result: dict, system, raw) -> dict:
    record = {"index": result["index"]}
    if "prompt" in item:
        record["prompt"] = item["prompt"]
    if not raw:
        record["messages"] = _messages(item, system)
    record.update({k: v for k, v in result.items() if k not in ("index", "trajectory")})
    return record


def _write_jsonl(records: list[dict], out) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out:
        from common.io import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)
        sys.stdout.flush()


class Transcript:
    """--chat --out: the dialogue as JSONL, one line per finished turn, written as the turn ends (one write of the
    whole line, flush, fsync), so an interrupted (Ctrl-C) or crashed chat keeps every turn it finished. The file
    is started empty (a new chat replaces an old transcript)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", encoding="utf-8")
        self.turns = 0

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        try:
            os.fsync(self.file.fileno())
        except OSError:  # not a regular file (/dev/stdout, a pipe): nothing to sync
            pass
        self.turns += 1

    def close(self) -> None:
        self.file.close()


def fit_dialogue(
    trained, messages: list[dict], gen_length: int, block_length: int | None, say: Callable[[str], None]
) -> tuple[list[int], int] | None:
    """--chat: the prompt ids of ``messages`` (system?, then user / assistant turns, ending with a user turn) and
    the turn's canvas length, fitted to a backbone of max_positions P: while len(prompt) + G > P and older turns
    are left, the oldest user turn and its answer are dropped from ``messages`` (in place: they stay dropped);
    when the last user turn alone still leaves no room for G, G is capped (fit_gen_length). None, with the
    reason said, when the turn leaves no room for an answer at all (the caller drops the turn)."""
    from common.chat import prompt_ids

    ids = prompt_ids(trained.tokenizer, messages)
    limit = trained.max_positions
    if limit is None or len(ids) + gen_length <= limit:
        return ids, gen_length
    first = 1 if messages[0].get("role") == "system" else 0
    before, dropped = len(ids), 0
    while len(ids) + gen_length > limit and len(messages) - first > 1:
        del messages[first : first + 2]  # the oldest user turn and the assistant's answer to it
        dropped += 1
        ids = prompt_ids(trained.tokenizer, messages)
    if dropped:
        say(
            f"eval.generate: the dialogue ({before} prompt tokens) + gen_length {gen_length} outgrows "
            f"{_backbone_note(trained)}; dropped the oldest {dropped} turn(s), {len(ids)} prompt tokens left"
        )
    fitted = fit_gen_length(gen_length, len(ids), limit, block_length)
    if fitted < 1:
        say(
            f"eval.generate: this turn's prompt takes {len(ids)} of {_backbone_note(trained)}: no room for an "
            f"answer; the turn is skipped (write a shorter one)"
        )
        return None
    if fitted < gen_length:
        say(
            f"eval.generate: gen_length {gen_length} capped to {fitted} for this turn: its prompt takes "
            f"{len(ids)} of {_backbone_note(trained)}"
        )
    return ids, fitted


def chat_loop(args, trained, stdin=None, stdout=None, transcript: Transcript | None = None, stderr=None) -> list[dict]:
    """--chat: one user turn per stdin line until EOF or an empty line; the dialogue is kept (each answer goes
    back into the messages) and each answer printed; each finished turn goes to ``transcript`` at once. A dialogue
    that outgrows the backbone's positions loses its oldest turns (fit_dialogue, said on stderr)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr

    def say(line: str) -> None:
        stderr.write(line + "\n")
        stderr.flush()

    messages = [{"role": "system", "content": args.system}] if args.system else []
    records = []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stderr.write("you> ")
            stderr.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        fitted = fit_dialogue(trained, messages, args.gen_length, args.block_length, say)
        if fitted is None:
            messages.pop()
            continue
        ids, gen_length = fitted
        try:
            block_plan(gen_length, args.steps, args.block_length)
        except ValueError as err:
            say(f"eval.generate: this turn cannot be generated ({err}); the turn is skipped")
            messages.pop()
            continue
        result = generate(
            trained,
            [ids],
            record=bool(args.record),
            on_step=_show_callback(args, trained, [f"turn {len(records) + 1}"]),
            **_options(args, gen_length),
        )[0]
        result["index"] = len(records)
        messages.append({"role": "assistant", "content": result["answer"]})
        stdout.write(f"assistant> {result['answer']}\n")
        stdout.flush()
        record = _output_record({"messages": messages[:-1]}, result, None, False)
        records.append(record)
        if transcript is not None:
            transcript.write(record)
        if args.record:
            write_record(args.record, trained, [result], [line.strip()], args.frame_ms)
    return records


def build_parser() -> argparse.ArgumentParser:
    from common.device import add_device_arguments

    parser = argparse.ArgumentParser(
        prog="python -m eval.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", required=True, help="a diffusion model folder (runs/{profile}/{run}/model, a stage)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompt",
        action="append",
        help='a user message (repeat for several prompts); "" is an empty user turn (with '
        '--raw-prompt: the empty context, unconditional generation)',
    )
    source.add_argument("--prompts", help='JSONL, one {"messages": [...]} or {"prompt": "..."} per line')
    source.add_argument(
        "--chat",
        action="store_true",
        help="interactive: one user turn per stdin line until EOF or an empty line; keeps the "
        "dialogue (oldest turns dropped when it outgrows the backbone)",
    )
    parser.add_argument("--system", default=None, help="a system message before --prompt / --chat turns")
    parser.add_argument(
        "--raw-prompt", action="store_true", help="no chat template: the prompt text's tokens as they are (base models)"
    )
    parser.add_argument(
        "--gen-length",
        type=int,
        default=None,
        help="canvas length G in tokens (default: the model folder's, else 128); capped at the "
        "backbone's positions minus the prompt",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps, one network call each at most (default: the model folder's, else 128)",
    )
    parser.add_argument(
        "--block-length",
        type=int,
        default=None,
        help="semi-autoregressive blocks of B tokens, filled left to right (G %% B = 0, steps split "
        "evenly over the G / B blocks); default: one block",
    )
    parser.add_argument(
        "--remasking",
        choices=REMASKING,
        default=None,
        help="which masked positions a step commits: random (uniform), low_confidence (highest p "
        "of the proposal), margin (largest top1 - top2), entropy (lowest entropy); default: "
        "the model folder's, else low_confidence",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="proposal temperature; 0 = argmax (default)")
    parser.add_argument(
        "--eos-guard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="commit an EOS only where no mask is left to its left (LLaDA's low-confidence EOS "
        "issue); default: the model folder's (on for sft / dpo runs), else off",
    )
    parser.add_argument(
        "--fill-canvas",
        action="store_true",
        help="keep denoising after the answer is final (default: stop that prompt, same answer)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts of equal token length per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="each prompt's generator is seeded from it and the prompt")
    parser.add_argument(
        "--show",
        nargs="?",
        const="auto",
        choices=("auto", "always"),
        default=None,
        help="redraw the canvas after every step (ANSI) when stdout is a terminal; 'always' forces it",
    )
    parser.add_argument("--record", default=None, help="write the denoising trajectory: out.gif or out.html")
    parser.add_argument("--frame-ms", type=int, default=150, help="milliseconds per frame of --record")
    parser.add_argument(
        "--out",
        default=None,
        help="JSONL output (default: stdout); with --chat the transcript, one line per finished turn",
    )
    add_device_arguments(parser)
    return parser


def _check_arguments(parser, args) -> None:
    """The option values that need no model, checked before it is loaded (parser.error: one line, exit 2)."""
    for flag, value, least in (
        ("--gen-length", args.gen_length, 1),
        ("--steps", args.steps, 1),
        ("--block-length", args.block_length, 1),
        ("--batch-size", args.batch_size, 1),
        ("--frame-ms", args.frame_ms, 1),
    ):
        if value is not None and value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        parser.error(f"--temperature must be a finite number >= 0 (0 = argmax), got {args.temperature}")
    if args.record and Path(args.record).suffix.lower() not in (".gif", ".html", ".htm"):
        parser.error(f"--record {args.record}: write .gif or .html")
    if args.gen_length is not None and args.steps is not None:
        try:
            block_plan(args.gen_length, args.steps, args.block_length)
        except ValueError as err:
            parser.error(str(err))


def _resolve_defaults(args, trained) -> None:
    """Fill the options left out (None) from the model folder (generation_defaults); say which on stderr."""
    defaults, source = generation_defaults(trained)
    taken = [key for key in FALLBACK if getattr(args, key) is None]
    for key in taken:
        setattr(args, key, defaults[key])
    if taken:

        def shown(value):
            return ("on" if value else "off") if isinstance(value, bool) else value

        print(
            f"eval.generate: {', '.join(f'{k} {shown(getattr(args, k))}' for k in taken)} from {source}",
            file=sys.stderr,
        )


def main(argv=None) -> int:
    """The command. Bad input (a missing or wrong model folder, a bad --prompts line, an option out of range)
    ends it with one line naming the problem (exit 2 for options, 1 otherwise), not a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    from common.device import device_from_arguments
    from eval.trained import load_trained

    try:
        trained = load_trained(args.model_dir, device_from_arguments(args))
    except (OSError, ValueError) as err:
        raise SystemExit(f"eval.generate: --model-dir {args.model_dir}: {err}") from None
    if trained.is_ar:
        parser.error(f"{args.model_dir} is an autoregressive model; use python -m eval.sample --sampler ar")
    try:
        _resolve_defaults(args, trained)
        if args.chat:
            return _chat(args, trained)
        return _answer(args, trained)
    except InputError as err:
        raise SystemExit(f"eval.generate: {err}") from None


def _chat(args, trained) -> int:
    transcript = Transcript(args.out) if args.out else None
    try:
        records = chat_loop(args, trained, transcript=transcript)
    except KeyboardInterrupt:
        where = f"; {transcript.turns} finished turn(s) in {args.out}" if transcript else ""
        print(f"\neval.generate: interrupted{where}", file=sys.stderr)
        return 130
    finally:
        if transcript is not None:
            transcript.close()
    if args.out:
        print(f"{args.out}: {len(records)} turn(s)", file=sys.stderr)
    return 0


def _answer(args, trained) -> int:
    items = [{"prompt": p} for p in args.prompt] if args.prompt else read_prompts(args.prompts)
    ids = []
    for i, item in enumerate(items):
        try:
            ids.append(_encode(trained.tokenizer, item, args.system, args.raw_prompt))
        except InputError as err:
            where = f"{args.prompts}, prompt {i + 1}" if args.prompts else f"--prompt {item['prompt']!r}"
            raise InputError(f"{where}: {err}") from None
    labels = [_label(item) for item in items]
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    gen_length = fit_gen_length(args.gen_length, len(ids[longest]), trained.max_positions, args.block_length)
    if gen_length < 1:
        raise InputError(
            f"prompt {longest + 1} ({labels[longest][:40]!r}) takes {len(ids[longest])} of "
            f"{_backbone_note(trained)}: no room for an answer"
            + (f" in blocks of {args.block_length}" if args.block_length else "")
        )
    if gen_length < args.gen_length:
        print(
            f"eval.generate: gen_length {args.gen_length} capped to {gen_length}: the longest prompt takes "
            f"{len(ids[longest])} of {_backbone_note(trained)}",
            file=sys.stderr,
        )
    try:
        block_plan(gen_length, args.steps, args.block_length)
    except ValueError as err:
        raise InputError(str(err)) from None
    results = generate(
        trained,
        ids,
        record=bool(args.record),
        on_step=_show_callback(args, trained, labels),
        **_options(args, gen_length),
    )
    if args.record:
        write_record(args.record, trained, results, labels, args.frame_ms)
    _write_jsonl([_output_record(item, r, args.system, args.raw_prompt) for item, r in zip(items, results)], args.out)
    if args.out:
        total = sum(r["seconds"] for r in results)
        print(f"{args.out}: {len(results)} answers, {total / len(results):.3f} s/answer", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
