"""Sampling grids on any process, in one place: the noise levels a continuous-time sampler visits.

A grid is N noise levels from the process's σ_max down to σ_min (its sampling range, in VE terms
σ = σ(t)/α(t)), followed by σ_N = 0, where the sampler returns x̂_0. Spacings:

* ``time``: uniform in the process time t over [sample_t_min, sample_t_max] (on ddpm: the schedule's own
  integer timesteps, ``timesteps(T, N, "uniform")``), σ = σ(t);
* ``karras``: σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ (Karras et al. 2022, eq. 5);
* ``logsnr``: uniform in the log-SNR λ = -2 log σ (Lu et al. 2022, DPM-Solver's 'logSNR' steps);
* ``shift``: SD3's timestep shift (Esser et al. 2024, eq. 23) t' = s u/(1 + (s-1) u) of a uniform u ∈ [0, 1],
  mapped onto [sample_t_min, sample_t_max]; s > 1 spends more steps at high noise. Made for ``flow``
  (s = 3 at 1024² in SD3), defined on every family.

Each grid is strictly decreasing with both ends exact (tested on every family and spacing), so no
sampler re-derives one (diffusers #12633, #12771: duplicate or off-by-one timesteps).
"""

from __future__ import annotations

import math

import torch

SPACINGS = ("time", "karras", "logsnr", "shift")


def process_sigma_range(process) -> tuple[float, float]:
    """(σ_min, σ_max) of the process's sampling range in VE terms (finite: a zero-terminal-SNR ddpm
    schedule contributes its largest finite σ). Also accepts a ddpm ``NoiseSchedule``."""
    if hasattr(process, "sigma_range"):
        lo, hi = process.sigma_range()
        return float(lo), float(hi)
    sig = getattr(process, "schedule", process).sigmas
    return float(sig[0]), float(sig[torch.isfinite(sig)].max())


sigma_range = process_sigma_range


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, i < n, and σ_n = 0
    (Karras et al. 2022, eq. 5)."""
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    if n == 1:
        return [sigma_max, 0.0]
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return s.tolist() + [0.0]


def loglinear_sigmas(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    """σ uniform in log σ (= uniform in λ = log(α/σ_VP) = -log σ, Lu et al. 2022), then 0."""
    if n == 1:
        return [sigma_max, 0.0]
    s = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return s.tolist() + [0.0]


def time_sigmas(n: int, process) -> list[float]:
    """:func:`sigma_grid` with ``time`` spacing (a ddpm ``NoiseSchedule`` is accepted too)."""
    if not hasattr(process, "sigma"):  # a NoiseSchedule
        from diffexp.process import DiffusionProcess

        process = DiffusionProcess(process)
    return sigma_grid(process, n, "time")


def _sample_range(process, finite: bool = False) -> tuple[float, float]:
    """[t_min, t_max] the samplers cover; ``finite``: capped where σ is finite (a zero-terminal-SNR ddpm
    schedule has σ = ∞ at its last index, where only x_t-space samplers can start)."""
    if getattr(process, "is_discrete", hasattr(process, "schedule")):
        top = process.num_timesteps - 1
        if finite and top > 0 and not math.isfinite(float(process.schedule.sigmas[top])):
            top -= 1
        return 0.0, float(top)
    return float(process.sample_t_min), float(process.sample_t_max)


def sigma_grid(process, steps: int, spacing: str = "karras", rho: float = 7.0, shift: float = 3.0) -> list[float]:
    """``steps`` noise levels σ_max = σ_0 > … > σ_{N-1} = σ_min of ``process``, then σ_N = 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {list(SPACINGS)}")
    lo, hi = process_sigma_range(process)
    if steps == 1:
        return [hi, 0.0]
    if spacing == "karras":
        return karras_sigmas(steps, lo, hi, rho=rho)
    if spacing == "logsnr":
        return loglinear_sigmas(steps, lo, hi)
    if is_discrete(process) and spacing == "time":  # the schedule's own σ_t at its integer timesteps
        ts = [int(t) for t in time_grid(process, steps, "time", finite=True)]
        s = process.schedule.sigmas[ts].clone()
        s[0] = hi  # the top of the finite range (a zero-terminal-SNR schedule's last σ is ∞)
    else:
        s = process.sigma(torch.tensor(time_grid(process, steps, spacing, shift=shift, finite=True), dtype=torch.float64))
    # Ends as computed (to the last bit: the samplers' outputs are pinned by a fixture), within 1e-12 of
    # (σ_max, σ_min); tests/test_grids.py checks both ends and strict monotonicity on every family.
    return s.tolist() + [0.0]


