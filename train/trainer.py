"""The training loop of every run (a cascade stage, a single-stage model, the AR baseline, SFT, DPO, ATAT), on
accelerate. The loop, the step and everything around it are written once here; a run's objective
(train/objective.py: its data, per-micro-batch loss and metrics, validation, and what it trains or keeps beside
the model) fills in hooks, so no objective has a branch of its own in this file.

    global batch G = micro_batch_size x processes x accumulation          (settings.accumulation_steps)
    lr(s)         = lr * (s + 1) / warmup                for s < warmup
                  = lr * (0.1 + 0.9 * (1 + cos(pi * p)) / 2),  p = (s - warmup) / (max_steps - warmup)
    optimizer     AdamW, gradients clipped to grad_clip (global norm), EMA of the weights after each step
    precision     bf16 autocast on CUDA, fp32 on CPU (precision: auto)

    metrics       a train row's objective columns: means over the global batch (micro-batches, then processes)

Determinism: the rows of step s (train/data.py BatchOrder) and its diffusion times and mask draws come from
generators seeded by (seed, s), drawn for the whole global batch by the objective's begin_step; each process
and accumulation step takes its own slice. So a resumed run sees exactly the batches and noise an uninterrupted
run would, and 1 or N processes see the same global batch (their curves differ only by float summation order).

Checkpoints (`{out}/checkpoints/step_XXXXXXXX/`, the newest two kept) hold accelerate's state (model,
optimizer, the objective's extra modules and their optimizers as model_1 / optimizer_1, ..., RNG states of
every process), the EMA, and trainer_state.json (step, seconds, the settings and their digest); they are
written under a temporary name and renamed. A run resumes from the newest checkpoint that is intact (every
safetensors header and torch archive opens, trainer_state.json parses) and was written under the same settings
digest; each one passed over is named in the log with the reason (the broken file, or the settings that
differ, old -> new) and removed, and with none left the run starts from step 0.
SIGTERM or SIGUSR1 (SLURM preemption / time limit) finishes the current step, writes a checkpoint and exits
with EXIT_PREEMPTED = 75 (EX_TEMPFAIL): non-zero, so Snakemake / SLURM treat the job as failed and requeue
or retry it (use --retries), and the rerun resumes. The declared outputs (model.safetensors, config.json,
metrics.csv) are written only when max_steps is reached; then `checkpoints/` is removed, since it holds only
an unfinished run's state, and a forced rerun trains from step 0.

Divergence: a step whose loss or gradient norm is non-finite (on any process) makes no update (optimizer
and EMA untouched, gradients zeroed), is logged and marked in metrics.csv's `skipped` column; a bf16
overflow passes that way. More than max_nonfinite_steps such steps in a row, or a non-finite validation
loss, raise TrainingDiverged naming the step and the quantity: no declared output is written and the
checkpoints stay. (Under DeepSpeed the engine steps inside backward and reports no norm, so a non-finite
loss there is counted and stops the run but its update cannot be skipped.)

Trackers: metrics.csv is always written; `log_with` (tensorboard, wandb) adds accelerate's trackers, with
their files under `{out}/tracker/` (wandb offline unless WANDB_MODE is set).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.provenance import code_commit
from train.backbones import backbone_meta, build_backbone
from train.checkpoint import load_model, load_state_strict, save_model, write_text_atomic
from train.data import BatchOrder
from train.ema import EMA
from train.noise import get_noise
from train.objective import ExtraModule, Objective, objective_for
from train.resume import STATE_FILE, as_json, checkpoint_problem, read_trainer_state
from train.settings import TrainSettings
from train.trackers import check_trackers, flat_config, tracker_init_kwargs

EXIT_PREEMPTED = 75
METRIC_FIELDS = ["step", "split", "loss", "lr", "tokens", "seconds", "grad_norm", "skipped"]
CHECKPOINTS_KEPT = 2  # the newest may be damaged (a write cut short by the file system); the older is the fallback


class TrainingDiverged(RuntimeError):
    """Non-finite training: the message names the step, the quantity and its value."""


def lr_at(step: int, lr: float, warmup: int, max_steps: int, final_ratio: float = 0.1) -> float:
    """Linear warm-up to lr, then cosine decay to final_ratio * lr at max_steps (formula in the module doc)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class StepResult:
    loss: float  # mean over the global batch
    grad_norm: float | None  # None when the backend reports none (DeepSpeed clips inside its engine)
    nonfinite: list[str]  # "loss" / "grad_norm" when non-finite on some process: the update was skipped
    extras: dict = field(default_factory=dict)  # the objective's metrics.csv columns of the step


