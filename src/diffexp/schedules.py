"""Discrete variance-preserving noise schedules.

A schedule is the sequence β_1..β_T of the forward process q(x_t|x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I)
(Ho et al. 2020, eq. 2). Everything else — α_t, ᾱ_t, SNR, the posterior variance β̃_t — derives from
it, in float64, so that 1-ᾱ_t near t=0 and ᾱ_t near t=T keep their precision.

Index convention: arrays have length T and index ``i`` in [0, T) is the paper's t = i+1; so
``alphas_cumprod[0]`` = ᾱ_1 and ``alphas_cumprod_prev[0]`` = ᾱ_0 = 1.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor


class NoiseSchedule:
    """A variance-preserving schedule given by its betas (float64, length T)."""

    def __init__(self, betas: Tensor, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a noise schedule needs at least one timestep, got T=0")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            bad = betas[~((betas > 0) & (betas <= 1))][:3].tolist()
            raise ValueError(f"betas must lie in (0, 1]; got values such as {bad}")
        self.betas = betas
        self.name = name

    # ---- basic quantities -------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    T = num_timesteps

    @cached_property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = Π_{s≤t} α_s (Ho et al. eq. 4)."""
        return torch.cumprod(self.alphas, 0)

    @cached_property
    def alphas_cumprod_prev(self) -> Tensor:
        """ᾱ_{t-1}, with ᾱ_0 = 1."""
        return torch.cat([self.betas.new_ones(1), self.alphas_cumprod[:-1]])

    @cached_property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t); exactly 0 at a zero-terminal-SNR end."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @cached_property
    def log_snr(self) -> Tensor:
        return torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    @cached_property
    def sigmas(self) -> Tensor:
        """Noise level of the equivalent variance-exploding process, σ_t = √((1-ᾱ_t)/ᾱ_t) (Karras et al.)."""
        return torch.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

    # ---- posterior q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7) ---------------------------------
    @cached_property
    def posterior_variance(self) -> Tensor:
        """β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t; zero at t=1."""
        return (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas

    @cached_property
    def posterior_log_variance_clipped(self) -> Tensor:
        """log β̃_t with the t=1 entry (where β̃_1 = 0) replaced by log β̃_2, as in the DDPM code."""
        pv = self.posterior_variance
        if pv.numel() == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([pv[1:2], pv[1:]]))

    @cached_property
    def log_betas(self) -> Tensor:
        """log β_t, the 'fixed large' reverse log-variance (kept apart from the variance itself)."""
        return torch.log(self.betas)

    @cached_property
    def posterior_mean_coef_x0(self) -> Tensor:
        """Coefficient of x_0 in μ̃_t: √ᾱ_{t-1} β_t / (1-ᾱ_t)."""
        return torch.sqrt(self.alphas_cumprod_prev) * self.betas / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_mean_coef_xt(self) -> Tensor:
        """Coefficient of x_t in μ̃_t: √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t)."""
        return torch.sqrt(self.alphas) * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def has_zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    def respaced(self, timesteps: Tensor | list[int]) -> NoiseSchedule:
        """The schedule restricted to a subset of steps, with β recomputed from ᾱ (Nichol & Dhariwal
        App. B): β'_k = 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}}. Needed whenever a sampler skips steps."""
        ts = torch.as_tensor(timesteps, dtype=torch.long)
        ac = self.alphas_cumprod[ts]
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return NoiseSchedule(1.0 - ac / prev, name=f"{self.name}[respaced {len(ts)}]")

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name}, T={self.num_timesteps})"


# ---- schedule families ----------------------------------------------------------------------


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, max_beta: float = 0.999) -> Tensor:
    """Ho et al.'s linear β from 1e-4 to 0.02 at T=1000; rescaled by 1000/T for other T so the
    process ends at about the same ᾱ_T (as in improved-diffusion), and clipped at ``max_beta`` as the
    cosine schedule is (Nichol & Dhariwal eq. 17): for T < 20 the rescaled β_T = 20/T would exceed 1,
    so the last steps take β = 0.999 and the process still ends in (near) pure noise. T = 1 takes the
    end value, β_1 = min(β_end·1000, max_beta): a one-step process goes straight to noise."""
    scale = 1000.0 / num_timesteps
    if num_timesteps == 1:
        return torch.tensor([min(beta_end * scale, max_beta)], dtype=torch.float64)
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def _betas_from_alpha_bar(alpha_bar, num_timesteps: int, max_beta: float) -> Tensor:
    """β_t = 1 - ᾱ(t/T)/ᾱ((t-1)/T), clipped at max_beta (Nichol & Dhariwal eq. 17)."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    ab = alpha_bar(t)
    return (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """ᾱ(t) = f(t)/f(0), f(t) = cos²((t+s)/(1+s)·π/2) (Nichol & Dhariwal eq. 17)."""
    return _betas_from_alpha_bar(
        lambda t: torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2, num_timesteps, max_beta
    )


def sigmoid_betas(
    num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> Tensor:
    """ᾱ(t) = (σ(end/τ) - σ((t(end-start)+start)/τ)) / (σ(end/τ) - σ(start/τ)) (Jabri et al. 2022,
    Chen 2023), a schedule that spends more steps at intermediate noise."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

    def alpha_bar(t):
        return (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)

    return _betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale √ᾱ so that √ᾱ_T = 0 while √ᾱ_1 is kept (Lin et al. 2024, Algorithm 1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, 0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


_FAMILIES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def make_schedule(
    kind: str = "linear", num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kwargs
) -> NoiseSchedule:
    """Build a schedule by family name (the Hydra ``schedule`` group targets this)."""
    if kind not in _FAMILIES:
        raise ValueError(f"unknown schedule kind {kind!r}; valid kinds: {sorted(_FAMILIES)}")
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    betas = _FAMILIES[kind](num_timesteps, **kwargs)
    name = kind
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
        name += "+ztsnr"
    return NoiseSchedule(betas, name=name)


def linear(num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kw) -> NoiseSchedule:
    return make_schedule("linear", num_timesteps, zero_terminal_snr, **kw)


def cosine(num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kw) -> NoiseSchedule:
    return make_schedule("cosine", num_timesteps, zero_terminal_snr, **kw)


def sigmoid(num_timesteps: int = 1000, zero_terminal_snr: bool = False, **kw) -> NoiseSchedule:
    return make_schedule("sigmoid", num_timesteps, zero_terminal_snr, **kw)
