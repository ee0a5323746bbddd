r"""The inserting stage form (stage_form: insert): cascade stage k > 1 keeps the l_{k-1} given tokens of stage
k-1 where they are in stage k and fills in the rest.

The canvas is x0 = stage{k}_ids [L], L = l_k; the given tokens y = stage{k-1}_ids sit at positions
P = stage{k-1}_pos [m], m = l_{k-1} (docs/contracts.md: x0[P] == y). The model of stage k is

    p(x0 | y) >= p(P | y) * p_theta(x0 outside P | y placed at P),

a placement law (train/placement.py: uniform or learned) times a masked diffusion model over the canvas whose
given positions are clean, told to the network (model(..., given=G), G = the indicator of P: the DiT marks them
with prefix_embed) and never masked, so only the L - m other positions are noised, predicted and scored. The
network reads only the canvas (L tokens, no prefix: the given tokens are in it), where a re-predicting stage
reads m + L. Its bound on -log p(x0, P | y), in nats per block:

    B_k = -log p(P | y)  +  NELBO_theta(x0 outside P | canvas with y at P),

the infill NELBO being MDLM's / SEDD's over the maskable positions (train/objectives.diffusion_loss with
given = G). Since stage k-1 and P are functions of the stage-3 block, sum_k B_k >= -log p(stage-3 block) as for
the re-predicting cascade (eval/likelihood.py); with the exact posterior and the true placement law, E[B_k] =
-log p(x0, P | y) (tests/test_inserting.py).

Training: the loss is the infill NELBO per inserted token (the sum over the masked non-given positions of the
training terms / the batch's L - m inserted tokens), the learned law's NLL per block an auxiliary loss for its own
AdamW (an ExtraModule, as train/atat.py's estimator), written to placement.safetensors. Stage 1 has no given
tokens and is trained by LikelihoodObjective in both forms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.objective import ExtraModule, LikelihoodObjective, MicroLoss, StepDraw, step_generator
from train.objectives import diffusion_loss

INSERT_FIELDS = ("infill_loss", "placement_nats")


@dataclass
class CanvasTensors:
    """The rows of an inserting stage: target Int32[N, L] (stage{k}_ids) and positions Int32[N, m]
    (stage{k-1}_pos), row stores of train/data.py."""

    target: object
    positions: object

    def __len__(self) -> int:
        return len(self.target)


def given_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """Bool[B, L]: True at the given positions Long[B, m] (checked: in range and strictly increasing)."""
    from train.placement import gaps_of

    gaps_of(positions, length)
    return torch.zeros(len(positions), length, dtype=torch.bool, device=positions.device).scatter_(1, positions, True)


class InsertingObjective(LikelihoodObjective):
    """Cascade stage k > 1 with stage_form insert (module docstring): the infill NELBO per inserted token as the
    loss, the placement NLL beside it (learned: trained as an ExtraModule)."""

    metric_fields = INSERT_FIELDS

    def __init__(self, settings):
        super().__init__(settings)
        self.law = None
        self.extra: ExtraModule | None = None

    def load_data(self, shards: list[str]) -> CanvasTensors:
        """stage{k}_ids [l_k] and stage{k-1}_pos [l_{k-1}] of every row (ids checked against the vocabulary)."""
        from train.data import load_columns

        t, k = self.trainer, self.s.stage
        target, positions = f"stage{k}_ids", f"stage{k - 1}_pos"
        stores = load_columns(
            shards, {target: t.target_len, positions: t.prefix_len}, t.vocab_size, t.data_cache, id_columns=[target]
        )
        return CanvasTensors(stores[target], stores[positions])

    def tokens_per_step(self) -> int:
        """Tokens the network reads per optimizer step: G x l_k (the canvas; no prefix)."""
        return self.trainer.global_batch * self.trainer.target_len

    def build(self, policy) -> list[ExtraModule]:
        """The placement law; a learned one with its own AdamW at the run's lr (no weight decay)."""
        from train.placement import LearnedPlacement, placement_law

        t = self.trainer
        self.law = placement_law(self.s.placement, t.vocab_size, t.target_len, t.prefix_len)
        if not isinstance(self.law, LearnedPlacement):
            return []
        optimizer = torch.optim.AdamW(self.law.parameters(), lr=self.s.lr, weight_decay=0.0)
        self.extra = ExtraModule(self.law, optimizer, self.s.lr)
        return [self.extra]

    def canvas(self, data: CanvasTensors, rows: torch.Tensor):
        """(x0 Long[B, L], given Bool[B, L], y Long[B, m] the given tokens, positions Long[B, m]) on the device."""
        device = self.trainer.acc.device
        x0 = data.target[rows].long().to(device)
        positions = data.positions[rows].long().to(device)
        return x0, given_mask(positions, x0.shape[1]), x0.gather(1, positions), positions

    def infill_loss(self, model, x0, given, t, u) -> torch.Tensor:
        """The infill NELBO per inserted token (diffusion_loss with the given positions clean and unscored)."""
        tr = self.trainer
        return diffusion_loss(
            model,
            self.model_objective,
            x0,
            None,
            t.to(x0.device),
            u.to(x0.device),
            tr.noise,
            tr.mask_id,
            tr.pad_id,
            given=given,
        )

    def placement_nats(self, y, positions) -> torch.Tensor:
        """-log p(positions | y) per block, Float[B] (the learned law through its prepared wrapper)."""
        law = self.extra.module if self.extra is not None else self.law
        return -law(y, positions)

    def begin_step(self, step: int) -> StepDraw:
        rows = self.trainer.order.indices(step)
        t, u, _ = self.draw(step_generator(self.s.seed, step), self.trainer.global_batch, shuffle=False)
        return StepDraw(rows, t, u, None)

    def micro_batch_loss(self, model, draw: StepDraw, sl: slice) -> MicroLoss:
        x0, given, y, positions = self.canvas(self.trainer.train_data, draw.rows[sl])
        loss = self.infill_loss(model, x0, given, draw.t[sl], draw.u[sl])
        nats = self.placement_nats(y, positions)
        auxiliary = nats.mean() if self.extra is not None else None
        metrics = {"infill_loss": loss.detach().double(), "placement_nats": nats.detach().double()}
        return MicroLoss(loss, auxiliary, metrics)

    @torch.no_grad()
    def validation_row(self) -> dict:
        """loss: the infill NELBO per inserted token of the EMA weights on the fixed validation draws (as
        LikelihoodObjective.validate, through validation_sums); placement_nats: the law's mean NLL per block on
        the same rows."""
        tr = self.trainer
        law = tr.acc.unwrap_model(self.extra.module) if self.extra is not None else self.law

        def score(model, rows, t, u):
            x0, given, y, positions = self.canvas(tr.val_data, rows)
            loss = self.infill_loss(model, x0, given, t, u)
            nats = float(-law.log_prob(y, positions).double().sum())
            return torch.tensor([float(loss) * len(rows), nats, len(rows)], device=tr.acc.device, dtype=torch.float64)

        was_training = getattr(law, "training", False)
        if was_training:
            law.eval()
        total = self.validation_sums(score, 3)
        if was_training:
            law.train()
        return {"loss": float(total[0] / total[2]), "placement_nats": float(total[1] / total[2])}

    def write_outputs(self, out) -> None:
        """placement.safetensors for a learned law (train/placement.py)."""
        if self.extra is not None:
            from train.placement import save_placement

            save_placement(out, self.trainer.acc.unwrap_model(self.extra.module))

    def meta(self) -> dict:
        """config.json: the stage form and its placement law."""
        return {"stage_form": "insert", "placement": self.s.placement}
