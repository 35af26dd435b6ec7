"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Algorithms 1 and 2) in ε form:

    ε̃(x_t, t) = ε̂(x_t, t) − s σ_t ∇_{x_t} log p_φ(y | x_t, t)

(their eq. 14 with √(1−ᾱ_t) = σ_t, written for any process x_t = α_t x_0 + σ_t ε). Since ε = −σ_t ∇ log p_t,
this is the score of p_t(x_t) p_φ(y|x_t)^s; at s = 1 with the exact classifier it is exactly the score of
p_t(x_t | y). x̂_0 moves with it: x̃_0 = (x_t − σ_t ε̃)/α_t = x̂_0 + s (σ_t²/α_t) ∇ log p_φ. Where α_t = 0 (the
last step of a zero-terminal-SNR schedule) x_t carries no information about y, so the exact p(y|x_t) = p(y)
has zero gradient there and x̃_0 = x̂_0 is kept (never a division by α = 0; ε̃ is still shifted). Because the change is made on the prediction, every
sampler (ancestral, DDIM, ODE/SDE solvers) is guided, as in Dhariwal & Nichol's Algorithm 2 for DDIM.

The classifier is any ``nn.Module`` called as ``classifier(x_t, net_time)`` (the same time input as the
denoiser's network: ``process.net_time(t)``) returning logits (B, num_classes); log p_φ = log_softmax.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from diffexp.process import Prediction


class ClassifierGuidance:
    def __init__(self, classifier: nn.Module, scale: float = 1.0):
        if not float(scale) >= 0:
            raise ValueError(f"guidance.scale must be a non-negative number, got {scale!r}")
        self.classifier, self.scale = classifier, float(scale)

    def grad_log_prob(self, x_t: Tensor, t: Tensor, y: Tensor, process) -> Tensor:
        """∇_{x_t} log p_φ(y | x_t) per sample, taken in a local autograd context (samplers run under
        no_grad/inference_mode; inference tensors are cloned out of it)."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            net_t = process.net_time(t.clone())
            logp = torch.log_softmax(self.classifier(x, net_t).float(), dim=-1)
            chosen = logp.gather(1, y.clone().long().view(-1, 1).to(logp.device)).sum()
            (grad,) = torch.autograd.grad(chosen, x)
        return grad.detach().to(x_t.dtype)

    def guide(self, pred: Prediction, process, t: Tensor, y: Tensor, clip=None) -> Prediction:
        """The guided prediction (ε̃ and x̃_0 through the process algebra), x̃_0 clamped to ``clip``."""
        if self.scale == 0.0:
            out = pred if clip is None else process.predict(pred.x0, pred.x_t, t, "x0", clip=clip)
        else:
            grad = self.grad_log_prob(pred.x_t, t, y, process)
            a, s = pred.signal_scale, pred.noise_scale
            informative = a > 0
            x0 = pred.x0 + torch.where(informative, self.scale * s**2 / torch.where(informative, a, 1.0), 0.0) * grad
            eps = pred.eps - self.scale * s * grad
            if clip is not None:  # clamp x̃_0 and recompute ε̃ from it through the process algebra
                out = process.predict(x0, pred.x_t, t, "x0", clip=clip)
            else:
                out = dataclasses.replace(pred, x0=x0, eps=eps)
        return dataclasses.replace(out, var_frac=pred.var_frac)

    def __repr__(self) -> str:
        return f"ClassifierGuidance(scale={self.scale}, classifier={type(self.classifier).__name__})"
