"""Loss weights λ(t) for an MSE on any prediction target, on any family (α(t), σ(t)).

A weighting is defined on one reference target (where its paper defines it) and carried to the target
the loss is taken on through exact identities. With x_t = α x_0 + σ ε held fixed, every target error is a
multiple of the ε-error δε = ε̂ - ε (δx_0 = -(σ/α) δε):

    δx_0 = -(σ/α) δε,   δv = ((α²+σ²)/α) δε,   δscore = -δε/σ,   δu = ((ασ' - α'σ)/α) δε,

(v = α ε - σ x_0, Salimans & Ho 2022; score = -ε/σ; flow velocity u = α' x_0 + σ' ε, Lipman et al. 2023),
so ‖δ target‖² = ‖δε‖² / f_target with

    f_ε = 1,  f_x0 = α²/σ² = SNR,  f_v = α²/(α²+σ²)²,  f_score = σ²,  f_u = α²/(ασ' - α'σ)²,

and λ_target = λ_ref · f_target / f_ref gives λ_target ‖δ target‖² = λ_ref ‖δ ref‖²: the same loss.
The documented equivalences follow: ε-MSE × SNR = x_0-MSE; ε-MSE = σ²·score-MSE (Song & Ermon's
λ = σ²); on ``flow`` (α = 1-t, σ = t, ασ' - α'σ = 1) ε-MSE × (1-t)² = velocity-MSE. On VP processes
(α² + σ² = 1) f_score = σ² = 1/(1+SNR) and f_v = α² = SNR/(1+SNR).

Weightings (``weighting=``):

* ``uniform``: λ = 1 on the target the loss is taken on (L_simple; Ho et al. 2020 eq. 14 for ε).
* ``min_snr``: λ_ε = min(1, γ/SNR) (Hang et al. 2023, γ = 5); written so that it is 1 at SNR = 0 (finite
  under zero terminal SNR, the bug of Min-SNR-Diffusion-Training #2).
* ``p2``: λ_ε = (k + SNR)^-γ (Choi et al. 2022, k = 1, γ = 1).
* ``edm``: λ_x0 = (σ̃² + σ_d²)/(σ̃ σ_d)² = SNR + 1/σ_d² with σ̃ = σ/α the Karras noise level (Karras et al.
  2022, eq. 8 and Table 1): the x_0-loss of the EDM-preconditioned network then weighs the raw network's
  error uniformly (λ = 1/c_out², see :mod:`diffexp.preconditioning`).
* ``sigma2``: λ_score = σ² (Song & Ermon 2019, eq. 2 with λ(σ) = σ²), i.e. λ_ε = 1.

On ``ddpm`` at integer t, ``uniform``/``min_snr``/``p2`` on ε/x_0/v/score keep the original code path
(:func:`snr_weight` on the schedule's SNR table), so those losses are bit-identical to before.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.process import check_prediction

WEIGHTINGS = ("uniform", "min_snr", "p2", "edm", "sigma2")
_LEGACY_WEIGHTINGS = ("uniform", "min_snr", "p2")
_LEGACY_TARGETS = ("eps", "x0", "v", "score")


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
    return weighting


# ---- the discrete-schedule path (ddpm, integer t): unchanged --------------------------------------------
def eps_to_target_factor(snr: Tensor, prediction: str) -> Tensor:
    """f_target from the SNR alone, valid on VP processes (α² + σ² = 1)."""
    factors = {
        "eps": lambda: torch.ones_like(snr),
        "x0": lambda: snr,
        "v": lambda: snr / (1.0 + snr),
        "score": lambda: 1.0 / (1.0 + snr),
    }
    if prediction not in factors:
        raise ValueError(f"eps_to_target_factor covers {list(factors)} (VP processes); use loss_weight for {prediction!r}")
    return factors[prediction]()


def snr_weight(
    snr: Tensor,
    prediction: str,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
) -> Tensor:
    """Weight of the per-sample MSE on ``prediction`` given SNR(t) of a VP process (any shape, SNR ≥ 0)."""
    if weighting not in _LEGACY_WEIGHTINGS:
        raise ValueError(f"snr_weight covers {list(_LEGACY_WEIGHTINGS)}; use loss_weight for {weighting!r}")
    if weighting == "uniform":
        check_prediction(prediction)
        return torch.ones_like(snr)
    if weighting == "min_snr":
        w_eps = (min_snr_gamma / snr).clamp(max=1.0)  # γ/0 = inf → 1
    else:
        w_eps = (p2_k + snr) ** (-p2_gamma)
    return w_eps * eps_to_target_factor(snr, prediction)


# ---- every family --------------------------------------------------------------------------------------
def target_factor_parts(target: str, a: Tensor, s: Tensor, da: Tensor | None, ds: Tensor | None) -> tuple[Tensor, Tensor]:
    """(numerator, denominator) of f_target (kept apart so that f_target/f_ref never forms 0·∞)."""
    one = torch.ones_like(a)
    if target == "eps":
        return one, one
    if target == "x0":
        return a**2, s**2
    if target == "v":
        return a**2, (a**2 + s**2) ** 2
    if target == "score":
        return s**2, one
    if target == "velocity":
        return a**2, (a * ds - da * s) ** 2
    check_prediction(target)
    raise ValueError(f"no weighting factor for target {target!r}")


def carry(weight_ref: Tensor, ref: str, target: str, a, s, da=None, ds=None) -> Tensor:
    """λ_target = λ_ref · f_target / f_ref (exactly λ_ref when target == ref)."""
    if target == ref:
        return weight_ref
    n_t, d_t = target_factor_parts(target, a, s, da, ds)
    n_r, d_r = target_factor_parts(ref, a, s, da, ds)
    return weight_ref * (n_t * d_r) / (d_t * n_r)


def loss_weight(
    process,
    t: Tensor,
    target: str,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
    sigma_data: float = 0.5,
) -> Tensor:
    """λ(t) (B,) float32 for the per-sample MSE on ``target`` under ``weighting`` on ``process``."""
    check_weighting(weighting)
    check_prediction(target)
    if weighting == "uniform":
        return torch.ones(t.shape[0], device=t.device)
    if _legacy(process, t, weighting, target):
        snr = process.schedule.snr.to(t.device)[t.long()].float()
        return snr_weight(snr, target, weighting, min_snr_gamma, p2_k, p2_gamma)
    like = torch.empty(t.shape[0], dtype=torch.float64, device=t.device)
    a, s = process.scales(t, like)
    da, ds = process.scale_derivatives(t, like) if target == "velocity" else (None, None)
    snr = a**2 / s**2
    if weighting == "min_snr":
        ref, w = "eps", (min_snr_gamma / snr).clamp(max=1.0)
    elif weighting == "p2":
        ref, w = "eps", (p2_k + snr) ** (-p2_gamma)
    elif weighting == "edm":
        ref, w = "x0", snr + 1.0 / sigma_data**2
    else:  # sigma2
        ref, w = "score", s**2
    return carry(w, ref, target, a, s, da, ds).float()


def _legacy(process, t: Tensor, weighting: str, target: str) -> bool:
    discrete = getattr(process, "is_discrete", hasattr(process, "schedule"))
    if not discrete or weighting not in _LEGACY_WEIGHTINGS or target not in _LEGACY_TARGETS:
        return False
    return not (t.is_floating_point() and bool((t != t.round()).any()))
