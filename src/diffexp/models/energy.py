"""Energy-parameterised denoisers: any network becomes a scalar energy whose gradient is the score.

The wrapped network f (any denoiser, output shaped like x) is reduced by a scalar head to

    Ẽ_θ(x, t) = ½ ‖x − f_θ(x, t)‖²                      (``head="l2"``, Salimans & Ho 2021)
    Ẽ_θ(x, t) = ⟨x, f_θ(x, t)⟩                           (``head="dot"``)

per example, and the network's ε̂ is its gradient by autograd (Du et al. 2023, "Reduce, Reuse, Recycle", §3):

    ε̂_θ(x, t) = ∇_x Ẽ_θ(x, t),   so   ŝ_θ(x, t) = −ε̂/σ_t = −∇_x E_θ(x, t)  with  E_θ = Ẽ_θ / σ_t.

The score is thus the gradient of a scalar — a conservative field (its Jacobian, −∇²E, is symmetric) — and
:meth:`EnergyNet.energy` returns E_θ. Working in ε units keeps the outputs O(1) at every noise level; the
l2 head starts (f ≈ 0) at ε̂ = x, the exact answer at the prior end. What the network is trained to
output (``prediction``) is read off ε̂ through the process algebra (``DiffusionProcess.predict``), so every
objective and sampler works unchanged.

Gradients: when the caller records gradients (training), ∇_x Ẽ is taken with ``create_graph=True`` so the
loss reaches θ through it (a double backward, ~2-3× the cost of the plain network). Otherwise (sampling,
validation — also under ``torch.inference_mode``) the input gradient is taken in a local autograd context
and the output is detached.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

HEADS = ("l2", "dot")


class EnergyNet(nn.Module):
    def __init__(self, net: nn.Module, process, prediction: str = "eps", head: str = "l2"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"model.energy_head must be one of {list(HEADS)}, got {head!r}")
        self.net, self.process, self.prediction, self.head = net, process, prediction, head

    def scalar(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Ẽ_θ(x, t) per example, shape (B,)."""
        f = self.net(x, t) if y is None else self.net(x, t, y=y)
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 reductions under bf16 autocast
        if self.head == "l2":
            return 0.5 * (x - f).to(dtype).flatten(1).square().sum(1)
        return (x * f).to(dtype).flatten(1).sum(1)

    def energy(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """E_θ(x, t) = Ẽ_θ(x, t) / σ_t, the energy whose negative gradient is the score; shape (B,)."""
        t_proc = self.process.t_of_net_time(t)  # t is the network time (the ddpm index itself)
        noise_scale = self.process.predict(torch.zeros_like(x), x, t_proc, "eps").noise_scale  # σ_t, via the algebra
        e = self.scalar(x, t, y)
        return e / noise_scale.flatten().to(e.dtype)

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """ε̂_θ = ∇_x Ẽ_θ(x, t) (differentiable w.r.t. θ when gradients are being recorded)."""
        train = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        if train:
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.scalar(x_in, t, y).sum(), x_in, create_graph=True)
            return grad.to(x.dtype)
        # No gradients wanted: a local autograd context (inference tensors are cloned out of inference mode).
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.clone().requires_grad_(True)
            t_in = t.clone()
            y_in = y.clone() if y is not None else None
            (grad,) = torch.autograd.grad(self.scalar(x_in, t_in, y_in).sum(), x_in)
        return grad.detach().to(x.dtype)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        eps = self.eps(x, t, y)
        if self.prediction == "eps":
            return eps
        return self.process.predict(eps, x, self.process.t_of_net_time(t), "eps").target(self.prediction)

    def extra_repr(self) -> str:
        return f"head={self.head}, prediction={self.prediction}"
