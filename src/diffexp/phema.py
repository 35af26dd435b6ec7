"""Power-function EMA profiles and their post-hoc reconstruction (Karras et al. 2024, EDM2, App. C).

A power-function EMA with exponent γ averages the training trajectory θ(τ) up to time t as

    θ̂_γ(t) = (γ+1)/t^(γ+1) ∫_0^t τ^γ θ(τ) dτ                                       (EDM2 eq. 119)

Its length is stated as the relative standard deviation of the weights τ^γ on [0, t] (eq. 123):

    σ_rel(γ) = sqrt((γ+1) / ((γ+2)² (γ+3))),

decreasing in γ for γ > 0 (σ_rel → sqrt(1/12) ≈ 0.289 as γ → 0, → 0 as γ → ∞); its inverse is the largest
real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0 (eq. 126).

Discrete tracking (eq. 127) updates θ̂ ← β_n θ̂ + (1 − β_n) θ_n after the n-th optimizer step (n = 1, 2, ...),
with β_n = (1 − 1/n)^(γ+1). With p = γ + 1 the products telescope, ∏_{s=τ+1}^{t} β_s = (τ/t)^p, so the weight
that the tracked average at time t gives to the weights θ_τ after step τ is exactly

    w_{γ,t}(τ) = (τ^p − (τ−1)^p) / t^p   for 1 ≤ τ ≤ t, 0 after,                       (*)

the power function's integral over (τ−1, τ]; they sum to 1. Post-hoc reconstruction (EDM2 Alg. 3) writes a
wanted profile w* = w_{γ*,t*} as a combination Σ_i x_i w_i of the profiles of the stored snapshots, by least
squares, and applies the same coefficients to the snapshots' weights: θ̂* ≈ Σ_i x_i θ̂_i. EDM2 solves it in
continuous time (closed-form inner products of power functions); here it is solved on the exact discrete
profiles (*), with inner products summed over the steps τ, so that whenever w* lies in the span of the
snapshot profiles — or every coordinate of the trajectory does — the reconstruction equals the directly
tracked average up to rounding (tests/test_ema_posthoc.py). The residual ‖Σ x_i w_i − w*‖ / ‖w*‖ is
returned with the coefficients: it bounds the error, |θ̂* − Σ x_i θ̂_i| ≤ ‖Σ x_i w_i − w*‖·‖θ‖ per coordinate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_SIGMA_REL", "sigma_rel_to_gamma", "gamma_to_sigma_rel", "power_beta", "profile_weights",
           "solve_posthoc", "check_sigma_rel"]

# σ_rel(γ) → sqrt(1/12) as γ → 0: longer averages are not power-function profiles with γ > 0.
MAX_SIGMA_REL = float(np.sqrt(1.0 / 12.0))
_CHUNK = 1 << 16  # steps summed per block in the Gram matrices (bounds memory for long runs)


def check_sigma_rel(sigma_rel: float, key: str = "sigma_rel") -> float:
    s = float(sigma_rel)
    if not 0.0 < s < MAX_SIGMA_REL:
        raise ValueError(f"{key}={sigma_rel}: a power-function EMA length must lie in (0, {MAX_SIGMA_REL:.4f}) "
                         "(relative std of the averaging profile; EDM2 uses 0.05 and 0.10)")
    return s


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel(γ) = sqrt((γ+1) / ((γ+2)² (γ+3))) (EDM2 eq. 123)."""
    g = float(gamma)
    return float(np.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The γ > 0 with σ_rel(γ) = sigma_rel: the largest real root of eq. 126."""
    s2 = check_sigma_rel(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def power_beta(gamma: float, n: int) -> float:
    """β_n = (1 − 1/n)^(γ+1) of the n-th update (n ≥ 1; β_1 = 0: the first update copies the weights)."""
    if n < 1:
        raise ValueError(f"updates are counted from 1, got n={n}")
    return float((1.0 - 1.0 / n) ** (gamma + 1.0))


def _weights(gamma: float, t: int, taus: np.ndarray) -> np.ndarray:
    """(*) at the steps ``taus`` (1-based), without cancellation: (τ/t)^p · (1 − (1 − 1/τ)^p)."""
    p = gamma + 1.0
    tau = taus.astype(np.float64)
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf at τ = 1: the first step's weight is (1/t)^p
        inc = -np.expm1(p * np.log1p(-1.0 / tau))
    w = np.exp(p * (np.log(tau) - np.log(float(t)))) * inc
    return np.where(tau <= t, w, 0.0)


def profile_weights(gamma: float, t: int, length: int | None = None) -> np.ndarray:
    """w_{γ,t}(τ) for τ = 1..length (default t): the weight of the weights after step τ, eq. (*)."""
    return _weights(float(gamma), int(t), np.arange(1, int(length or t) + 1))


def _gram(a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]]) -> np.ndarray:
    """Inner products Σ_τ w_a(τ) w_b(τ) between the discrete profiles (γ, t) of ``a`` and of ``b``."""
    horizon = max(t for _, t in list(a) + list(b))
    out = np.zeros((len(a), len(b)))
    for start in range(1, horizon + 1, _CHUNK):
        taus = np.arange(start, min(start + _CHUNK, horizon + 1))
        wa = np.stack([_weights(g, t, taus) for g, t in a])
        wb = np.stack([_weights(g, t, taus) for g, t in b])
        out += wa @ wb.T
    return out


def solve_posthoc(snapshots: Sequence[tuple[float, int]], targets: Sequence[tuple[float, int]],
                  rcond: float = 1e-13) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients X (snapshots × targets) with Σ_i X[i, j] w_i ≈ w*_j by least squares (EDM2 Alg. 3).

    ``snapshots``: (γ_i, t_i) of each stored average, t_i its number of updates; ``targets``: (γ*, t*).
    Minimises ‖Σ_i x_i w_i − w*‖² over the steps subject to Σ_i x_i = 1 (every profile sums to 1, so a
    weight that never moved is reproduced exactly, as by any average; EDM2 renormalises the unconstrained
    solution instead). The KKT system [[G, 1], [1ᵀ, 0]] [x; λ] = [b; 1], G_ik = ⟨w_i, w_k⟩, b_i = ⟨w_i, w*⟩,
    is solved with a pseudo-inverse: duplicated profiles are exactly collinear and distant ones nearly so.
    When w* is a combination of the w_i, the constraint holds at the unconstrained optimum and the
    reconstruction is exact. Returns (X, residual), residual_j = ‖Σ_i X[i, j] w_i − w*_j‖ / ‖w*_j‖.
    """
    snapshots = [(float(g), int(t)) for g, t in snapshots]
    targets = [(float(g), int(t)) for g, t in targets]
    if not snapshots:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    for g, t in snapshots + targets:
        if t < 1 or g <= 0:
            raise ValueError(f"profiles need t >= 1 updates and gamma > 0, got (gamma={g}, t={t})")
    G = _gram(snapshots, snapshots)
    B = _gram(snapshots, targets)
    # Rescale to a unit diagonal first: the profiles of long runs have tiny norms (‖w‖² ~ 1/t).
    k = len(snapshots)
    d = 1.0 / np.sqrt(np.diag(G))
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = G * d[:, None] * d[None, :]
    kkt[:k, k] = kkt[k, :k] = d
    rhs = np.vstack([B * d[:, None], np.ones((1, len(targets)))])
    X = d[:, None] * (np.linalg.pinv(kkt, rcond=rcond, hermitian=True) @ rhs)[:k]
    # ‖Σ x_i w_i − w*‖, summed directly over the steps (the expanded quadratic form would cancel).
    norms = _gram(targets, targets).diagonal()
    horizon = max(t for _, t in snapshots + targets)
    sq = np.zeros(len(targets))
    for start in range(1, horizon + 1, _CHUNK):
        taus = np.arange(start, min(start + _CHUNK, horizon + 1))
        ws = np.stack([_weights(g, t, taus) for g, t in snapshots])
        wt = np.stack([_weights(g, t, taus) for g, t in targets])
        sq += ((X.T @ ws - wt) ** 2).sum(axis=1)
    return X, np.sqrt(sq / norms)