class Trainer:
    """The loop of every run; what differs between objectives is its `objective` (train/objective.py)."""

    def __init__(
        self,
        settings: TrainSettings,
        train_shards: list[str],
        val_shards: list[str],
        tokenizer_dir: str,
        out_dir: str,
        init_dir: str | None = None,
        run: str | None = None,
        reference_dir: str | None = None,
        objective: Objective | None = None,
    ):
        self.s, self.out, self.run_name = settings, Path(out_dir), run
        self.kind = settings.kind
        self.prefix_len, self.target_len = settings.prefix_len, settings.target_len
        self.max_steps = settings.max_steps
        self.seed = settings.seed
        # refused before anything is built (e.g. a dpo run without its start)
        self.objective = objective or objective_for(settings, init_dir, reference_dir)
        self.objective.attach(self)
        self.metric_fields = METRIC_FIELDS + list(self.objective.metric_fields)

        self._build_accelerator()
        torch.manual_seed(self.seed + self.acc.process_index)  # dropout; restored from checkpoints on resume
        self._read_tokenizer(tokenizer_dir)
        self._load_datasets(train_shards, val_shards)
        model = self._build_model(init_dir)
        self._prepare(model)
        self._build_meta(model, tokenizer_dir, init_dir)
        self._stop_signal: int | None = None
        self.nonfinite_streak = 0  # consecutive skipped steps up to now (checkpointed, so a resume counts on)
        self.skipped_steps = 0  # all skipped steps of the run

    # -- building ---------------------------------------------------------------------------------
    def _build_accelerator(self) -> None:
        """accelerate with the run's precision, accumulation, DeepSpeed plugin and trackers."""
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin

        settings = self.s
        precision = settings.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "fp32"
        # accumulation needs the process count, which the launcher puts in the environment
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        self.accum = settings.accumulation_steps(processes)
        plugin = None
        if settings.deepspeed:
            plugin = DeepSpeedPlugin(hf_ds_config=self._deepspeed_config(settings.deepspeed, precision))
        check_trackers(settings.log_with)
        self.acc = Accelerator(
            mixed_precision="bf16" if precision == "bf16" else "no",
            gradient_accumulation_steps=self.accum,
            deepspeed_plugin=plugin,
            cpu=not torch.cuda.is_available(),
            log_with=settings.log_with or None,
            project_dir=str(self.tracker_dir),
        )
        if self.acc.num_processes != processes:
            raise RuntimeError(f"WORLD_SIZE {processes} but accelerate sees {self.acc.num_processes} processes")
        self.precision = precision
        self.micro = settings.micro_batch_size
        self.global_batch = settings.global_batch_size

    def _read_tokenizer(self, tokenizer_dir: str) -> None:
        """The ids the losses need: vocabulary size, mask, eos and (data: doc) pad."""
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        if tokenizer.mask_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(f"{tokenizer_dir}: the tokenizer needs mask_token and eos_token set")
        self.vocab_size, self.mask_id = len(tokenizer), tokenizer.mask_token_id
        self.eos_id = tokenizer.eos_token_id
        self.tokenizer_pad_id = tokenizer.pad_token_id
        # padded blocks (data: doc): pad positions are never masked and carry no loss (train/objectives.py)
        self.pad_id = None
        if self.s.data == "doc":
            self.pad_id = tokenizer.pad_token_id
            if self.pad_id is None or self.pad_id in (self.eos_id, self.mask_id):
                raise ValueError(
                    f"{tokenizer_dir}: data: doc needs a pad token of its own, the tokenizer has "
                    f"pad {tokenizer.pad_token!r} (eos {self.eos_id}, mask {self.mask_id})"
                )

    def _load_datasets(self, train_shards: list[str], val_shards: list[str]) -> None:
        """The objective's rows (read per batch from uncompressed cache files, train/data.py, built once by the
        main process), their order per step, and the noise schedule."""
        with self.acc.main_process_first():
            self.train_data = self.objective.load_data(train_shards)
            self.val_data = self.objective.load_data(val_shards)
        self.order = BatchOrder(len(self.train_data), self.global_batch, self.seed)
        self.noise = get_noise(self.s.noise)

    def _build_model(self, init_dir: str | None):
        """The backbone, with pretrained weights (pretrained:) or a model folder's (--init) when given."""
        settings = self.s
        spec = dict(settings.backbone)
        if spec["kind"] == "masked_lm" and spec.get("config") and "pad_token_id" not in spec["config"]:
            # the masked LM's padding_idx gets no gradient: make it our pad token, not whatever id 0 is (EOS in
            # the pipeline's BPE, and SFT trains the EOS fill)
            spec["config"] = {**spec["config"], "pad_token_id": self.tokenizer_pad_id}
        self.backbone_spec = spec
        model = build_backbone(
            spec,
            self.vocab_size,
            settings.model,
            settings.dropout,
            causal=settings.objective == "ar",
            fused=settings.fused,
        )
        mlm = getattr(model, "mlm", None)
        if mlm is not None and hasattr(mlm, "weights_not_in_checkpoint"):
            self.say(
                f"pretrained masked LM {spec['name']}: {len(mlm.weights_not_in_checkpoint)} weight(s) not in the "
                f"checkpoint, newly initialised: {mlm.weights_not_in_checkpoint}; checkpoint weights unused: "
                f"{mlm.checkpoint_weights_unused}"
            )
        elif spec["kind"] == "masked_lm" and spec.get("name") is not None:  # weights: random (check_spec)
            self.say(
                f"masked LM {spec['name']} with random weights: its architecture (AutoConfig), transformers' own "
                f"init, no checkpoint weight read"
            )
        if settings.pretrained:
            from train.pretrained import load_pretrained

            report = load_pretrained(model, settings.pretrained, settings.pretrained_format)
            self.say(f"pretrained start: {report}")
        if init_dir:
            previous, _ = load_model(init_dir)
            load_state_strict(model, previous.state_dict(), f"--init {init_dir}")
        return model

    def _prepare(self, model) -> None:
        """Model and AdamW prepared by accelerate, the EMA registered for checkpoints, then the objective's
        own modules (build), each with its optimizer prepared in turn: accelerate numbers them model_1, ..."""
        # fused AdamW (one kernel per step on CPU and CUDA); DeepSpeed brings its own optimizer path
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=self.s.lr,
            betas=(0.9, 0.999),
            weight_decay=self.s.weight_decay,
            fused=not self.s.deepspeed,
        )
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.ema = EMA(self.acc.unwrap_model(self.model), self.s.ema)
        self.acc.register_for_checkpointing(self.ema)
        self.extras: list[ExtraModule] = self.objective.build(self.acc.unwrap_model(self.model))
        for extra in self.extras:  # the objective keeps the same ExtraModule objects, now prepared
            extra.module, extra.optimizer = self.acc.prepare(extra.module, extra.optimizer)

    def _build_meta(self, model, tokenizer_dir: str, init_dir: str | None) -> None:
        """config.json of the model folder: the settings that made it, then the objective's own keys."""
        settings = self.s
        self.meta = {
            **backbone_meta(model, self.backbone_spec),
            # what validation scores and the model folder's parameterization: atat trains the mdlm network
            "objective": "mdlm" if settings.objective == "atat" else settings.objective,
            "noise": dict(settings.noise),
            "training_objective": settings.objective,
            "atat": settings.atat,
            "stage": settings.stage,
            "prefix_len": self.prefix_len,
            "target_len": self.target_len,
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "eos_id": self.eos_id,
            # the AR model reads [bos ; block] with bos = eos, so every block token is predicted
            "bos_id": self.eos_id,
            "tokenizer": str(tokenizer_dir),
            "run": self.run_name,
            "kind": self.kind,
            "time_conditioning": model.time_conditioning,
            "method": settings.method,
            "data": settings.data,
            "pad_id": self.pad_id,
            "steps": self.max_steps,
            "init": init_dir,
            "pretrained": settings.pretrained,
            "settings_digest": settings.digest(),
            "code_commit": code_commit(),
            "train": settings.computing(),
        }
        self.meta.update(self.objective.meta())

    def _deepspeed_config(self, path: str, precision: str) -> dict:
        """The ZeRO config file with its batch / clipping / precision fields set from the run (one truth)."""
        try:
            ds = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the DeepSpeed config ({err})") from None
        ds.update(
            train_micro_batch_size_per_gpu=self.s.micro_batch_size,
            gradient_accumulation_steps=self.accum,
            train_batch_size=self.s.global_batch_size,
            gradient_clipping=self.s.grad_clip,
        )
        ds["bf16"] = {"enabled": precision == "bf16"}
        return ds

    def _nonfinite(self, loss_sum: torch.Tensor, grad_norm: float | None) -> list[str]:
        """Which of loss / grad_norm is non-finite on any process: every process gets the same answer, so they
        all skip the same steps (the grad norm is global already; the loss is per process)."""
        bad_loss = not bool(torch.isfinite(loss_sum))
        bad_norm = grad_norm is not None and not math.isfinite(grad_norm)
        flags = torch.tensor([bad_loss, bad_norm], dtype=torch.float32, device=self.acc.device)
        if self.acc.num_processes > 1:
            flags = self.acc.reduce(flags, reduction="sum")
        return [name for name, flag in zip(("loss", "grad_norm"), flags.tolist()) if flag]

    def train_step(self, step: int) -> StepResult:
        """One optimizer step on the global batch of `step`, skipped (no update) when the loss or the gradient
        norm is non-finite. Micro-batch a of this process (process p of P) is the slice starting at
        (a P + p) x micro of the objective's draw; the model and the objective's extra modules accumulate their
        gradients over the `accum` micro-batches, then are clipped and stepped together."""
        for optimizer, lr in [(self.optimizer, self.s.lr)] + [(e.optimizer, e.lr) for e in self.extras]:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, lr, self.s.warmup_steps, self.max_steps)
        draw = self.objective.begin_step(step)
        self.model.train()
        total, grad_norm, nonfinite = torch.zeros((), device=self.acc.device), None, []
        models = (self.model, *(e.module for e in self.extras))
        optimizers = (self.optimizer, *(e.optimizer for e in self.extras))
        collected: dict[str, list[torch.Tensor]] = {}
        for a in range(self.accum):
            start = (a * self.acc.num_processes + self.acc.process_index) * self.micro
            with self.acc.accumulate(*models):
                loss, auxiliary, metrics = self.objective.micro_batch_loss(
                    self.model, draw, slice(start, start + self.micro)
                )
                # an extra module's loss is on its own parameters: each gets its own gradient
                self.acc.backward(loss if auxiliary is None else loss + auxiliary)
                total += loss.detach().float()
                for key, value in (metrics or {}).items():
                    collected.setdefault(key, []).append(value)
                if self.acc.sync_gradients:  # the last micro step: the whole batch's gradient is in
                    norm = self.acc.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
                    grad_norm = float(norm) if norm is not None else None
                    for extra in self.extras:
                        self.acc.clip_grad_norm_(extra.module.parameters(), self.s.grad_clip)
                    nonfinite = self._nonfinite(total, grad_norm)
                    if not nonfinite:
                        for optimizer in optimizers:
                            optimizer.step()
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
        mean = self.acc.reduce(total / self.accum, reduction="mean")
        if not nonfinite:
            self.ema.update(self.acc.unwrap_model(self.model))
        return StepResult(
            float(mean), grad_norm, nonfinite, {**self.mean_metrics(collected), **self.objective.end_step()}
        )

    def mean_metrics(self, collected: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """The objective's metrics over the global batch, rounded to 6 decimals: per column, the mean of this
        process's values (per example or per micro-batch, concatenated in the dtype given), then the mean over
        processes (each holds an equal share of the batch, so the mean of means is the global mean)."""
        keys = [k for k in self.objective.metric_fields if k in collected]
        if not keys:
            return {}
        means = torch.stack([torch.cat([v.reshape(-1) for v in collected[k]]).mean().double() for k in keys])
        if self.acc.num_processes > 1:
            means = self.acc.reduce(means, reduction="mean")
        return {k: round(float(v), 6) for k, v in zip(keys, means)}

    @property
    def tokens_per_step(self) -> int:
        """Tokens the network reads per optimizer step (metrics.csv `tokens` counts them; the objective's count)."""
        return self.objective.tokens_per_step()

    @property
    def data_cache(self) -> Path:
        return self.out / "data-cache"

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def tracker_dir(self) -> Path:
        return self.out / "tracker"

    def checkpoints(self) -> list[Path]:
        """Finished checkpoint folders, oldest first (the zero-padded step sorts by name)."""
        return sorted(p for p in self.ckpt_root.glob("step_*") if p.is_dir())

    def _expected_files(self) -> list[str]:
        """What accelerate's save_state writes for this run (DeepSpeed lays the model and optimizer out its own way)."""
        names = ["custom_checkpoint_0.pkl"] + [f"random_states_{i}.pkl" for i in range(self.acc.num_processes)]
        if not self.s.deepspeed:
            names += ["model.safetensors", "optimizer.bin"]
        for i in range(1, len(self.extras) + 1):  # the objective's modules: accelerate numbers them after the model
            names += [f"model_{i}.safetensors", f"optimizer_{i}.bin"]
        return [STATE_FILE] + names

    def choose_checkpoint(self) -> Path | None:
        """The newest checkpoint this run can resume from. Each newer one that it cannot use is named in the
        log with the reason and removed (a later save of the same step must not find it in the way)."""
        passed_over, chosen = [], None
        for folder in reversed(self.checkpoints()):
            problem = checkpoint_problem(folder, self.s, self._expected_files())
            if problem is None:
                chosen = folder
                break
            self.acc.print(f"warning: not resuming from {folder}: {problem}")
            passed_over.append(folder)
        if chosen is None and passed_over:
            self.acc.print(f"warning: no usable checkpoint in {self.ckpt_root}; training from step 0")
        self.acc.wait_for_everyone()  # every process has judged the folders before any is removed
        if self.acc.is_main_process:
            for folder in passed_over:
                shutil.rmtree(folder)
        self.acc.wait_for_everyone()
        return chosen

    def resume(self) -> tuple[int, float]:
        """(step, seconds) of the chosen checkpoint with its state loaded, or (0, 0.0) for a fresh start; then the
        objective's after_resume."""
        step, seconds = self._load_checkpoint()
        self.objective.after_resume()
        return step, seconds

    def _load_checkpoint(self) -> tuple[int, float]:
        folder = self.choose_checkpoint()
        if folder is None:
            self.metrics = []
            return 0, 0.0
        try:
            self.acc.load_state(str(folder))
        except Exception as err:  # noqa: BLE001 - re-raised with the folder named
            raise RuntimeError(f"{folder}: cannot load the checkpoint ({type(err).__name__}: {err})") from err
        state = read_trainer_state(folder)
        step, seconds = int(state["step"]), float(state["seconds"])
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.metrics = self._load_metrics(step)
        self.acc.print(f"resuming from {folder} (step {step})")
        return step, seconds

    def _trainer_state(self, step: int, seconds: float) -> dict:
        return {
            "step": step,
            "seconds": seconds,
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_steps": self.skipped_steps,
            "settings_digest": self.s.digest(),
            "settings": as_json(self.s.computing()),
        }

    def save_checkpoint(self, step: int, seconds: float) -> None:
        final = self.ckpt_root / f"step_{step:08d}"
        if final.exists():
            return
        tmp = self.ckpt_root / f".tmp-step_{step:08d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(self._trainer_state(step, seconds), indent=2) + "\n")
            self._flush_metrics()
            os.replace(tmp, final)
            for old in self.checkpoints()[:-CHECKPOINTS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    # -- metrics ---------------------------------------------------------------------------------
    @property
    def partial_metrics(self) -> Path:
        return self.ckpt_root / "metrics.csv"

    def _load_metrics(self, upto_step: int) -> list[dict]:
        if not self.partial_metrics.is_file():
            return []
        with open(self.partial_metrics) as f:
            return [r for r in csv.DictReader(f) if int(r["step"]) <= upto_step]

    def _flush_metrics(self) -> None:
        """Rows so far, beside the checkpoints; on resume only rows up to the checkpoint's step are kept."""
        write_metrics_csv(self.partial_metrics, self.metrics, self.metric_fields)

    def _log(self, **row) -> None:
        """A metrics.csv row, and the same numbers to the trackers (as split/quantity, e.g. train/loss)."""
        self.metrics.append({k: row.get(k, "") for k in self.metric_fields})
        numeric = {"loss", "lr", "grad_norm"} | (set(self.metric_fields) - set(METRIC_FIELDS))
        scalars = {
            f"{row['split']}/{k}": float(v) for k, v in row.items() if k in numeric and v is not None and v != ""
        }
        if row["split"] == "train":
            scalars["train/skipped"] = float(bool(row.get("skipped")))
        self.acc.log(scalars, step=row["step"])

    def _start_trackers(self, step: int) -> None:
        if not self.s.log_with:
            return
        self.tracker_dir.mkdir(parents=True, exist_ok=True)
        config = flat_config({**self.s.to_dict(), "digest": self.s.digest()})
        self.acc.init_trackers(
            f"{self.s.run}-{self.s.name}",
            config=config,
            init_kwargs=tracker_init_kwargs(self.s.log_with, self.tracker_dir, step),
        )

    # -- divergence ------------------------------------------------------------------------------
    def _diverged(self, step: int, what: str) -> TrainingDiverged:
        """The error for a diverged run; the metrics so far go beside the kept checkpoints for a post-mortem."""
        if self.acc.is_main_process:
            self._flush_metrics()
        kept = self.checkpoints()
        return TrainingDiverged(
            f"{self.out}: training diverged at step {step}: {what}. No model written; "
            f"{'last checkpoint kept: ' + str(kept[-1]) if kept else 'no checkpoint was written yet'}; "
            f"metrics so far: {self.partial_metrics}. Lower train.lr or raise warmup_steps / grad_clip."
        )

    def say(self, message: str) -> None:
        """A log line from the main process, written above the progress bar (tqdm.write) so it starts a line."""
        from tqdm.auto import tqdm

        if self.acc.is_main_process:
            tqdm.write(message)

    def _count_nonfinite(self, step: int, result: StepResult) -> None:
        """Count a skipped step; more than max_nonfinite_steps in a row is divergence."""
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        norm = "not reported" if result.grad_norm is None else f"{result.grad_norm:.4g}"
        values, quantity = f"loss {result.loss:.4g}, grad_norm {norm}", " and ".join(result.nonfinite)
        if self.nonfinite_streak > self.s.max_nonfinite_steps:
            first = step - self.nonfinite_streak + 1
            raise self._diverged(
                step,
                f"non-finite {quantity} ({values}) on {self.nonfinite_streak} consecutive "
                f"steps ({first} to {step}), more than max_nonfinite_steps = "
                f"{self.s.max_nonfinite_steps}",
            )
        self.say(
            f"warning: step {step}: non-finite {quantity} ({values}); update skipped "
            f"({self.nonfinite_streak} in a row of at most {self.s.max_nonfinite_steps})"
        )

    def _validate_at(self, step: int, seconds: float, tokens: int) -> float:
        row = self.objective.validation_row()
        val = row["loss"]
        self._log(step=step, split="val", tokens=tokens, seconds=round(seconds, 3), **row)
        if not math.isfinite(val):
            raise self._diverged(step, f"non-finite validation loss ({val}) of the EMA weights")
        return val

    # -- the loop --------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        flag = torch.tensor([0 if self._stop_signal is None else 1], device=self.acc.device)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        return bool(flag.item())

    def run(self, on_step: Callable[[int], None] | None = None) -> int:
        """Train to max_steps (resuming from the newest usable checkpoint); 0 when done, EXIT_PREEMPTED on a
        signal; TrainingDiverged when the loss or gradient stays non-finite. SIGTERM and SIGUSR1 request a stop
        while it runs; their previous handlers are back when it returns or raises (an in-process caller, e.g.
        pytest, keeps its own)."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        for sig in previous:
            signal.signal(sig, self._request_stop)
        try:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            self.acc.print(
                f"{self.run_name} {self.s.name}: {self.acc.unwrap_model(self.model).num_params():,} "
                f"parameters; max_steps from {self.s.steps_source}; settings (digest "
                f"{self.s.digest()}):\n{self.s.describe()}"
            )
            step, seconds = self.resume()
            self._start_trackers(step)
            try:
                return self._train(step, seconds, on_step)
            finally:
                self.acc.end_training()
        finally:
            for sig, handler in previous.items():
                # None: a handler not installed from Python; SIG_DFL is the closest that signal.signal accepts
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def _train(self, step: int, seconds: float, on_step: Callable[[int], None] | None) -> int:
        from tqdm.auto import tqdm

        if step == 0 and self.s.eval_every:
            self._validate_at(0, 0.0, 0)
        with tqdm(
            total=self.max_steps,
            initial=step,
            disable=not self.acc.is_main_process,
            dynamic_ncols=True,
            desc=f"train {self.run_name or ''} stage {self.meta['stage']}",
            mininterval=1,
        ) as bar:
            stopped_at = self._loop(step, seconds, bar, on_step)
        if stopped_at is not None:
            self.acc.print(
                f"signal {self._stop_signal}: checkpoint at step {stopped_at} written, exiting "
                f"{EXIT_PREEMPTED} so the job is requeued and resumes"
            )
            return EXIT_PREEMPTED
        self.finish()
        return 0

    def _loop(self, step: int, seconds: float, bar, on_step: Callable[[int], None] | None) -> int | None:
        """Steps from `step` to max_steps; returns the step at which a signal stopped it, None when done."""
        tokens_per_step = self.tokens_per_step
        eval_every, save_every = self.s.eval_every, self.s.save_every
        clock = time.perf_counter() - seconds
        while step < self.max_steps:
            result = self.train_step(step)
            step += 1
            seconds = time.perf_counter() - clock
            self._log(
                step=step,
                split="train",
                loss=result.loss,
                grad_norm=result.grad_norm,
                seconds=round(seconds, 3),
                lr=self.optimizer.param_groups[0]["lr"],
                tokens=step * tokens_per_step,
                skipped=" ".join(result.nonfinite),
                **result.extras,
            )
            if result.nonfinite:
                self._count_nonfinite(step, result)
            else:
                self.nonfinite_streak = 0
            if eval_every and (step % eval_every == 0 or step == self.max_steps):
                val = self._validate_at(step, seconds, step * tokens_per_step)
                bar.set_postfix(loss=f"{result.loss:.3f}", val=f"{val:.3f}")
            elif step % 10 == 0:
                bar.set_postfix(loss=f"{result.loss:.3f}")
            bar.update(1)
            stop = self._stop_requested()
            if stop or step == self.max_steps or (save_every and step % save_every == 0):
                self.save_checkpoint(step, seconds)
            if on_step is not None:
                on_step(step)
            if stop:
                return step
        return None

    def finish(self) -> None:
        """Write the declared outputs: EMA weights, config.json, metrics.csv (each atomically); then remove the
        checkpoints, which only an unfinished run needs (a forced rerun must train from step 0)."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.model)
            write_metrics_csv(self.out / "metrics.csv", self.metrics, self.metric_fields)
            self.objective.write_outputs(self.out)  # before save_model, whose config.json (written last) marks done
            save_model(self.out, self.ema.weights(model), self.meta)
            shutil.rmtree(self.ckpt_root)
            shutil.rmtree(self.data_cache, ignore_errors=True)  # decoded shards, needed only while training
        if self.skipped_steps:
            self.acc.print(
                f"finished with {self.skipped_steps} step(s) skipped for a non-finite loss or gradient "
                f"norm (metrics.csv column 'skipped')"
            )
        self.acc.wait_for_everyone()


def write_metrics_csv(path: Path, rows: list[dict], fields: list[str] = METRIC_FIELDS) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
