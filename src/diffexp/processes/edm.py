"""The process of EDM (Karras et al. 2022, Table 1 'Ours': s(t) = 1, σ(t) = t), ``process=edm``:

    α = 1,   σ(t) = t,   t = σ ∈ [σ_min, σ_max] = [0.002, 80],   σ' = 1.

``sigma_data`` (0.5, the std of images in [-1, 1] EDM assumes) is stored for the preconditioning and the
loss weighting that usually go with it (see :mod:`diffexp.preconditioning`). The prior is N(0, σ_max² I).
The network sees 1000 (log σ − log σ_min)/(log σ_max − log σ_min), which maps [σ_min, σ_max] onto
[0, 1000] affinely in log σ, like EDM's c_noise = ¼ log σ but in the range the DDPM-style embeddings expect.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffexp.processes.base import Process, in_time_dtype


class EDMProcess(Process):
    name = "edm"
    uniform_spacing = "karras"  # EDM's own discretisation (Karras et al. 2022, eq. 5), not uniform σ

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max or sigma_data <= 0:
            raise ValueError(f"need 0 < sigma_min < sigma_max and sigma_data > 0, got {sigma_min}, {sigma_max}, {sigma_data}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.t_min, self.t_max, self.prior_std = self.sigma_min, self.sigma_max, self.sigma_max
        self._log_min, self._log_span = math.log(self.sigma_min), math.log(self.sigma_max / self.sigma_min)

    def _scales(self, t):
        return torch.ones_like(t), t.clone()

    def _scale_derivatives(self, t):
        return torch.zeros_like(t), torch.ones_like(t)

    def sigma(self, t):
        return self._t64(t).clone()

    def t_of_sigma(self, sigma):
        return self._t64(sigma).clone()

    def net_time(self, t: Tensor) -> Tensor:
        return in_time_dtype(1000.0 * (torch.log(self._t64(t)) - self._log_min) / self._log_span, t)

    def t_of_net_time(self, net_t: Tensor) -> Tensor:
        return torch.exp(self._t64(net_t) * self._log_span / 1000.0 + self._log_min)
