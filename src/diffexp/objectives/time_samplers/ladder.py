"""NCSN's geometric ladder of noise levels (Song & Ermon 2019, Sec. 4.2; 2020, Technique 2):

    σ_i = σ_max (σ_min/σ_max)^{(i-1)/(L-1)},  i = 1..L,   t_i = t_of_sigma(σ_i),   i ~ U{1, …, L},

with (σ_min, σ_max) = ``process.sigma_range()``, the family's Karras/VE noise levels at the ends of the
range its samplers integrate over (finite and positive on every family, e.g. flow's t ∈ [1e-3, 1 - 1e-3]),
so on ``ve`` the ladder runs from the process' σ_min to σ_max and training covers the levels sampling
visits. Uniform over levels, weights 1; the objective's λ(σ) = σ² (:mod:`diffexp.objectives.ncsn`)
balances the levels. Song & Ermon 2019 use L = 10 (σ from 1 to 0.01); NCSNv2 uses ratios of about
1.1-1.7 between levels, i.e. larger L.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffexp.objectives.time_samplers.base import TimeSampler, clamp_time


class GeometricLadder(TimeSampler):
    def __init__(self, num_levels: int = 10):
        super().__init__()
        if int(num_levels) != num_levels or num_levels < 2:
            raise ValueError(f"ladder num_levels must be an integer >= 2, got {num_levels}")
        self.num_levels = int(num_levels)

    def check(self, process) -> None:
        self.levels(process)  # finite, positive ends (raises naming them otherwise)

    def levels(self, process) -> Tensor:
        """The ladder's times t_1 > … > t_L (largest σ first), float64."""
        lo, hi = (float(v) for v in process.sigma_range())
        if not (math.isfinite(hi) and lo > 0):
            raise ValueError(f"timestep_sampler=ladder needs finite positive noise levels at both ends of the "
                             f"{getattr(process, 'name', 'process')} range, got σ in [{lo}, {hi}]")
        sigmas = torch.linspace(math.log(hi), math.log(lo), self.num_levels, dtype=torch.float64).exp()
        return clamp_time(process.t_of_sigma(sigmas).to(torch.float64), process)

    def sample(self, batch_size: int, process, device, generator=None) -> tuple[Tensor, Tensor]:
        i = torch.randint(0, self.num_levels, (batch_size,), generator=generator, device=device)
        return self.levels(process).to(device)[i], self.ones(batch_size, device)

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}"
