"""EDM preconditioning of any network, on any family (Karras et al. 2022, eq. 7 and Table 1).

The preconditioned denoiser predicts x_0 from x_t = α x_0 + σ ε as

    D(x_t, t) = c_skip x_t + c_out F(c_in x_t, c_noise),

with the coefficients derived, as in EDM App. B.6, for data of standard deviation σ_d: c_in gives the
network's input unit variance (Var x_t = α²σ_d² + σ²), c_skip is the best linear estimate of x_0 from
x_t (Cov(x_0, x_t)/Var x_t), and c_out is the standard deviation of what is left for F to predict:

    c_in   = 1/√(σ² + α²σ_d²),
    c_skip = α σ_d² / (σ² + α²σ_d²),
    c_out  = σ σ_d / √(σ² + α²σ_d²).

On α = 1 families (``ve``, ``edm``) these are EDM Table 1's c_in = 1/√(σ²+σ_d²), c_skip = σ_d²/(σ²+σ_d²),
c_out = σσ_d/√(σ²+σ_d²); on any family they equal Table 1's at the Karras noise level σ̃ = σ/α applied to
the rescaled input x_t/α (the VE view), so one trained F serves every family's samplers. EDM's loss weight
λ(σ̃) = 1/c_out² (in σ̃) is ``weighting=edm`` (:mod:`diffexp.objectives.weighting`).

c_noise: EDM feeds ¼ ln σ̃; here F receives the process' own network time ``process.net_time(t)`` (a
monotone function of σ̃ on every family, mapped onto the range the sinusoidal time embeddings of the
UNet/DiT/MLP were designed for), so any network works unchanged. This deviates from EDM's c_noise only
by a reparametrisation of the conditioning input.

The wrapper obeys the network contract: it receives the network time (what the module and the Denoiser
pass, ``process.net_time(t)``), recovers t by ``process.t_of_net_time`` for the coefficients and hands the
same network time to F. Use it with ``prediction: x0``. Its state_dict is F's under the prefix ``net.``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PRECONDITIONINGS = ("none", "edm", "consistency")


def edm_coefficients(a: Tensor, s: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) for signal scale α = ``a`` and noise scale σ = ``s`` (any broadcastable shapes)."""
    var = s**2 + (a * sigma_data) ** 2
    return a * sigma_data**2 / var, s * sigma_data / var.sqrt(), var.rsqrt()


class EDMPreconditioned(nn.Module):
    """D(x_t, t) = c_skip x_t + c_out F(c_in x_t, net_time(t)): wraps ``net`` (any network obeying the
    contract ``net(x, t)`` or ``net(x, t, y=labels)``) so that it predicts x_0."""

    def __init__(self, net: nn.Module, process, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.process = process
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, net_t: Tensor, y: Tensor | None = None) -> Tensor:
        if net_t.ndim == 0:
            net_t = net_t.expand(x.shape[0])
        like = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=torch.float64, device=x.device)
        a, s = self.process.scales(self.process.t_of_net_time(net_t), like)
        c_skip, c_out, c_in = (c.to(x.dtype) for c in edm_coefficients(a, s, self.sigma_data))
        out = self.net(c_in * x, net_t) if y is None else self.net(c_in * x, net_t, y=y)
        return c_skip * x + c_out * out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}"


def precondition(net: nn.Module, process, kind: str = "none", sigma_data: float = 0.5) -> nn.Module:
    """``net`` itself for ``none``; the EDM-preconditioned wrapper for ``edm``; the consistency function of
    Song et al. 2023 for ``consistency`` (models of ``distill.py``)."""
    if kind == "none":
        return net
    if kind == "edm":
        return EDMPreconditioned(net, process, sigma_data)
    if kind == "consistency":  # f = c_skip x + c_out F with f(x, σ_min) = x (diffexp.distill.parameterization)
        from diffexp.distill.parameterization import ConsistencyParameterization

        return ConsistencyParameterization(net, process, sigma_data)
    raise ValueError(f"unknown precondition {kind!r}; valid: {list(PRECONDITIONINGS)}")
