"""Sample-quality evaluation: cached reference statistics, streaming metrics, provenance, metric keys.

- :func:`reference_stats` computes the real-data :class:`FeatureStats` once and caches them at
  ``{cache_dir}/refstats/{cache_key}__{split}__{extractor}-{hash}__n{n|all}-s{seed}-kid{cap}.pt``.
- :class:`SampleQuality` (a ``torchmetrics.Metric``) takes generated images, runs the extractor and
  accumulates constant-memory statistics; ``compute()`` compares with the reference statistics.
- :func:`compute_metrics` draws ``n`` samples in batches from ``sample_fn(seeds)`` and returns a
  result dict with provenance; :func:`diffexp.metrics.provenance.keyed_metrics` names its values.

Under DDP every rank must call ``reference_stats``/``compute_metrics``/``SampleQuality.compute``
(they contain collectives). ``compute_metrics`` gives rank r the seeds ``offset + r, offset + r + W, ...``
so the ranks generate disjoint samples and only features/sums are exchanged.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from diffexp.atomic import atomic_torch_save, clean_partial_files
from diffexp.metrics.extractors import FeatureExtractor
from diffexp.metrics.stats import (
    FeatureAccumulator,
    FeatureStats,
    frechet_distance,
    kernel_inception_distance,
    sliced_wasserstein,
)
from diffexp.metrics.utils import default_cache_dir, dist_info, slug

ALL_METRICS = ("fid", "kid", "is", "confident")  # the default set; class_accuracy (needs labels) on request


# ------------------------------------------------------------------------------- reference stats
def reference_stats_path(cache_dir: str | os.PathLike, cache_key: str, split: str, extractor: FeatureExtractor,
                         n: int | None, seed: int = 0, kid_max_samples: int = 10_000) -> Path:
    """Cache file of reference statistics: keyed by the split's cache_key, split, extractor name and
    weights hash, requested n (``all`` for the whole split), subset seed and KID feature cap."""
    name = (f"{slug(cache_key)}__{slug(split)}__{extractor.name}-{extractor.weights_hash}"
            f"__n{'all' if n is None else n}-s{seed}-kid{kid_max_samples}.pt")
    return Path(cache_dir) / "refstats" / name


def _broadcast_bool(flag: bool) -> bool:
    rank, world = dist_info()
    if world == 1:
        return flag
    obj = [flag]
    torch.distributed.broadcast_object_list(obj, src=0)
    return bool(obj[0])


def reference_stats(datamodule: Any, split: str, extractor: FeatureExtractor, n: int | None = None,
                    cache_dir: str | os.PathLike | None = None, *, batch_size: int = 256, seed: int = 0,
                    kid_max_samples: int = 10_000, recompute: bool = False) -> FeatureStats:
    """Real-data statistics of ``datamodule.tensors(split)`` under ``extractor``, cached on disk.

    ``n=None`` uses the whole split; otherwise the first ``n`` of a ``seed``-ed permutation (so
    class-sorted datasets are not truncated to a few classes). ``meta`` records cache_key, split,
    extractor, weights hash, n and the file. Under DDP rank 0 decides whether the file exists; when it
    does not, every rank extracts a shard, the sums are all-reduced and rank 0 writes the file.
    """
    cache_key = datamodule.cache_key(split)
    path = reference_stats_path(cache_dir or default_cache_dir(), cache_key, split, extractor, n, seed, kid_max_samples)
    rank, world = dist_info()
    if _broadcast_bool(path.is_file() and not recompute):
        stats = FeatureStats.from_dict(torch.load(path, map_location="cpu", weights_only=True))
        stats.meta["cached"] = True
        return stats
    x, _ = datamodule.tensors(split)
    idx = torch.arange(len(x))
    if n is not None and n < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    device = next(extractor.parameters(), torch.empty(0)).device  # features and sums on the extractor's device (NCCL)
    acc = FeatureAccumulator(extractor.num_features, extractor.num_classes, kid_max_samples=kid_max_samples).to(device)
    t0 = time.perf_counter()
    extract_into(acc, extractor, x, idx[rank::world], batch_size)
    stats = acc.statistics()
    stats.meta = {"cache_key": cache_key, "split": split, "extractor": extractor.name,
                  "extractor_hash": extractor.weights_hash, "n_requested": n, "n": stats.n, "seed": seed,
                  "kid_max_samples": kid_max_samples, "seconds": time.perf_counter() - t0, "path": str(path)}
    stats.sqrt_cov()  # saved with the statistics: later FIDs need one eigvalsh only
    if rank == 0:
        clean_partial_files(path.parent)  # what a killed earlier computation left behind
        atomic_torch_save(stats.to_dict(), path)
    if world > 1:
        torch.distributed.barrier()
    stats.meta["cached"] = False
    return stats


def extract_into(acc: FeatureAccumulator, extractor: FeatureExtractor, x: torch.Tensor,
                 idx: torch.Tensor | None = None, batch_size: int = 256) -> None:
    """Feed ``x[idx]`` through ``extractor`` batch by batch into ``acc`` (never all at once)."""
    idx = torch.arange(len(x)) if idx is None else idx
    for i in range(0, len(idx), batch_size):
        feats, logits = extractor(x[idx[i:i + batch_size]])
        acc.update(feats, logits if acc.num_classes is not None else None)


# --------------------------------------------------------------------------------------- metrics
def compare_stats(gen: FeatureStats, real: FeatureStats, metrics: Sequence[str] = ALL_METRICS, *,
                  kid_subset_size: int = 1000, kid_subsets: int = 100, kid_seed: int = 0) -> dict[str, Any]:
    """FID (Fréchet of the two Gaussians), KID (on the stored feature subsets) and IS (of ``gen``)."""
    out: dict[str, Any] = {"n_gen": gen.n, "n_real": real.n}
    if "fid" in metrics:
        out["fid"] = frechet_distance(gen.mu, gen.cov, real.mu, real.cov, cov2_sqrt=real.sqrt_cov())
    if "kid" in metrics:
        if real.features is None or gen.features is None or min(len(real.features), len(gen.features)) < 2:
            raise ValueError("KID needs stored features in both statistics (kid_max_samples > 1)")
        kid, kid_std, m = kernel_inception_distance(gen.features, real.features, kid_subset_size, kid_subsets, kid_seed)
        out.update(kid=kid, kid_std=kid_std, kid_subset_size=m, kid_subsets=kid_subsets,
                   n_gen_kid=len(gen.features), n_real_kid=len(real.features))
    if "is" in metrics and gen.is_p_sum is not None:
        out["is"], out["is_std"] = gen.inception_score()
        out["is_splits"] = int((gen.is_count > 0).sum())
    if "confident" in metrics and gen.class_count is not None:
        out.update(gen.confidence())
    if "class_accuracy" in metrics:
        if gen.class_count is None:
            raise ValueError("class_accuracy needs an extractor with class logits (extractor=classifier)")
        out.update(gen.class_accuracy())
    return out


class SampleQuality(FeatureAccumulator):
    """``torchmetrics.Metric``: ``update(images in [-1, 1])``, ``compute() -> dict`` (FID/KID/IS + provenance).

    The extractor is held *outside* the module tree (not in ``state_dict``/checkpoints, not flipped to
    train mode, not counted as parameters) and moved to the images' device on first use. Only feature
    sums/features are synchronised across DDP ranks, and ``compute`` must run on every rank.
    """

    def __init__(self, extractor: FeatureExtractor, real_stats: FeatureStats, metrics: Sequence[str] = ALL_METRICS, *,
                 kid_subset_size: int = 1000, kid_subsets: int = 100, kid_max_samples: int = 10_000,
                 is_splits: int = 10, **kwargs: Any):
        if real_stats.num_features != extractor.num_features:
            raise ValueError(f"reference statistics have {real_stats.num_features} features, "
                             f"extractor {extractor.tag} gives {extractor.num_features}")
        want_is = bool({"is", "confident", "class_accuracy"} & set(metrics)) and extractor.num_classes is not None
        super().__init__(extractor.num_features, extractor.num_classes if want_is else None,
                         kid_max_samples=kid_max_samples if "kid" in metrics else 0, is_splits=is_splits, **kwargs)
        self._extractor = [extractor]  # a list hides it from nn.Module registration
        self.real_stats, self.metrics = real_stats, tuple(metrics)
        self.kid_subset_size, self.kid_subsets = kid_subset_size, kid_subsets

    @property
    def extractor(self) -> FeatureExtractor:
        return self._extractor[0]

    def update(self, images: torch.Tensor, index: torch.Tensor | None = None,  # type: ignore[override]
               labels: torch.Tensor | None = None) -> None:
        """Add generated images (float in [-1, 1]); ``index``: their global sample indices (IS splits);
        ``labels``: the classes they were generated for (class accuracy)."""
        ext = self.extractor
        param = next(ext.parameters(), None)
        if param is not None and param.device != images.device:
            ext.to(images.device)
        feats, logits = ext(images)
        super().update(feats, logits if self.num_classes is not None else None, index,
                       labels if self.num_classes is not None else None)

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        out = compare_stats(self._stats(), self.real_stats, self.metrics,
                            kid_subset_size=self.kid_subset_size, kid_subsets=self.kid_subsets)
        out.update(extractor=self.extractor.name, extractor_hash=self.extractor.weights_hash,
                   real=dict(self.real_stats.meta))
        return out


def compute_metrics(sample_fn: Callable[[list[int]], torch.Tensor], n: int, extractor: FeatureExtractor,
                    real_stats: FeatureStats, batch_size: int = 64, *, metrics: Sequence[str] = ALL_METRICS,
                    seed_offset: int = 0, data_range: tuple[float, float] | None = (-1.0, 1.0),
                    kid_subset_size: int = 1000, kid_subsets: int = 100, kid_max_samples: int = 10_000,
                    is_splits: int = 10, swd_projections: int = 256, sampler: str | None = None,
                    nfe: int | None = None, ema: bool | None = None, device: torch.device | str | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    label_fn: Callable[[list[int]], torch.Tensor | None] | None = None) -> dict[str, Any]:
    """Generate ``n`` samples with ``sample_fn(seeds) -> images (len(seeds), C, H, W)`` in batches of
    ``batch_size`` and evaluate them against ``real_stats`` in constant memory.

    Seeds are ``seed_offset + i`` for sample i (batch-size independent, e.g.
    ``sample_fn = lambda s: sampler(denoiser, shape=shape, seeds=s)``); under DDP rank r takes
    i = r, r + W, ... and the stored KID/SWD features are put back into global sample order, so the
    numbers do not depend on the number of ranks. Samples are clamped to ``data_range`` before
    extraction. ``metrics`` ⊆ {fid, kid, is, confident, class_accuracy, swd} (``swd``: sliced Wasserstein-2 on the stored
    features, for low-dimensional data). Returns a dict with those metrics (``kid_std``, ``is_std``
    beside them) and provenance: ``n_gen``, ``n_real``, ``extractor``, ``extractor_hash``, ``sampler``,
    ``nfe``, ``ema``, ``real`` (reference meta), ``kid_subset_size``, ``seeds``, ``seconds``,
    ``images_per_s``. ``label_fn(seeds)``: the classes those samples were generated for (class-conditional
    or classifier-guided sampling), compared with the extractor's argmax by ``class_accuracy``.
    """
    rank, world = dist_info()
    metrics = tuple(metrics)
    keep = kid_max_samples if ("kid" in metrics or "swd" in metrics) else 0
    store = metrics + (("kid",) if keep and "kid" not in metrics else ())  # SWD reads the KID feature store
    metric = SampleQuality(extractor, real_stats, store, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                           kid_max_samples=keep, is_splits=is_splits)
    if device is not None:
        metric.to(device)
    seeds = list(range(seed_offset + rank, seed_offset + n, world))
    t0 = time.perf_counter()
    for i in range(0, len(seeds), batch_size):
        batch = seeds[i:i + batch_size]
        with torch.no_grad():
            x = sample_fn(batch)
        if x.shape[0] != len(batch):
            raise ValueError(f"sample_fn returned {x.shape[0]} samples for {len(batch)} seeds")
        if data_range is not None:
            x = x.clamp(*data_range)
        if device is not None:
            x = x.to(device)
        y = label_fn(batch) if label_fn is not None else None
        metric.update(x, torch.tensor(batch, device=x.device) - seed_offset, None if y is None else y.to(x.device))
        if progress is not None:
            progress(min(i + batch_size, len(seeds)), len(seeds))
    seconds = time.perf_counter() - t0
    gen = metric.statistics()  # collective: sums reduced, stored features gathered
    if world > 1 and gen.features is not None:
        gen.features = global_sample_order(gen.features, n, world, keep)
    out = compare_stats(gen, real_stats, [m for m in metrics if m != "swd"],
                        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets)
    if "swd" in metrics:
        if gen.features is None or real_stats.features is None or not len(gen.features) or not len(real_stats.features):
            raise ValueError("swd needs stored features in both statistics (kid_max_samples > 0)")
        out.update(swd=sliced_wasserstein(gen.features, real_stats.features, swd_projections),
                   swd_projections=swd_projections, n_gen_swd=len(gen.features), n_real_swd=len(real_stats.features))
    out.update(extractor=extractor.name, extractor_hash=extractor.weights_hash, real=dict(real_stats.meta),
               sampler=sampler, nfe=nfe, ema=ema, seconds=seconds, images_per_s=n / max(seconds, 1e-9),
               seeds={"offset": seed_offset, "first": seed_offset, "last": seed_offset + n - 1,
                      "rule": "sample i uses seed offset+i; rank r of W draws i = r, r+W, ..."})
    return out


def global_sample_order(features: torch.Tensor, n: int, world: int, keep: int) -> torch.Tensor:
    """Put gathered KID/SWD features back into global sample order.

    torchmetrics gathers list states rank-major: rank 0's stored features (global indices 0, W, 2W, ...),
    then rank 1's (1, 1+W, ...), each rank keeping at most ceil(keep / W), truncated to ``keep`` in all.
    KID draws its subsets by position, so without this the value would depend on the number of ranks.
    (When the layout is not the expected one the features are returned unchanged.)"""
    cap = math.ceil(keep / world)
    index = torch.cat([torch.arange(r, n, world)[:cap] for r in range(world)])[:keep]
    if len(index) != len(features):
        return features
    return features[index.argsort()]
