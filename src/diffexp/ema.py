"""Exponential moving average of a network's weights, kept as its own state.

Done right (see PITFALLS: EMA): the average is updated once per optimizer step (the module calls
:meth:`update` from ``optimizer_step``, so gradient accumulation does not update it per micro-batch), it
is kept in float32 whatever the training precision, it is saved in the checkpoint as its own entries
(``ema.*``), never by swapping it into the model weights, and it is only used for sampling once it has
been updated at least once.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """θ_ema ← β θ_ema + (1-β) θ, with the warm-up β_n = min(β, (1+n)/(10+n)) when ``warmup``."""

    def __init__(self, net: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.net = copy.deepcopy(net).float().eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        beta = self.current_decay()
        ema_params = list(self.net.parameters())
        params = [p.detach().float() for p in net.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1

    @property
    def ready(self) -> bool:
        return bool(self.num_updates > 0)

    def train(self, mode: bool = True):  # the averaged copy always stays in eval mode
        super().train(mode)
        self.net.eval()
        return self
