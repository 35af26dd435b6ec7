"""Multistep consistency sampling (Song et al. 2023, Algorithm 1).

x̃ = σ_max-level start (the VE prior of the process), x = f(x̃, σ_max); then for each later level τ of the
grid: x̃ = x + √(τ² − σ_min²) z (re-noising), x = f(x̃, τ). The model is read only through its x̂_0
(a consistency model trained by :mod:`diffexp.distill` predicts x̂_0 = f directly); on any other
denoiser this is a 'denoise, re-noise' sampler. One network evaluation per step.

``steps``: the number of evaluations (1, 2, 4, …); ``sigmas``: the levels τ_1 = σ_max > τ_2 > … explicitly
(iCT's two-step CIFAR-10 grid is [80, 0.821]), else the first ``steps`` levels of a Karras grid of
steps + 1 levels from σ_max down to σ_min (ρ = ``rho``).
"""

from __future__ import annotations

import math

from diffexp.samplers.base import OptionError, Sampler, check_positive_int, report
from diffexp.samplers.grids import karras_sigmas


class ConsistencySampler(Sampler):
    def __init__(self, steps: int = 1, sigmas: list[float] | None = None, rho: float = 7.0, clip_denoised: bool = True):
        super().__init__(clip_denoised)
        check_positive_int("steps", steps)
        if sigmas is not None:
            sigmas = [float(s) for s in sigmas]
            if len(sigmas) != steps or any(b >= a for a, b in zip(sigmas, sigmas[1:])) or min(sigmas) <= 0:
                raise OptionError("sigmas", f"sigmas must be {steps} (= steps) positive, strictly decreasing levels, "
                                            f"got {sigmas}")
        self.steps, self.sigmas, self.rho = steps, sigmas, rho

    def nfe(self, num_timesteps: int) -> int:
        return self.steps

    @property
    def name(self) -> str:
        return f"consistency-{self.steps}"

    def grid(self, process) -> list[float]:
        lo, hi = process.sigma_range()
        if self.sigmas is not None:
            return self.sigmas
        return karras_sigmas(self.steps + 1, lo, hi, rho=self.rho)[: self.steps] if self.steps > 1 else [hi]

    def sample(self, model, x_T, noise, callback):
        sigma_min = model.process.sigma_range()[0]
        levels = self.grid(model.process)
        x_ve = model.ve_prior(x_T, levels[0])
        x0 = None
        for i, sigma in enumerate(levels):
            if i > 0:  # re-noise the previous estimate to level σ (Algorithm 1, line 5)
                x_ve = x0 + math.sqrt(max(sigma**2 - sigma_min**2, 0.0)) * noise.randn_like(x0)
            pred, x_t, t = model.denoise_ve(x_ve, sigma)
            report(callback, i, t, sigma, x_t, pred.x0, len(levels))
            x0 = pred.x0
        return x0
