r"""A model folder of this project as an lm-evaluation-harness model: ``cascade-dllm``.

    cascade-lm-eval run --model cascade-dllm --model_args path=runs/sft/sft/model,mc_num=32 \
        --tasks arc_easy --batch_size 8 --device cuda:0 --output_path results/harness
    python -m eval.harness ...      # the same command

``cascade-lm-eval`` (pyproject [project.scripts]) and ``python -m eval.harness`` register the class below with
lm_eval's registry and then run lm_eval's own command line on the same arguments (lm_eval 0.4.13 finds no model
outside its package by itself). Nothing else imports this module, so lm_eval is loaded by these commands only.

The model folder (``path``) is one trained model: a single-stage, AR, sft or dpo run's ``model/`` (DiT or
masked_lm backbone; eval.trained.load_trained). A cascade run folder (stage1..3/) or one of its stage folders is
refused, the path named: a cascade stage scores a block given the previous stage's block, not text given text.

loglikelihood (context c, continuation y; tokens of the folder's tokenizer, y = the tokens of c + y after those
of c). Diffusion models (mdlm, sedd) return the conditional ELBO, a lower bound on log p(y | c):

    log p(y | c) >= -NELBO(y | c),   NELBO(y | c) = D + R   on the canvas x0 = [c ; y], c clean and never masked,

exactly eval/likelihood.py's validation bound with the continuation as the scored positions (as eval/sft.py
scores an answer given its prompt). With n = |y| and m0 = m(0) (0 for loglinear and cosine), per draw j:

    v_j = (j + 1 - u_j) / K  (one stratum of (0, 1] each),   mu_j = m0 + (1 - m0) v_j,   t_j = t(mu_j),
    S_j = {i*_j} + {i in y : u_ij < mu_j}   (i*_j uniform on y),   w_j = (1 - m0) n / |S_j|,
    X_j = w_j G(S_j, t_j),   G = sum over S_j of the loss terms divided by lambda(t) (MDLM: -log p(y_i | x_t)),
    estimate = -(1/K) sum_j X_j - R,          K = mc_num

(eval.likelihood.draw_term computes X_j; R is the t = 0 term, one draw, 0 unless m0 > 0). E[X_j] = D for every
stratum's average, so the estimate is unbiased for the bound, with finite variance (zero for one continuation
token and a network that ignores t: then X_j = -log p(y | c with y masked) for every draw).

Shared draws. The draws (u_j, i*_j, u_ij) of a request come from a generator seeded by sha256(seed, the context's
token ids): every choice of a multiple-choice question (same context) sees the same strata, the same i* uniform
and the same uniform at its k-th continuation position, so the noise of the estimates is shared and mostly
cancels in the differences that decide the answer (train/dpo.py's shared draws); identical requests get
identical estimates.

Standard error over draws. Per request se = sd_j(X_j) / sqrt(K) (sample sd, ddof 1; 0 for K = 1 and for AR).
The draws are stratified, so this is an upper estimate of the standard error of the stratified mean (the
strata's spread counts as noise). Per task (Instance.task_name) the mean and the max of se over its requests
are logged after every batch of requests and returned by get_model_info, which lm_eval writes into the results
JSON (--output_path) under config.mc_standard_error.

is_greedy. AR: every continuation token is the argmax of its next-token distribution. Diffusion: every
continuation token is the argmax of p_theta(x0_i | x) with the whole continuation masked (t = 1) and the context
clean: the token greedy one-step decoding of the masked continuation would write. One more forward pass.

AR models (objective ar) are exact: log p(y | c) = sum_i log softmax(f([bos ; c ; y]_<i))[y_i] (the
validation NLL's train.objectives.ar_token_loss), se 0.

Lengths. A masked_lm backbone takes at most max_position_embeddings tokens; the DiT (rotary positions) is scored
at most at its trained length, config.json prefix_len + target_len; model_args max_length overrides the DiT's.
A canvas [c ; y] longer than that limit (AR: [bos ; c ; y]) loses context tokens from the left; a continuation
longer than the limit keeps its last limit tokens (the earlier ones are then not scored; a warning says so).

loglikelihood_rolling (the whole text, no context): the text's tokens in consecutive non-overlapping windows of
the limit above, each scored as a continuation with an empty context; the result is the sum over windows of
their bounds (AR: their exact log-likelihoods, each window after bos), i.e. a lower bound on the log-likelihood
of the model that draws the windows independently. se of the sum = sqrt(sum of the windows' se^2) (each window
has its own draws, seeded by its tokens).

generate_until (context, {until, max_gen_toks, temperature, do_sample}). Diffusion: eval.generate.generate on
the context's tokens (a raw prompt: lm_eval applies a chat template itself when asked) with a canvas of
G = max_gen_toks tokens (default: gen_length), capped at gen_length when model_args sets it and at what the
positions allow (eval.generate.fit_gen_length); steps = ceil(steps * G / gen_length), rounded up to a multiple of
the block count with block_length; the answer (cut at the first EOS) decoded, then cut before the first
``until`` string. AR: greedy (temperature 0) or sampled left to right after [bos ; c], stopped at EOS or G
tokens, then cut alike. temperature: 0 (argmax) when the request says do_sample false, else the request's temperature,
else the model_args temperature (default 0).

model_args: path (required), mc_num (draws per request, default 32: the standard error at 32 is a fifth of the
single-draw spread), seed (0), max_length, gen_length, steps, remasking, eos_guard (defaults: the folder's
config.json "generation", eval.generate.generation_defaults), block_length (none), temperature (0).
lm_eval's --batch_size (requests per batch; each batch makes K forward passes of batch_size rows, one per draw)
and --device (cpu, cuda, cuda:N, auto) set the other two; requests are batched among those of equal canvas
length (the DiT has no attention mask, so rows are never padded).
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from eval.likelihood import draw_term, final_denoising_nats, mask_share, stratified_levels
from eval.trained import Trained, load_trained

log = logging.getLogger("lm_eval.models.cascade_dllm")  # under lm_eval: its CLI logging shows it
MODEL_NAME = "cascade-dllm"
DEFAULT_MC_NUM = 32
SE_DEFINITION = (
    "per request: sample standard deviation over the mc_num stratified draws of the draw's NELBO term, divided by "
    "sqrt(mc_num) (nats; an upper estimate for stratified draws; 0 for AR); per task: mean and max over its "
    "loglikelihood requests"
)


class HarnessError(ValueError):
    """A bad model folder or model_args value: the command prints it as one line (the path or key, expected, got)."""


def check_model_folder(path) -> Path:
    """The model folder ``path``, checked: it exists, holds config.json and is not a cascade run or stage."""
    folder = Path(path)
    if not folder.exists():
        raise HarnessError(f"{folder}: no such model folder (model_args path=...: expected a run's model/ folder)")
    stages = sorted(p.name for p in folder.glob("stage[0-9]*") if p.is_dir())
    if stages:
        raise HarnessError(
            f"{folder}: a cascade run folder ({', '.join(stages)}); cascade runs are not scored by the harness: "
            f"expected a single model folder (a single, ar, sft or dpo run's model/)"
        )
    if not (folder / "config.json").is_file():
        hint = f"; did you mean {folder / 'model'}?" if (folder / "model" / "config.json").is_file() else ""
        raise HarnessError(f"{folder}: missing config.json: expected a trained model folder{hint}")
    return folder


def refuse_cascade_stage(trained: Trained) -> None:
    """A cascade stage (config.json kind cascade, a clean prefix of the previous stage, or an inserting stage)
    models a block given another block, not text given text: an error naming the folder."""
    meta = trained.meta
    if meta.get("kind") == "cascade" or meta.get("prefix_len", 0) > 0 or meta.get("stage_form") == "insert":
        raise HarnessError(
            f"{trained.model_dir}: a cascade stage folder (config.json kind {meta.get('kind')!r}, stage "
            f"{meta.get('stage')}, prefix_len {meta.get('prefix_len')}); cascade runs are not scored by the harness: "
            f"expected a single model folder (a single, ar, sft or dpo run's model/)"
        )


def draw_seed(seed: int, key: list[int], tag: str = "") -> int:
    """A 63-bit seed: sha256 of (seed, tag, the token ids ``key``)."""
    digest = hashlib.sha256(f"{seed}/{tag}/{','.join(map(str, key))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def shared_draws(seed: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(levels [K], picks [K], uniforms [n, K], R's uniforms [n]) of one request from a generator seeded by
    ``seed``: v_j = (j + 1 - u_j) / K, i* uniforms, then one row of K + 1 uniforms per continuation position, so
    position i's uniforms are the same for every continuation length n > i (the shared draws of the choices)."""
    generator = torch.Generator().manual_seed(seed)
    levels = stratified_levels(1, k, generator)[:, 0]
    picks = torch.rand(k, generator=generator, dtype=torch.float64)
    rows = torch.rand(n, k + 1, generator=generator, dtype=torch.float64)
    return levels, picks, rows[:, :k], rows[:, k]


