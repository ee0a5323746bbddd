r"""Diffusion-DPO: preference tuning of a masked diffusion LM against a frozen reference (runs of kind dpo).

The score of an answer y to a prompt x is its masked-diffusion ELBO (nats; higher = more likely under the model),
estimated with n draws, each one diffusion time and one mask:

    B_theta(y | x) = -(1/n) sum_{j=1..n} sum_{i in y, masked at draw j} w(t_j) * -log p_theta(y_i | x, y_{t_j}),
    w(t) = sigma'(t) / expm1(sigma(t))  (= 1/t under the loglinear schedule; train/objectives.sequence_nelbo)

The prompt stays clean and only the final answer's tokens (with its EOS fill) are masked and scored
(preprocess/preference.py's masks), as in SFT. Each draw j has its own time, stratified over (0, 1]:
t_j = eps + (1 - eps) (j + v) / n with one v ~ U(0, 1) per pair, and one mask (a uniform per position: masked iff
u_i < 1 - exp(-sigma(t_j))). At a fixed budget of n network calls, n times with one mask each has a lower variance
than few times with many masks each (VRPO, LLaDA 1.5): most of the variance is across times. bench/dpo_step.py
measures both.

Shared draws. Policy and reference score each answer with the same (t_j, u_j), and chosen and rejected of a pair
share them too (the uniforms fall on each answer's own positions). The preference score

    h = (B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))

is then a difference of estimates whose noise mostly cancels: with policy = reference it is exactly 0 whatever
the draws, so at step 0 the loss is exactly ln 2 (tests/test_dpo.py), and its variance during training is far
below that of independent draws (bench/README.md).

Losses (dpo.loss), per pair, averaged over the batch:

    sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)      (DPO; eps = dpo.label_smoothing, cDPO)
    ipo      (h - 1 / (2 beta))^2                                            (IPO; no label smoothing: refused)
    + alpha * (-B_theta(y_w)) / |y_w|     with dpo.sft_weight = alpha > 0: the chosen answer's NELBO per answer
                                          token (the NLL term of RPO), so the chosen answers stay likely while the
                                          margin grows (logged as nll_loss)

Logged per step with TRL's names (means over the global batch): rewards/chosen = beta (B_theta(y_w) - B_ref(y_w)),
rewards/rejected = beta (B_theta(y_l) - B_ref(y_l)), rewards/margins = their difference, rewards/accuracies = the
share of pairs with rewards/chosen > rewards/rejected, logps/chosen and logps/rejected = B_theta (the policy's
ELBO of the answer, nats), beside lr, grad_norm and memory_mb (peak: CUDA allocated, else the process's RSS).

Draws of pair p in epoch e come from a generator seeded by (seed, p, e): the same whichever step, process or
micro-batch handles it. So a resumed run sees the same draws, and the reference's scores can be computed once
before training (dpo.cache_reference: a progress bar, then the reference model is freed; the scores are kept
beside the checkpoints under the settings digest) and equal, draw for draw, what each step would compute.

The reference is frozen: dpo.reference (a model folder), else init_from's model folder, the policy's start. The
policy's dropout is off (as TRL's disable_dropout): policy and reference must score alike on the same draws.
Micro batches count pairs: one forward holds 2 x micro_batch_size x n answers.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from train.checkpoint import load_model
from train.data import RowStore, load_columns
from train.objective import MicroLoss, Objective
from train.objectives import sequence_nelbo

LOSSES = ("sigmoid", "ipo")
SAMPLING_EPS = 1e-3  # smallest diffusion time: w(t) = 1/t diverges at 0 (train/noise.sample_times uses the same)
# per-pair quantities, logged as means over the batch (preference_metrics, plus nll_loss); then the peak memory
PAIR_FIELDS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
]
DPO_FIELDS = PAIR_FIELDS + ["memory_mb"]
PAIR_COLUMNS = ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
REFERENCE_CACHE = "reference_scores.pt"
VALIDATION_STREAM = 1  # the held-out pairs' draws: a stream of their own, fixed for the run


# ----------------------------------------------------------------------------------------------------------
# The method: draws, scores, loss


def pair_draws(
    seed: int, pairs: torch.Tensor, epochs: torch.Tensor, n: int, length: int, stream: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Times t [m, n] (stratified, module docstring) and per-position uniforms u [m, n, length] of pairs `pairs`
    in epochs `epochs` (both [m]); a pure function of (seed, pair, epoch, stream)."""
    times, uniforms = [], []
    for pair, epoch in zip(pairs.tolist(), epochs.tolist()):
        key = (((seed * 1_000_003 + pair) * 1_000_033 + epoch) * 4 + stream) % (2**63)
        gen = torch.Generator().manual_seed(key)
        v = torch.rand(1, generator=gen)
        times.append(SAMPLING_EPS + (1 - SAMPLING_EPS) * (torch.arange(n) + v) / n)
        uniforms.append(torch.rand(n, length, generator=gen))
    return torch.stack(times), torch.stack(uniforms)


