"""Ancestral sampling of Ho et al. 2020 (Algorithm 2), optionally on a respaced schedule."""

from __future__ import annotations

import torch

from diffexp.process import DiffusionProcess
from diffexp.samplers.base import Sampler, check_choice, check_discrete_steps, check_positive_int, report, timesteps
from diffexp.samplers.ddim import run_first_order
from diffexp.samplers.grids import is_discrete, sampling_times

CONTINUOUS_STEPS = 1000  # steps=null on a continuous family: score_sde's N = 1000


def ddpm_step(process: DiffusionProcess, k: int, x, x0, noise, variance: str, var_frac=None):
    """x_{k-1} = μ̃_k(x_k, x̂_0) + σ_k z with log σ_k² = ``process.reverse_log_variance(k, variance)``
    (σ² = β_k or β̃_k; Ho et al. eqs. 7, 11) and no noise at the last step k = 0, where μ̃ = x̂_0.
    ``process`` is the (respaced) process being sampled and k its own step index. A learned variance
    (``var_frac`` = v of a ``learn_sigma`` network) replaces σ_k² by Σ_θ = exp(v log β_k + (1-v) log β̃_k)
    of this (respaced) process (Nichol & Dhariwal 2021 eq. 15 and App. B)."""
    kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
    mean, _, _ = process.q_posterior(x0, x, kk)
    if k == 0:
        return mean
    if var_frac is None:
        log_var = process.reverse_log_variance(kk, x, variance)
    else:
        log_var = process.learned_log_variance(kk, var_frac, x)
    return mean + torch.exp(0.5 * log_var) * noise.randn_like(x)


def ancestral_step(x0, a_s: float, s_s: float, a_t: float, s_t: float, variance: str, noise, x):
    """x_s ~ N(μ̃, v) from t to s < t on any process x_t = α x_0 + σ ε, with α_{t|s} = α_t/α_s and
    σ²_{t|s} = σ_t² - α_{t|s}² σ_s² (the forward transition; Kingma et al. 2021, eqs. 7-10):

        μ̃ = (α_{t|s} σ_s²/σ_t²) x_t + (α_s σ²_{t|s}/σ_t²) x̂_0,
        v = σ²_{t|s} σ_s²/σ_t² ('beta_tilde', the posterior variance)  or
        v = σ²_{t|s} (α_s² + σ_s²)/(α_t² + σ_t²) ('beta', the reverse variance that is exact when
            x_0 ~ N(0, I): Ho et al.'s σ² = β on a variance-preserving process).

    σ_s = 0 (the data) returns x̂_0."""
    if s_s == 0.0:
        return x0
    a_ts = a_t / a_s
    s2_ts = max(s_t**2 - a_ts**2 * s_s**2, 0.0)
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * s2_ts / s_t**2) * x0
    var = s2_ts * s_s**2 / s_t**2 if variance == "beta_tilde" else s2_ts * (a_s**2 + s_s**2) / (a_t**2 + s_t**2)
    return mean + var**0.5 * noise.randn_like(x)


class DDPMSampler(Sampler):
    """Ho et al. Algorithm 2: x_{t-1} = μ̃_t(x_t, x̂_0) + σ_t z, σ_t² ∈ {β_t ('beta'), β̃_t ('beta_tilde')}.

    With ``steps`` S < T the chain runs on the respaced schedule over S uniformly spaced timesteps, with
    β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}} recomputed from ᾱ (Nichol & Dhariwal 2021, App. B); the network
    still sees the original indices t_k. Written with μ̃(x_t, x̂_0) rather than ε̂ so that clipping x̂_0
    applies (identical to Algorithm 2 without clipping). A ``model.learn_sigma`` network's Σ_θ replaces
    ``variance`` (on respaced grids interpolated between the respaced β'_k and β̃'_k).

    On a continuous family the same ancestral step runs in (α, σ) (:func:`ancestral_step`) over ``steps``
    times uniform in t (null: 1000, score_sde's N), from x = prior_std · x_T."""


    def __init__(self, steps: int | None = None, variance: str = "beta", clip_denoised: bool = True):
        super().__init__(clip_denoised)
        check_choice("variance", variance, ("beta", "beta_tilde"))
        if steps is not None:
            check_positive_int("steps", steps)
        self.steps, self.variance = steps, variance

    def check(self, process) -> None:
        if is_discrete(process):
            check_discrete_steps(process, self.steps)

    def nfe(self, num_timesteps: int | None) -> int:
        return self.steps or num_timesteps or CONTINUOUS_STEPS

    @property
    def name(self) -> str:
        return "ddpm" if self.steps is None else f"ddpm-{self.steps}"

    def sample(self, model, x_T, noise, callback):
        if not is_discrete(model.process):
            times = sampling_times(model.process, self.steps or CONTINUOUS_STEPS, "time")

            def step(pred, now, nxt, x):
                return ancestral_step(pred.x0, *nxt, *now, self.variance, noise, x)

            return run_first_order(model, x_T, noise, callback, times, step)
        T = model.schedule.num_timesteps
        ts = timesteps(T, self.steps or T, "uniform")
        process = DiffusionProcess(model.schedule.respaced(ts)) if len(ts) < T else model.process
        x = x_T
        for i, k in enumerate(reversed(range(len(ts)))):
            pred = model(x, ts[k])
            report(callback, i, ts[k], model.schedule.sigmas[ts[k]], x, pred.x0, len(ts))
            x = ddpm_step(process, k, x, pred.x0, noise, self.variance, pred.var_frac)
        return x
