"""Guidance around a sampling job, shared by ``sample.py`` and ``evaluate.py`` (one rule for both CLIs):
which classes the samples are drawn for, whether a classifier fits the diffusion checkpoint, and the record
that says which guidance produced a sample set.

Labels: sample i (seed offset + i) is drawn for class i mod K (balanced classes), K the checkpoint's classes
(class-conditional / classifier-free guidance) or else the guidance classifier's. Both guidances compose: the
classifier-free combination ε̂_w = ε̂_u + w (ε̂_c − ε̂_u) is made first, then classifier guidance shifts it,
ε̃ = ε̂_w − s σ_t ∇ log p_φ(y | x_t) (:class:`diffexp.denoiser.Denoiser`, :mod:`diffexp.guidance.classifier`).

The CFG scale w is part of a recipe: train.py's top-level ``guidance_scale`` is stored with the checkpoint's
config, and ``guidance_scale: null`` in sample.py / evaluate.py / distill.py means that value
(:func:`resolve_guidance_scale`), so a checkpoint is sampled and scored at the scale it was made for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffexp.config_values import guidance_scale_problem
from diffexp.guidance.classifier import ClassifierGuidance
from diffexp.validation import ConfigError

NO_GUIDANCE = 1.0  # w = 1: the conditional model alone; the scale of checkpoints written before the recipe key
# Where the scale a job uses came from (recorded as ``guidance_scale_source``).
EXPLICIT, RECIPE, DEFAULT = "explicit", "checkpoint", "default"


def recipe_guidance_scale(config: dict[str, Any] | None, source: Any = "the checkpoint") -> float:
    """The CFG scale a stored training config says its model samples with: its top-level ``guidance_scale``, or
    1.0 (no guidance) when it has none (checkpoints from before the key, diffusers folders without a diffexp
    config). A stored value that is not a scale w >= 0 is a :class:`ConfigError` naming ``source``."""
    if not config or config.get("guidance_scale") is None:
        return NO_GUIDANCE
    value = config["guidance_scale"]
    problem = guidance_scale_problem("guidance_scale", value)
    if problem:
        raise ConfigError(f"{source} stores {problem}; pass guidance_scale=<w> to choose the scale")
    return float(value)


def resolve_guidance_scale(requested: Any, module) -> tuple[float, str]:
    """``(w, source)``: an explicit ``guidance_scale=w`` wins (source ``explicit``); ``null`` takes the scale of the
    checkpoint's recipe (``checkpoint``), or 1.0 when its config has no ``guidance_scale`` (``default``)."""
    if requested is not None:
        problem = guidance_scale_problem("guidance_scale", requested)
        if problem:
            raise ConfigError(problem)
        return float(requested), EXPLICIT
    config = getattr(module, "config", None) or {}
    where = (getattr(module, "checkpoint_info", None) or {}).get("path", "the checkpoint")
    if config.get("guidance_scale") is None:
        return NO_GUIDANCE, DEFAULT
    return recipe_guidance_scale(config, where), RECIPE


def use_recipe_guidance_scale(cfg, module) -> tuple[float, str]:
    """Replace the job config's ``guidance_scale`` (null: the checkpoint's recipe value) by the number used, so
    that every later check and record sees it; print it and return ``(w, source)``."""
    from omegaconf import open_dict

    from diffexp.logs import say

    scale, source = resolve_guidance_scale(cfg.get("guidance_scale"), module)
    with open_dict(cfg):
        cfg.guidance_scale = scale
    say(describe_guidance_scale(scale, source))
    return scale, source


def describe_guidance_scale(scale: float, source: str) -> str:
    """The line sample.py and evaluate.py print about the scale they use."""
    why = {EXPLICIT: "given as guidance_scale=", RECIPE: "the checkpoint's recipe (its stored guidance_scale)",
           DEFAULT: "the checkpoint stores no guidance_scale: no guidance"}[source]
    return f"classifier-free guidance scale {scale:g} ({why})"


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
