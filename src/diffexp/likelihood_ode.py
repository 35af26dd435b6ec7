"""Exact likelihood by the probability-flow ODE (Song et al. 2021, §4.3 and App. D.2; score_sde ``likelihood.py``),
on any process family, in bits/dim.

The PF-ODE in the VE view of the process (x̃ = x_t/α(t), σ = σ(t)/α(t); Karras et al. 2022 eq. 4 with s = α),
in the variable s = log σ, is

    dx̃/ds = f(x̃, s) = x̃ − D(x̃; σ),      D(x̃; σ) = E[x_0 | x_t] read from the network at t = t_of_sigma(σ),

and the instantaneous change of variables (Chen et al. 2018, thm. 1) along a trajectory gives

    log p̃_{σ_min}(x̃(σ_min)) = log p̃_{σ_max}(x̃(σ_max)) + ∫_{log σ_min}^{log σ_max} ∇·f ds,
    ∇·f = D_dim − ∇·D(x̃; σ),

with the prior p̃_{σ_max} = N(0, (prior_std/α(t_max))² I) (the process's prior, as every sampler starts
from; the data's share at t_max is neglected, as score_sde does). The data point x_0 is taken as x̃(σ_min)
and the ODE is solved from σ_min up to σ_max by an adaptive embedded Runge-Kutta method (torchdiffeq; default
``dopri5``, score_sde's RK45, rtol = atol = 1e-5), together with the integral of ∇·f.

∇·D is either
* ``exact``: the trace of the Jacobian, one reverse-mode pass per data dimension (small D only), or
* ``hutchinson``: εᵀ (∂D/∂x̃) ε with ONE probe ε per sample, drawn once and held fixed over the solve
  (Hutchinson 1989; FFJORD; score_sde), Gaussian or Rademacher; ``num_probes`` > 1 solves that many
  independent copies of each sample and averages their log-likelihoods (an unbiased estimate either way).
``divergence="auto"`` uses the exact trace for D ≤ ``EXACT_MAX_DIMS``.

Data conventions (stated in ``convention`` of every result, as :mod:`diffexp.likelihood`):
* discrete 8-bit data (x ∈ [−1, 1] on the grid k/127.5 − 1): uniform dequantisation, x + u with
  u ~ U(−1/255, 1/255)^D (the bin of width 2/255 around each grid value); then
  −log P(x) ≤ E_u[−log p(x + u)] − D log(2/255) (Theis et al. 2016), so the reported ``bpd`` is
  (−log p(x + u))/(D ln 2) + log2(255/2): an upper bound on −log P of the discrete data in bits/dim (≥ 0 in
  expectation for a normalised model); ``density_bpd`` is the dequantised density term alone.
* continuous data (toy 2-D): no dequantisation; ``bpd`` = −log p̃_{σ_min}(x)/(D ln 2), a density (can be < 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("gaussian", "rademacher")
METHODS = ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8")
EXACT_MAX_DIMS = 16
DEQUANT_OFFSET_BPD = math.log2(255.0 / 2.0)  # −log2 of the bin width 2/255

CONVENTION_DISCRETE = (
    "discrete 8-bit data, x in [-1,1]; uniform dequantisation x+u, u~U(-1/255,1/255)^D (bins of width 2/255); "
    "bpd = -log p(x+u)/(D ln 2) + log2(255/2), an upper bound on -log P(x) of the discrete data in bits/dim"
)
CONVENTION_CONTINUOUS = (
    "continuous data; no dequantisation; bpd = -log p(x)/(D ln 2) of the PF-ODE density at sigma_min (can be negative)"
)


def check_options(divergence: str, probe: str, num_probes: int, method: str, rtol: float, atol: float) -> None:
    """Raise a ValueError naming the option and its valid values."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {list(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {list(PROBES)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


