"""Which metrics, which feature extractor and which reference data suit a data module.

Shared by :class:`diffexp.callbacks.MetricsCallback` and ``evaluate.py`` (:mod:`diffexp.cli.evaluate`).

**2-D toy data** (``len(data_shape) == 1``, ``data_range: null``): image features make no sense, so the
configured extractor is ignored and :class:`PointsExtractor` (the identity) is used. FID is then the
Fréchet distance between Gaussian fits of the raw coordinates (it only sees means and covariances:
eight modes on a circle and one wide Gaussian can score the same), KID the unbiased cubic-kernel MMD
(moments up to order 3), and the sliced Wasserstein-2 distance (:func:`diffexp.metrics.sliced_wasserstein`),
a metric on distributions that sees missing or misplaced modes, is added. Its key is ``swd/points-<hash6>/...``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from diffexp.metrics.evaluate import reference_stats
from diffexp.metrics.extractors import FeatureExtractor, build_extractor, make_extractor
from diffexp.metrics.stats import FeatureStats
from diffexp.metrics.utils import dist_info

IMAGE_METRICS = ("fid", "kid", "is", "confident")
POINT_METRICS = ("fid", "kid", "swd")
SAMPLE_METRICS = ("fid", "kid", "is", "confident", "class_accuracy", "swd")  # class_accuracy: on request only

__all__ = ["IMAGE_METRICS", "POINT_METRICS", "SAMPLE_METRICS", "PointsExtractor", "cached_reference_stats",
           "is_points", "make_metrics_extractor", "reference_split", "resolve_metrics"]


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


def resolve_metrics(metrics: Sequence[str] | str | None, points: bool, extractor: FeatureExtractor | None = None) -> tuple[str, ...]:
    """The metrics to compute: ``None`` → fid, kid, is, confident (images) or fid, kid, swd (points). ``is`` needs
    an extractor with logits (as does ``confident``) and ``swd`` is for points: asked for where they do not apply, they are
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
        if m in ("is", "confident", "class_accuracy") and (points or (extractor is not None and extractor.num_classes is None)):
            warnings.warn(f"{'IS' if m == 'is' else m} needs an extractor with class logits; skipped", stacklevel=2)
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
        return make_extractor(extractor, datamodule)
    if callable(extractor):  # functools.partial from `_partial_: true`
        return extractor(datamodule=datamodule)
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
