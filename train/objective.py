"""What a training objective adds to the one training step of train/trainer.py: its data, its loss per
micro-batch, its metrics and validation, and anything it trains or keeps beside the model.

The trainer owns the loop: the lr schedule, accumulation over micro-batches and processes, gradient clipping,
the non-finite rule, the EMA, checkpoints, logging and when to validate. Per optimizer step s it calls

    draw = objective.begin_step(s)                        the global batch's rows and noise, drawn once
    for each micro-batch sl of this process:
        loss, auxiliary, metrics = objective.micro_batch_loss(model, draw, sl)
        backward(loss + auxiliary)                        auxiliary: a loss for the extra modules only
    row = means of `metrics` over the global batch  +  objective.end_step()

The hooks (Objective below; each has a default):

    metric_fields       more metrics.csv columns (a train row's are the means of micro_batch_loss's metrics)
    load_data(shards)   the rows a run reads                tokens_per_step()   metrics.csv `tokens` per step
    build(policy)       what it needs beside the model; returns the ExtraModules the trainer trains with it
                        (prepared by accelerate, clipped, stepped, zeroed, checkpointed like the model)
    begin_step(step)    the step's draws (and per-step state, e.g. ATAT's curriculum)
    micro_batch_loss    (model, draw, sl) -> MicroLoss      end_step()   per-step values not averaged
    validation_row()    the metrics.csv values of a validation of the EMA weights (at least `loss`)
    after_resume()      once the checkpoint is loaded (or a fresh start is chosen), before the first step
    write_outputs(out)  extra files of the model folder, written before config.json marks it done
    meta()              more config.json keys

LikelihoodObjective is the default: the per-token NELBO (mdlm, sedd; sft masks only answer tokens) or NLL (ar) of
train/objectives.py. train/atat.py's AtatObjective, train/dpo.py's DPOObjective and train/inserting.py's
InsertingObjective (inserting cascade stages) are the others; objective_for
picks one from the settings. (train/objectives.py holds the losses themselves.)

Determinism: step s's rows come from train/data.py's BatchOrder, its times, masks and prefix shuffles from
step_generator(seed, s), drawn for the whole global batch; a micro-batch is a slice of it, so a resumed run
and 1 or N processes see the same batches and noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from train.noise import sample_times
from train.objectives import ar_loss, diffusion_loss


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of step `step`'s draws (stream 0), or of a fixed set of draws (validation: step 0, stream 1)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)


@dataclass
class ExtraModule:
    """A module an objective trains beside the model with an AdamW of its own. The trainer prepares both with
    accelerate (so checkpoints hold them: model_1.safetensors, optimizer_1.bin, ...), sets the optimizer's lr by
    the model's schedule from base `lr`, clips the gradient to grad_clip, and steps (or, on a skipped step, does
    not step) and zeroes it with the model's."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr: float


class MicroLoss(NamedTuple):
    """One micro-batch: `loss` is backpropagated and logged (its mean over the global batch is metrics.csv's
    `loss`); `auxiliary` (or None) is added to the backward pass only (an extra module's own loss, on disjoint
    parameters); `metrics` (or None) {column: tensor of per-example values [m], or one value for the micro-batch}
    are averaged over the global batch (Trainer.mean_metrics)."""

    loss: torch.Tensor
    auxiliary: torch.Tensor | None = None
    metrics: dict | None = None


class Objective:
    """The hooks with their defaults (module docstring). `self.trainer` is set by attach() before any other hook
    runs: the trainer's settings (`s`), accelerator (`acc`), data, tokenizer ids and batch sizes."""

    metric_fields: tuple[str, ...] = ()

    def __init__(self, settings):
        self.s = settings
        self.trainer = None

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def load_data(self, shards: list[str]):
        raise NotImplementedError

    def tokens_per_step(self) -> int:
        raise NotImplementedError

    def build(self, policy: torch.nn.Module) -> list[ExtraModule]:
        return []

    def begin_step(self, step: int):
        raise NotImplementedError

    def micro_batch_loss(self, model, draw, sl: slice) -> MicroLoss:
        raise NotImplementedError

    def end_step(self) -> dict:
        return {}

    def validation_row(self) -> dict:
        raise NotImplementedError

    def after_resume(self) -> None:
        pass

    def write_outputs(self, out) -> None:
        pass

    def meta(self) -> dict:
        return {}


class StepDraw(NamedTuple):
    """A step's global batch: rows [G] of the training data, times t [G], uniforms u [G, target_len] and the prefix
    shuffle keys [G, prefix_len] (None without shuffle_prefix)."""

    rows: torch.Tensor
    t: torch.Tensor
    u: torch.Tensor
    keys: torch.Tensor | None


