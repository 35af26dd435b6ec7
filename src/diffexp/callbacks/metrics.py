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

Keys (:func:`provenance_key`) say what a number is and so which numbers may be compared::

    fid/classifier-ab12cd/n1000/ddim-50/ema/ref-test-n10000
    └metric└extractor-hash6└n gen└sampler-NFE└weights└reference split and n

Every evaluation is also appended, with its full provenance (extractor weights hash and file, reference
cache key and file, sampler config, NFE, seeds, timings), to ``{out_dir}/evaluations.jsonl``, and the
provenance of each key family goes to the loggers' hyper-parameters (``metrics/<key suffix>``) and to
``{out_dir}/provenance.json``.

Why values go to ``trainer.loggers`` directly: Lightning forbids ``self.log`` in ``on_train_end`` and
sends ``on_step`` values to the loggers only on ``log_every_n_steps`` boundaries, so an FID at step
5000 with ``log_every_n_steps=64`` would never reach CSV/TensorBoard/W&B. The values are logged at
``trainer.global_step`` by rank 0 and also stored in ``trainer.callback_metrics`` (on every rank, they
are identical), where checkpoint monitors, the progress bar and ``optimized_metric`` see them.

**2-D toy data** (``len(data_shape) == 1``, ``data_range: null``): image features make no sense, so the
configured extractor is ignored and :class:`PointsExtractor` (the identity) is used. FID is then the
Fréchet distance between Gaussian fits of the raw coordinates (it only sees means and covariances:
eight modes on a circle and one wide Gaussian can score the same), KID the unbiased cubic-kernel MMD
(moments up to order 3), and the sliced Wasserstein-2 distance (:func:`diffexp.metrics.sliced_wasserstein`), a metric
on distributions that sees missing or misplaced modes, is added. Its key is ``swd/points-<hash6>/...``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.metrics import FeatureExtractor, FeatureStats, compute_metrics, metric_key, reference_stats
from diffexp.metrics.utils import dist_info

IMAGE_METRICS = ("fid", "kid", "is")
POINT_METRICS = ("fid", "kid", "swd")
SAMPLE_METRICS = ("fid", "kid", "is", "swd")
LOGGED = ("fid", "kid", "kid_std", "is", "is_std", "swd")

__all__ = ["MetricsCallback", "PointsExtractor", "cached_reference_stats", "is_points", "make_metrics_extractor",
           "provenance", "provenance_key", "reference_split", "resolve_metrics", "sampler_family"]


# ----------------------------------------------------------------------------------------- 2-D data
class PointsExtractor(FeatureExtractor):
    """The identity on flat data (B, D): features = the coordinates themselves, no logits (no IS).
    ``weights_hash`` is a fixed digest of ``identity-D`` (there are no weights), so keys read
    ``fid/points-<hash6>/...`` and reference statistics are cached like those of any extractor."""

    name = "points"

    def __init__(self, dim: int = 2):
        super().__init__()
        self.num_features, self.num_classes = int(dim), None
        self.weights_hash = hashlib.sha256(f"identity-{self.num_features}".encode()).hexdigest()[:12]
        # An empty parameter that only carries the device (like a real extractor's weights), so that
        # ``.to(device)`` decides where features, and the accumulators fed by them, live.
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected points (B, {self.num_features}), got shape {tuple(x.shape)}")
        return x.detach().float().to(self.anchor.device), None


