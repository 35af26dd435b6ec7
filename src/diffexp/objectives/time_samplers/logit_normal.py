"""Logit-normal times (Esser et al. 2024, SD3, eq. 19 "lognorm(m, s)"):

    u = sigmoid(m + s z),  z ~ N(0, 1),   t = t_min + u (t_max - t_min),

i.e. density π(u) = 1/(s√(2π)) · 1/(u(1-u)) · exp(-(logit u - m)²/(2s²)) on the normalised time u ∈ (0, 1),
which puts more training on the middle of the path (SD3's best rectified-flow setting: m = 0, s = 1).
Defined on every continuous family through its normalised range; on ``ddpm`` u maps onto [0, T-1]
(fractional indices). Weights 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.objectives.time_samplers.base import TimeSampler, normalised_to_time


class LogitNormalTimes(TimeSampler):
    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if not std > 0:
            raise ValueError(f"logit_normal std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)

    def sample(self, batch_size: int, process, device, generator=None) -> tuple[Tensor, Tensor]:
        z = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float64)
        return normalised_to_time(torch.sigmoid(self.mean + self.std * z), process), self.ones(batch_size, device)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
