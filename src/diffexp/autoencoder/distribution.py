"""The encoder's posterior q(z | x) = N(μ, diag σ²) and its KL divergence to the prior N(0, I).

As in LDM's ``DiagonalGaussianDistribution`` (Rombach et al. 2022, App. G; Kingma & Welling 2014, App. B):

    KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ_i (μ_i² + σ_i² − 1 − log σ_i²)                      (closed form)

summed over every latent dimension of a sample. The log-variance is clamped to [−30, 20] (LDM's range):
a freshly initialised or badly conditioned encoder cannot produce inf/0 variances.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOGVAR_RANGE = (-30.0, 20.0)


class DiagonalGaussian:
    """``params`` (B, 2c, h, w) = [μ, log σ²] along channels."""

    def __init__(self, params: Tensor):
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = μ + σ ε, ε ~ N(0, I) (the reparameterisation trick)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """Per-sample KL(q(z|x) ‖ N(0, I)) in nats, shape (B,)."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).flatten(1).sum(1)
