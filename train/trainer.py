"""The training loop: one stage of a cascade, a single-stage model, or the AR baseline, on accelerate.

    global batch G = micro_batch_size x processes x accumulation          (settings.accumulation_steps)
    lr(s)         = lr * (s + 1) / warmup                for s < warmup
                  = lr * (0.1 + 0.9 * (1 + cos(pi * p)) / 2),  p = (s - warmup) / (max_steps - warmup)
    optimizer     AdamW, gradients clipped to grad_clip (global norm), EMA of the weights after each step
    precision     bf16 autocast on CUDA, fp32 on CPU (precision: auto)

Determinism: the rows of step s (train/data.py BatchOrder) and its diffusion times and mask draws come from
generators seeded by (seed, s), drawn for the whole global batch; each process and accumulation step takes
its own slice. So a resumed run sees exactly the batches and noise an uninterrupted run would, and 1 or N
processes see the same global batch (their curves differ only by float summation order).

Checkpoints (`{out}/checkpoints/step_XXXXXXXX/`, the newest kept) hold accelerate's state (model, optimizer,
RNG states of every process), the EMA, and trainer_state.json (step, seconds); they are written under a
temporary name and renamed. A run finds the newest one and resumes from it. SIGTERM or SIGUSR1 (SLURM
preemption / time limit) finishes the current step, writes a checkpoint and exits with EXIT_PREEMPTED = 75
(EX_TEMPFAIL): non-zero, so Snakemake / SLURM treat the job as failed and requeue or retry it (use
--retries), and the rerun resumes. The declared outputs (model.safetensors, config.json, metrics.csv) are
written only when max_steps is reached.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import torch

from train.checkpoint import load_model, load_state_strict, save_model, write_text_atomic
from train.data import BatchOrder, load_stage_tensors
from train.ema import EMA
from train.model import DiffusionTransformer, ModelConfig
from train.noise import get_noise, sample_times
from train.objectives import ar_loss, diffusion_loss
from train.settings import TrainSettings

EXIT_PREEMPTED = 75
METRIC_FIELDS = ["step", "split", "loss", "lr", "tokens", "seconds", "grad_norm"]


def lr_at(step: int, lr: float, warmup: int, max_steps: int, final_ratio: float = 0.1) -> float:
    """Linear warm-up to lr, then cosine decay to final_ratio * lr at max_steps (formula in the module doc)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)


