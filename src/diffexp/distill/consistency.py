"""Consistency distillation (CD) and consistency training (CT) losses (Song et al. 2023, eqs. 7 and 10;
improved CT, Song & Dhariwal 2023), in the VE view x̃ = x_0 + σ z of any process family.

Levels: the Karras grid σ_1 < … < σ_N (eq. 5 of Karras et al. 2022 read upwards, ρ = 7). A draw picks n
and z, sets x̃_{n+1} = x_0 + σ_{n+1} z and

    CD:  x̂_n = x̃_{n+1} + (σ_n − σ_{n+1}) d(x̃_{n+1}, σ_{n+1})         (the teacher's Euler step; Heun adds
         d(x̃, σ) = (x̃ − D(x̃, σ))/σ                                      the trapezoidal correction, CM App. B)
    CT:  x̂_n = x_0 + σ_n z                                                (the same z; eq. 10)
    loss = λ(σ_n) d(f_θ(x̃_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n))

with f_θ⁻ the target network (an EMA of θ for CD, stop-grad θ for improved CT), and the distances ``l2``
(mean squared error per sample) or ``pseudo_huber`` √(‖a − b‖² + c²) − c, c = 0.00054 √dim (iCT §3.3).
CT's level count follows iCT's curriculum N(k) = min(s_0 2^⌊k/K'⌋, s_1) + 1, K' = ⌊K/(log₂⌊s_1/s_0⌋ + 1)⌋
(iCT eq. 8), n is drawn with iCT's log-normal probabilities p(n) ∝ erf((ln σ_{n+1} − P_mean)/(√2 P_std)) −
erf((ln σ_n − P_mean)/(√2 P_std)) (§3.5) and λ(σ_n) = 1/(σ_{n+1} − σ_n) (§3.1).

The networks are called in process time: at VE level σ the input is x_t = α(t) x̃, t = t_of_sigma(σ), and
the consistency function (:class:`~diffexp.distill.parameterization.ConsistencyParameterization`) returns
its x_0 estimate. The teacher is any :class:`~diffexp.denoiser.Denoiser` (read through its x̂_0 only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffexp.objectives.base import LossOutput

DISTANCES = ("l2", "pseudo_huber")
SOLVERS = ("euler", "heun")


def karras_levels(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """σ_1 < … < σ_n (float64): σ_i = (σ_min^{1/ρ} + (i−1)/(n−1) (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ, ends exact."""
    if n < 2:
        raise ValueError(f"a consistency grid needs at least 2 levels, got {n}")
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (lo + i * (hi - lo)) ** rho
    s[0], s[-1] = sigma_min, sigma_max
    return s


def ict_num_levels(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's discretisation curriculum N(k) (Song & Dhariwal 2023, eq. 8): the level count doubles from
    s_0 + 1 to s_1 + 1 in equal stages over ``total_steps``."""
    stages = math.floor(math.log2(s1 // s0)) + 1
    k_prime = max(total_steps // stages, 1)
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def ict_level_probabilities(levels: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """p(n) for n = 0..N−2 (the pair σ_n < σ_{n+1}): log-normal mass between adjacent levels (iCT §3.5)."""
    cdf = torch.erf((torch.log(levels) - p_mean) / (math.sqrt(2.0) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return p / p.sum()


def distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-sample distance: ``l2`` mean of squares; ``pseudo_huber`` √(‖a−b‖² + c²) − c, c = 0.00054 √dim."""
    diff = (a - b).flatten(1).float()
    if kind == "l2":
        return diff.pow(2).mean(1)
    if kind == "pseudo_huber":
        c = 0.00054 * math.sqrt(diff.shape[1])
        return (diff.pow(2).sum(1) + c**2).sqrt() - c
    raise ValueError(f"unknown distance {kind!r}; valid: {list(DISTANCES)}")


def _at_level(process, x_ve: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, t) for the VE state x̃ at per-sample levels σ: t = t_of_sigma(σ), x_t = α(t) x̃."""
    t = process.t_of_sigma(sigma).to(x_ve.device)
    like = torch.empty((x_ve.shape[0],) + (1,) * (x_ve.ndim - 1), dtype=torch.float64, device=x_ve.device)
    a, _ = process.scales(t, like)
    return a.to(x_ve.dtype) * x_ve, t


def time_fn(net, process):
    """``fn(x_t, t, y)`` at process time t for a network obeying the contract (it receives net_time(t))."""
    return lambda x_t, t, y=None: net(x_t, process.net_time(t)) if y is None else net(x_t, process.net_time(t), y=y)


def consistency_fn(fn, process, x_ve: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
    """f(x̃, σ): the x_0 estimate of the consistency network ``fn(x_t, t, y)`` (process time, as the module's
    net_fn) at per-sample VE levels σ."""
    x_t, t = _at_level(process, x_ve, sigma)
    return fn(x_t, t, y)


@torch.no_grad()
def teacher_step(teacher, x_ve: Tensor, sigma: Tensor, sigma_next: Tensor, solver: str = "heun", y=None) -> Tensor:
    """One step of the probability-flow ODE dx̃/dσ = (x̃ − D(x̃, σ))/σ from σ to σ_next (Karras et al. 2022,
    Alg. 1: Euler, or Heun's second-order correction), with the teacher's x̂_0 as D."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {list(SOLVERS)}")
    process = teacher.process
    shape = (-1,) + (1,) * (x_ve.ndim - 1)
    s, s_next = sigma.reshape(shape).to(x_ve), sigma_next.reshape(shape).to(x_ve)

    def slope(x, lv, lv_b):
        x_t, t = _at_level(process, x, lv)
        return (x - teacher(x_t, t, y=y).x0) / lv_b

    d = slope(x_ve, sigma, s)
    x_next = x_ve + (s_next - s) * d
    if solver == "heun":
        x_next = x_ve + (s_next - s) * 0.5 * (d + slope(x_next, sigma_next, s_next))
    return x_next


def _pair(levels: Tensor, n: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    levels = levels.to(x0.device)
    return levels[n], levels[n + 1]


def consistency_distillation_loss(student, target, teacher, x0: Tensor, levels: Tensor, *, solver: str = "heun",
                                  distance_kind: str = "l2", generator=None, y=None) -> LossOutput:
    """CD loss (Song et al. 2023, eq. 7, λ = 1) over the ascending grid ``levels``: draws n uniformly in
    [0, N−2], then z, from ``generator``. ``student``/``target`` are consistency networks as ``fn(x_t, t, y)`` at
    process time (the target under no_grad), ``teacher`` a Denoiser."""
    process = teacher.process
    n = torch.randint(0, levels.numel() - 1, (x0.shape[0],), generator=generator, device=generator.device if generator else None).to(x0.device)
    z = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None).to(x0)
    s_lo, s_hi = _pair(levels, n, x0)
    x_hi = x0 + s_hi.reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0) * z
    x_lo = teacher_step(teacher, x_hi, s_hi, s_lo, solver, y)
    online = consistency_fn(student, process, x_hi, s_hi, y)
    with torch.no_grad():
        tgt = consistency_fn(target, process, x_lo, s_lo, y)
    per_sample = distance(online, tgt, distance_kind)
    ones = torch.ones_like(per_sample)
    return LossOutput(loss=per_sample.mean(), per_sample=per_sample.detach(), t=process.t_of_sigma(s_hi), weights=ones)


def consistency_training_loss(student, target, process, x0: Tensor, levels: Tensor, *, distance_kind: str = "pseudo_huber",
                              p_mean: float = -1.1, p_std: float = 2.0, generator=None, y=None) -> LossOutput:
    """Improved CT loss (Song & Dhariwal 2023): n ~ log-normal level probabilities, then z, from
    ``generator``; x̃_{n+1} = x_0 + σ_{n+1} z, x̂_n = x_0 + σ_n z; weight λ = 1/(σ_{n+1} − σ_n)."""
    dev = generator.device if generator else None
    probs = ict_level_probabilities(levels, p_mean, p_std)
    n = torch.multinomial(probs.to(dev or "cpu"), x0.shape[0], replacement=True, generator=generator).to(x0.device)
    z = torch.randn(x0.shape, generator=generator, device=dev).to(x0)
    s_lo, s_hi = _pair(levels, n, x0)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x_hi = x0 + s_hi.reshape(shape).to(x0) * z
    x_lo = x0 + s_lo.reshape(shape).to(x0) * z
    online = consistency_fn(student, process, x_hi, s_hi, y)
    with torch.no_grad():
        tgt = consistency_fn(target, process, x_lo, s_lo, y)
    weights = (1.0 / (s_hi - s_lo)).to(online.dtype)
    per_sample = distance(online, tgt, distance_kind) * weights
    return LossOutput(loss=per_sample.mean(), per_sample=per_sample.detach(), t=process.t_of_sigma(s_hi), weights=weights)
