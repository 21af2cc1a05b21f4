"""Exponential moving average of a model's weights (Polyak averaging; DDPM section 4).

theta_ema <- d_n * theta_ema + (1 - d_n) * theta, after every optimiser step n = 0, 1, ...

with ``d_n = min(decay, (1 + n) / (10 + n))`` when ``warmup`` is on (the ramp of
TensorFlow's ExponentialMovingAverage ``num_updates``), so early averages are not
dominated by the random initialisation. Buffers are copied, not averaged. The average
lives in a frozen copy of the network (``ema.model``), which is what sampling uses.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """d_n for the next update."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA.update: the model does not match the averaged one")
        torch._foreach_lerp_(ema_params, params, 1.0 - d)   # e + (1 - d) (p - e) = d e + (1 - d) p
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = int(num_updates)