class _HostFeatures(FeatureExtractor):
    """``extractor`` with its outputs moved to the CPU (same name, hash and sizes, so the same cache
    file). :func:`diffexp.metrics.reference_stats` accumulates on the CPU; an extractor on a GPU would
    otherwise feed it CUDA tensors."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self._inner = [extractor]  # a list: not registered as a sub-module (no parameters: stays on CPU)
        self.name, self.weights_hash = extractor.name, extractor.weights_hash
        self.num_features, self.num_classes = extractor.num_features, extractor.num_classes

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f, logits = self._inner[0](x)
        return f.cpu(), None if logits is None else logits.cpu()


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return torch.device("cpu") if p is None else p.device


def cached_reference_stats(datamodule: Any, split: str, extractor: FeatureExtractor, n: int | None,
                           cache_dir: str | os.PathLike | None, **kwargs: Any) -> FeatureStats:
    """:func:`diffexp.metrics.reference_stats` with the extractor on any device. In one process, features of
    an extractor on a GPU are handed over on the CPU, where ``reference_stats`` accumulates. Under DDP on
    GPUs (NCCL) the accumulator must live on the GPU for its all-reduce: that needs ``reference_stats`` to
    create it on the extractor's device (see the report of the Evaluation issue); with a cached file no
    features are extracted and nothing is reduced."""
    ext = extractor
    if dist_info()[1] == 1 and _device_of(extractor).type != "cpu":
        ext = _HostFeatures(extractor)
    return reference_stats(datamodule, split, ext, n, cache_dir, **kwargs)


def is_points(data_shape: Sequence[int]) -> bool:
    """Flat (D,)-shaped data (2-D toy distributions) rather than images (C, H, W)."""
    return len(tuple(data_shape)) == 1


# ------------------------------------------------------------------------------------------ helpers
def resolve_metrics(metrics: Sequence[str] | str | None, points: bool, extractor: FeatureExtractor | None = None) -> tuple[str, ...]:
    """The metrics to compute: ``None`` → fid, kid, is (images) or fid, kid, swd (points). ``is`` needs
    an extractor with logits and ``swd`` is for points: asked for where they do not apply, they are
    dropped with a warning. Unknown names are errors."""
    if metrics is None:
        chosen = POINT_METRICS if points else IMAGE_METRICS
    else:
        chosen = (metrics,) if isinstance(metrics, str) else tuple(str(m) for m in metrics)
    unknown = [m for m in chosen if m not in SAMPLE_METRICS]
    if unknown:
        raise ValueError(f"unknown sample metric(s) {unknown}; valid: {list(SAMPLE_METRICS)}")
    out = []
    for m in chosen:
        if m == "is" and (points or (extractor is not None and extractor.num_classes is None)):
            warnings.warn("IS needs an extractor with class logits; skipped", stacklevel=2)
        elif m == "swd" and not points:
            warnings.warn("swd (sliced Wasserstein) is computed for 2-D point data only; skipped", stacklevel=2)
        else:
            out.append(m)
    if not out:
        raise ValueError(f"no applicable sample metric among {list(chosen)}")
    return tuple(dict.fromkeys(out))


def reference_split(datamodule: Any, split: str) -> str:
    """``split`` if the data module has it, else val, then train (with a warning; keys name the split used)."""
    available = getattr(datamodule, "splits", None)
    if available is None:
        return split
    for cand in (split, "val", "test", "train"):
        if cand in available:
            if cand != split:
                warnings.warn(f"{getattr(datamodule, 'name', 'data')} has no {split!r} split; "
                              f"using {cand!r} for the reference statistics", stacklevel=2)
            return cand
    raise ValueError(f"{getattr(datamodule, 'name', datamodule)} has no split to compare with")


def make_metrics_extractor(extractor: Any, datamodule: Any) -> FeatureExtractor:
    """The feature extractor for ``datamodule``: :class:`PointsExtractor` for flat (2-D) data whatever
    ``extractor`` says; otherwise ``extractor`` as a ready :class:`FeatureExtractor`, a partial
    (Hydra's instantiation of ``conf/extractor/*.yaml``), a Hydra config node or a name. A classifier
    extractor on a data module without labels is an error that suggests ``extractor=inception`` or
    ``extractor=random``."""
    shape = tuple(datamodule.data_shape)
    if is_points(shape):
        return PointsExtractor(shape[0])
    if extractor is None:
        raise ValueError("no feature extractor configured: set extractor=classifier | inception | random")
    if isinstance(extractor, FeatureExtractor):
        return extractor
    name = _extractor_name(extractor)
    if name == "classifier" and getattr(datamodule, "num_classes", None) is None:
        raise ValueError(
            f"extractor=classifier trains a classifier on the labelled training split, but data "
            f"{getattr(datamodule, 'name', type(datamodule).__name__)!r} has no labels (num_classes=None). "
            "Use extractor=inception (FID Inception weights, never downloaded: see conf/extractor/inception.yaml) "
            "or extractor=random (a fixed random network: smoke tests only, numbers mean nothing)."
        )
    if isinstance(extractor, str):
        from diffexp.metrics import make_extractor

        return make_extractor(extractor, datamodule)
    if callable(extractor):  # functools.partial from `_partial_: true`
        return extractor(datamodule=datamodule)
    from diffexp.metrics import build_extractor

    return build_extractor(extractor, datamodule)


def _extractor_name(extractor: Any) -> str | None:
    if isinstance(extractor, str):
        return extractor
    keywords = getattr(extractor, "keywords", None)  # functools.partial
    if isinstance(keywords, dict) and "name" in keywords:
        return keywords["name"]
    try:
        return extractor.get("name")  # DictConfig / dict
    except AttributeError:
        return None


def sampler_family(name: str) -> str:
    """The sampler's ``name`` (not the label with the NFE appended) without its step count, used to draw
    one curve per sampler in FID-vs-NFE plots: ``ddim-50`` → ``ddim``, ``ddim-10-eta1`` → ``ddim-eta1``,
    ``heun-18`` → ``heun``; names whose count is not a separate ``-<int>`` part (``langevin-10x100``,
    ``pc-ancestral-Tx1``) are kept whole."""
    return re.sub(r"-\d+(?=$|-)", "", name, count=1)


def provenance_key(metric: str, result: dict[str, Any]) -> str:
    """``{metric}/{extractor}-{hash6}/n{n_gen}/{sampler}/{ema|raw}/ref-{split}-n{n_real}`` built on
    :func:`diffexp.metrics.metric_key`; ``sampler`` is the sampler label with its NFE (``ddim-50``) plus
    ``-cfg{w}`` for a guidance scale other than 1."""
    tag = f"{result['extractor']}-{result['extractor_hash'][:6]}"
    key = metric_key(metric, tag, int(result["n_gen"]), result_label(result))
    return f"{key}/{result['weights']}/ref-{result['real_split']}-n{int(result['n_real'])}"


def result_label(result: dict[str, Any]) -> str:
    label = str(result["sampler"])
    w = result.get("guidance_scale", 1.0)
    return label if w in (None, 1, 1.0) else f"{label}-cfg{w:g}"


def keyed_values(result: dict[str, Any]) -> dict[str, float]:
    """``{provenance_key: value}`` for every numeric metric of a :func:`diffexp.metrics.compute_metrics` result."""
    return {provenance_key(m, result): float(result[m]) for m in LOGGED if result.get(m) is not None}


def provenance(result: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields of a result (what the keys abbreviate, in full)."""
    real = result.get("real") or {}
    return {
        "n_gen": result["n_gen"], "n_real": result["n_real"],
        "extractor": result["extractor"], "extractor_hash": result["extractor_hash"],
        "extractor_info": result.get("extractor_info"),
        "sampler": result["sampler"], "sampler_class": result.get("sampler_class"),
        "sampler_config": result.get("sampler_config"), "nfe": result["nfe"], "weights": result["weights"],
        "guidance_scale": result.get("guidance_scale", 1.0), "seeds": result.get("seeds"),
        "reference": {"split": result.get("real_split"), "cache_key": real.get("cache_key"), "n": real.get("n"),
                      "n_requested": real.get("n_requested"), "seed": real.get("seed"), "file": real.get("path")},
        "kid_subset_size": result.get("kid_subset_size"), "kid_subsets": result.get("kid_subsets"),
        "swd_projections": result.get("swd_projections"),
    }


def sampler_config(sampler: Any) -> dict[str, Any]:
    """Public scalar attributes of a sampler object (its constructor arguments, for records)."""
    out = {}
    for k, v in vars(sampler).items():
        if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
    return out


def extractor_info(extractor: FeatureExtractor) -> dict[str, Any]:
    info = {"name": extractor.name, "weights_hash": extractor.weights_hash, "num_features": extractor.num_features,
            "num_classes": extractor.num_classes}
    extra = getattr(extractor, "info", None)
    if isinstance(extra, dict):
        info.update({k: v for k, v in extra.items() if k in ("path", "test_accuracy", "arch", "cache_key", "seed")})
    if getattr(extractor, "weights_path", None):
        info["path"] = str(extractor.weights_path)
    return info


def class_labels(seeds: Sequence[int], seed_offset: int, num_classes: int | None, device) -> torch.Tensor | None:
    """Labels of a class-conditional model's samples: class (i mod K) for sample i (balanced classes)."""
    if num_classes is None:
        return None
    return (torch.as_tensor(list(seeds), device=device) - seed_offset) % num_classes


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() > 1 else obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (a temporary file next to ``path``, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2))
    os.replace(tmp, path)


