"""Ancestral sampling of Ho et al. 2020 (Algorithm 2), optionally on a respaced schedule."""

from __future__ import annotations

import torch

from diffexp.process import DiffusionProcess
from diffexp.samplers.base import Sampler, check_choice, check_discrete_steps, report, timesteps


def ddpm_step(process: DiffusionProcess, k: int, x, x0, noise, variance: str):
    """x_{k-1} = μ̃_k(x_k, x̂_0) + σ_k z with log σ_k² = ``process.reverse_log_variance(k, variance)``
    (σ² = β_k or β̃_k; Ho et al. eqs. 7, 11) and no noise at the last step k = 0, where μ̃ = x̂_0.
    ``process`` is the (respaced) process being sampled and k its own step index."""
    kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
    mean, _, _ = process.q_posterior(x0, x, kk)
    if k == 0:
        return mean
    log_var = process.reverse_log_variance(kk, x, variance)
    return mean + torch.exp(0.5 * log_var) * noise.randn_like(x)


class DDPMSampler(Sampler):
    """Ho et al. Algorithm 2: x_{t-1} = μ̃_t(x_t, x̂_0) + σ_t z, σ_t² ∈ {β_t ('beta'), β̃_t ('beta_tilde')}.

    With ``steps`` S < T the chain runs on the respaced schedule over S uniformly spaced timesteps, with
    β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}} recomputed from ᾱ (Nichol & Dhariwal 2021, App. B); the network
    still sees the original indices t_k. Written with μ̃(x_t, x̂_0) rather than ε̂ so that clipping x̂_0
    applies (identical to Algorithm 2 without clipping)."""

    def __init__(self, steps: int | None = None, variance: str = "beta", clip_denoised: bool = True):
        super().__init__(clip_denoised)
        check_choice("variance", variance, ("beta", "beta_tilde"))
        self.steps, self.variance = steps, variance

    def check(self, process) -> None:
        super().check(process)
        check_discrete_steps(process, self.steps)

    def nfe(self, num_timesteps: int) -> int:
        return self.steps or num_timesteps

    @property
    def name(self) -> str:
        return "ddpm" if self.steps is None else f"ddpm-{self.steps}"

    def sample(self, model, x_T, noise, callback):
        T = model.schedule.num_timesteps
        ts = timesteps(T, self.steps or T, "uniform")
        process = DiffusionProcess(model.schedule.respaced(ts)) if len(ts) < T else model.process
        x = x_T
        for i, k in enumerate(reversed(range(len(ts)))):
            pred = model(x, ts[k])
            report(callback, i, ts[k], model.schedule.sigmas[ts[k]], x, pred.x0, len(ts))
            x = ddpm_step(process, k, x, pred.x0, noise, self.variance)
        return x
