"""The variance-exploding process of NCSN (Song & Ermon 2019, 2020) in the continuous form of Song et al.
2021 (eq. 9 and §C.1), ``process=ve``:

    α(t) = 1,   σ(t) = σ_min (σ_max/σ_min)^t,   t ∈ [0, 1],   σ' = σ log(σ_max/σ_min).

Defaults σ_min = 0.01, σ_max = 50: NCSN's σ_L = 0.01 and, by 'Technique 1' of Song & Ermon 2020 (σ_max
about the largest pairwise distance of the training data), a value for 28×28 images in [-1, 1] (NCSNv2 used
σ_1 = 50 on CIFAR-10 32×32). The prior is N(0, σ_max² I). The network sees 1000 t, an affine function of
log σ (NCSN++ conditions on log σ directly).
"""

from __future__ import annotations

import math

import torch

from diffexp.processes.base import Process


class VEProcess(Process):
    name = "ve"
    # Karras's ρ = 7 grid for spacing=uniform: ddim-50 on uniform t (geometric σ, NCSN's own ladder) left a
    # 2-D mixture's small mode 17% too wide; Karras et al. 2022 (Table 2) improved VE sampling the same way.
    uniform_spacing = "karras"
    t_min, t_max = 0.0, 1.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.prior_std = self.sigma_max

    def _scales(self, t):
        return torch.ones_like(t), self.sigma_min * torch.exp(t * self._log_ratio)

    def _scale_derivatives(self, t):
        return torch.zeros_like(t), self.sigma_min * torch.exp(t * self._log_ratio) * self._log_ratio

    def sigma(self, t):
        return self._scales(self._t64(t))[1]

    def t_of_sigma(self, sigma):
        return torch.log(self._t64(sigma) / self.sigma_min) / self._log_ratio
