"""Reading values out of composed configs, shared by the config checks (:mod:`diffexp.validation`,
:mod:`diffexp.validation_diffusion`)."""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf


def select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``cfg``'s value at the dotted ``key`` (``default`` when absent)."""
    return OmegaConf.select(cfg, key, default=default)


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float that is not a bool nor NaN."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # (NaN is not a usable number)


def accepts(target: str, name: str) -> bool:
    """Whether the class or function at ``target`` takes a keyword ``name`` (True when it cannot be told).
    (Imported directly: Hydra's get_class/get_method log an error for the kind they do not expect.)"""
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
        params = inspect.signature(obj).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def guidance_scale_problem(key: str, value: Any) -> str | None:
    """Why ``key=value`` is not a classifier-free guidance scale (None when it is one): w must be a number >= 0
    in ε̂_w = ε̂_u + w (ε̂_c − ε̂_u) (Ho & Salimans 2022): w = 1 is the conditional model alone (no guidance), w = 0
    the unconditional one; w < 0 would push samples away from their class, which no recipe means."""
    if not is_number(value):
        return f"{key}={value}: must be a number >= 0 (1.0: no guidance)"
    if value < 0:
        return f"{key}={value}: must be >= 0 (1.0: no guidance; 0: the unconditional model)"
    return None
