"""Denoising diffusion implicit models (Song, Meng & Ermon 2021)."""

from __future__ import annotations

import math

import torch

from diffexp.samplers.base import OptionError, Sampler, check_choice, check_discrete_steps, report, timesteps
from diffexp.samplers.grids import SPACINGS, is_discrete, sampling_times, scales_at

INDEX_SPACINGS = ("uniform", "quadratic", "trailing")  # the ddpm schedule's own timesteps


def ddim_step(x0, eps, ab_prev: float, ab: float, eta: float, noise, x):
    """x_{prev} = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z (Song et al. eq. 12) with
    σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev) (eq. 16; ``noise_std`` here, since ``sigma`` names only the
    VE noise level). ᾱ_prev = 1 returns x̂_0 exactly."""
    if ab_prev == 1.0:
        return x0
    noise_std = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) if ab < 1 else 0.0
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - noise_std**2, 0.0)) * eps
    return out + noise_std * noise.randn_like(x) if noise_std > 0 else out


def ddim_step_scales(x0, eps, a_s: float, s_s: float, a_t: float, s_t: float, eta: float, noise, x):
    """The DDIM step from t to s < t on any process x_t = α x_0 + σ ε (Song et al. eqs. 12, 16 with
    √ᾱ → α, √(1-ᾱ) → σ): x_s = α_s x̂_0 + √(σ_s² - c²) ε̂ + c z with c = η σ_s √(1 - (α_t σ_s/(α_s σ_t))²),
    the ancestral (posterior) standard deviation at η = 1. σ_s = 0 (the data) returns x̂_0 exactly. On the
    ddpm chain this is :func:`ddim_step` (c = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s))."""
    if s_s == 0.0:
        return x0
    c = eta * s_s * math.sqrt(max(1.0 - (a_t * s_s / (a_s * s_t)) ** 2, 0.0)) if s_t > 0 else 0.0
    out = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
    return out + c * noise.randn_like(x) if c > 0 else out


def run_first_order(model, x_T, noise, callback, times, step):
    """x_t-space sampling over ``times`` (highest first) from x = prior_std · x_T: at each time one
    evaluation, then ``step(pred, (α_t, σ_t), (α_s, σ_s), x)`` to the next time (σ_s = 0 after the last)."""
    process = model.process
    x = x_T * float(getattr(process, "prior_std", 1.0))
    for i, t in enumerate(times):
        pred = model(x, t)
        report(callback, i, t, float(process.sigma(torch.tensor(t, dtype=torch.float64))), x, pred.x0, len(times))
        nxt = scales_at(process, times[i + 1]) if i + 1 < len(times) else (1.0, 0.0)
        x = step(pred, scales_at(process, t), nxt, x)
    return x


class DDIMSampler(Sampler):
    """DDIM over S ≤ T timesteps t_1 < … < t_S (``spacing``: uniform, quadratic, trailing). Each step goes
    from t_k to t_{k-1}; the last one goes from t_1 to ᾱ = 1 and returns x̂_0(x_{t_1}) with no noise
    left. η = 0 is deterministic given x_T; η = 1 over all T steps is DDPM with σ² = β̃.

    On every process the same first-order step runs in (α, σ) (:func:`ddim_step_scales`) over a grid of
    :mod:`diffexp.samplers.grids` (``spacing``: time, karras, logsnr, shift; ``uniform`` = time on the
    continuous families, where the index spacings quadratic/trailing do not exist), starting from
    x = prior_std · x_T at the top of the process's sampling range."""


    def __init__(self, steps: int = 50, eta: float = 0.0, spacing: str = "uniform", clip_denoised: bool = True):
        super().__init__(clip_denoised)
        if not 0.0 <= eta <= 1.0:
            raise OptionError("eta", f"eta must lie in [0, 1], got {eta}")
        check_choice("spacing", spacing, INDEX_SPACINGS + SPACINGS)
        self.steps, self.eta, self.spacing = steps, eta, spacing

    def check(self, process) -> None:
        if is_discrete(process):
            check_discrete_steps(process, self.steps, self.spacing if self.spacing in INDEX_SPACINGS else "uniform")
        elif self.spacing in ("quadratic", "trailing"):
            raise OptionError("spacing", f"spacing {self.spacing!r} picks timesteps of the discrete ddpm schedule; "
                              f"on the {process.name} process use one of {['uniform', *SPACINGS]}")

    def nfe(self, num_timesteps: int) -> int:
        return self.steps

    @property
    def name(self) -> str:
        return f"ddim-{self.steps}" + (f"-eta{self.eta:g}" if self.eta else "")

    def sample(self, model, x_T, noise, callback):
        if not is_discrete(model.process) or self.spacing not in INDEX_SPACINGS:
            times = sampling_times(model.process, self.steps, self.spacing)

            def step(pred, now, nxt, x):
                return ddim_step_scales(pred.x0, pred.eps, *nxt, *now, self.eta, noise, x)

            return run_first_order(model, x_T, noise, callback, times, step)
        ts = timesteps(model.schedule.num_timesteps, self.steps, self.spacing)[::-1]
        ab_all = model.schedule.alphas_cumprod
        x = x_T
        for i, t in enumerate(ts):
            pred = model(x, t)
            report(callback, i, t, model.schedule.sigmas[t], x, pred.x0, len(ts))
            ab_prev = float(ab_all[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x = ddim_step(pred.x0, pred.eps, ab_prev, float(ab_all[t]), self.eta, noise, x)
        return x
