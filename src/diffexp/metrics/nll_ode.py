"""Exact negative log-likelihood of held-out data by the probability-flow ODE
(:func:`diffexp.likelihood_ode.ode_bits_per_dim`, Song et al. 2021 App. D), averaged in bits/dim over a data
set on any process family, split across DDP ranks. Shared by ``evaluate.py metrics=[nll_ode]`` and
:class:`diffexp.callbacks.NLLCallback` (``estimator: ode``).

Keys name the data convention and the estimator (probe distribution and count, or exact trace; solver and
tolerance), since numbers from different estimators or tolerances are not comparable::

    nll_ode/bpd/discrete8bit/test-n256/ema/hutchinson-gaussian-x1/dopri5-tol1e-05
    nll_ode/bpd_stderr/...     nll_ode/nfe/...

DDP (k-diffusion #79: an adaptive solve with collectives inside hangs when ranks take different numbers of
steps): chunk c of ``batch_size`` examples is solved by rank c mod W alone, with its probes and dequantisation
noise from a generator seeded by (seed, c), and only the sums are all-reduced after every chunk is done
(collective: call on every rank). The result does not depend on the number of ranks.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from diffexp.likelihood_ode import (
    CONVENTION_CONTINUOUS,
    CONVENTION_DISCRETE,
    EXACT_MAX_DIMS,
    check_options,
    ode_bits_per_dim,
)
from diffexp.metrics.nll import convention_tag
from diffexp.metrics.utils import dist_info
from diffexp.rng import make_generator

__all__ = ["estimator_tag", "evaluate_nll_ode", "nll_ode_keys"]


def estimator_tag(result: dict[str, Any]) -> str:
    """``exact-dopri5-tol1e-05`` or ``hutchinson-rademacher-x4-dopri5-tol1e-05``."""
    est = "exact" if result["divergence"] == "exact" else f"hutchinson-{result['probe']}-x{result['num_probes']}"
    return f"{est}/{result['method']}-tol{max(result['rtol'], result['atol']):g}"


@torch.no_grad()
def evaluate_nll_ode(denoiser: Any, x: torch.Tensor, y: torch.Tensor | None = None, *, batch_size: int = 32,
                     seed: int = 0, divergence: str = "auto", probe: str = "gaussian", num_probes: int = 1,
                     method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, discrete: bool | None = None,
                     device: torch.device | str | None = None) -> dict[str, Any]:
    """Mean PF-ODE NLL (bits/dim) of ``denoiser`` on ``x``. Returns ``bpd``, ``bpd_stderr`` (standard error
    over examples; it includes the Hutchinson and dequantisation noise), ``density_bpd``, ``nfe`` (mean
    right-hand-side evaluations per solve; each is a network call and its backward passes), ``nfe_max``,
    ``n``, ``convention``, ``convention_tag``, ``discrete``, ``divergence``, ``probe``, ``num_probes``,
    ``method``, ``rtol``, ``atol``, ``sigma_min``, ``sigma_max``, ``dims``, ``conditional``, ``seconds``."""
    check_options(divergence, probe, num_probes, method, rtol, atol)
    rank, world = dist_info()
    device = torch.device(device) if device is not None else x.device
    conditional = getattr(denoiser, "num_classes", None) is not None and y is not None
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # n, Σbpd, Σbpd², Σdensity, ΣNFE, chunks
    nfe_max = torch.zeros(1, dtype=torch.float64, device=device)
    meta: dict[str, Any] | None = None
    t0 = time.perf_counter()
    num_chunks = (len(x) + batch_size - 1) // batch_size
    for c in range(rank, num_chunks, world):  # no collective in here: ranks may take different steps
        xb = x[c * batch_size:(c + 1) * batch_size].to(device)
        yb = y[c * batch_size:(c + 1) * batch_size].to(device) if conditional else None
        g = make_generator(device, seed, "nll_ode", c)
        out = ode_bits_per_dim(denoiser, xb, yb, discrete=discrete, num_probes=num_probes, generator=g,
                               divergence_mode=divergence, probe=probe, rtol=rtol, atol=atol, method=method)
        bpd = out["bpd"].double()
        sums += torch.stack([bpd.new_tensor(len(bpd)), bpd.sum(), bpd.square().sum(), out["density_bpd"].double().sum(),
                             bpd.new_tensor(out["nfe"]), bpd.new_tensor(1.0)]).to(device)
        nfe_max = torch.maximum(nfe_max, nfe_max.new_tensor([out["nfe"]]))
        meta = {k: out[k] for k in ("convention", "discrete", "divergence", "probe", "num_probes", "sigma_min",
                                    "sigma_max", "dims", "dequant_offset_bpd")}
    if world > 1:  # after every rank's solves are finished
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(nfe_max, op=torch.distributed.ReduceOp.MAX)
    if meta is None:  # this rank had no chunk
        dims = int(x[0].numel())
        is_discrete = denoiser.data_range is not None if discrete is None else discrete
        exact = divergence == "exact" or (divergence == "auto" and dims <= EXACT_MAX_DIMS)
        meta = {"convention": CONVENTION_DISCRETE if is_discrete else CONVENTION_CONTINUOUS, "discrete": is_discrete,
                "divergence": "exact" if exact else "hutchinson", "probe": None if exact else probe,
                "num_probes": 1 if exact else num_probes, "sigma_min": None, "sigma_max": None, "dims": dims,
                "dequant_offset_bpd": None}
    s = sums.cpu()
    n = int(s[0])
    mean = float(s[1] / n)
    var = max(float(s[2] / n) - mean**2, 0.0) * n / max(n - 1, 1)
    return {"bpd": mean, "bpd_stderr": (var / n) ** 0.5, "density_bpd": float(s[3] / n), "nfe": float(s[4] / s[5]),
            "nfe_max": int(nfe_max.item()), "n": n, "conditional": conditional, "method": method, "rtol": float(rtol),
            "atol": float(atol), "convention_tag": convention_tag(bool(meta["discrete"])),
            "seconds": time.perf_counter() - t0, **meta}


def nll_ode_keys(result: dict[str, Any], split: str, weights: str) -> dict[str, float]:
    """``nll_ode/<quantity>/<convention>/<split>-n<n>/<weights>/<estimator>/<solver-tol>`` → value."""
    suffix = f"{result['convention_tag']}/{split}-n{result['n']}/{weights}/{estimator_tag(result)}"
    return {f"nll_ode/{q}/{suffix}": float(result[q]) for q in ("bpd", "bpd_stderr", "nfe")}
