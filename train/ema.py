"""Exponential moving average of the weights, the copy used for evaluation and sampling.

    ema <- decay * ema + (1 - decay) * theta        after every optimizer step

The shadow is kept in float32 (bf16 training would otherwise round small updates away). It has
state_dict / load_state_dict so the trainer's checkpoint (accelerate register_for_checkpointing) carries it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA values in place of the parameters (buffers as they are)."""
        state = dict(model.state_dict())
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype)
        return state

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily swap the EMA weights into `model` (validation), then restore the live weights."""
        live = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(live[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError(
                f"EMA checkpoint does not match the model: missing "
                f"{sorted(set(self.shadow) - set(state['shadow']))}, unexpected "
                f"{sorted(set(state['shadow']) - set(self.shadow))}"
            )
        self.decay = state["decay"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
