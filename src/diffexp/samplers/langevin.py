"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1)."""

from __future__ import annotations

import math

import torch

from diffexp.samplers.base import Sampler, check_positive, check_positive_int, report
from diffexp.samplers.grids import sigma_range

# Song & Ermon 2019 (CIFAR-10): σ from 1 to 0.01 over L = 10 levels, a ratio 100^(1/9) ≈ 1.668 per level.
NCSN_LEVEL_RATIO = 100 ** (1 / 9)
# ... and ε = 2e-5 at σ_L = 0.01: the step at level i is α_i = ε σ_i²/σ_L² = 0.2 σ_i².
NCSN_STEP_RATIO = 2e-5 / 0.01**2


def ladder_levels(sigma_min: float, sigma_max: float, ratio: float = NCSN_LEVEL_RATIO) -> int:
    """The fewest geometric levels from σ_max to σ_min at most ``ratio`` apart:
    L = ⌈log(σ_max/σ_min)/log ratio⌉ + 1 (20 on the linear T = 1000 schedule, 31 on the cosine one)."""
    return max(1, math.ceil(math.log(sigma_max / sigma_min) / math.log(ratio) - 1e-9) + 1)


class LangevinSampler(Sampler):
    """Annealed Langevin dynamics over ``num_levels`` noise levels σ_1 > … > σ_L, geometric between the
    schedule's σ_max and σ_min (one level: σ_min only, i.e. plain Langevin), ``steps_per_level`` steps each.

    The ladder must be fine enough: mixture weights freeze where the blurred modes separate, so a level
    ratio σ_i/σ_{i+1} well above NCSN's ≈ 1.67 leaves them wrong (10 levels on the linear T = 1000
    schedule, σ from 157 to 0.01, ratio 2.9: a 0.2/0.8 mixture came out 0.26/0.74). The default 20 levels
    give a ratio of 1.66 there; for another σ range use :func:`ladder_levels` (cosine T = 1000: 31).
    A fine ladder is not enough: the weights are set by mixing between the modes while they separate, and
    that lags, so the default runs 150 steps per level, not NCSN's 100 (0.2/0.8 mixture, exact score: small
    mode 0.217-0.219 at 20x100 on ddpm and ve, 0.209-0.214 at 20x150; docs/samplers.md).
    Each level runs

        x̃ ← x̃ + (α_i/2) ∇_x̃ log p_{σ_i}(x̃) + √α_i z,    α_i = ε σ_i²/σ_L²       (Algorithm 1)

    It runs in the variance-exploding parameterisation x̃ = x_t/√ᾱ_t = x_0 + σ_t ε, σ_t = √((1-ᾱ_t)/ᾱ_t).
    Since x_t = √ᾱ_t x̃, the VE score is ∇_x̃ log p(x̃) = √ᾱ_t ∇_{x_t} log p_t(x_t) = √ᾱ_t · score = -ε̂/σ_t,
    with ``score`` from the process algebra; the network is evaluated at t = t_of_sigma(σ_i) on
    x_t = x̃/√(1+σ_i²). The chain starts from x̃ = x_T √(1+σ_1²) (the prior at the first level), and with
    ``denoise`` ends with Tweedie's x̂_0 = x̃ + σ_L² ∇ log p_{σ_L}(x̃) = E[x_0|x̃] (one more evaluation;
    Song & Ermon 2020 / Jolicoeur-Martineau et al. 2021). ε defaults to NCSN's ratio ε/σ_L² = 0.2 (2e-5 at
    σ_L = 0.01), see :meth:`epsilon`."""

    def __init__(
        self,
        num_levels: int = 20,
        steps_per_level: int = 150,
        step_size: float | None = None,
        denoise: bool = True,
        clip_denoised: bool = True,
    ):
        super().__init__(clip_denoised)
        check_positive_int("num_levels", num_levels)
        check_positive_int("steps_per_level", steps_per_level)
        if step_size is not None:
            check_positive("step_size", step_size)
        self.num_levels, self.steps_per_level, self.step_size, self.denoise = (
            num_levels,
            steps_per_level,
            step_size,
            denoise,
        )

    def nfe(self, num_timesteps: int) -> int:
        return self.num_levels * self.steps_per_level + int(self.denoise)

    @property
    def name(self) -> str:
        return f"langevin-{self.num_levels}x{self.steps_per_level}"

    def epsilon(self, sigma_min: float) -> float:
        """ε of Algorithm 1: ``step_size``, or (None) NCSN's ratio ε/σ_L² = 2e-5/0.01² = 0.2 on this σ_L, so
        that α_i = 0.2 σ_i² on every family (a fixed ε = 2e-5 is unstable where σ_min < 0.01: EDM's 0.002,
        sub-VP's 1e-4 gave non-finite samples)."""
        return self.step_size if self.step_size is not None else NCSN_STEP_RATIO * sigma_min**2

    def levels(self, process) -> list[float]:
        lo, hi = sigma_range(process)
        return torch.linspace(math.log(lo), math.log(hi), self.num_levels, dtype=torch.float64).exp().flip(0).tolist()

    def sample(self, model, x_T, noise, callback):
        sigmas = self.levels(model.process)
        total, step = self.num_levels * self.steps_per_level, 0
        x = model.ve_prior(x_T, sigmas[0])
        for sigma in sigmas:
            step_size = self.epsilon(sigmas[-1]) * sigma**2 / sigmas[-1] ** 2  # α_i of Algorithm 1
            for _ in range(self.steps_per_level):
                pred, x_t, t = model.denoise_ve(x, sigma)
                report(callback, step, t, sigma, x_t, pred.x0, total)
                score = pred.signal_scale * pred.score  # VE score, see the docstring
                x = x + 0.5 * step_size * score + math.sqrt(step_size) * noise.randn_like(x)
                step += 1
        if self.denoise:
            return model.denoise_ve(x, sigmas[-1])[0].x0
        return x
