"""Negative log-likelihood during training: the variational bound in bits/dim on held-out data.

:class:`NLLCallback` (config: ``conf/callbacks/nll.yaml``) evaluates, every ``every_n_steps`` optimizer
steps and at the end of training, the full bound (Ho et al. 2020, eq. 5) with
:func:`diffexp.metrics.nll.evaluate_nll` on ``num_examples`` examples of the ``test`` split (else
``val``), with the EMA weights. It costs T network evaluations per example (T = the model's number of
timesteps): 256 examples at T = 1000 are 256k evaluations, so keep ``num_examples`` modest and
``every_n_steps`` large. Keys, data conventions and DDP behaviour: :mod:`diffexp.metrics.nll`.

Every evaluation writes ``{out_dir}/nll_<split>-n<n>-<weights>_step<step>.json`` (all terms, the
convention, the per-t breakdown) and ``..._per_t.csv`` (column ``t`` = 1..T, the mean term L_{t−1}, with
t = 1 the decoder L_0), and appends a summary line to ``{out_dir}/history.jsonl``.

``estimator="ode"`` evaluates instead the exact likelihood by the probability-flow ODE on any process family
(:func:`diffexp.metrics.nll_ode.evaluate_nll_ode`; options in ``ode``: divergence, probe, num_probes,
method, rtol, atol), logged under ``nll_ode/...`` keys (no per-t breakdown). The ELBO stays the default
for the ddpm family.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from diffexp.atomic import atomic_write_json
from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.callbacks.report import log_provenance, log_values
from diffexp.latent import label_latent_nll
from diffexp.likelihood_ode import check_options
from diffexp.metrics.nll import evaluate_nll, nll_examples, nll_keys, write_per_t_csv
from diffexp.metrics.nll_ode import evaluate_nll_ode, nll_ode_keys
from diffexp.metrics.provenance import jsonable

__all__ = ["NLLCallback"]


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
        estimator: ``elbo`` (the bound, ddpm family) or ``ode`` (PF-ODE likelihood, any family).
        ode: options of the ODE estimator (``divergence``, ``probe``, ``num_probes``, ``method``, ``rtol``, ``atol``).
    """

    ODE_DEFAULTS = {"divergence": "auto", "probe": "gaussian", "num_probes": 1, "method": "dopri5", "rtol": 1e-5,
                    "atol": 1e-5}

    def __init__(self, every_n_steps: int | None = 5000, at_end: bool = True, num_examples: int | None = 256,
                 split: str = "test", batch_size: int = 32, t_batch: int | None = None, seed: int = 0,
                 ema: bool = True, reverse_variance: str = "beta_tilde", clip_denoised: bool = False,
                 out_dir: str | None = None, estimator: str = "elbo", ode: dict | None = None):
        super().__init__(every_n_steps, at_end)
        if estimator not in ("elbo", "ode"):
            raise ValueError(f"callbacks.nll.estimator={estimator!r}: valid: ['elbo', 'ode']")
        self.estimator = estimator
        unknown = sorted(set(ode or {}) - set(self.ODE_DEFAULTS))
        if unknown:
            raise ValueError(f"callbacks.nll.ode: unknown option(s) {unknown}; valid: {sorted(self.ODE_DEFAULTS)}")
        self.ode = {**self.ODE_DEFAULTS, **dict(ode or {})}
        try:
            check_options(**self.ode)
        except ValueError as e:
            raise ValueError(f"callbacks.nll.ode: {e}") from None
        self.num_examples, self.split, self.batch_size, self.t_batch = num_examples, split, int(batch_size), t_batch
        self.seed, self.ema, self.reverse_variance, self.clip_denoised = int(seed), ema, reverse_variance, clip_denoised
        self.out_dir = out_dir
        self.data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.used_split: str | None = None
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
            if self.estimator == "ode":
                result = evaluate_nll_ode(denoiser, x, y, batch_size=self.batch_size, seed=self.seed,
                                          device=pl_module.device, **self.ode)
            else:
                result = evaluate_nll(denoiser, x, y, batch_size=self.batch_size, seed=self.seed, t_batch=self.t_batch,
                                      reverse_variance=self.reverse_variance, clip_denoised=self.clip_denoised,
                                      device=pl_module.device)
        finally:
            pl_module.train(was_training)
        label_latent_nll(result, pl_module)  # latent diffusion: a bound on the latents, keyed latent-continuous
        result.update(step=step, split=self.used_split, weights=weights, ema=weights == "ema", seed=self.seed,
                      time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        values = (nll_ode_keys if self.estimator == "ode" else nll_keys)(result, self.used_split, weights)
        result["keys"] = values
        log_values(trainer, values, step)
        if trainer.is_global_zero:
            self._record(trainer, result, weights)
        rank_zero_info(f"[nll] step {step}: {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim "
                       f"({result['convention_tag']}, {self.used_split} n={result['n']}, {weights}; "
                       f"{result['seconds']:.1f} s)")
        return result

    def _record(self, trainer: L.Trainer, result: dict[str, Any], weights: str) -> None:
        out = Path(self.out_dir or Path(trainer.default_root_dir) / "nll")
        tag = "nll_ode" if self.estimator == "ode" else "nll"
        stem = f"{tag}_{self.used_split}-n{result['n']}-{weights}_step{result['step']:07d}"
        atomic_write_json(out / f"{stem}.json", jsonable(result))
        if "per_t" in result:
            write_per_t_csv(out / f"{stem}_per_t.csv", result["per_t"])
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(jsonable({k: v for k, v in result.items() if k != "per_t"})) + "\n")
        if not self._logged_provenance:
            self._logged_provenance = True
            keys = ("convention", "convention_tag", "split", "n", "seed", "dims", "conditional") + (
                ("divergence", "probe", "num_probes", "method", "rtol", "atol", "sigma_min", "sigma_max")
                if self.estimator == "ode" else ("reverse_variance", "clip_denoised", "num_timesteps"))
            log_provenance(trainer, {tag: {k: result.get(k) for k in keys} | {"batch_size": self.batch_size}})
