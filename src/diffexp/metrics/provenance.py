"""What a sample-quality number is: its key, its provenance record, and JSON-safe records.

One key format, built by :func:`provenance_key` only (callbacks, the evaluate CLI and loggers all use it)::

    fid/classifier-ab12cd/n1000/ddpm/ddim-50/ema/ref-test-n10000
    └metric└extractor-hash6└n gen└process family└sampler-NFE[-cfg w][-cg s]└weights└reference split and n

(the process family segment is present when the result names its ``process``, as the training callback and
``evaluate.py`` do: the same sampler at the same NFE is another experiment on another family).

Numbers whose keys differ anywhere are not comparable (another extractor, sample size, sampler,
weights or reference set). :func:`provenance` spells out in full what a key abbreviates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

LOGGED = ("fid", "kid", "kid_std", "is", "is_std", "confident", "class_entropy", "class_accuracy", "swd")

__all__ = ["LOGGED", "class_labels", "extractor_info", "jsonable", "keyed_metrics", "provenance", "provenance_key",
           "result_label", "sampler_config", "sampler_family", "sampler_label"]


def sampler_label(sampler: Any, num_timesteps: int) -> str:
    """The sampler's name with its number of function evaluations, e.g. ``ddim-50``, ``ddim-50-eta1`` or
    ``ddpm-1000`` (appended only when the name does not already carry it as a ``-<NFE>`` part)."""
    nfe = sampler.nfe(num_timesteps)
    return sampler.name if str(nfe) in sampler.name.split("-")[1:] else f"{sampler.name}-{nfe}"


def sampler_family(name: str) -> str:
    """The sampler's ``name`` (not the label with the NFE appended) without its step count, used to draw
    one curve per sampler in FID-vs-NFE plots: ``ddim-50`` → ``ddim``, ``ddim-10-eta1`` → ``ddim-eta1``,
    ``heun-18`` → ``heun``; names whose count is not a separate ``-<int>`` part (``langevin-10x100``,
    ``pc-ancestral-Tx1``) are kept whole."""
    return re.sub(r"-\d+(?=$|-)", "", name, count=1)


def result_label(result: dict[str, Any]) -> str:
    """The sampler part of a key: its label (``ddim-50``) plus ``-cfg{w}`` for a classifier-free guidance scale
    other than 1 and ``-cg{s}`` under classifier guidance of scale s (``classifier_guidance_scale``; s = 0 too:
    its samples were drawn for labels, unguided)."""
    label = str(result.get("sampler") or "sampler-unnamed")
    w = result.get("guidance_scale", 1.0)
    label = label if w in (None, 1, 1.0) else f"{label}-cfg{w:g}"
    s = result.get("classifier_guidance_scale")
    return label if s is None else f"{label}-cg{float(s):g}"


def _weights(result: dict[str, Any]) -> str:
    if result.get("weights"):
        return str(result["weights"])
    ema = result.get("ema")
    return "weights-unknown" if ema is None else ("ema" if ema else "raw")


def provenance_key(metric: str, result: dict[str, Any]) -> str:
    """``{metric}/{extractor}-{hash6}/n{n_gen}/[{process}/]{sampler}/{ema|raw}/ref-{split}-n{n_real}`` for a result of
    :func:`diffexp.metrics.compute_metrics` (the reference split is ``real_split``, else the split
    recorded in the reference statistics)."""
    split = result.get("real_split") or (result.get("real") or {}).get("split") or "unknown"
    process = f"{result['process']}/" if result.get("process") else ""
    return (f"{metric}/{result['extractor']}-{str(result['extractor_hash'])[:6]}/n{int(result['n_gen'])}/"
            f"{process}{result_label(result)}/{_weights(result)}/ref-{split}-n{int(result['n_real'])}")


def keyed_metrics(result: dict[str, Any]) -> dict[str, float]:
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
        "sampler_config": result.get("sampler_config"), "nfe": result["nfe"], "weights": _weights(result),
        "guidance_scale": result.get("guidance_scale", 1.0), "guidance": result.get("guidance"),
        "classifier_guidance_scale": result.get("classifier_guidance_scale"), "seeds": result.get("seeds"),
        "reference": {"split": result.get("real_split"), "cache_key": real.get("cache_key"), "n": real.get("n"),
                      "n_requested": real.get("n_requested"), "seed": real.get("seed"), "file": real.get("path")},
        "kid_subset_size": result.get("kid_subset_size"), "kid_subsets": result.get("kid_subsets"),
        "swd_projections": result.get("swd_projections"),
    }


def sampler_config(sampler: Any) -> dict[str, Any]:
    """Public scalar attributes of a sampler object (its constructor arguments, for records)."""
    return {k: v for k, v in vars(sampler).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}


def extractor_info(extractor: Any) -> dict[str, Any]:
    """Name, weights hash, sizes and (where known) weights file, test accuracy and cache key of an extractor."""
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


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors as numbers/lists, non-finite floats as strings and anything else unknown as
    its ``str``: always accepted by ``json.dumps``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() > 1 else obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
