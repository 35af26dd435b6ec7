"""The discrete DDPM chain (Ho et al. 2020) as a process family: ``process=ddpm`` (the default).

    x_t = a_t x_0 + s_t ε,   a_t = √ᾱ_t,  s_t = √(1-ᾱ_t)        (Ho et al. eq. 4)

over integer indices t ∈ [0, T) of a :class:`~diffexp.schedules.NoiseSchedule` (index i is the paper's
t = i+1), with fractional t defined by interpolating log σ between steps (continuous-σ samplers). Its
conversions keep the exact formulas they had before the other families existed (VP: a² + s² = 1, so
x_0 = a x_t − s v), so that every loss and sample is bit-identical (tests/test_ddpm_fixture.py). The network
receives the index itself (``net_time`` is the identity). The velocity target is undefined here (no dα/dt).
Coefficients are kept in float64 in the schedule and cast to the dtype and device of the data when gathered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.processes.base import Prediction, Process
from diffexp.schedules import NoiseSchedule

DDPM_TARGETS = ("eps", "x0", "v", "score")


def is_fractional(t: Tensor) -> bool:
    """Whether a timestep tensor holds non-integer values (only floating tensors can)."""
    return t.is_floating_point() and bool((t != t.round()).any())


def gather(coef: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """coef[t] reshaped to broadcast against ``like`` (batch first), in its dtype and device.

    ``t`` must be integer-valued (an integer tensor, or a float tensor holding whole numbers). A
    fractional t raises instead of being truncated: only :meth:`DiffusionProcess.scales` (and
    so ``q_sample``/``predict``/``eps_to_output``) is defined between the schedule's steps."""
    if is_fractional(t):
        raise ValueError(
            "this coefficient is only defined at integer timesteps; fractional t is supported by "
            "DiffusionProcess.scales / predict / q_sample (interpolation in log sigma)"
        )
    out = coef.to(like.device)[t.to(like.device).long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class DiffusionProcess(Process):
    """Forward marginal, posterior and target conversions for a :class:`NoiseSchedule`."""

    name = "ddpm"
    is_discrete = True
    prediction_targets = DDPM_TARGETS
    t_min = 0.0
    prior_std = 1.0  # x_T ~ N(0, I): every sampler starts there

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        s = schedule
        self._sqrt_ab = torch.sqrt(s.alphas_cumprod)
        self._sqrt_1m_ab = torch.sqrt(1.0 - s.alphas_cumprod)
        # log σ_t of the equivalent VE process, increasing in t (+inf at a zero-terminal-SNR end).
        self._log_sigmas = 0.5 * (torch.log1p(-s.alphas_cumprod) - torch.log(s.alphas_cumprod))

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def t_max(self) -> float:
        return float(self.schedule.num_timesteps - 1)

    def net_time(self, t: Tensor) -> Tensor:
        """The network sees the timestep index itself (the same tensor)."""
        return t

    def t_of_net_time(self, net_t: Tensor) -> Tensor:
        return net_t

    def log_snr(self, t) -> Tensor:
        """λ = log(ᾱ/(1-ᾱ)) = −2 log σ(t) (float64; interpolated at fractional t)."""
        return -2.0 * torch.log(self.sigma(self._t64(t)))

    def scale_derivatives(self, t: Tensor, like: Tensor):
        raise ValueError("the discrete ddpm process has no time derivatives dα/dt, dσ/dt (so no velocity "
                         "target and no ODE in t); use a continuous family: process=vp_sde|subvp_sde|ve|edm|flow")

    def sigma_range(self) -> tuple[float, float]:
        """(σ_min, σ_max) in VE terms: σ at index 0 and the largest finite σ (a zero-terminal-SNR schedule
        has σ_{T-1} = ∞)."""
        sig = self.schedule.sigmas
        finite = sig[torch.isfinite(sig)]
        return float(sig[0]), float(finite.max())

    def ve_prior_scale(self, sigma_max: float) -> float:
        """x̃ = x_T/√ᾱ = x_T √(1+σ_max²): the VE samplers start from the same x_T as DDPM/DDIM."""
        return (1 + sigma_max**2) ** 0.5

    # ---- coefficients --------------------------------------------------------------------------
    def scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(√ᾱ_t, √(1-ᾱ_t)) broadcastable against ``like``.

        Integer-valued t reads the schedule exactly. Fractional t (continuous-noise-level samplers,
        e.g. Heun on Karras σ's) uses σ(t) = :meth:`sigma` and a = 1/√(1+σ²), s = σ/√(1+σ²)."""
        if not is_fractional(t):
            return gather(self._sqrt_ab, t, like), gather(self._sqrt_1m_ab, t, like)
        log_sigma = torch.log(self.sigma(t))
        a, s = torch.sigmoid(-2 * log_sigma).sqrt(), torch.sigmoid(2 * log_sigma).sqrt()
        shape = (-1, *([1] * (like.ndim - 1)))
        return a.to(like.device, like.dtype).reshape(shape), s.to(like.device, like.dtype).reshape(shape)

    # ---- continuous noise levels (k-diffusion's DiscreteSchedule) --------------------------------
    def sigma(self, t: Tensor) -> Tensor:
        """VE noise level σ(t) = √((1-ᾱ)/ᾱ) at a possibly fractional index t ∈ [0, T-1], by linear
        interpolation of log σ between neighbouring steps (exact at integer t). Float64, t's device."""
        ls = self._log_sigmas.to(t.device)
        t = torch.as_tensor(t, device=ls.device).to(torch.float64).clamp(0, ls.numel() - 1)
        lo = t.floor().long().clamp(max=max(ls.numel() - 2, 0))
        hi = (lo + 1).clamp(max=ls.numel() - 1)
        w = t - lo
        # where() keeps 0·∞ (a zero-terminal-SNR end) out of the integer case
        log_sigma = torch.where(w == 0, ls[lo], torch.where(w == 1, ls[hi], ls[lo] + w * (ls[hi] - ls[lo])))
        return log_sigma.exp()

    def t_of_sigma(self, sigma: Tensor | float) -> Tensor:
        """Inverse of :meth:`sigma`: the fractional index t whose interpolated log σ equals
        log ``sigma`` (clamped to [σ_0, σ_{T-1}]). Float64."""
        ls = self._log_sigmas
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        ls = ls.to(sigma.device)
        log_sigma = sigma.log().clamp(ls[0], ls[-1])
        if ls.numel() == 1:
            return torch.zeros_like(log_sigma)
        hi = torch.searchsorted(ls, log_sigma).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = torch.where(log_sigma >= ls[hi], 1.0, ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1))
        return lo.to(torch.float64) + w

    # ---- forward process q(x_t | x_0) ----------------------------------------------------------
    def q_mean_var(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean √ᾱ_t x_0 and variance 1-ᾱ_t of q(x_t|x_0) (Ho et al. eq. 4)."""
        a, _ = self.scales(t, x0)
        return a * x0, gather(1.0 - self.schedule.alphas_cumprod, t, x0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        a, s = self.scales(t, x0)
        return a * x0 + s * noise

    # ---- posterior q(x_{t-1} | x_t, x_0) ---------------------------------------------------------
    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean μ̃_t(x_t, x_0), variance β̃_t and clipped log-variance (Ho et al. eqs. 6-7)."""
        s = self.schedule
        mean = gather(s.posterior_mean_coef_x0, t, x_t) * x0 + gather(s.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, gather(s.posterior_variance, t, x_t), gather(s.posterior_log_variance_clipped, t, x_t)

    def reverse_log_variance(self, t: Tensor, like: Tensor, kind: str) -> Tensor:
        """log σ_t² of the fixed reverse variance: ``beta`` (σ_t² = β_t for every t, 'fixed large', Ho et
        al. §3.2, so the decoder L_0 at t = 1 has σ_1² = β_1) or ``beta_tilde`` (σ_t² = β̃_t, 'fixed small',
        with β̃_1 = 0 replaced by β̃_2). The DDPM code also replaces β_1 by β̃_2 in 'fixed large'; that
        loosens the bound as T grows (on Gaussian data the gap to the exact NLL rose from 0.06 to 0.28
        nats from T = 100 to 4000, against 0.019 to 0.0005 with β_1), so diffexp uses the paper's σ_1².
        Samplers are unaffected: the last step (t = 1) draws no noise. Log-variances are returned, never
        square-rooted (see PITFALLS: diffusers #14569)."""
        s = self.schedule
        if kind == "beta_tilde":
            return gather(s.posterior_log_variance_clipped, t, like)
        if kind == "beta":
            return gather(s.log_betas, t, like)
        raise ValueError(f"unknown reverse variance {kind!r}; valid: ['beta', 'beta_tilde']")

    def learned_log_variance(self, t: Tensor, frac: Tensor, like: Tensor) -> Tensor:
        """log Σ_θ = v log β_t + (1 - v) log β̃_t (Nichol & Dhariwal 2021 eq. 15), v = ``frac`` the network's
        interpolation fraction (not clamped, as in improved-diffusion). β̃_1 = 0 is replaced by β̃_2 as in
        ``beta_tilde``. On a respaced process (``schedule.respaced``) β and β̃ are the respaced ones, which is
        improved-diffusion's respacing rule for learned variances (its SpacedDiffusion interpolates between
        the recomputed β'_k and β̃'_k with the same v)."""
        s = self.schedule
        max_log = gather(s.log_betas, t, like)
        min_log = gather(s.posterior_log_variance_clipped, t, like)
        frac = frac.to(max_log.dtype)
        return frac * max_log + (1.0 - frac) * min_log

    # ---- conversions between prediction targets ------------------------------------------------
    def predict(self, output: Tensor, x_t: Tensor, t: Tensor, prediction: str, clip: tuple[float, float] | None = None) -> Prediction:
        """Read a network output as ``prediction`` and return x̂_0 and ε̂ (and through them v̂, ŝ).

        ``clip``: clamp x̂_0 to the data range and recompute ε̂ from the clamped x̂_0, so the two stay
        consistent (as the DDPM/DDIM reference code does)."""
        a, s = self.scales(t, x_t)
        if prediction == "eps":
            eps = output
            x0 = (x_t - s * eps) / a
        elif prediction == "x0":
            x0 = output
            eps = (x_t - a * x0) / s
        elif prediction == "v":
            x0 = a * x_t - s * output
            eps = s * x_t + a * output
        elif prediction == "score":
            eps = -s * output
            x0 = (x_t - s * eps) / a
        else:
            self.check_prediction(prediction)
        if clip is not None:
            x0 = x0.clamp(*clip)
            eps = (x_t - a * x0) / s
        return Prediction(x0=x0, eps=eps, x_t=x_t, signal_scale=a, noise_scale=s)

    def targets(self, x0: Tensor, noise: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        """The true values of every target for a forward sample x_t = a x_0 + s ε."""
        a, s = self.scales(t, x_t)
        return Prediction(x0=x0, eps=noise, x_t=x_t, signal_scale=a, noise_scale=s)

    def eps_to_output(self, eps: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Tensor:
        """Express a (ε, x_0) pair as the network output for ``prediction`` (inverse of :meth:`predict`);
        used by analytic oracles that know ε* and must act as a network of any target."""
        a, s = self.scales(t, x_t)
        return self.output_of(Prediction(x0=x0, eps=eps, x_t=x_t, signal_scale=a, noise_scale=s), prediction)

    def output_of(self, prediction: Prediction, target: str) -> Tensor:
        return prediction.target(self.check_prediction(target))

    def p_mean(self, pred: Prediction, x_t: Tensor, t: Tensor) -> Tensor:
        """Mean of p_θ(x_{t-1}|x_t) = μ̃_t(x_t, x̂_0) (Ho et al. eq. 11 in x̂_0 form)."""
        mean, _, _ = self.q_posterior(pred.x0, x_t, t)
        return mean
