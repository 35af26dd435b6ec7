"""``sampler=recipe``: sample a checkpoint with the sampler its recipe was made for.

A recipe is measured with its sampler (``experiment=mnist_cpu``: DPM-Solver++(2M)-30, CFG 1.25), so sample.py and
evaluate.py default to the ``sampler`` of the training config stored with the checkpoint, as they default to its
``guidance_scale`` (:mod:`diffexp.guidance.setup`). Options set on the placeholder override the stored ones
(``sampler.steps=50``); ``sampler=<name>`` picks another sampler. A checkpoint without a stored sampler (a
diffusers folder, an export) gets the shipped ``conf/sampler/ddim.yaml``. The record says which
(``sampler_source``: explicit | checkpoint | default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

RECIPE_MARK = "_recipe_"  # conf/sampler/recipe.yaml sets it: "the checkpoint's sampler"
FALLBACK = "ddim"  # conf/sampler/<FALLBACK>.yaml for checkpoints that store no sampler
EXPLICIT, RECIPE, DEFAULT = "explicit", "checkpoint", "default"


def is_recipe_placeholder(node: Any) -> bool:
    """True for the ``sampler=recipe`` placeholder (no ``_target_`` yet: resolved once the checkpoint is loaded)."""
    return isinstance(node, (DictConfig, dict)) and bool(node.get(RECIPE_MARK, False))


def stored_sampler(module) -> dict[str, Any] | None:
    """The ``sampler`` of the training config stored with ``module`` (None when it stores none)."""
    node = (getattr(module, "config", None) or {}).get("sampler")
    return dict(node) if isinstance(node, dict) and node.get("_target_") else None


def recipe_sampler_config(requested: DictConfig, module) -> tuple[DictConfig, str]:
    """``(sampler config, source)``: ``requested`` itself unless it is the placeholder; else the checkpoint's stored
    sampler (``checkpoint``) or the shipped fallback (``default``), with the placeholder's non-null options on top."""
    if not is_recipe_placeholder(requested):
        return requested, EXPLICIT
    base = stored_sampler(module)
    if base is not None:
        config, source = OmegaConf.create(base), RECIPE
    else:
        from diffexp.config import CONFIG_DIR

        config, source = OmegaConf.load(Path(CONFIG_DIR) / "sampler" / f"{FALLBACK}.yaml"), DEFAULT
    options = {k: v for k, v in OmegaConf.to_container(requested, resolve=True).items()
               if k != RECIPE_MARK and v is not None}
    return OmegaConf.merge(config, options), source


def use_recipe_sampler(cfg: DictConfig, module) -> str:
    """Replace the job's ``sampler=recipe`` placeholder by the sampler config it stands for (so every later check
    and record sees a real sampler); print which and return the source."""
    from diffexp.logs import say

    config, source = recipe_sampler_config(cfg.sampler, module)
    if source != EXPLICIT:
        with open_dict(cfg):
            cfg.sampler = config
        name = str(config.get("_target_", "?")).rsplit(".", 1)[-1]
        why = ("the checkpoint's recipe (its stored sampler)" if source == RECIPE
               else f"the checkpoint stores no sampler: conf/sampler/{FALLBACK}.yaml")
        say(f"sampler {name}, steps {config.get('steps', '-')} ({why}; sampler=<name> picks another)")
    return source