def answer_scores(
    model, ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, u: torch.Tensor, noise, mask_id: int
) -> torch.Tensor:
    """B(y | x) of each row (module docstring): ids, mask [R, L] (answer positions True), t [R, n], u [R, n, L]
    -> float32 [R], the mean over the n draws of -sequence_nelbo, in one network call of R x n rows."""
    rows, n = t.shape
    x0 = ids.repeat_interleave(n, dim=0)
    maskable = mask.repeat_interleave(n, dim=0)
    nelbo = sequence_nelbo(model, x0, t.reshape(-1), u.reshape(rows * n, -1), noise, mask_id, maskable)
    return -nelbo.view(rows, n).mean(1)


def pair_scores(model, chosen, chosen_mask, rejected, rejected_mask, t, u, noise, mask_id):
    """(B(y_w), B(y_l)) [m] each: chosen and rejected of a pair share its draws; one network call for both."""
    m = chosen.shape[0]
    scores = answer_scores(
        model,
        torch.cat([chosen, rejected]),
        torch.cat([chosen_mask, rejected_mask]),
        torch.cat([t, t]),
        torch.cat([u, u]),
        noise,
        mask_id,
    )
    return scores[:m], scores[m:]


def preference_loss(h: torch.Tensor, beta: float, loss: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss of the preference score h (module docstring): sigmoid (label-smoothed DPO) or ipo, which has
    no label smoothing (label_smoothing > 0 with it is an error; common.config refuses the config first)."""
    if loss == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if loss == "ipo":
        if label_smoothing > 0:
            raise ValueError(
                f"dpo.loss 'ipo' has no label smoothing; expected dpo.label_smoothing 0, got {label_smoothing}"
            )
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"dpo.loss must be one of {LOSSES}, got {loss!r}")


def preference_metrics(
    beta: float, chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> dict[str, torch.Tensor]:
    """TRL's per-pair quantities (module docstring), [m] each; the logged values are their means."""
    reward_chosen, reward_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return {
        "rewards/chosen": reward_chosen,
        "rewards/rejected": reward_rejected,
        "rewards/margins": reward_chosen - reward_rejected,
        "rewards/accuracies": (reward_chosen > reward_rejected).float(),
        "logps/chosen": chosen,
        "logps/rejected": rejected,
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocated on a GPU, else the process's peak RSS (ru_maxrss, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class PairTensors:
    """The preference shards' canvases (preprocess/preference.py), rows read per batch."""

    chosen: RowStore
    chosen_mask: RowStore
    rejected: RowStore
    rejected_mask: RowStore

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, rows: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
        """(chosen, chosen answer mask, rejected, rejected answer mask) of `rows`: Long ids, Bool masks."""
        return (
            self.chosen[rows].long().to(device),
            (self.chosen_mask[rows] > 0).to(device),
            self.rejected[rows].long().to(device),
            (self.rejected_mask[rows] > 0).to(device),
        )


def load_pairs(shards: list[str], length: int, vocab_size: int | None, cache_dir) -> PairTensors:
    columns = {c: length for c in PAIR_COLUMNS}
    stores = load_columns(shards, columns, vocab_size, cache_dir, id_columns=["chosen_ids", "rejected_ids"])
    return PairTensors(*(stores[c] for c in PAIR_COLUMNS))


# ----------------------------------------------------------------------------------------------------------
# The objective in the trainer


class PairDraw(NamedTuple):
    """A step's global batch of pairs: the step, rows [G] of the pair data and their epochs [G] (the draws of
    pair p in epoch e are pair_draws')."""

    step: int
    rows: torch.Tensor
    epochs: torch.Tensor


class DPOObjective(Objective):
    """Kind dpo in train/trainer.py (the hooks of train/objective.py): preference pairs as data, the reference
    loaded beside the policy (build) and scored once for the held-out pairs and, with cache_reference, for every
    training pair (after_resume), the per-pair loss and TRL metrics per micro-batch, and the memory peak per step.
    Everything else (accelerate, accumulation, EMA, checkpoints and exact resume, signals, divergence, trackers)
    is the trainer's."""

    metric_fields = tuple(DPO_FIELDS)

    def __init__(self, settings, init_dir: str | None, reference_dir: str | None = None):
        if init_dir is None:
            raise ValueError(f"runs.{settings.run}: a dpo run starts from a model folder (--init, init_from)")
        super().__init__(settings)
        self.dpo = settings.dpo
        self.n = int(self.dpo["time_samples"])
        self.beta, self.loss_type = float(self.dpo["beta"]), self.dpo["loss"]
        self.label_smoothing = float(self.dpo["label_smoothing"])
        self.sft_weight = float(self.dpo["sft_weight"])
        # the rule passes the resolved folder (common.config.dpo_reference: a run name is that run's model folder)
        self.reference_dir = Path(reference_dir or self.dpo["reference"] or init_dir)
        self.reference = None
        self.reference_cache: torch.Tensor | None = None  # [max_steps x G, 2]: B_ref(y_w), B_ref(y_l) per position
        self.val_reference = None

    # -- data and reference ----------------------------------------------------------------------
    def load_data(self, shards):
        tr = self.trainer
        return load_pairs(shards, tr.target_len, tr.vocab_size, tr.data_cache)

    def tokens_per_step(self) -> int:
        """2 x G x target_len: chosen and rejected canvases (x n draws in the network)."""
        return 2 * self.trainer.global_batch * self.trainer.target_len

    def build(self, policy) -> list:
        """Dropout off in the policy, and the frozen reference loaded; nothing trained beside the policy."""
        disabled = disable_dropout(policy)
        if disabled:
            self.trainer.say(f"dpo: dropout off in {disabled} policy module(s), so policy and reference score alike")
        self.reference = self._load_reference(policy)
        return []

    def meta(self) -> dict:
        return {
            "dpo": {k: self.dpo[k] for k in ("beta", "loss", "label_smoothing", "sft_weight", "time_samples")},
            "reference": str(self.reference_dir),
        }

    def _load_reference(self, policy):
        tr = self.trainer
        reference, meta = load_model(self.reference_dir, tr.acc.device)
        if meta.get("vocab_size") != tr.vocab_size or meta.get("mask_id") != tr.mask_id:
            raise ValueError(
                f"{self.reference_dir}: the reference model has vocab_size {meta.get('vocab_size')} and "
                f"mask_id {meta.get('mask_id')}, the policy's tokenizer {tr.vocab_size} and "
                f"{tr.mask_id}: the reference must share the tokenizer"
            )
        reference.fused = getattr(policy, "fused", "auto")  # the same kernels as the policy: equal scores at step 0
        disable_dropout(reference)
        return reference.requires_grad_(False).eval()

    @torch.no_grad()
    def _reference_scores(self, data: PairTensors, rows: torch.Tensor, epochs: torch.Tensor, stream: int):
        """B_ref(y_w), B_ref(y_l) of `rows` with their draws."""
        tr = self.trainer
        t, u = pair_draws(self.s.seed, rows, epochs, self.n, tr.target_len, stream)
        chosen, chosen_mask, rejected, rejected_mask = data.batch(rows, tr.acc.device)
        with tr.acc.autocast():
            return pair_scores(
                self.reference,
                chosen,
                chosen_mask,
                rejected,
                rejected_mask,
                t.to(tr.acc.device),
                u.to(tr.acc.device),
                tr.noise,
                tr.mask_id,
            )

    def _score_positions(self, positions: torch.Tensor, desc: str) -> torch.Tensor:
        """Reference scores [len(positions), 2] of the training rows at global-batch positions (step x G + k),
        each process computing a share, summed across processes."""
        from tqdm.auto import tqdm

        tr = self.trainer
        acc = tr.acc
        out = torch.zeros(len(positions), 2, dtype=torch.float64, device=acc.device)
        chunk = tr.micro
        starts = list(range(0, len(positions), chunk))[acc.process_index :: acc.num_processes]
        for start in tqdm(starts, desc=desc, disable=not acc.is_main_process, mininterval=1):
            pos = positions[start : start + chunk]
            epochs = pos // tr.order.n
            rows = tr.order.rows_at(pos)
            chosen, rejected = self._reference_scores(tr.train_data, rows, epochs, stream=0)
            out[start : start + len(pos)] = torch.stack([chosen, rejected], 1).double()
        if acc.num_processes > 1:
            out = acc.reduce(out, reduction="sum")
        return out

    def after_resume(self) -> None:
        """Held-out reference scores (always once), and with cache_reference every training pair's, then the
        reference model is freed. The training cache is kept beside the checkpoints under the settings digest."""
        tr = self.trainer
        n_val = self._n_validation()
        rows = torch.arange(n_val)
        self.val_reference = self._reference_scores(tr.val_data, rows, torch.zeros_like(rows), VALIDATION_STREAM)
        if not self.s.dpo_cache_reference:
            return
        path = tr.ckpt_root / REFERENCE_CACHE
        total = tr.max_steps * tr.global_batch
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu")
                usable = saved.get("digest") == self.s.digest() and saved["scores"].shape == (total, 2)
            except Exception as err:  # noqa: BLE001 - a damaged cache is recomputed, and the log says why
                tr.say(
                    f"warning: {path}: cannot read the cached reference scores ({type(err).__name__}: {err}); "
                    f"scoring again"
                )
                usable = False
            if usable:
                self.reference_cache = saved["scores"].to(tr.acc.device)
                tr.say(f"dpo: reference scores of {total} training pairs read from {path}")
        if self.reference_cache is None:
            self.reference_cache = self._score_positions(torch.arange(total), "dpo reference scores")
            if tr.acc.is_main_process:
                tmp = path.with_suffix(".tmp")
                torch.save({"digest": self.s.digest(), "scores": self.reference_cache.cpu()}, tmp)
                tmp.replace(path)
        self.reference = None  # every score the run needs is in the cache: free the model
        if tr.acc.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- the step --------------------------------------------------------------------------------
    def pair_losses(self, model, data, rows, epochs, reference: tuple[torch.Tensor, torch.Tensor] | None, stream: int):
        """Per-pair loss and metrics of `rows` under `model`; reference scores given (cache) or computed."""
        tr = self.trainer
        t, u = pair_draws(self.s.seed, rows, epochs, self.n, tr.target_len, stream)
        chosen, chosen_mask, rejected, rejected_mask = data.batch(rows, tr.acc.device)
        t, u = t.to(tr.acc.device), u.to(tr.acc.device)
        policy_chosen, policy_rejected = pair_scores(
            model, chosen, chosen_mask, rejected, rejected_mask, t, u, tr.noise, tr.mask_id
        )
        if reference is None:
            reference = self._reference_scores(data, rows, epochs, stream)
        ref_chosen, ref_rejected = (r.to(policy_chosen.dtype) for r in reference)
        h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
        losses = preference_loss(h, self.beta, self.loss_type, self.label_smoothing)
        nll = -policy_chosen / chosen_mask.sum(1).clamp(min=1)  # the chosen answer's NELBO per answer token
        if self.sft_weight:
            losses = losses + self.sft_weight * nll
        metrics = preference_metrics(
            self.beta, policy_chosen.detach(), policy_rejected.detach(), ref_chosen, ref_rejected
        )
        metrics["nll_loss"] = nll.detach()
        return losses, metrics

    def begin_step(self, step: int) -> PairDraw:
        order = self.trainer.order
        return PairDraw(step, order.indices(step), order.epochs(step))

    def micro_batch_loss(self, model, draw: PairDraw, sl: slice) -> MicroLoss:
        """The mean pair loss of the micro-batch; the per-pair PAIR_FIELDS as its metrics."""
        reference = None
        if self.reference_cache is not None:
            cached = self.reference_cache[draw.step * self.trainer.global_batch + sl.start :][: sl.stop - sl.start]
            reference = (cached[:, 0], cached[:, 1])
        losses, metrics = self.pair_losses(
            model, self.trainer.train_data, draw.rows[sl], draw.epochs[sl], reference, stream=0
        )
        return MicroLoss(losses.mean(), metrics={k: v.float() for k, v in metrics.items()})

    def end_step(self) -> dict:
        return {"memory_mb": round(peak_memory_mb(self.trainer.acc.device), 1)}

    # -- validation ------------------------------------------------------------------------------
    def _n_validation(self) -> int:
        return min(len(self.trainer.val_data), self.s.eval_batches * self.trainer.global_batch)

    @torch.no_grad()
    def validation_row(self) -> dict:
        """The DPO loss and TRL metrics of the EMA policy on the first eval_batches x G held-out pairs, with
        draws fixed for the run (VALIDATION_STREAM) and the reference's scores computed once."""
        tr = self.trainer
        acc = tr.acc
        model = acc.unwrap_model(tr.model)
        n = self._n_validation()
        chunks = [slice(i, min(i + tr.micro, n)) for i in range(0, n, tr.micro)]
        sums = torch.zeros(1 + len(PAIR_FIELDS), dtype=torch.float64, device=acc.device)
        model.eval()
        with tr.ema.applied(model):
            for sl in chunks[acc.process_index :: acc.num_processes]:
                rows = torch.arange(n)[sl]
                reference = (self.val_reference[0][sl], self.val_reference[1][sl])
                with acc.autocast():
                    losses, metrics = self.pair_losses(
                        model, tr.val_data, rows, torch.zeros_like(rows), reference, VALIDATION_STREAM
                    )
                values = [losses.double().sum()] + [metrics[k].double().sum() for k in PAIR_FIELDS]
                sums += torch.stack(values)
        sums = acc.reduce(sums, reduction="sum")
        row = {"loss": float(sums[0] / n)}
        row.update({k: round(float(v / n), 6) for k, v in zip(PAIR_FIELDS, sums[1:])})
        row["memory_mb"] = round(peak_memory_mb(acc.device), 1)
        return row


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability to 0 (TRL's disable_dropout); returns how many modules had p > 0."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            module.p = 0.0
            count += 1
    return count
