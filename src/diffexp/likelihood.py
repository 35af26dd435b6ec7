"""The variational bound on the negative log-likelihood (Ho et al. 2020 eq. 5, Sohl-Dickstein et al. 2015):

    -log p(x_0) ≤ L = L_T + Σ_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T|x_0) ‖ N(0, I))                                   (prior term)
    L_{t-1} = KL(q(x_{t-1}|x_t, x_0) ‖ p_θ(x_{t-1}|x_t)),  t ≥ 2          (closed form, Gaussians)
    L_0     = -log p_θ(x_0|x_1)                                          (decoder)

with p_θ(x_{t-1}|x_t) = N(μ̃_t(x_t, x̂_0), σ_t² I), x̂_0 read from the network through
:meth:`DiffusionProcess.predict` (so any prediction target works) and σ_t² a fixed reverse variance
(``beta`` or ``beta_tilde``). For ε-prediction and σ_t² = β̃_t the KL is λ_t ‖ε - ε̂‖² with
λ_t = β_t² / (2 σ_t² α_t (1-ᾱ_t)) (Ho et al. eq. 12), see :func:`eps_kl_weights`.

Two data conventions:
* discrete (8-bit images, x in [-1, 1] on the grid k/127.5 - 1): L_0 is the discretised Gaussian
  (bins of width 2/255, edge bins open); the result bounds -log P(x) of the discrete data, so it is
  ≥ 0. No uniform dequantisation is applied (it would give a bound for the dequantised density, which
  differs; see score_sde issues #24/#51).
* continuous (toy 2-D data): L_0 = -log N(x_0; μ_θ(x_1, 1), σ_1²) is a density; the result bounds
  -log p(x) of the continuous density and may be negative.
Everything is reported in bits per dimension: nats / (D ln 2), D = number of elements of one x_0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffexp.gaussian import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from diffexp.process import DiffusionProcess, Prediction

CONVENTION_DISCRETE = (
    "discrete 8-bit data, x in [-1,1] with bins of width 2/255 (edge bins open); bound on -log P(x) of "
    "the discrete data in bits/dim; no uniform dequantisation"
)
CONVENTION_CONTINUOUS = (
    "continuous data; L_0 is the Gaussian density N(x_0; mu_theta(x_1,1), sigma_1^2); bound on -log p(x) "
    "of the continuous density in bits/dim (can be negative)"
)


def sum_flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def bits_per_dim_scale(x0: Tensor) -> float:
    """1 / (D ln 2): converts nats per sample to bits per dimension."""
    return 1.0 / (x0[0].numel() * math.log(2.0))


def eps_kl_weights(process: DiffusionProcess, reverse_variance: str = "beta_tilde") -> Tensor:
    """λ_t = β_t² / (2 σ_t² α_t (1-ᾱ_t)) (float64, length T): the weight of ‖ε - ε̂‖² in L_{t-1} for
    ε-prediction (Ho et al. eq. 12). With σ_t² = β̃_t this is the whole KL; with σ_t² = β_t the KL adds
    the constant ½(β̃_t/σ_t² - 1 - log(β̃_t/σ_t²)) per dimension. Entry 0 (t=1) belongs to the decoder
    term and is only meaningful as a weight of the decoder's mean error."""
    s = process.schedule
    t = torch.arange(s.T)
    sigma2 = torch.exp(process.reverse_log_variance(t, s.betas, reverse_variance))
    return s.betas**2 / (2.0 * sigma2 * s.alphas * (1.0 - s.alphas_cumprod))


def vb_terms(
    process: DiffusionProcess,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    pred: Prediction,
    reverse_variance: str = "beta_tilde",
    discrete: bool = True,
    cdf: str = "exact",
) -> Tensor:
    """Per-sample term of the bound at timestep index t (nats, shape (B,)): L_{t-1} (Gaussian KL, closed
    form) for t ≥ 2 (index ≥ 1), and the decoder -log p_θ(x_0|x_1) at t = 1 (index 0).

    The reverse variance is the learned Σ_θ when ``pred.var_frac`` is set (``model.learn_sigma``; Nichol &
    Dhariwal eq. 15), else the fixed ``reverse_variance``."""
    true_mean, _, true_logvar = process.q_posterior(x0, x_t, t)
    model_mean = process.p_mean(pred, x_t, t)
    if pred.var_frac is None:
        model_logvar = process.reverse_log_variance(t, x_t, reverse_variance)
    else:
        model_logvar = process.learned_log_variance(t, pred.var_frac, x_t)
    kl = sum_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar).expand_as(x0))
    if discrete:
        logp = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar, cdf=cdf)
    else:
        logp = gaussian_log_likelihood(x0, model_mean, model_logvar)
    decoder_nll = -sum_flat(logp.expand_as(x0))
    return torch.where(t.to(x0.device) == 0, decoder_nll, kl)


