"""Negative log-likelihood during training: the variational bound in bits/dim on held-out data.

:class:`NLLCallback` (config: ``conf/callbacks/nll.yaml``) evaluates, every ``every_n_steps`` optimizer
steps and at the end of training, the full bound of :func:`diffexp.likelihood.elbo_bits_per_dim`

    −log p(x₀) ≤ L_T + Σ_{t≥2} L_{t−1} + L_0      (Ho et al. 2020, eq. 5)

on ``num_examples`` examples of the ``test`` split (else ``val``), with the EMA weights. It costs T
network evaluations per example (T = the model's number of timesteps): 256 examples at T = 1000 are
256k evaluations, so keep ``num_examples`` modest and ``every_n_steps`` large.

The data convention is part of every logged key and record (see :mod:`diffexp.likelihood`):
``discrete8bit`` for images (discretised-Gaussian decoder over the 8-bit grid, a bound on −log P of the
discrete data, ≥ 0; no uniform dequantisation) and ``continuous`` for 2-D toy data (Gaussian density
decoder, a bound on −log p of the density, can be negative). Keys::

    nll/bpd/discrete8bit/test-n256/ema           mean bound, bits/dim
    nll/bpd_stderr/...   nll/prior_bpd/...   nll/decoder_bpd/...

Every evaluation writes ``{out_dir}/nll_<split>-n<n>-<weights>_step<step>.json`` (all terms, the
convention, the per-t breakdown) and ``..._per_t.csv`` (column ``t`` = 1..T, the mean term L_{t−1}, with
t = 1 the decoder L_0), and appends a summary line to ``{out_dir}/history.jsonl``.

DDP: examples are cut into fixed chunks of ``batch_size``; chunk c uses a noise generator seeded by
(seed, c) and is evaluated by rank c mod W, and the sums are all-reduced, so the number does not depend
on the number of ranks. The all-reduce is a collective: the callback runs on every rank.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from diffexp.callbacks.metrics import _jsonable, log_provenance, log_values, reference_split, write_json
from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.likelihood import elbo_bits_per_dim
from diffexp.metrics.utils import dist_info
from diffexp.rng import make_generator

__all__ = ["NLLCallback", "convention_tag", "evaluate_nll", "nll_examples", "nll_keys", "write_per_t_csv"]


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
        from diffexp.likelihood import CONVENTION_CONTINUOUS, CONVENTION_DISCRETE

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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "bpd"])
        for i, v in enumerate(per_t):
            w.writerow([i + 1, f"{v:.8g}"])
    return path


class NLLCallback(PeriodicCallback):
    """The variational bound in bits/dim on held-out data, every ``every_n_steps`` optimizer steps and
    at the end of training (see the module docstring for keys, files, cost and DDP).

    Args:
        every_n_steps: evaluate when ``global_step % every_n_steps == 0`` (0/None: only at the end).
        at_end: evaluate when training ends (unless the last evaluation was at that step).
        num_examples: examples (a fixed seeded subset of the split; None: the whole split).
        split: ``test`` (falls back to ``val``, then ``train``; the key says which).
        batch_size: examples per chunk (each chunk costs T network evaluations, ``t_batch`` per call).
        t_batch: timesteps per network call (None: about 4096 / batch_size).
        seed: subset and noise seed. ema: EMA weights (raw until the EMA's first update).
        reverse_variance: σ_t² of p_θ(x_{t−1}|x_t): ``beta_tilde`` or ``beta``.
        clip_denoised: clamp x̂₀ to the data range before forming the posterior mean.
        out_dir: where the JSON/CSV files go (default: ``<root>/nll``).
    """

    def __init__(self, every_n_steps: int | None = 5000, at_end: bool = True, num_examples: int | None = 256,
                 split: str = "test", batch_size: int = 32, t_batch: int | None = None, seed: int = 0,
                 ema: bool = True, reverse_variance: str = "beta_tilde", clip_denoised: bool = False,
                 out_dir: str | None = None):
        super().__init__(every_n_steps, at_end)
        self.num_examples, self.split, self.batch_size, self.t_batch = num_examples, split, int(batch_size), t_batch
        self.seed, self.ema, self.reverse_variance, self.clip_denoised = int(seed), ema, reverse_variance, clip_denoised
        self.out_dir = out_dir
        self.data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.used_split: str | None = None
        self.last_result: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._logged_provenance = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.data is not None:
            return
        dm = trainer.datamodule
        if dm is None:
            raise ValueError("NLLCallback needs the data module (trainer.fit(module, datamodule=...))")
        x, y, self.used_split = nll_examples(dm, self.split, self.num_examples, self.seed)
        self.data = (x, y)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self.data is None:
            self.setup(trainer, pl_module, "fit")
        step = trainer.global_step
        self._last_step = step
        denoiser = pl_module.denoiser(ema=self.ema)
        weights = "ema" if (self.ema and pl_module.uses_ema) else "raw"
        x, y = self.data
        was_training = pl_module.training
        pl_module.eval()
        try:
            result = evaluate_nll(denoiser, x, y, batch_size=self.batch_size, seed=self.seed, t_batch=self.t_batch,
                                  reverse_variance=self.reverse_variance, clip_denoised=self.clip_denoised,
                                  device=pl_module.device)
        finally:
            pl_module.train(was_training)
        result.update(step=step, split=self.used_split, weights=weights, ema=weights == "ema", seed=self.seed,
                      time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        values = nll_keys(result, self.used_split, weights)
        result["keys"] = values
        self.last_result = result
        self.history.append(result)
        log_values(trainer, values, step)
        if trainer.is_global_zero:
            self._record(trainer, result, weights)
        rank_zero_info(f"[nll] step {step}: {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim "
                       f"({result['convention_tag']}, {self.used_split} n={result['n']}, {weights}; "
                       f"{result['seconds']:.1f} s)")
        return result

    def _record(self, trainer: L.Trainer, result: dict[str, Any], weights: str) -> None:
        out = Path(self.out_dir or Path(trainer.default_root_dir) / "nll")
        stem = f"nll_{self.used_split}-n{result['n']}-{weights}_step{result['step']:07d}"
        write_json(out / f"{stem}.json", result)
        write_per_t_csv(out / f"{stem}_per_t.csv", result["per_t"])
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(_jsonable({k: v for k, v in result.items() if k != "per_t"})) + "\n")
        if not self._logged_provenance:
            self._logged_provenance = True
            log_provenance(trainer, {"nll": {k: result[k] for k in (
                "convention", "convention_tag", "split", "n", "seed", "reverse_variance", "clip_denoised",
                "num_timesteps", "dims", "conditional")} | {"batch_size": self.batch_size}})