def log_values(trainer: L.Trainer, values: dict[str, float], step: int) -> None:
    """Send ``values`` to every logger at ``step`` (rank 0; Lightning's loggers are rank-zero only) and
    keep them in ``trainer.callback_metrics`` (all ranks)."""
    if not values:
        return
    cm = trainer.callback_metrics
    for k, v in values.items():
        cm[k] = torch.tensor(float(v))
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=step)


def log_provenance(trainer: L.Trainer, params: dict[str, Any]) -> None:
    """Add ``params`` to every logger's hyper-parameters (CSV hparams.yaml, TensorBoard, W&B config)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            try:
                logger.log_hyperparams(_jsonable(params))
            except Exception as e:  # noqa: BLE001 - a logger refusing late hparams must not stop training
                warnings.warn(f"{type(logger).__name__} did not take the metric provenance: {e}", stacklevel=2)


def _barrier() -> None:
    if dist_info()[1] > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------- callback
class MetricsCallback(PeriodicCallback):
    """FID/KID/IS (or FID/KID/SWD on 2-D data) of ``num_samples`` samples every ``every_n_steps``
    optimizer steps and at the end of training; see the module docstring for keys, files and DDP.

    Args:
        sampler: a sampler object (``conf/sampler``) or None for the run's ``sampler`` (read from the
            module's stored config).
        extractor: ``conf/extractor`` as instantiated by Hydra (a partial), a FeatureExtractor, a name.
            Ignored for 2-D data (identity, see :class:`PointsExtractor`).
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
        dm = trainer.datamodule
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
        _barrier()
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
        """The sampler with its NFE, e.g. ``ddim-50`` (see :func:`diffexp.callbacks.sampler_label`)."""
        from diffexp.callbacks.sample import sampler_label

        return sampler_label(self.sampler, pl_module.schedule.num_timesteps)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Generate, score, log and record (runs on every rank; see the module docstring)."""
        if self.real_stats is None:
            self.setup(trainer, pl_module, "fit")
        step = trainer.global_step
        self._last_step = step
        denoiser = pl_module.denoiser(ema=self.ema)
        weights = "ema" if (self.ema and pl_module.uses_ema) else "raw"
        shape = tuple(pl_module.data_shape)
        num_classes = pl_module.num_classes
        device = pl_module.device

        def sample_fn(seeds: list[int]) -> torch.Tensor:
            y = class_labels(seeds, self.seed, num_classes, device)
            return self.sampler(denoiser, shape=shape, seeds=seeds, y=y, guidance_scale=self.guidance_scale,
                                device=device)

        was_training = pl_module.training
        pl_module.eval()
        try:
            result = compute_metrics(
                sample_fn, self.num_samples, self.extractor, self.real_stats, batch_size=self.batch_size,
                metrics=self.metrics, seed_offset=self.seed, data_range=pl_module.data_range,
                kid_subset_size=self.kid_subset_size, kid_subsets=self.kid_subsets,
                kid_max_samples=self.kid_max_samples, swd_projections=self.swd_projections, device=device)
        finally:
            pl_module.train(was_training)
        T = pl_module.schedule.num_timesteps
        result.update(
            step=step, epoch=trainer.current_epoch, time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            sampler=self.label(pl_module), sampler_class=type(self.sampler).__name__,
            sampler_config=sampler_config(self.sampler), nfe=self.sampler.nfe(T), weights=weights, ema=weights == "ema",
            guidance_scale=self.guidance_scale, real_split=self.real_split, extractor_info=extractor_info(self.extractor),
            world_size=dist_info()[1],
        )
        values = keyed_values(result)
        result["keys"] = values
        log_values(trainer, values, step)
        self._record(trainer, result)
        shown = ", ".join(f"{m}={result[m]:.5g}" for m in ("fid", "kid", "is", "swd") if result.get(m) is not None)
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
            f.write(json.dumps(_jsonable({k: v for k, v in result.items()})) + "\n")
        suffix = provenance_key("x", result).split("/", 1)[1]  # the key without its metric
        if suffix not in self._logged_provenance:
            self._logged_provenance.add(suffix)
            prov = provenance(result)
            path = out / "provenance.json"
            known = json.loads(path.read_text()) if path.is_file() else {}
            known[suffix] = _jsonable(prov)
            write_json(path, known)
            log_provenance(trainer, {f"metrics/{suffix}": prov})