def time_grid(process, steps: int, spacing: str = "time", rho: float = 7.0, shift: float = 3.0,
              finite: bool = False) -> list[float]:
    """The process times of :func:`sigma_grid` (without the final σ = 0): sample_t_max = t_0 > … >
    t_{N-1} = sample_t_min (on ddpm: indices, integers for ``time``). The top time is always the process's
    own; on a zero-terminal-SNR schedule σ is ∞ there, where :func:`sigma_grid` has the largest finite σ
    (``finite=True``: the grid of those finite levels, ending one index lower)."""
    t_lo, t_hi = _sample_range(process, finite)
    if spacing == "time":
        if getattr(process, "is_discrete", hasattr(process, "schedule")):
            from diffexp.samplers.base import timesteps

            return [float(t) for t in timesteps(int(t_hi) + 1, steps, "uniform")[::-1]]
        if steps == 1:
            return [t_hi]
        return torch.linspace(t_hi, t_lo, steps, dtype=torch.float64).tolist()
    if spacing == "shift":
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift!r}")
        if steps == 1:
            return [t_hi]
        u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
        t = t_lo + (t_hi - t_lo) * shift * u / (1 + (shift - 1) * u)
        t[0], t[-1] = t_hi, t_lo
        t[1:] = t[1:].clamp(max=_sample_range(process, True)[1])  # σ = ∞ only at the very top
        return t.tolist()
    if steps == 1:
        return [t_hi]
    sig = torch.tensor(sigma_grid(process, steps, spacing, rho=rho)[:-1], dtype=torch.float64)
    t = process.t_of_sigma(sig).to(torch.float64).clamp(t_lo, t_hi)
    t[1:] = t[1:].clamp(max=_sample_range(process, True)[1])
    t[0], t[-1] = t_hi, t_lo
    return t.tolist()


def is_discrete(process) -> bool:
    return bool(getattr(process, "is_discrete", hasattr(process, "schedule")))


def scales_at(process, t: float) -> tuple[float, float]:
    """(α(t), σ(t)) of ``process`` at one time, as Python floats (float64 arithmetic)."""
    like = torch.empty(1, dtype=torch.float64)
    tt = torch.tensor([t], dtype=torch.float64)
    if is_discrete(process) and float(t).is_integer():
        tt = tt.long()
    a, s = process.scales(tt, like)
    return float(a), float(s)


def sampling_times(process, steps: int, spacing: str, shift: float = 3.0, rho: float = 7.0) -> list[float]:
    """The times a first-order sampler in x_t visits, highest first: the grid of :func:`time_grid`, with
    ``uniform`` read as the family's preferred discretisation, ``process.uniform_spacing``: uniform t (on
    ddpm the schedule's uniform indices), except on ``edm``, whose time is σ itself and whose own
    discretisation is Karras's ρ = 7 (uniform σ from 80 to 0.002 would leave one step below σ = 1.6), and
    on ``ve``, where uniform t is geometric in σ and Karras's grid is the better one (Karras et al. 2022)."""
    if spacing == "uniform":
        spacing = getattr(process, "uniform_spacing", "time")
    return time_grid(process, steps, spacing, rho=rho, shift=shift)
