"""Denoising diffusion implicit models (Song, Meng & Ermon 2021)."""

from __future__ import annotations

import math

from diffexp.samplers.base import OptionError, Sampler, check_choice, check_discrete_steps, report, timesteps


def ddim_step(x0, eps, ab_prev: float, ab: float, eta: float, noise, x):
    """x_{prev} = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z (Song et al. eq. 12) with
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev) (eq. 16). ᾱ_prev = 1 returns x̂_0 exactly."""
    if ab_prev == 1.0:
        return x0
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) if ab < 1 else 0.0
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
    return out + sigma * noise.randn_like(x) if sigma > 0 else out


class DDIMSampler(Sampler):
    """DDIM over S ≤ T timesteps t_1 < … < t_S (``spacing``: uniform, quadratic, trailing). Each step goes
    from t_k to t_{k-1}; the last one goes from t_1 to ᾱ = 1 and returns x̂_0(x_{t_1}) with no noise
    left. η = 0 is deterministic given x_T; η = 1 over all T steps is DDPM with σ² = β̃."""

    def __init__(self, steps: int = 50, eta: float = 0.0, spacing: str = "uniform", clip_denoised: bool = True):
        super().__init__(clip_denoised)
        if not 0.0 <= eta <= 1.0:
            raise OptionError("eta", f"eta must lie in [0, 1], got {eta}")
        check_choice("spacing", spacing, ("uniform", "quadratic", "trailing"))
        self.steps, self.eta, self.spacing = steps, eta, spacing

    def check(self, process) -> None:
        super().check(process)
        check_discrete_steps(process, self.steps, self.spacing)

    def nfe(self, num_timesteps: int) -> int:
        return self.steps

    @property
    def name(self) -> str:
        return f"ddim-{self.steps}" + (f"-eta{self.eta:g}" if self.eta else "")

    def sample(self, model, x_T, noise, callback):
        ts = timesteps(model.schedule.num_timesteps, self.steps, self.spacing)[::-1]
        ab_all = model.schedule.alphas_cumprod
        x = x_T
        for i, t in enumerate(ts):
            pred = model(x, t)
            report(callback, i, t, model.schedule.sigmas[t], x, pred.x0, len(ts))
            ab_prev = float(ab_all[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x = ddim_step(pred.x0, pred.eps, ab_prev, float(ab_all[t]), self.eta, noise, x)
        return x
