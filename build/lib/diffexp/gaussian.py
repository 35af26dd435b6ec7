"""Gaussian densities, KL divergences and the discretised Gaussian decoder (all elementwise, in nats).

These are the building blocks of the variational bound (Ho et al. 2020 eq. 5; Nichol & Dhariwal 2021
eqs. 10-13). ``normal_kl`` and ``discretized_gaussian_log_likelihood`` follow improved-diffusion's
``losses.py``; the discretised likelihood can use either its tanh approximation of the standard normal
CDF (``cdf="approx"``, reproduces improved-diffusion's numbers) or the exact CDF evaluated stably in
log space (``cdf="exact"``, the default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)
BIN_WIDTH_8BIT = 2.0 / 255.0  # 8-bit pixels k/127.5 - 1, k = 0..255, lie 2/255 apart in [-1, 1]


def normal_kl(mean1, logvar1, mean2, logvar2) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats:
    ½ [-1 + logvar2 - logvar1 + e^(logvar1-logvar2) + (mean1-mean2)² e^(-logvar2)].
    Arguments broadcast; plain floats are accepted for any of them."""
    t = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, Tensor))
    logvar1, logvar2 = (
        x if isinstance(x, Tensor) else torch.tensor(x, dtype=t.dtype, device=t.device) for x in (logvar1, logvar2)
    )
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, e^logvar) per element (a density, for continuous data)."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the approximation of the DDPM/improved-diffusion code."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) = ½(1 + erf(x/√2))."""
    return torch.special.ndtr(x)


def _log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) - Φ(a)) for a < b, stable in both tails: by symmetry move the interval to the left
    half-line, then log Φ(b) + log(1 - exp(log Φ(a) - log Φ(b)))."""
    right = a > 0
    a, b = torch.where(right, -b, a), torch.where(right, -a, b)
    lb = torch.special.log_ndtr(b)
    d = torch.special.log_ndtr(a) - lb
    return lb + torch.log((-torch.expm1(d)).clamp(min=torch.finfo(d.dtype).tiny))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float = BIN_WIDTH_8BIT, cdf: str = "exact"
) -> Tensor:
    """log P(x) per element for data discretised into bins of width ``bin_width`` on [-1, 1], under
    N(mean, e^(2 log_scale)) (Ho et al. 2020 eq. 13): the Gaussian mass of [x - w/2, x + w/2], with the
    edge bins extended to -∞ (x = -1) and +∞ (x = 1). ``log_scale`` is log σ (half the log-variance).

    ``cdf="approx"`` reproduces improved-diffusion (tanh CDF, probabilities clamped at 1e-12);
    ``cdf="exact"`` uses the exact normal CDF in log space (no clamping needed)."""
    half = bin_width / 2.0
    centered = x - mean
    inv_stdv = torch.exp(-log_scale)
    plus_in = inv_stdv * (centered + half)
    min_in = inv_stdv * (centered - half)
    left_edge, right_edge = x < -1.0 + half, x > 1.0 - half
    if cdf == "approx":
        cdf_plus, cdf_min = approx_standard_normal_cdf(plus_in), approx_standard_normal_cdf(min_in)
        log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
        log_mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    elif cdf == "exact":
        log_cdf_plus = torch.special.log_ndtr(plus_in)
        log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
        log_mid = _log_normal_interval(min_in, plus_in)
    else:
        raise ValueError(f"unknown cdf {cdf!r}; valid: ['exact', 'approx']")
    return torch.where(left_edge, log_cdf_plus, torch.where(right_edge, log_one_minus_cdf_min, log_mid))
