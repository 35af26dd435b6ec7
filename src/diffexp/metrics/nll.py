"""Negative log-likelihood of held-out data: the variational bound of :func:`diffexp.likelihood.elbo_bits_per_dim`

    −log p(x₀) ≤ L_T + Σ_{t≥2} L_{t−1} + L_0      (Ho et al. 2020, eq. 5)

averaged in bits/dim over a data set, with its per-t breakdown, split across DDP ranks. Shared by
:class:`diffexp.callbacks.NLLCallback` and ``evaluate.py`` (:mod:`diffexp.cli.evaluate`).

The data convention is part of every key (see :mod:`diffexp.likelihood`): ``discrete8bit`` for images
(discretised-Gaussian decoder over the 8-bit grid, a bound on −log P of the discrete data, ≥ 0; no
uniform dequantisation) and ``continuous`` for 2-D toy data (a bound on a density, can be negative)::

    nll/bpd/discrete8bit/test-n256/ema           mean bound, bits/dim
    nll/bpd_stderr/...   nll/prior_bpd/...   nll/decoder_bpd/...

DDP: examples are cut into fixed chunks of ``batch_size``; chunk c uses a noise generator seeded by
(seed, c) and is evaluated by rank c mod W, and the sums are all-reduced, so the number does not depend
on the number of ranks. The all-reduce is a collective: call on every rank.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import torch

from diffexp.atomic import atomic_write
from diffexp.likelihood import CONVENTION_CONTINUOUS, CONVENTION_DISCRETE, elbo_bits_per_dim
from diffexp.metrics.selection import reference_split
from diffexp.metrics.utils import dist_info
from diffexp.rng import make_generator

__all__ = ["convention_tag", "evaluate_nll", "nll_examples", "nll_keys", "write_per_t_csv"]


def convention_tag(discrete: bool) -> str:
    """``discrete8bit`` (bound on −log P of 8-bit data) or ``continuous`` (bound on a density)."""
    return "discrete8bit" if discrete else "continuous"


def nll_examples(datamodule: Any, split: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` examples (all when None or more than the split) of ``split`` (falling back to val, then
    train), as the first ``n`` of a ``seed``-ed permutation. Returns ``(x, y, split used)``."""
    used = reference_split(datamodule, split)
    x, y = datamodule.tensors(used)
    if n is not None and int(n) < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: int(n)]
        x, y = x[idx], y[idx]
    return x, y, used


@torch.no_grad()
def evaluate_nll(denoiser: Any, x: torch.Tensor, y: torch.Tensor | None = None, *, batch_size: int = 32,
                 seed: int = 0, t_batch: int | None = None, reverse_variance: str = "beta_tilde",
                 clip_denoised: bool = False, discrete: bool | None = None,
                 device: torch.device | str | None = None) -> dict[str, Any]:
    """Mean variational bound (bits/dim) of ``denoiser`` on ``x`` with its per-t breakdown.

    Chunk c = ``x[c*batch_size:(c+1)*batch_size]`` is evaluated by rank ``c mod W`` with noise from a
    generator seeded by ``(seed, c)``; sums are all-reduced (collective: call on every rank). ``y`` is
    passed to class-conditional denoisers (the bound is then on −log p(x | y)). Returns ``bpd`` (mean),
    ``bpd_stderr`` (standard error of the mean over examples), ``prior_bpd``, ``decoder_bpd``, ``vb_bpd``,
    ``per_t`` (list of T mean terms, index i ↔ t = i + 1), ``n``, ``convention``, ``discrete``,
    ``reverse_variance``, ``clip_denoised``, ``num_timesteps``, ``dims``, ``conditional``, ``seconds``.
    """
    rank, world = dist_info()
    device = torch.device(device) if device is not None else x.device
    T = denoiser.process.num_timesteps
    conditional = getattr(denoiser, "num_classes", None) is not None and y is not None
    sums = torch.zeros(6 + T, dtype=torch.float64, device=device)  # n, Σbpd, Σbpd², prior, decoder, vb, per_t
    meta: dict[str, Any] | None = None
    t0 = time.perf_counter()
    num_chunks = (len(x) + batch_size - 1) // batch_size
    for c in range(rank, num_chunks, world):
        xb = x[c * batch_size:(c + 1) * batch_size].to(device)
        yb = y[c * batch_size:(c + 1) * batch_size].to(device) if conditional else None
        g = make_generator(device, seed, "nll", c)
        out = elbo_bits_per_dim(denoiser, xb, yb, reverse_variance=reverse_variance, generator=g, t_batch=t_batch,
                                discrete=discrete, clip_denoised=clip_denoised)
        bpd = out["bpd"].double()
        sums[0] += len(bpd)
        sums[1] += bpd.sum()
        sums[2] += bpd.square().sum()
        sums[3] += out["prior_bpd"].double().sum()
        sums[4] += out["decoder_bpd"].double().sum()
        sums[5] += out["vb_bpd"].double().sum()
        sums[6:] += out["terms_bpd"].double().sum(0)
        meta = {k: out[k] for k in ("convention", "discrete", "reverse_variance", "clip_denoised", "num_timesteps", "dims")}
    if world > 1:
        torch.distributed.all_reduce(sums)
    if meta is None:  # this rank had no chunk (more ranks than chunks)
        is_discrete = denoiser.data_range is not None if discrete is None else discrete
        meta = {"convention": CONVENTION_DISCRETE if is_discrete else CONVENTION_CONTINUOUS, "discrete": is_discrete,
                "reverse_variance": reverse_variance, "clip_denoised": clip_denoised, "num_timesteps": T,
                "dims": int(x[0].numel())}
    s = sums.cpu()
    n = int(s[0])
    mean = float(s[1] / n)
    var = max(float(s[2] / n) - mean**2, 0.0) * n / max(n - 1, 1)
    return {
        "bpd": mean, "bpd_stderr": (var / n) ** 0.5, "prior_bpd": float(s[3] / n), "decoder_bpd": float(s[4] / n),
        "vb_bpd": float(s[5] / n), "per_t": (s[6:] / n).tolist(), "n": n, "conditional": conditional,
        "convention_tag": convention_tag(bool(meta["discrete"])), "seconds": time.perf_counter() - t0, **meta,
    }


def nll_keys(result: dict[str, Any], split: str, weights: str) -> dict[str, float]:
    """``nll/<quantity>/<convention>/<split>-n<n>/<ema|raw>`` → value."""
    suffix = f"{result['convention_tag']}/{split}-n{result['n']}/{weights}"
    return {f"nll/{q}/{suffix}": float(result[q]) for q in ("bpd", "bpd_stderr", "prior_bpd", "decoder_bpd")}


def write_per_t_csv(path: Path, per_t: list[float]) -> Path:
    """``t,bpd``: the mean bound term at t = 1..T (t = 1: decoder L_0; t ≥ 2: L_{t−1}); the prior L_T is not a row."""
    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(["t", "bpd"])
        for i, v in enumerate(per_t):
            w.writerow([i + 1, f"{v:.8g}"])

    return atomic_write(path, write, binary=False)
