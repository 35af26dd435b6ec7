"""The variance-preserving and sub-VP SDEs of Song et al. 2021 ('Score-based generative modeling through
stochastic differential equations', eqs. 11, 17 and 29), ``process=vp_sde`` / ``process=subvp_sde``.

With the linear β(t) = β_min + t (β_max − β_min) and its integral B(t) = β_min t + ½ (β_max − β_min) t²,

    VP:     α(t) = exp(−B/2),   σ(t) = √(1 − α²),   α' = −½ β α,   σ' = ½ β α² / σ
    sub-VP: α(t) = exp(−B/2),   σ(t) = 1 − α²,      α' = −½ β α,   σ' = β α²

(the VP SDE is the continuous limit of DDPM's linear schedule with β_i = β(i/T)/T). Defaults β_min = 0.1,
β_max = 20; t ∈ [1e-5, 1] in training and [1e-3, 1] in sampling (score_sde's ε for likelihood training and
for sampling). In VE terms σ_VE = σ/α, so B = log(1 + σ_VE²) (VP) and α = 2/(σ_VE + √(σ_VE² + 4)) (sub-VP),
and t solves the quadratic B(t) = B: t = 2B/(β_min + √(β_min² + 2 (β_max − β_min) B)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.processes.base import Process, positive_or_none


class VPSDEProcess(Process):
    name = "vp_sde"
    prior_std = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5, t_max: float = 1.0,
                 sample_t_min: float = 1e-3, sample_sigma_min: float | None = None,
                 sample_sigma_max: float | None = None):
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        if not 0 < t_min < t_max <= 1 or not t_min <= sample_t_min < t_max:
            raise ValueError(f"need 0 < t_min <= sample_t_min < t_max <= 1, got {t_min}, {sample_t_min}, {t_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sample_sigma_min, self.sample_sigma_max = positive_or_none(sample_sigma_min, sample_sigma_max)
        self._sample_range = self._narrowed(float(sample_t_min), self.t_max)

    @property
    def sample_t_min(self) -> float:
        return self._sample_range[0]

    @property
    def sample_t_max(self) -> float:
        return self._sample_range[1]

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_of_integral(self, b: Tensor) -> Tensor:
        d = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * b))

    def _scales(self, t):
        b = self.integral_beta(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def _scale_derivatives(self, t):
        a, s = self._scales(t)
        beta = self.beta(t)
        return -0.5 * beta * a, 0.5 * beta * a**2 / s

    def sigma(self, t) -> Tensor:
        return torch.sqrt(torch.expm1(self.integral_beta(self._t64(t))))

    def t_of_sigma(self, sigma) -> Tensor:
        return self._t_of_integral(torch.log1p(self._t64(sigma) ** 2))

    def log_snr(self, t) -> Tensor:
        return -torch.log(torch.expm1(self.integral_beta(self._t64(t))))


class SubVPSDEProcess(VPSDEProcess):
    name = "subvp_sde"

    def _scales(self, t):
        b = self.integral_beta(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def _scale_derivatives(self, t):
        a, _ = self._scales(t)
        beta = self.beta(t)
        return -0.5 * beta * a, beta * a**2

    def sigma(self, t) -> Tensor:
        b = self.integral_beta(self._t64(t))
        return -torch.expm1(-b) * torch.exp(0.5 * b)  # (1 − α²)/α

    def t_of_sigma(self, sigma) -> Tensor:
        sigma = self._t64(sigma)
        a = 2 / (sigma + torch.sqrt(sigma**2 + 4))
        return self._t_of_integral(-2 * torch.log(a))

    def log_snr(self, t) -> Tensor:
        return -2 * torch.log(self.sigma(t))