class Trainer:
    def __init__(self, settings: TrainSettings, train_shards: list[str], val_shards: list[str], tokenizer_dir: str,
                 out_dir: str, init_dir: str | None = None, run: str | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin
        from transformers import PreTrainedTokenizerFast

        self.s, self.out, self.run_name = settings, Path(out_dir), run
        self.objective, self.kind = settings.objective, settings.kind
        self.prefix_len, self.target_len = settings.prefix_len, settings.target_len
        self.max_steps = settings.max_steps
        self.seed = settings.seed

        precision = settings.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "fp32"
        # accumulation needs the process count, which the launcher puts in the environment
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        self.accum = settings.accumulation_steps(processes)
        plugin = None
        if settings.deepspeed:
            plugin = DeepSpeedPlugin(hf_ds_config=self._deepspeed_config(settings.deepspeed, precision))
        self.acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no",
                               gradient_accumulation_steps=self.accum, deepspeed_plugin=plugin,
                               cpu=not torch.cuda.is_available())
        if self.acc.num_processes != processes:
            raise RuntimeError(f"WORLD_SIZE {processes} but accelerate sees {self.acc.num_processes} processes")
        self.precision = precision
        self.micro = settings.micro_batch_size
        self.global_batch = settings.global_batch_size
        torch.manual_seed(self.seed + self.acc.process_index)  # dropout; restored from checkpoints on resume

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        if tokenizer.mask_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(f"{tokenizer_dir}: the tokenizer needs mask_token and eos_token set")
        self.vocab_size, self.mask_id = len(tokenizer), tokenizer.mask_token_id
        self.eos_id = tokenizer.eos_token_id
        stage = settings.stage
        self.train_data = load_stage_tensors(train_shards, stage, self.prefix_len, self.target_len, self.vocab_size)
        self.val_data = load_stage_tensors(val_shards, stage, self.prefix_len, self.target_len, self.vocab_size)
        self.order = BatchOrder(len(self.train_data), self.global_batch, self.seed)
        self.noise = get_noise(settings.noise)

        self.model_config = ModelConfig.from_size(settings.model, self.vocab_size,
                                                  dropout=settings.dropout,
                                                  causal=self.objective == "ar")
        model = DiffusionTransformer(self.model_config)
        if settings.pretrained:
            from train.pretrained import load_pretrained
            load_pretrained(model, settings.pretrained, settings.pretrained_format)
        if init_dir:
            previous, _ = load_model(init_dir)
            load_state_strict(model, previous.state_dict(), f"--init {init_dir}")
        # fused AdamW (one kernel per step on CPU and CUDA); DeepSpeed brings its own optimizer path
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.999),
                                      weight_decay=settings.weight_decay,
                                      fused=not settings.deepspeed)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.ema = EMA(self.acc.unwrap_model(self.model), settings.ema)
        self.acc.register_for_checkpointing(self.ema)

        self.meta = {
            "model": self.model_config.to_dict(), "objective": self.objective, "noise": dict(settings.noise),
            "stage": stage, "prefix_len": self.prefix_len, "target_len": self.target_len,
            "vocab_size": self.vocab_size, "mask_id": self.mask_id, "eos_id": self.eos_id,
            # the AR model reads [bos ; block] with bos = eos, so every block token is predicted
            "bos_id": self.eos_id, "tokenizer": str(tokenizer_dir), "run": run, "kind": self.kind,
            "time_conditioning": self.model_config.time_conditioning,
            "method": settings.method, "steps": self.max_steps, "init": init_dir,
            "pretrained": settings.pretrained, "settings_digest": settings.digest(),
            "train": settings.computing(),
        }
        self._stop_signal: int | None = None

    # -- pieces ---------------------------------------------------------------------------------
    def _deepspeed_config(self, path: str, precision: str) -> dict:
        """The ZeRO config file with its batch / clipping / precision fields set from the run (one truth)."""
        try:
            ds = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the DeepSpeed config ({err})") from None
        ds.update(train_micro_batch_size_per_gpu=self.s.micro_batch_size,
                  gradient_accumulation_steps=self.accum, train_batch_size=self.s.global_batch_size,
                  gradient_clipping=self.s.grad_clip)
        ds["bf16"] = {"enabled": precision == "bf16"}
        return ds

    def _batch(self, data, rows: torch.Tensor, perm_keys: torch.Tensor | None):
        x0 = data.target[rows].long().to(self.acc.device)
        prefix = None
        if data.prefix is not None:
            prefix = data.prefix[rows].long()
            if perm_keys is not None:  # small_shuffle: a random order of the prefix tokens per example
                prefix = prefix.gather(1, perm_keys.argsort(dim=1))
            prefix = prefix.to(self.acc.device)
        return x0, prefix

    def _loss(self, model, x0, prefix, t, u) -> torch.Tensor:
        if self.objective == "ar":
            return ar_loss(model, x0, self.eos_id)
        return diffusion_loss(model, self.objective, x0, prefix, t.to(x0.device), u.to(x0.device),
                              self.noise, self.mask_id)

    def _draw(self, gen: torch.Generator, n: int, shuffle: bool):
        t = sample_times(n, gen, antithetic=self.s.antithetic)
        u = torch.rand(n, self.target_len, generator=gen)
        keys = torch.rand(n, self.prefix_len, generator=gen) if shuffle and self.prefix_len else None
        return t, u, keys

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step on the global batch of `step`; returns (mean loss, grad norm)."""
        lr = lr_at(step, self.s.lr, self.s.warmup_steps, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows = self.order.indices(step)
        t, u, keys = self._draw(_step_generator(self.seed, step), self.global_batch,
                                self.s.shuffle_prefix)
        self.model.train()
        total, grad_norm = torch.zeros((), device=self.acc.device), float("nan")
        for a in range(self.accum):
            start = (a * self.acc.num_processes + self.acc.process_index) * self.micro
            sl = slice(start, start + self.micro)
            with self.acc.accumulate(self.model):
                x0, prefix = self._batch(self.train_data, rows[sl], None if keys is None else keys[sl])
                loss = self._loss(self.model, x0, prefix, t[sl], u[sl])
                self.acc.backward(loss)
                if self.acc.sync_gradients:
                    norm = self.acc.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
                    grad_norm = float(norm) if norm is not None else float("nan")
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach().float()
        mean = self.acc.reduce(total / self.accum, reduction="mean")
        self.ema.update(self.acc.unwrap_model(self.model))
        return float(mean), grad_norm

    @torch.no_grad()
    def validate(self) -> float:
        """Per-token NELBO (or NLL for AR) of the EMA weights on the first eval_batches x G validation rows,
        with noise from a fixed generator, so every evaluation of a run scores the same corrupted batches."""
        model = self.acc.unwrap_model(self.model)
        n = min(len(self.val_data), self.s.eval_batches * self.global_batch)
        gen = _step_generator(self.seed, 0, stream=1)
        t, u, _ = self._draw(gen, n, shuffle=False)
        chunks = [slice(i, min(i + self.micro, n)) for i in range(0, n, self.micro)]
        total = torch.zeros(2, device=self.acc.device, dtype=torch.float64)
        model.eval()
        with self.ema.applied(model):
            for sl in chunks[self.acc.process_index::self.acc.num_processes]:
                x0, prefix = self._batch(self.val_data, torch.arange(n)[sl], None)
                loss = self._loss(model, x0, prefix, t[sl], u[sl])
                total += torch.tensor([float(loss) * (sl.stop - sl.start), sl.stop - sl.start],
                                      device=self.acc.device, dtype=torch.float64)
        total = self.acc.reduce(total, reduction="sum")
        return float(total[0] / total[1])

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

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
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "seconds": seconds}))
            self._flush_metrics()
            os.replace(tmp, final)
            for old in self.ckpt_root.glob("step_*"):
                if old != final:
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
        write_metrics_csv(self.partial_metrics, self.metrics)

    def _log(self, **row) -> None:
        self.metrics.append({k: row.get(k, "") for k in METRIC_FIELDS})

    # -- the loop --------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        flag = torch.tensor([0 if self._stop_signal is None else 1], device=self.acc.device)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag, reduction="sum")
        return bool(flag.item())

    def run(self, on_step: Callable[[int], None] | None = None) -> int:
        """Train to max_steps (resuming from the newest checkpoint); 0 when done, EXIT_PREEMPTED on a signal."""
        from tqdm.auto import tqdm

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._request_stop)
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        self.acc.print(f"{self.run_name} {self.s.name}: {self.acc.unwrap_model(self.model).num_params():,} parameters; "
                       f"max_steps from {self.s.steps_source}; settings (digest {self.s.digest()}):\n"
                       f"{self.s.describe()}")
        step, seconds = 0, 0.0
        latest = self.latest_checkpoint()
        if latest is not None:
            self.acc.load_state(str(latest))
            state = json.loads((latest / "trainer_state.json").read_text())
            step, seconds = int(state["step"]), float(state["seconds"])
            self.acc.print(f"resuming from {latest} (step {step})")
        self.metrics = self._load_metrics(step)
        tokens_per_step = self.global_batch * (self.prefix_len + self.target_len)
        eval_every, save_every = self.s.eval_every, self.s.save_every
        if step == 0 and eval_every:
            self._log(step=0, split="val", loss=self.validate(), tokens=0, seconds=0.0)

        bar = tqdm(total=self.max_steps, initial=step, disable=not self.acc.is_main_process,
                   desc=f"train {self.run_name or ''} stage {self.meta['stage']}", dynamic_ncols=True, mininterval=1)
        clock = time.perf_counter() - seconds
        while step < self.max_steps:
            loss, grad_norm = self.train_step(step)
            step += 1
            seconds = time.perf_counter() - clock
            self._log(step=step, split="train", loss=loss, grad_norm=grad_norm, seconds=round(seconds, 3),
                      lr=self.optimizer.param_groups[0]["lr"], tokens=step * tokens_per_step)
            if eval_every and (step % eval_every == 0 or step == self.max_steps):
                val = self.validate()
                self._log(step=step, split="val", loss=val, tokens=step * tokens_per_step, seconds=round(seconds, 3))
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")
            elif step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
            stop = self._stop_requested()
            if stop or step == self.max_steps or (save_every and step % save_every == 0):
                self.save_checkpoint(step, seconds)
            if on_step is not None:
                on_step(step)
            if stop:
                bar.close()
                self.acc.print(f"signal {self._stop_signal}: checkpoint at step {step} written, exiting "
                               f"{EXIT_PREEMPTED} so the job is requeued and resumes")
                return EXIT_PREEMPTED
        bar.close()
        self.finish()
        return 0

    def finish(self) -> None:
        """Write the declared outputs: EMA weights, config.json, metrics.csv (each atomically)."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.model)
            write_metrics_csv(self.out / "metrics.csv", self.metrics)
            save_model(self.out, self.ema.weights(model), self.meta)
        self.acc.wait_for_everyone()


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
