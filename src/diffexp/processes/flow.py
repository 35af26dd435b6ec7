"""The linear interpolation path of rectified flow / conditional flow matching (Liu et al. 2023, 'Flow
straight and fast'; Lipman et al. 2023, 'Flow matching', §4.1 with σ_min = 0; the path of SD3 and Flux),
``process=flow``:

    x_t = (1 − t) x_0 + t ε,   α = 1 − t,   σ = t,   t ∈ [0, 1],   velocity u = dx_t/dt = ε − x_0.

In VE terms σ_VE = t/(1 − t) and t = σ_VE/(1 + σ_VE). Training uses all of [0, 1]. Two conversions are
singular at an end: ε → x_0 divides by α = 1 − t (t = 1) and x_0 → ε divides by σ = t (t = 0); there α and σ
are floored at ``conversion_floor`` = 1e-5 when dividing (velocity and v never divide by them: the
velocity's determinant α σ' − σ α' is 1). The samplers integrate over t ∈ [sample_eps, 1 − sample_eps]
narrowed to σ_VE ∈ [sample_sigma_min, sample_sigma_max] (conf/process/flow.yaml: EDM's 0.002 to 80, i.e.
t from 0.002 to 0.988, instead of σ_VE from 1e-3 to 999), starting from N(0, ((1 − t)² + t²) I) at the top time
t: the marginal of unit-variance data there, as x_T ~ N(0, I) is on VP (N(0, I) itself would start 1.2 % too
wide at t = 0.988, σ_VE = 81 instead of 80.006, and every sampled variance came out ≈ 2.5 % too large).
"""

from __future__ import annotations

import math

import torch

from diffexp.processes.base import Process, positive_or_none


class FlowProcess(Process):
    name = "flow"
    t_min, t_max = 0.0, 1.0
    conversion_floor = 1e-5

    def __init__(self, sample_eps: float = 1e-3, sample_sigma_min: float | None = None,
                 sample_sigma_max: float | None = None):
        if not 0 < sample_eps < 0.5:
            raise ValueError(f"sample_eps must lie in (0, 0.5), got {sample_eps}")
        self.sample_eps = float(sample_eps)
        self.sample_sigma_min, self.sample_sigma_max = positive_or_none(sample_sigma_min, sample_sigma_max)
        self._sample_range = self._narrowed(self.sample_eps, 1.0 - self.sample_eps)

    @property
    def prior_std(self) -> float:
        """Std of x at the samplers' top time t for unit-variance data: √((1 − t)² + t²) (→ 1 at t = 1)."""
        t = self.sample_t_max
        return math.sqrt((1.0 - t) ** 2 + t**2)

    def ve_prior_scale(self, sigma_max: float) -> float:
        """x̃ = x_t/α at VE level σ for unit-variance data has std √(1 + σ²) (as on VP), not 1/α = 1 + σ."""
        return math.sqrt(1.0 + float(sigma_max) ** 2)

    @property
    def sample_t_min(self) -> float:
        return self._sample_range[0]

    @property
    def sample_t_max(self) -> float:
        return self._sample_range[1]

    def _scales(self, t):
        return 1.0 - t, t.clone()

    def _scale_derivatives(self, t):
        return -torch.ones_like(t), torch.ones_like(t)

    def sigma(self, t):
        t = self._t64(t)
        return t / (1.0 - t)

    def t_of_sigma(self, sigma):
        sigma = self._t64(sigma)
        return sigma / (1.0 + sigma)
