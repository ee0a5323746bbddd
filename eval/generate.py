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

The step is the sampler library's remask (eval/samplers.py) over [prompt ; canvas], the prompt a clean prefix as
a cascade stage's is: the network told the masked share of the canvas, Gumbel-max proposals in float64, k_s
commits at step s (the remainder of B / S_b spread over the steps, not given to the first ones as by LLaDA's
get_num_transfer_tokens), chosen by a remasking rule (random, low_confidence, margin, entropy). Its formulas
follow this text in --help.

EOS guard (``--eos-guard``). An SFT model is trained on answers filled with EOS up to the row length (common.chat,
LLaDA's EOS padding), so EOS at the right end of the canvas is its most confident proposal, and
low-confidence remasking commits those EOS first; the answer is then pushed into whatever is left and comes out
too short (LLaDA's low-confidence EOS problem). With the guard an EOS is committed only once no mask is left to
its left, i.e. once everything before it is written (remask's ``eos_guard``).

Stopping (exact). The answer is fixed once some committed EOS has no mask to its left: committed tokens never
change and everything after the first EOS is cut. Such a row leaves the batch (its masks are filled with EOS)
and costs no more network calls; its answer is the one a full run gives. ``--fill-canvas`` keeps denoising
every position instead (the raw ids then hold the model's tokens after the EOS).

Blocks (``--block-length B``, semi-autoregressive): the canvas is filled in G / B blocks left to right, each
with steps / (G / B) steps; later blocks stay masked meanwhile. G must be divisible by B and steps by G / B.

Randomness. Each prompt has its own generator, seeded by sha256(seed, its token ids, how many identical prompts
came before it in the list): an answer depends on the model, the options, the seed and the prompt, not on its
position, its batch or the batch size. (The r-th repeat of a prompt gets its own stream, so repeats are
distinct samples when T > 0.) Per step a row draws (masked positions of the block) x V Gumbel-max noises
(T > 0) and, for ``random``, one uniform per masked position: counts fixed by the schedule, never by the network.

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

Views (eval/views.py): --show redraws the canvas in the terminal after every step (masks as ░, EOS as ∎) when
stdout is a terminal (``--show always``: also when it is not). --record F.gif (Pillow) / F.html (self-contained
page with a slider) writes the trajectory, steps + 1 frames (the all-mask canvas, then one per step), of every
prompt of the run (stacked; meant for a few prompts); in --chat (eval/chat.py), the last turn's. Files are
written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from eval.samplers import REMASKING, block_plan, remask
from eval.views import TerminalShow, write_record


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
    blocks = block_plan(gen_length, steps, block_length)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask_id, eos_id = trained.meta["mask_id"], trained.meta["eos_id"]
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
    for members in groups.values():
        size = batch_size or len(members)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            prompts = torch.tensor([list(prompt_id_lists[i]) for i in chunk], dtype=torch.long, device=device)
            prompts = prompts.reshape(len(chunk), len(prompt_id_lists[chunk[0]]))  # also an empty prompt
            generators = [torch.Generator(device=device).manual_seed(seeds[i]) for i in chunk]
            trajectory = [[[mask_id] * gen_length] for _ in chunk] if record else None

            def after_step(info, chunk=chunk, trajectory=trajectory):
                if trajectory is not None:
                    for canvases, canvas in zip(trajectory, info["canvas"].tolist()):
                        canvases.append(canvas)
                if on_step is not None:
                    on_step({**info, "indices": chunk})

            began = time.perf_counter()
            with torch.no_grad():
                out, calls = remask(
                    trained.denoiser,
                    trained.noise,
                    prompts,
                    gen_length,
                    steps,
                    generators,
                    remasking=remasking,
                    temperature=temperature,
                    block_size=block_length,
                    eos_id=eos_id,
                    eos_guard=eos_guard,
                    stop_at_answer=stop_at_answer,
                    on_step=after_step,
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - began) / len(chunk)
            batch_calls = int(calls.max())  # the row that stayed longest was in every call of its batch
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
                    "network_calls": int(calls[row]),
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


def backbone_note(trained) -> str:
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


def generate_options(args, gen_length: int | None = None) -> dict:
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


def show_callback(args, trained, labels):
    if args.show is None or (args.show == "auto" and not sys.stdout.isatty()):
        return None
    return TerminalShow(trained.tokenizer, trained.meta["mask_id"], trained.meta["eos_id"], labels=labels)


def output_record(item: dict, result: dict, system, raw) -> dict:
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


def build_parser() -> argparse.ArgumentParser:
    from common.device import add_device_arguments

    parser = argparse.ArgumentParser(
        prog="python -m eval.generate",
        description=f"{__doc__}\neval.samplers.remask, the step:\n\n{inspect.cleandoc(remask.__doc__)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
            from eval.chat import run_chat

            return run_chat(args, trained)
        return _answer(args, trained)
    except InputError as err:
        raise SystemExit(f"eval.generate: {err}") from None


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
            f"{backbone_note(trained)}: no room for an answer"
            + (f" in blocks of {args.block_length}" if args.block_length else "")
        )
    if gen_length < args.gen_length:
        print(
            f"eval.generate: gen_length {args.gen_length} capped to {gen_length}: the longest prompt takes "
            f"{len(ids[longest])} of {backbone_note(trained)}",
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
        on_step=show_callback(args, trained, labels),
        **generate_options(args, gen_length),
    )
    if args.record:
        write_record(args.record, trained, results, labels, args.frame_ms)
    _write_jsonl([output_record(item, r, args.system, args.raw_prompt) for item, r in zip(items, results)], args.out)
    if args.out:
        total = sum(r["seconds"] for r in results)
        print(f"{args.out}: {len(results)} answers, {total / len(results):.3f} s/answer", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