def positive_int(value, key: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number < 1 or (isinstance(value, float) and value != number):
        raise HarnessError(f"model_args {key}: expected an integer >= 1, got {value!r}")
    return number


def pick_device(device) -> torch.device:
    """--device: cpu, cuda, cuda:N or auto (cuda when there is one); cuda without one is an error."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {name}: no CUDA device here; expected --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise HarnessError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}") from None


@register_model(MODEL_NAME)
class CascadeLM(LM):
    """This project's model folder in lm-evaluation-harness (module docstring: what each request type returns)."""

    def __init__(
        self,
        path=None,
        mc_num=DEFAULT_MC_NUM,
        batch_size=1,
        max_batch_size=None,
        device="auto",
        seed=0,
        max_length=None,
        gen_length=None,
        steps=None,
        block_length=None,
        remasking=None,
        eos_guard=None,
        temperature=0.0,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise HarnessError(
                f"model_args: unknown key(s) {sorted(unknown)}; expected path, mc_num, seed, max_length, gen_length, "
                f"steps, block_length, remasking, eos_guard, temperature (batch size and device: --batch_size, "
                f"--device)"
            )
        if path is None:
            raise HarnessError("model_args: missing key 'path' (expected path=<model folder>)")
        folder = check_model_folder(path)
        self.mc_num = positive_int(mc_num, "mc_num")
        if str(batch_size).startswith("auto"):
            raise HarnessError(f"--batch_size: expected an integer >= 1 (no automatic batch size), got {batch_size!r}")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.seed = int(seed)
        self._device = pick_device(device)
        self.trained = load_trained(folder, self._device)
        refuse_cascade_stage(self.trained)
        meta = self.trained.meta
        trained_length = meta["prefix_len"] + meta["target_len"]
        if self.trained.max_positions is not None:
            self.max_length = self.trained.max_positions
        else:
            self.max_length = positive_int(max_length, "max_length", True) or trained_length
        self.start = 0.0 if self.trained.is_ar else float(mask_share(self.trained.noise, 0.0))  # m0
        self.generation = self._generation_settings(gen_length, steps, block_length, remasking, eos_guard)
        self.temperature = float(temperature)
        self.standard_errors: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------------------------------ settings
    def _generation_settings(self, gen_length, steps, block_length, remasking, eos_guard) -> dict:
        """gen_length, steps, remasking, eos_guard: model_args, else eval.generate.generation_defaults (config.json
        "generation", else its fallback); block_length: model_args or none."""
        from eval.generate import FALLBACK, REMASKING, generation_defaults

        defaults = dict(FALLBACK) if self.trained.is_ar else generation_defaults(self.trained)[0]
        settings = {
            "gen_length": positive_int(gen_length, "gen_length", True) or defaults["gen_length"],
            "gen_length_given": gen_length is not None,
            "steps": positive_int(steps, "steps", True) or defaults["steps"],
            "block_length": positive_int(block_length, "block_length", True),
            "remasking": defaults["remasking"] if remasking is None else str(remasking),
            "eos_guard": defaults["eos_guard"] if eos_guard is None else str(eos_guard).lower() in ("1", "true"),
        }
        if settings["remasking"] not in REMASKING:
            raise HarnessError(f"model_args remasking: expected one of {list(REMASKING)}, got {remasking!r}")
        return settings

    @property
    def tokenizer(self):
        tokenizer = self.trained.tokenizer
        if tokenizer is None:
            raise HarnessError(f"{self.trained.model_dir}: no tokenizer folder: the harness scores text")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids): the context's trailing spaces move to the continuation; the
        continuation is the tokens of context + continuation after those of the context (its own encoding when
        the joint one does not start with the context's)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self.encode(context) if context else []
        whole = self.encode(context + continuation)
        if whole[: len(context_ids)] == context_ids:
            return context_ids, whole[len(context_ids) :]
        return context_ids, self.encode(continuation)

    # ------------------------------------------------------------------------------------------ scoring
    def fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Context cut from the left (and a too long continuation to its last tokens) so that the canvas, with
        bos for AR, fits max_length."""
        room = self.max_length - (1 if self.trained.is_ar else 0)
        if len(continuation) > room:
            log.warning(
                "continuation of %d tokens exceeds the %d positions of %s: only its last %d tokens are scored",
                len(continuation),
                self.max_length,
                self.trained.model_dir,
                room,
            )
            continuation = continuation[-room:]
        return context[max(0, len(context) + len(continuation) - room) :], continuation

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int], int]]) -> list[tuple[float, bool, float]]:
        """(log-likelihood bound, is_greedy, se) per (context ids, continuation ids, draw seed); module docstring."""
        results: list[tuple[float, bool, float] | None] = [None] * len(pairs)
        fitted = [self.fit(c, y) for c, y, _ in pairs]
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, (c, y) in enumerate(fitted):
            by_length[len(c) + len(y)].append(i)
        for members in by_length.values():
            for begin in range(0, len(members), self.batch_size):
                chunk = members[begin : begin + self.batch_size]
                rows = [fitted[i] for i in chunk]
                seeds = [pairs[i][2] for i in chunk]
                scored = self._score_ar(rows) if self.trained.is_ar else self._score_diffusion(rows, seeds)
                for i, result in zip(chunk, scored):
                    results[i] = result
        return results

    def _canvas(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 Long [B, L] = [c ; y] per row (equal lengths) and the continuation positions Bool [B, L]."""
        x0 = torch.tensor([c + y for c, y in rows], dtype=torch.long, device=self._device)
        valid = torch.zeros_like(x0, dtype=torch.bool)
        for r, (c, _) in enumerate(rows):
            valid[r, len(c) :] = True
        return x0, valid

    def _score_ar(self, rows) -> list[tuple[float, bool, float]]:
        """Exact: sum over y of log p(y_i | bos, c, y_<i); greedy = every y_i the argmax."""
        from train.objectives import ar_token_loss

        x0, valid = self._canvas(rows)
        x_in = torch.cat([torch.full_like(x0[:, :1], self.trained.meta["bos_id"]), x0[:, :-1]], dim=1)
        logits = self.trained.model(x_in)
        nll = ar_token_loss(logits, x0).double()
        greedy = (logits.argmax(-1) == x0) | ~valid
        return [(-float(nll[r][valid[r]].sum()), bool(greedy[r].all()), 0.0) for r in range(len(rows))]

    def _score_diffusion(self, rows, seeds: list[int]) -> list[tuple[float, bool, float]]:
        """-(mean_j X_j + R), is_greedy and se per row from K = mc_num draws (one forward pass of the batch per
        draw, eval.likelihood.draw_term), the draws of each row from its seed (shared_draws)."""
        x0, valid = self._canvas(rows)
        batch, length, k = x0.shape[0], x0.shape[1], self.mc_num
        levels = torch.empty(k, batch, dtype=torch.float64)
        picks = torch.empty(k, batch, dtype=torch.float64)
        uniform = torch.ones(k, batch, length, dtype=torch.float64)  # context positions: never masked anyway
        final_uniform = torch.ones(batch, length, dtype=torch.float64)
        for r, ((c, y), seed) in enumerate(zip(rows, seeds)):
            levels[:, r], picks[:, r], per_position, final = shared_draws(seed, len(y), k)
            uniform[:, r, len(c) :] = per_position.T
            final_uniform[r, len(c) :] = final
        terms = torch.stack(
            [
                draw_term(self.trained, x0, None, valid, levels[j], uniform[j].to(self._device), picks[j])[0]
                for j in range(k)
            ]
        )  # [K, B]
        nelbo = terms.mean(0)
        if self.start > 0:
            nelbo = nelbo + final_denoising_nats(self.trained, x0, None, self.start, None, valid, uniform=final_uniform)
        se = terms.std(0, correction=1) / math.sqrt(k) if k > 1 else torch.zeros(batch, dtype=torch.float64)
        greedy = self._diffusion_greedy(x0, valid)
        return [(-float(nelbo[r]), bool(greedy[r]), float(se[r])) for r in range(batch)]

    def _diffusion_greedy(self, x0: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Bool [B]: every continuation token is the argmax of p_theta(x0_i | x) with the continuation all masked."""
        x = torch.where(valid, torch.full_like(x0, self.trained.meta["mask_id"]), x0)
        sigma = self.trained.noise.total(torch.ones(len(x0), device=x0.device))
        best = self.trained.denoiser.x0_log_probs(x, sigma).argmax(-1)
        return ((best == x0) | ~valid).all(1)

    # ------------------------------------------------------------------------------------------ lm_eval API
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            c, y = self.encode_pair(context, continuation)
            if not y:
                raise HarnessError(
                    f"{request.task_name} doc {request.doc_id}: continuation {continuation!r} has no tokens"
                )
            pairs.append((c, y, draw_seed(self.seed, self.fit(c, y)[0], "context")))
        scored = self.score(pairs)
        for request, (_, _, se) in zip(requests, scored):
            self.standard_errors[request.task_name or "(no task)"].append(se)
        self.log_standard_errors()
        return [(value, greedy) for value, greedy, _ in scored]

    def windows(self, ids: list[int]) -> list[list[int]]:
        """Consecutive non-overlapping windows of the text's tokens, each fitting max_length (AR: after bos)."""
        size = self.max_length - (1 if self.trained.is_ar else 0)
        return [ids[i : i + size] for i in range(0, len(ids), size)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owners = [], []
        for n, request in enumerate(requests):
            for window in self.windows(self.encode(request.args[0])):
                pairs.append(([], window, draw_seed(self.seed, window, "window")))
                owners.append(n)
        totals = [0.0] * len(requests)
        variances = [0.0] * len(requests)
        for n, (value, _, se) in zip(owners, self.score(pairs)):
            totals[n] += value
            variances[n] += se**2
        for request, variance in zip(requests, variances):
            self.standard_errors[request.task_name or "(no task)"].append(math.sqrt(variance))
        self.log_standard_errors()
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        plans = []
        for n, request in enumerate(requests):
            context, options = request.args
            plan = self.plan_generation(self.encode(context), dict(options or {}))
            plans.append(plan)
            groups[(plan["gen_length"], plan["steps"], plan["block_length"], plan["temperature"])].append(n)
        out = [""] * len(requests)
        for (gen_length, steps, block_length, temperature), members in groups.items():
            prompts = [plans[n]["prompt"] for n in members]
            if self.trained.is_ar:
                answers = self._ar_generate(prompts, gen_length, temperature)
            else:
                answers = self._diffusion_generate(prompts, gen_length, steps, block_length, temperature)
            for n, ids in zip(members, answers):
                out[n] = cut_at(self.tokenizer.decode(ids, skip_special_tokens=True), plans[n]["until"])
        return out

    def plan_generation(self, prompt: list[int], options: dict) -> dict:
        """The prompt (cut from the left to leave room), G, steps, blocks, temperature and until of one request."""
        from eval.generate import fit_gen_length

        settings = self.generation
        until = options.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        gen_length = positive_int(options.get("max_gen_toks", settings["gen_length"]), "max_gen_toks")
        if settings["gen_length_given"]:
            gen_length = min(gen_length, settings["gen_length"])
        block_length = settings["block_length"]
        room = self.max_length - (1 if self.trained.is_ar else 0)
        gen_length = min(gen_length, room)
        if block_length:
            gen_length = max(block_length, gen_length - gen_length % block_length)
        prompt = prompt[max(0, len(prompt) + gen_length - room) :]
        gen_length = fit_gen_length(gen_length, len(prompt), self.trained.max_positions, block_length)
        steps = math.ceil(settings["steps"] * gen_length / settings["gen_length"])
        if block_length:
            blocks = gen_length // block_length
            steps = math.ceil(steps / blocks) * blocks
        if options.get("do_sample") is False:
            temperature = 0.0
        else:
            temperature = float(options.get("temperature", self.temperature))
        return {
            "prompt": prompt,
            "gen_length": gen_length,
            "steps": max(1, steps),
            "block_length": block_length,
            "temperature": temperature,
            "until": until,
        }

    def _diffusion_generate(self, prompts, gen_length, steps, block_length, temperature) -> list[list[int]]:
        from eval.generate import generate

        results = generate(
            self.trained,
            prompts,
            gen_length,
            steps,
            remasking=self.generation["remasking"],
            block_length=block_length,
            temperature=temperature,
            seed=self.seed,
            eos_guard=self.generation["eos_guard"],
            batch_size=self.batch_size,
        )
        return [r["answer_ids"] for r in results]

    @torch.no_grad()
    def _ar_generate(self, prompts, gen_length: int, temperature: float) -> list[list[int]]:
        """Left to right after [bos ; prompt]: argmax (temperature 0) or a draw from softmax(logits / T), the mask
        token excluded, until EOS or gen_length tokens; the tokens before EOS."""
        meta = self.trained.meta
        answers = []
        for prompt in prompts:
            generator = torch.Generator(device=self._device).manual_seed(draw_seed(self.seed, prompt, "generate"))
            x = torch.tensor([[meta["bos_id"], *prompt]], dtype=torch.long, device=self._device)
            answer = []
            for _ in range(gen_length):
                logits = self.trained.model(x)[0, -1].float()
                logits[meta["mask_id"]] = float("-inf")
                if temperature > 0:
                    token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
                else:
                    token = int(logits.argmax())
                if token == meta["eos_id"]:
                    break
                answer.append(token)
                x = torch.cat([x, x.new_tensor([[token]])], dim=1)
            answers.append(answer)
        return answers

    # ------------------------------------------------------------------------------------------ reporting
    def standard_error_summary(self) -> dict:
        """{task: {requests, mean, max}} of the per-request MC standard errors (nats), with mc_num and the
        definition."""
        tasks = {
            task: {"requests": len(values), "mean": sum(values) / len(values), "max": max(values)}
            for task, values in sorted(self.standard_errors.items())
        }
        return {"mc_num": None if self.trained.is_ar else self.mc_num, "tasks": tasks, "definition": SE_DEFINITION}

    def log_standard_errors(self) -> None:
        for task, entry in self.standard_error_summary()["tasks"].items():
            log.info(
                "MC standard error of %s over %d requests (mc_num %s): mean %.4g nats, max %.4g nats",
                task,
                entry["requests"],
                self.mc_num,
                entry["mean"],
                entry["max"],
            )

    def get_model_info(self) -> dict:
        """What lm_eval adds to results["config"] (and so to the results JSON of --output_path)."""
        record = self.trained.record
        return {
            "model_folder": str(self.trained.model_dir),
            "objective": self.trained.meta["objective"],
            "backbone": record.backbone_kind,
            "max_length": self.max_length,
            "mc_standard_error": self.standard_error_summary(),
        }


def cut_at(text: str, until: list[str]) -> str:
    """``text`` before the first occurrence of any ``until`` string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def main(argv=None) -> int:
    """lm_eval's command line (the same arguments as ``lm_eval``) with the cascade-dllm model registered; a
    HarnessError is one line on stderr and exit status 2."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["cascade-lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except HarnessError as err:
        print(f"cascade-lm-eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
