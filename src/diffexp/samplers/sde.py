"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6 and App. E's 'Euler-Maruyama' predictor)."""

from __future__ import annotations

import math

import torch

from diffexp.samplers.base import Sampler, check_choice, check_positive_int, report
from diffexp.samplers.grids import SPACINGS, is_discrete, sampling_times


def sde_coefficients(process, t: float) -> tuple[float, float]:
    """(f(t), g²(t)) of the forward SDE dx = f x dt + g dw whose marginals are x_t = α x_0 + σ ε:
    f = α'/α and g² = dσ²/dt - 2 f σ² (Kingma et al. 2021, App. A)."""
    tt, one = torch.tensor([t], dtype=torch.float64), torch.empty(1, dtype=torch.float64)
    (a, s), (da, ds) = (tuple(float(v) for v in pair) for pair in (process.scales(tt, one), process.scale_derivatives(tt, one)))
    f = da / a
    return f, 2 * s * ds - 2 * f * s**2


class EulerMaruyamaSampler(Sampler):
    """The forward process x_t = α(t) x_0 + σ(t) ε is the SDE dx = f(t) x dt + g(t) dw with

        f = α'/α,     g² = dσ²/dt - 2 f σ²                                   (Kingma et al. 2021, App. A)

    (VP: f = -β/2, g² = β; VE: f = 0, g² = dσ²/dt), whose reverse (Anderson 1982; Song et al. eq. 6) is
    dx = [f x - g² ∇ log p_t(x)] dt + g dw̄. Each step from t to s < t (h = t - s):

        x_s = x_t - h (f x_t - g² ŝ) + g √h z,        ŝ the score from the process algebra,

    over ``steps`` times of the grid ``spacing`` (default uniform in t, score_sde's N = 1000), starting from
    x = prior_std · x_T, and ending with x̂_0 at the last time (score_sde's ``noise_removal``). Needs the
    time derivatives α', σ' of a continuous family; on the discrete ddpm chain use ``ddpm`` (ancestral)."""

    def __init__(self, steps: int = 1000, spacing: str = "time", clip_denoised: bool = True):
        super().__init__(clip_denoised)
        check_positive_int("steps", steps)
        check_choice("spacing", spacing, SPACINGS)
        self.steps, self.spacing = steps, spacing

    def check(self, process) -> None:
        super().check(process)
        if is_discrete(process):
            raise ValueError("euler_maruyama integrates the reverse SDE in continuous time and needs "
                              "dα/dt, dσ/dt, which the discrete ddpm process has not; use sampler=ddpm (its "
                              "ancestral chain) there, or a continuous family (process=vp_sde|subvp_sde|ve|edm|flow)")

    def nfe(self, num_timesteps) -> int:
        return self.steps

    @property
    def name(self) -> str:
        return f"em-{self.steps}"

    def sample(self, model, x_T, noise, callback):
        process = model.process
        self.check(process)
        times = sampling_times(process, self.steps, self.spacing)
        x = x_T * float(process.prior_std)
        for i, t in enumerate(times):
            pred = model(x, t)
            tt = torch.tensor([t], dtype=torch.float64)
            report(callback, i, t, float(process.sigma(tt)), x, pred.x0, len(times))
            if i + 1 == len(times):
                return pred.x0
            f, g2 = sde_coefficients(process, t)
            h = t - times[i + 1]
            x = x - h * (f * x - g2 * pred.score) + math.sqrt(max(g2, 0.0) * h) * noise.randn_like(x)
        return x
