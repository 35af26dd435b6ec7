"""EDM's log-normal noise levels (Karras et al. 2022, Table 1 "Training", p_train):

    ln σ ~ N(P_mean, P_std²),   P_mean = -1.2, P_std = 1.2,   t = t_of_sigma(σ) clamped to [t_min, t_max].

σ is the Karras/VE noise level σ(t)/α(t) of the process (on ``edm`` and ``ve`` it is the noise scale
itself), so the same distribution of noise levels is used whatever the family. Clamping moves the mass
outside the family's range onto its ends (for ``edm``, σ ∈ [0.002, 80], about 2e-5 of the draws). On ``ddpm``
the times are fractional indices (the process interpolates log σ between steps). Weights 1: p(σ) is
part of the objective's definition (EDM eq. 8), not an importance proposal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.objectives.time_samplers.base import TimeSampler, clamp_time


class LogNormalSigmas(TimeSampler):
    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__()
        if not p_std > 0:
            raise ValueError(f"lognormal p_std must be positive, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sigmas(self, batch_size: int, device, generator=None) -> Tensor:
        z = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float64)
        return (self.p_mean + self.p_std * z).exp()

    def sample(self, batch_size: int, process, device, generator=None) -> tuple[Tensor, Tensor]:
        t = process.t_of_sigma(self.sigmas(batch_size, device, generator)).to(device, torch.float64)
        return clamp_time(t, process), self.ones(batch_size, device)

    def extra_repr(self) -> str:
        return f"p_mean={self.p_mean}, p_std={self.p_std}"
