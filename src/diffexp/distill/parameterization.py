"""The consistency function f(x̃, σ) = c_skip(σ) x̃ + c_out(σ) F(c_in(σ) x̃, ·) (Song et al. 2023, eq. 5
and App. C), written in the VE view x̃ = x_t/α, σ = σ(t)/α(t) of any process family:

    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²),
    c_out(σ)  = σ_d (σ − σ_min) / √(σ_d² + σ²),
    c_in(σ)   = 1 / √(σ² + σ_d²),

so c_skip(σ_min) = 1 and c_out(σ_min) = 0 exactly: f(x̃, σ_min) = x̃ whatever F outputs (the boundary
condition, eq. 3). f estimates x_0, so the wrapped model is used with ``prediction=x0``: the Denoiser and
every sampler read it as an x̂_0-predicting model and the multistep consistency sampler
(:mod:`diffexp.samplers.consistency`) reads its x̂_0 directly.

The wrapper obeys the network contract (input x_t and ``process.net_time(t)``); F receives the same network
time, as the EDM wrapper of :mod:`diffexp.preconditioning` does. Its state_dict is F's under ``net.``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Levels within this relative distance of σ_min count as σ_min: σ(t_of_sigma(σ_min)) may differ from σ_min
# in the last float64 bits on families whose σ(t) is not the identity, and the boundary must hold there too.
_BOUNDARY_RTOL = 1e-9


def consistency_coefficients(sigma: Tensor, sigma_min: float, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) at VE levels ``sigma`` (Song et al. 2023, App. C); c_out is 0 and c_skip 1 at
    σ ≤ σ_min (1 + 1e-9)."""
    d = sigma - sigma_min
    d = torch.where(d <= _BOUNDARY_RTOL * sigma_min, torch.zeros_like(d), d)
    c_skip = sigma_data**2 / (d**2 + sigma_data**2)
    c_out = sigma_data * d / (sigma_data**2 + sigma**2).sqrt()
    c_in = (sigma**2 + sigma_data**2).rsqrt()
    return c_skip, c_out, c_in


class ConsistencyParameterization(nn.Module):
    """f(x_t, t) = c_skip x_t/α + c_out F(c_in x_t/α, net_time(t)): wraps ``net`` (any network obeying the
    contract) so that it is a consistency function with the exact boundary condition at ``sigma_min``
    (default: the process's smallest sampling level, ``process.sigma_range()[0]``)."""

    def __init__(self, net: nn.Module, process, sigma_data: float = 0.5, sigma_min: float | None = None):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.process = process
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(process.sigma_range()[0] if sigma_min is None else sigma_min)

    def forward(self, x: Tensor, net_t: Tensor, y: Tensor | None = None) -> Tensor:
        if net_t.ndim == 0:
            net_t = net_t.expand(x.shape[0])
        like = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=torch.float64, device=x.device)
        a, s = self.process.scales(self.process.t_of_net_time(net_t), like)
        c_skip, c_out, c_in = consistency_coefficients(s / a, self.sigma_min, self.sigma_data)
        x_ve = x / a.to(x.dtype)
        out = self.net(c_in.to(x.dtype) * x_ve, net_t) if y is None else self.net(c_in.to(x.dtype) * x_ve, net_t, y=y)
        return c_skip.to(x.dtype) * x_ve + c_out.to(x.dtype) * out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, sigma_min={self.sigma_min}"