class LikelihoodObjective(Objective):
    """Objectives mdlm, sedd and ar (and kind sft: mdlm on the answer tokens): the loss is the micro-batch's
    per-token NELBO or NLL (train/objectives.py), validation its mean over the first eval_batches x G validation
    rows of the EMA weights."""

    def __init__(self, settings):
        super().__init__(settings)
        # what the network is trained and validated as: atat trains the mdlm network (train/atat.py)
        self.model_objective = "mdlm" if settings.objective == "atat" else settings.objective

    def load_data(self, shards: list[str]):
        """The rows of `shards` this run reads (train/data.py), checked against the vocabulary."""
        from train.data import load_stage_tensors

        t = self.trainer
        return load_stage_tensors(
            shards, self.s.stage, t.prefix_len, t.target_len, t.vocab_size, cache_dir=t.data_cache, data=self.s.data
        )

    def tokens_per_step(self) -> int:
        """Tokens the network reads per optimizer step: G x (prefix_len + target_len)."""
        t = self.trainer
        return t.global_batch * (t.prefix_len + t.target_len)

    def draw(self, gen: torch.Generator, n: int, shuffle: bool):
        """(t [n], u [n, target_len], prefix shuffle keys [n, prefix_len] or None) from `gen`, in this order."""
        t = sample_times(n, gen, antithetic=self.s.antithetic)
        u = torch.rand(n, self.trainer.target_len, generator=gen)
        prefix_len = self.trainer.prefix_len
        keys = torch.rand(n, prefix_len, generator=gen) if shuffle and prefix_len else None
        return t, u, keys

    def batch(self, data, rows: torch.Tensor, perm_keys: torch.Tensor | None):
        """(x0, prefix or None, answer mask or None) of `rows` on the device; perm_keys shuffle each prefix."""
        device = self.trainer.acc.device
        x0 = data.target[rows].long().to(device)
        prefix = None
        if data.prefix is not None:
            prefix = data.prefix[rows].long()
            if perm_keys is not None:  # small_shuffle: a random order of the prefix tokens per example
                prefix = prefix.gather(1, perm_keys.argsort(dim=1))
            prefix = prefix.to(device)
        # SFT: the answer tokens, the only positions masked and scored (prompt tokens stay clean)
        answer = data.answer[rows].to(device) > 0 if data.answer is not None else None
        return x0, prefix, answer

    def loss(self, model, x0, prefix, t, u, answer=None) -> torch.Tensor:
        """The per-token loss of one (micro-)batch: ar_loss, or diffusion_loss with the run's noise and pad."""
        tr = self.trainer
        if self.model_objective == "ar":
            return ar_loss(model, x0, tr.eos_id, tr.pad_id)
        return diffusion_loss(
            model,
            self.model_objective,
            x0,
            prefix,
            t.to(x0.device),
            u.to(x0.device),
            tr.noise,
            tr.mask_id,
            tr.pad_id,
            maskable=answer,
            normalization=self.s.sft_normalization or "token",
        )

    def begin_step(self, step: int) -> StepDraw:
        rows = self.trainer.order.indices(step)
        t, u, keys = self.draw(step_generator(self.s.seed, step), self.trainer.global_batch, self.s.shuffle_prefix)
        return StepDraw(rows, t, u, keys)

    def micro_batch_loss(self, model, draw: StepDraw, sl: slice) -> MicroLoss:
        keys = None if draw.keys is None else draw.keys[sl]
        x0, prefix, answer = self.batch(self.trainer.train_data, draw.rows[sl], keys)
        return MicroLoss(self.loss(model, x0, prefix, draw.t[sl], draw.u[sl], answer))

    def validation_row(self) -> dict:
        return {"loss": self.validate()}

    @torch.no_grad()
    def validation_sums(self, score, width: int) -> torch.Tensor:
        """Float64[width] sums over the first eval_batches x G validation rows, scored by the EMA weights with noise
        from a fixed generator (so every evaluation of a run scores the same corrupted batches): score(model, rows,
        t, u) -> Float64[width] of one micro-batch of rows; the micro-batches are shared among processes and the
        sums added across them."""
        tr = self.trainer
        acc = tr.acc
        model = acc.unwrap_model(tr.model)
        n = min(len(tr.val_data), self.s.eval_batches * tr.global_batch)
        t, u, _ = self.draw(step_generator(self.s.seed, 0, stream=1), n, shuffle=False)
        chunks = [slice(i, min(i + tr.micro, n)) for i in range(0, n, tr.micro)]
        total = torch.zeros(width, device=acc.device, dtype=torch.float64)
        model.eval()
        with tr.ema.applied(model):
            for sl in chunks[acc.process_index :: acc.num_processes]:
                total += score(model, torch.arange(n)[sl], t[sl], u[sl])
        return acc.reduce(total, reduction="sum")

    def validate(self) -> float:
        """Per-token NELBO (or NLL for AR) of the EMA weights on the validation rows (validation_sums): the mean
        over rows of each micro-batch's loss weighted by its row count."""
        tr = self.trainer

        def score(model, rows, t, u):
            x0, prefix, answer = self.batch(tr.val_data, rows, None)
            loss = self.loss(model, x0, prefix, t, u, answer)
            return torch.tensor([float(loss) * len(rows), len(rows)], device=tr.acc.device, dtype=torch.float64)

        total = self.validation_sums(score, 2)
        return float(total[0] / total[1])


def objective_for(settings, init_dir: str | None = None, reference_dir: str | None = None) -> Objective:
    """The objective of a run: kind dpo -> train/dpo.py's, objective atat -> train/atat.py's, an inserting cascade
    stage (stage_form insert, stage > 1) -> train/inserting.py's, else likelihood."""
    if settings.kind == "dpo":
        from train.dpo import DPOObjective

        return DPOObjective(settings, init_dir, reference_dir)
    if reference_dir is not None:
        raise ValueError(f"runs.{settings.run}: a reference model is for kind dpo, this run is kind {settings.kind}")
    if settings.objective == "atat":
        from train.atat import AtatObjective

        return AtatObjective(settings)
    if settings.stage_form == "insert":
        from train.inserting import InsertingObjective

        return InsertingObjective(settings)
    return LikelihoodObjective(settings)
