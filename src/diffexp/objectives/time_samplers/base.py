"""The protocol of a training-time distribution p(t) and the helpers its implementations share.

A time sampler draws the process time t of each training example and an importance weight:

    t, weights = sampler.sample(batch_size, process, device, generator)

so that E_{t~p}[w(t) f(t)] is the quantity the objective means (w = 1 when p itself defines the
objective, as EDM's log-normal does; w = 1/(T p_t) for the importance sampler, which keeps the uniform
average over t unbiased). ``check(process)`` raises ValueError when the sampler cannot run on that
process (the importance sampler is discrete only); ``setup(process)`` sizes state; ``update(t, values)``
receives the per-sample losses (used by the importance sampler only).

``process`` is a :class:`diffexp.processes.base.Process`; for backward compatibility the discrete
samplers also accept the number of timesteps T in its place. Continuous times are float64 (the process
evaluates its coefficients in float64); discrete ones are integer indices in [0, T) as before.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def num_timesteps_of(process_or_T) -> int | None:
    """T of a discrete process (or T itself); None for a continuous family."""
    if isinstance(process_or_T, int):
        return process_or_T
    return process_or_T.num_timesteps if getattr(process_or_T, "is_discrete", True) else None


def normalised_to_time(u: Tensor, process) -> Tensor:
    """t = t_min + u (t_max - t_min) for u ∈ [0, 1]: the family's training range, float64."""
    lo, hi = float(process.t_min), float(process.t_max)
    return lo + u.to(torch.float64) * (hi - lo)


def clamp_time(t: Tensor, process) -> Tensor:
    return t.clamp(float(process.t_min), float(process.t_max))


class TimeSampler(nn.Module):
    """Base: no state, weights 1, runs on every family unless :meth:`check` says otherwise."""

    def check(self, process) -> None:
        pass

    def setup(self, process) -> None:
        self.check(process)

    def sample(self, batch_size: int, process, device, generator=None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, t: Tensor, values: Tensor) -> None:
        pass

    @staticmethod
    def ones(batch_size: int, device) -> Tensor:
        return torch.ones(batch_size, device=device)