def draw_probe(shape, probe: str, generator: torch.Generator | None, device, dtype) -> Tensor:
    """One Hutchinson probe per sample: E[ε εᵀ] = I (standard normal, or ±1 with probability ½ each)."""
    gdev = generator.device if generator is not None else device
    if probe == "gaussian":
        z = torch.randn(shape, generator=generator, device=gdev, dtype=dtype)
    else:
        z = torch.randint(0, 2, shape, generator=generator, device=gdev).to(dtype) * 2 - 1
    return z.to(device)


def divergence(fn, x: Tensor, probe: Tensor | None) -> tuple[Tensor, Tensor]:
    """(fn(x), ∇·fn at x per sample). ``probe`` None: the exact trace Σ_i ∂fn_i/∂x_i (one backward pass per
    dimension); else Hutchinson's εᵀ (∂fn/∂x) ε (one vector-Jacobian product)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = fn(x)
        if probe is not None:
            (vjp,) = torch.autograd.grad(y, x, probe)
            return y.detach(), (vjp * probe).flatten(1).sum(1)
        flat = y.flatten(1)
        div = torch.zeros(x.shape[0], dtype=y.dtype, device=y.device)
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
            div = div + g.flatten(1)[:, i]
        return y.detach(), div


def _net_dtype(net) -> torch.dtype:
    for p in list(net.parameters()) + list(net.buffers()):
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def ve_denoiser(denoiser, y: Tensor | None = None):
    """x̃ ↦ D(x̃; σ) of any process, differentiable in x̃ (Denoiser.__call__ runs without gradients): the
    network at t = t_of_sigma(σ) on x_t = α(t) x̃ (on ddpm at the fractional index, α = 1/√(1+σ²)),
    read through the process's conversions. No clipping (it would break the divergence)."""
    process, dtype = denoiser.process, _net_dtype(denoiser.net)

    def D(x: Tensor, sigma: float) -> Tensor:
        t = float(process.t_of_sigma(torch.tensor(sigma, dtype=torch.float64)))
        if process.is_discrete:
            a = 1.0 / math.sqrt(1.0 + sigma**2)
        else:
            a = float(process.scales(torch.tensor([t], dtype=torch.float64), torch.empty(1, dtype=torch.float64))[0])
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        if not process.is_discrete:
            tt = tt.double()
        x_t = (a * x).to(dtype)
        out, _ = denoiser.split(denoiser.raw(x_t, tt, y))  # a learned variance plays no part in the ODE
        return process.predict(out, x_t, tt, denoiser.prediction).x0.to(x.dtype)

    return D


@torch.no_grad()
def ode_log_likelihood(denoiser, x0: Tensor, y: Tensor | None = None, *, divergence_mode: str = "auto",
                       probe: str = "gaussian", generator: torch.Generator | None = None, rtol: float = 1e-5,
                       atol: float = 1e-5, method: str = "dopri5", sigma_min: float | None = None,
                       sigma_max: float | None = None) -> dict[str, Any]:
    """log p̃_{σ_min}(x0) per sample (nats, float64) by the PF-ODE (module docstring), no dequantisation.

    Returns ``logp`` (B,), ``prior_logp`` (B,) at the end state, ``delta_logp`` (B,) the integral of ∇·f,
    ``x_T`` (the VE state at σ_max), ``nfe`` (right-hand-side evaluations of this solve; each is one network
    call plus its backward passes), ``sigma_min``, ``sigma_max``, ``divergence`` (exact | hutchinson)."""
    from torchdiffeq import odeint

    from diffexp.samplers.grids import sigma_range

    process = denoiser.process
    lo, hi = sigma_range(process)
    sigma_min, sigma_max = float(sigma_min or lo), float(sigma_max or hi)
    dims = int(x0[0].numel())
    mode = divergence_mode if divergence_mode != "auto" else ("exact" if dims <= EXACT_MAX_DIMS else "hutchinson")
    x = x0.detach().to(torch.float64)
    eps = None if mode == "exact" else draw_probe(x.shape, probe, generator, x.device, x.dtype)
    D = ve_denoiser(denoiser, y)
    calls = [0]
    s_lo, s_hi = math.log(sigma_min), math.log(sigma_max)

    def rhs(s, state):
        xs = state[0]
        # torchdiffeq's initial-step heuristic may probe beyond the span (f ≈ 0 at σ_min): clamp to it
        sigma = math.exp(min(max(float(s), s_lo), s_hi))
        calls[0] += 1
        d, div_d = divergence(lambda z: D(z, sigma), xs, eps)
        return xs - d, dims - div_d  # f and ∇·f = D_dim − ∇·D

    span = torch.tensor([s_lo, s_hi], dtype=torch.float64, device=x.device)
    state = (x, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device))
    was_training = getattr(denoiser.net, "training", False)
    denoiser.net.eval()
    try:
        x_T, delta = (v[-1] for v in odeint(rhs, state, span, rtol=rtol, atol=atol, method=method))
    finally:
        denoiser.net.train(was_training)
    std = process.ve_prior_scale(sigma_max)  # x̃ at σ_max ~ N(0, (prior_std/α)² I)
    flat = x_T.flatten(1)
    prior = -0.5 * (flat**2).sum(1) / std**2 - dims * (math.log(std) + 0.5 * math.log(2 * math.pi))
    return {"logp": prior + delta, "prior_logp": prior, "delta_logp": delta, "x_T": x_T, "nfe": calls[0],
            "sigma_min": sigma_min, "sigma_max": sigma_max, "divergence": mode}


