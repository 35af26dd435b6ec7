"""t uniform over the family's training range.

Discrete (``ddpm``): t ~ U{0, …, T-1} (Ho et al. 2020, Algorithm 1), drawn exactly as before the
continuous families existed. Continuous: t ~ U[t_min, t_max] (Song et al. 2021, eq. 7; rectified flow,
Liu et al. 2023, eq. 1), float64. Weights 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.objectives.time_samplers.base import TimeSampler, normalised_to_time, num_timesteps_of


class UniformTimesteps(TimeSampler):
    def probs(self, num_timesteps: int) -> Tensor:
        """p_t = 1/T over the discrete steps (float64)."""
        return torch.full((num_timesteps,), 1.0 / num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, process, device, generator=None) -> tuple[Tensor, Tensor]:
        T = num_timesteps_of(process)
        if T is not None:
            t = torch.randint(0, T, (batch_size,), generator=generator, device=device)
        else:
            u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
            t = normalised_to_time(u, process)
        return t, self.ones(batch_size, device)
