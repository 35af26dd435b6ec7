"""Sample-quality metrics during training: FID, KID and IS (images) or FID, KID and the sliced
Wasserstein distance (2-D points), with the provenance of every value in its key.

:class:`MetricsCallback` (config: ``conf/callbacks/metrics.yaml``) runs every ``every_n_steps`` optimizer
steps and at the end of training, on **every** rank (the metric states are synchronised with
collectives, never inside ``rank_zero_only``: torchmetrics #2684):

1. ``num_samples`` samples from the EMA weights (``ema: true``) with any ``sampler``; sample i uses seed
   ``seed + i`` and rank r of W draws i = r, r + W, ... (see :func:`diffexp.metrics.compute_metrics`), so the samples do
   not depend on the number of ranks or the batch size;
2. features (never images) accumulate in constant memory (:class:`diffexp.metrics.SampleQuality`:
   running sums for FID/IS, at most ``kid_max_samples`` stored features for KID/SWD) and are reduced
   across ranks;
3. they are compared with real-data statistics of ``split`` computed once and cached on disk by
   :func:`diffexp.metrics.reference_stats` (keyed by dataset, split, preprocessing, extractor + weights
   hash and n).

Keys (:func:`diffexp.metrics.provenance.provenance_key`) say what a number is and so which numbers may be
compared::

    fid/classifier-ab12cd/n1000/ddpm/ddim-50/ema/ref-test-n10000
    └metric└extractor-hash6└n gen└process family└sampler-NFE└weights└reference split and n

Every evaluation is also appended, with its full provenance (extractor weights hash and file, reference
cache key and file, sampler config, NFE, seeds, timings), to ``{out_dir}/evaluations.jsonl``, and the
provenance of each key family goes to the loggers' hyper-parameters (``metrics/<key suffix>``) and to
``{out_dir}/provenance.json``.

Values go to the loggers as :mod:`diffexp.callbacks.report` explains. On 2-D toy data the configured
extractor is replaced by the identity and the sliced Wasserstein distance is added
(:mod:`diffexp.metrics.selection`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from diffexp.atomic import atomic_write_json
from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.callbacks.report import barrier, log_provenance, log_values
from diffexp.metrics import FeatureExtractor, FeatureStats, compute_metrics
from diffexp.metrics.provenance import (
    extractor_info,
    jsonable,
    keyed_metrics,
    provenance,
    provenance_key,
    result_label,
    sampler_config,
    sampler_label,
)
from diffexp.metrics.sampling import ModuleSampleSource
from diffexp.metrics.selection import (
    cached_reference_stats,
    is_points,
    make_metrics_extractor,
    reference_split,
    resolve_metrics,
)
from diffexp.metrics.utils import dist_info

__all__ = ["MetricsCallback"]


class MetricsCallback(PeriodicCallback):
    """FID/KID/IS (or FID/KID/SWD on 2-D data) of ``num_samples`` samples every ``every_n_steps``
    optimizer steps and at the end of training; see the module docstring for keys, files and DDP.

    Args:
        sampler: a sampler object (``conf/sampler``) or None for the run's ``sampler`` (read from the
            module's stored config).
        extractor: ``conf/extractor`` as instantiated by Hydra (a partial), a FeatureExtractor, a name.
            Ignored for 2-D data (identity, see :class:`diffexp.metrics.selection.PointsExtractor`).
        metrics: subset of fid, kid, is, swd (None: fid, kid, is for images; fid, kid, swd for points).
        every_n_steps: evaluate when ``global_step % every_n_steps == 0`` (0/None: only at the end).
        at_end: evaluate when training ends (unless the last evaluation was at that step).
        num_samples: generated samples n (part of the key).
        batch_size: samples per sampler call on each rank.
        split: reference split (test; falls back to val then train); num_real: reference examples
            (None: the whole split).
        seed: sample i uses seed ``seed + i``. ema: EMA weights (raw until the EMA's first update).
        guidance_scale: CFG scale for class-conditional models (labels cycle through the classes).
        kid_subset_size, kid_subsets, kid_max_samples: KID options (features kept, also for SWD).
        swd_projections: directions of the sliced Wasserstein distance (points).
        cache_dir: reference-statistics cache (default: ``$DIFFEXP_CACHE`` or ~/.cache/diffexp).
        out_dir: where ``evaluations.jsonl`` and ``provenance.json`` go (default: ``<root>/metrics``).
        recompute_reference: ignore cached reference statistics (they are still rewritten).
    """

    def __init__(self, sampler: Any = None, extractor: Any = None, metrics: Sequence[str] | None = None,
                 every_n_steps: int | None = 5000, at_end: bool = True, num_samples: int = 1000,
                 batch_size: int = 250, split: str = "test", num_real: int | None = None, seed: int = 0,
                 ema: bool = True, guidance_scale: float = 1.0, kid_subset_size: int = 1000, kid_subsets: int = 100,
                 kid_max_samples: int = 10_000, swd_projections: int = 256, cache_dir: str | None = None,
                 out_dir: str | None = None, recompute_reference: bool = False):
        super().__init__(every_n_steps, at_end)
        if int(num_samples) < 2:
            raise ValueError(f"num_samples={num_samples}: FID/KID need at least 2 samples")
        self.sampler, self.extractor_cfg = sampler, extractor
        self.metrics_cfg = None if metrics is None else list(metrics)
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.split, self.num_real, self.seed, self.ema = split, num_real, int(seed), ema
        self.guidance_scale = float(guidance_scale)
        self.kid_subset_size, self.kid_subsets, self.kid_max_samples = kid_subset_size, kid_subsets, kid_max_samples
        self.swd_projections = swd_projections
        self.cache_dir, self.out_dir, self.recompute_reference = cache_dir, out_dir, recompute_reference
        self.extractor: FeatureExtractor | None = None
        self.real_stats: FeatureStats | None = None
        self.metrics: tuple[str, ...] = ()
        self.real_split: str | None = None
        self._logged_provenance: set[str] = set()

    # --- setup: extractor and reference statistics once, on every rank --------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.real_stats is not None:
            return
        dm = getattr(trainer.datamodule, "pixels", trainer.datamodule)  # latent diffusion: images are the reference
        if dm is None:
            raise ValueError("MetricsCallback needs the data module (trainer.fit(module, datamodule=...)) "
                             "for its reference statistics")
        if self.sampler is None:
            self.sampler = self._run_sampler(pl_module)
        device = trainer.strategy.root_device
        rank, _ = dist_info()
        # The classifier extractor trains once and is cached: rank 0 first, the others then load the file.
        if rank == 0:
            self.extractor = make_metrics_extractor(self.extractor_cfg, dm)
        barrier()
        if rank != 0:
            self.extractor = make_metrics_extractor(self.extractor_cfg, dm)
        self.extractor.to(device)
        self.metrics = resolve_metrics(self.metrics_cfg, is_points(dm.data_shape), self.extractor)
        self.real_split = reference_split(dm, self.split)
        self.real_stats = cached_reference_stats(dm, self.real_split, self.extractor, self.num_real, self.cache_dir,
                                                 kid_max_samples=self.kid_max_samples,
                                                 recompute=self.recompute_reference)

    @staticmethod
    def _run_sampler(pl_module: L.LightningModule) -> Any:
        cfg = (getattr(pl_module, "config", None) or {}).get("sampler")
        if not cfg:
            raise ValueError("MetricsCallback(sampler=None) uses the run's `sampler` config, but the module "
                             "has none; pass a sampler")
        from hydra.utils import instantiate

        return instantiate(cfg)

    # --- what ------------------------------------------------------------------------------------------
    def label(self, pl_module) -> str:
        """The sampler with its NFE, e.g. ``ddim-50`` (see :func:`diffexp.metrics.provenance.sampler_label`)."""
        return sampler_label(self.sampler, pl_module.process.num_timesteps)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Generate, score, log and record (runs on every rank; see the module docstring)."""
        if self.real_stats is None:
            self.setup(trainer, pl_module, "fit")
        step = trainer.global_step
        self._last_step = step
        weights = "ema" if (self.ema and pl_module.uses_ema) else "raw"
        device = pl_module.device
        # drawn as evaluate.py draws them (seeds, labels i mod K, CFG, latent decoding): one rule for both
        source = ModuleSampleSource(pl_module, self.sampler, self.guidance_scale, ema=self.ema, seed_offset=self.seed,
                                    device=device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            result = compute_metrics(
                source, self.num_samples, self.extractor, self.real_stats, batch_size=self.batch_size,
                metrics=self.metrics, seed_offset=self.seed, data_range=source.data_range,
                kid_subset_size=self.kid_subset_size, kid_subsets=self.kid_subsets,
                kid_max_samples=self.kid_max_samples, swd_projections=self.swd_projections, device=device,
                label_fn=source.labels)  # class_accuracy
        finally:
            pl_module.train(was_training)
        T = pl_module.process.num_timesteps
        result.update(
            step=step, epoch=trainer.current_epoch, time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            sampler=self.label(pl_module), sampler_class=type(self.sampler).__name__,
            sampler_config=sampler_config(self.sampler), nfe=self.sampler.nfe(T), weights=weights, ema=weights == "ema",
            guidance_scale=self.guidance_scale, real_split=self.real_split, extractor_info=extractor_info(self.extractor),
            world_size=dist_info()[1], process=pl_module.process.name,
        )
        values = keyed_metrics(result)
        result["keys"] = values
        log_values(trainer, values, step)
        self._record(trainer, result)
        shown = ", ".join(f"{m}={result[m]:.5g}" for m in ("fid", "kid", "is", "class_accuracy", "swd")
                          if result.get(m) is not None)
        rank_zero_info(f"[metrics] step {step} {result_label(result)} ({weights}, n={self.num_samples}, "
                       f"{self.extractor.tag}): {shown} ({result['seconds']:.1f} s)")
        return result

    def _out_dir(self, trainer) -> Path:
        return Path(self.out_dir or Path(trainer.default_root_dir) / "metrics")

    def _record(self, trainer: L.Trainer, result: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        out = self._out_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "evaluations.jsonl", "a") as f:
            f.write(json.dumps(jsonable(result)) + "\n")
        suffix = provenance_key("x", result).split("/", 1)[1]  # the key without its metric
        if suffix not in self._logged_provenance:
            self._logged_provenance.add(suffix)
            prov = provenance(result)
            path = out / "provenance.json"
            known = json.loads(path.read_text()) if path.is_file() else {}
            known[suffix] = jsonable(prov)
            atomic_write_json(path, known)
            log_provenance(trainer, {f"metrics/{suffix}": prov})
