"""Loss weights as functions of the SNR ᾱ_t/(1-ᾱ_t), for an MSE taken on any prediction target.

A weighting is defined on the ε-loss ‖ε̂ - ε‖² (where the papers define it) and carried over to the
target the network predicts through the exact identities (x_t fixed, a = √ᾱ_t, s = √(1-ᾱ_t)):

    ‖x̂_0 - x_0‖² = ‖ε̂ - ε‖² / SNR,   ‖v̂ - v‖² = ‖ε̂ - ε‖² (1+SNR)/SNR,   ‖ŝ - s‖² = ‖ε̂ - ε‖² (1+SNR),

so w_target = w_ε · {ε: 1, x0: SNR, v: SNR/(1+SNR), score: 1/(1+SNR)} and w_target ‖target error‖² =
w_ε ‖ε error‖². Weightings:

* ``uniform``: w_target = 1 (L_simple on the chosen target, Ho et al. eq. 14 for ε).
* ``min_snr``: w_ε = min(SNR, γ)/SNR = min(1, γ/SNR) (Hang et al. 2023, γ = 5), i.e. min(SNR, γ) for x0
  and min(SNR, γ)/(SNR+1) for v. Written as min(1, γ/SNR) it is 1 at SNR = 0: finite under zero-terminal-
  SNR schedules (the bug of Min-SNR-Diffusion-Training #2 divided by SNR = 0).
* ``p2``: w_ε = 1/(k + SNR)^γ (Choi et al. 2022, k = 1, γ = 1); finite for SNR ≥ 0 when k > 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.process import check_prediction

WEIGHTINGS = ("uniform", "min_snr", "p2")


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
    return weighting


def eps_to_target_factor(snr: Tensor, prediction: str) -> Tensor:
    """Factor f with w_target = f · w_ε (the inverse of ‖target error‖² / ‖ε error‖²)."""
    factors = {
        "eps": lambda: torch.ones_like(snr),
        "x0": lambda: snr,
        "v": lambda: snr / (1.0 + snr),
        "score": lambda: 1.0 / (1.0 + snr),
    }
    return factors[check_prediction(prediction)]()


def snr_weight(
    snr: Tensor,
    prediction: str,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
) -> Tensor:
    """Weight of the per-sample MSE on ``prediction`` given SNR(t) (any shape, SNR ≥ 0)."""
    check_weighting(weighting)
    if weighting == "uniform":
        check_prediction(prediction)
        return torch.ones_like(snr)
    if weighting == "min_snr":
        w_eps = (min_snr_gamma / snr).clamp(max=1.0)  # γ/0 = inf → 1
    else:
        w_eps = (p2_k + snr) ** (-p2_gamma)
    return w_eps * eps_to_target_factor(snr, prediction)
