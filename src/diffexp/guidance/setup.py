"""Guidance around a sampling job, shared by ``sample.py`` and ``evaluate.py`` (one rule for both CLIs):
which classes the samples are drawn for, whether a classifier fits the diffusion checkpoint, and the record
that says which guidance produced a sample set.

Labels: sample i (seed offset + i) is drawn for class i mod K (balanced classes), K the checkpoint's classes
(class-conditional / classifier-free guidance) or else the guidance classifier's. Both guidances compose: the
classifier-free combination ε̂_w = ε̂_u + w (ε̂_c − ε̂_u) is made first, then classifier guidance shifts it,
ε̃ = ε̂_w − s σ_t ∇ log p_φ(y | x_t) (:class:`diffexp.denoiser.Denoiser`, :mod:`diffexp.guidance.classifier`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffexp.guidance.classifier import ClassifierGuidance
from diffexp.validation import ConfigError


def label_classes(module, guidance: ClassifierGuidance | None) -> int | None:
    """K, the number of classes labels cycle through (None: the samples carry no labels)."""
    if module.num_classes is not None:
        return int(module.num_classes)
    if guidance is not None:
        return int(guidance.classifier.num_classes)
    return None


def check_classifier_fits(module, guidance: ClassifierGuidance | None, classifier_ckpt: Any) -> None:
    """The guidance classifier takes the checkpoint's samples (images of its channel count) and, for a
    class-conditional checkpoint, has its classes (else label k would mean two things)."""
    if guidance is None:
        return
    shape = tuple(module.data_shape)
    k, net = guidance.classifier.num_classes, guidance.classifier
    in_channels = getattr(getattr(net, "inp", None), "in_channels", None)
    if len(shape) != 3 or (in_channels is not None and in_channels != shape[0]):
        raise ConfigError(f"classifier_ckpt={classifier_ckpt}: the classifier takes images with {in_channels} channel(s), "
                          f"the checkpoint's samples have shape {shape}; train one on its data (train_classifier.py)")
    if module.num_classes is not None and int(module.num_classes) != int(k):
        raise ConfigError(f"classifier_ckpt={classifier_ckpt}: the classifier has {k} classes, the class-conditional "
                          f"checkpoint {module.num_classes}; they must be the same classes")


def guidance_record(module, guidance: ClassifierGuidance | None, cfg_scale: float, classifier_ckpt: Any) -> dict[str, Any]:
    """``{"kind", "scale", "cfg_scale", "classifier_scale", "classifier_ckpt", "num_classes"}``: kind is none | cfg |
    classifier | cfg+classifier; ``scale`` is the classifier-guidance scale s when a classifier guides (the
    swept quantity), else the CFG scale w (1.0: none)."""
    cfg_on = module.num_classes is not None and float(cfg_scale) != 1.0
    kinds = [name for name, on in (("cfg", cfg_on), ("classifier", guidance is not None)) if on]
    return {"kind": "+".join(kinds) or "none",
            "scale": guidance.scale if guidance is not None else float(cfg_scale),
            "cfg_scale": float(cfg_scale),
            "classifier_scale": None if guidance is None else guidance.scale,
            "classifier_ckpt": None if guidance is None else str(Path(str(classifier_ckpt)).resolve()),
            "num_classes": label_classes(module, guidance)}