def ode_bits_per_dim(denoiser, x0: Tensor, y: Tensor | None = None, *, discrete: bool | None = None,
                     num_probes: int = 1, generator: torch.Generator | None = None, **kw) -> dict[str, Any]:
    """Bits/dim of ``x0`` under the model's PF-ODE density, per sample, in the data convention of the module
    docstring (``discrete=None``: discrete 8-bit when ``denoiser.data_range`` is set, as the ELBO).
    ``num_probes`` independent Hutchinson probes per sample (the batch is repeated; the per-sample result is
    their mean). Returns ``bpd`` (B,), ``density_bpd`` (B,), ``nfe``, ``convention``, ``discrete``,
    ``dims``, ``num_probes``, ``divergence``, ``probe``, ``sigma_min``, ``sigma_max``, ``dequant_offset_bpd``."""
    check_options(kw.get("divergence_mode", "auto"), kw.get("probe", "gaussian"), num_probes, kw.get("method", "dopri5"),
                  kw.get("rtol", 1e-5), kw.get("atol", 1e-5))
    if discrete is None:
        discrete = denoiser.data_range is not None
    B, dims = x0.shape[0], int(x0[0].numel())
    x = x0.detach().to(torch.float64)
    if discrete:
        if bool((x.abs() > 1.0 + 1e-6).any()):
            raise ValueError("discrete 8-bit likelihood needs data in [-1, 1]; pass discrete=False for continuous data")
        gdev = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=gdev, dtype=torch.float64).to(x.device)
        x = x + (2.0 * u - 1.0) / 255.0
    mode = kw.get("divergence_mode", "auto")
    exact = mode == "exact" or (mode == "auto" and dims <= EXACT_MAX_DIMS)
    reps = 1 if exact else int(num_probes)
    xr = x.repeat(reps, *([1] * (x.ndim - 1)))
    yr = None if y is None else y.repeat(reps)
    out = ode_log_likelihood(denoiser, xr, yr, generator=generator, **kw)
    logp = out["logp"].reshape(reps, B).mean(0)
    density_bpd = -logp / (dims * math.log(2.0))
    offset = DEQUANT_OFFSET_BPD if discrete else 0.0
    return {"bpd": density_bpd + offset, "density_bpd": density_bpd, "nfe": out["nfe"], "discrete": bool(discrete),
            "convention": CONVENTION_DISCRETE if discrete else CONVENTION_CONTINUOUS, "dims": dims,
            "num_probes": reps, "divergence": out["divergence"], "probe": None if exact else kw.get("probe", "gaussian"),
            "sigma_min": out["sigma_min"], "sigma_max": out["sigma_max"], "dequant_offset_bpd": offset}