def prior_kl(process: DiffusionProcess, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T|x_0) ‖ N(0, I)) per sample, in nats; exactly 0 under a zero-terminal-SNR schedule."""
    t_last = torch.full((x0.shape[0],), process.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, var = process.q_mean_var(x0, t_last)
    return sum_flat(normal_kl(mean, torch.log(var), 0.0, 0.0).expand_as(x0))


def check_bound_defined(process: DiffusionProcess, prediction: str) -> None:
    """x̂_0 = (x_T - s_T ε̂)/a_T is undefined when a_T = 0 (zero terminal SNR), so the bound cannot be
    evaluated for a model that outputs ε (or the score, which is ε up to a factor)."""
    if process.schedule.has_zero_terminal_snr and prediction in ("eps", "score"):
        raise ValueError(
            f"the variational bound is undefined for prediction={prediction!r} under a zero-terminal-SNR "
            "schedule: at t=T, a_T = 0 and x̂_0 = (x_T - s_T ε̂)/a_T is undefined (Lin et al. 2024 use "
            "v-prediction for this reason); use prediction=v or x0, or a schedule without zero terminal SNR"
        )


@torch.no_grad()
def elbo_bits_per_dim(
    denoiser,
    x0: Tensor,
    y: Tensor | None = None,
    reverse_variance: str = "beta_tilde",
    generator: torch.Generator | None = None,
    t_batch: int | None = None,
    discrete: bool | None = None,
    cdf: str = "exact",
    clip_denoised: bool = False,
) -> dict:
    """The full variational bound of ``denoiser`` (any prediction target) on the batch ``x0``, summed
    over all T timesteps (not Monte Carlo over t; one fresh ε per (sample, t), as improved-diffusion's
    ``calc_bpd_loop``), evaluated with T network calls per sample, ``t_batch`` timesteps per call.

    ``discrete=None`` reads the convention from ``denoiser.data_range``: (-1, 1) → discrete 8-bit,
    None → continuous. The algebra runs in float64; the network sees x_t in x0's dtype.
    ``clip_denoised`` clamps x̂_0 to ``denoiser.data_range`` before forming μ_θ (improved-diffusion's
    ``image_nll.py`` does; the bound stays valid since μ_θ is still a function of x_t). The network is
    put in eval mode for the call and restored after.

    Returns a dict: ``bpd`` (B,) the bound, ``prior_bpd`` (B,) L_T, ``decoder_bpd`` (B,) L_0,
    ``vb_bpd`` (B,) Σ_{t≥2} L_{t-1}, ``terms_bpd`` (B, T) with column i the term at t = i+1
    (column 0 = L_0), ``per_t`` (T,) its batch mean, plus ``convention``, ``discrete``,
    ``reverse_variance``, ``num_timesteps``, ``dims``."""
    process: DiffusionProcess = denoiser.process
    prediction = denoiser.prediction
    check_bound_defined(process, prediction)
    if discrete is None:
        discrete = denoiser.data_range is not None
    T, B = process.num_timesteps, x0.shape[0]
    in_dtype = x0.dtype
    x0d = x0.double()
    if discrete and bool((x0d.abs() > 1.0 + 1e-6).any()):
        raise ValueError("discrete 8-bit likelihood needs data in [-1, 1]; pass discrete=False for continuous data")
    k = t_batch or max(1, min(T, 4096 // max(B, 1)))
    terms = x0d.new_zeros(B, T)
    was_training = getattr(denoiser.net, "training", False)
    if was_training:
        denoiser.net.eval()
    try:
        for start in range(0, T, k):
            ts = list(range(start, min(T, start + k)))
            noise = torch.stack(
                [torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float64) for _ in ts]
            ).flatten(0, 1)
            t = torch.tensor(ts, device=x0.device).repeat_interleave(B)
            x0_rep = x0d.repeat(len(ts), *([1] * (x0.ndim - 1)))
            x_in = process.q_sample(x0_rep, t, noise).to(in_dtype)
            y_rep = None if y is None else y.repeat(len(ts))
            out, frac = denoiser.split(denoiser.raw(x_in, t, y_rep).double())
            x_t = x_in.double()
            clip = denoiser.data_range if clip_denoised else None
            pred = process.predict(out, x_t, t, prediction, clip=clip)
            pred.var_frac = frac  # learned Σ_θ (model.learn_sigma) replaces reverse_variance
            term = vb_terms(process, x0_rep, x_t, t, pred, reverse_variance, discrete, cdf)
            terms[:, start : start + len(ts)] = term.view(len(ts), B).T
    finally:
        if was_training:
            denoiser.net.train()
    scale = bits_per_dim_scale(x0)
    prior = prior_kl(process, x0d) * scale
    terms = terms * scale
    return {
        "bpd": terms.sum(1) + prior,
        "prior_bpd": prior,
        "decoder_bpd": terms[:, 0],
        "vb_bpd": terms[:, 1:].sum(1),
        "terms_bpd": terms,
        "per_t": terms.mean(0),
        "convention": CONVENTION_DISCRETE if discrete else CONVENTION_CONTINUOUS,
        "discrete": discrete,
        "reverse_variance": "learned" if denoiser.learn_sigma else reverse_variance,
        "clip_denoised": clip_denoised,
        "num_timesteps": T,
        "dims": x0[0].numel(),
    }
