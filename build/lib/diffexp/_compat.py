"""Make torchvision importable on a CPU-only torch.

The registry's torchvision 0.28.0 is a CUDA build whose compiled extension cannot load against the
CPU torch 2.13.0; ``import torchvision`` then dies in ``_meta_registrations.py`` because the
``torchvision::nms`` / ``qnms`` operator schemas were never defined. torchmetrics imports
torchvision whenever it is installed, and Lightning imports torchmetrics, so this must run before
either is imported, in every process (DDP children included).

Strategy: try to load the real extension first; only when that fails, define the two schemas the
meta registrations need. Pure-Python torchvision (``make_grid``, transforms, ``inception_v3``) then
works; compiled ops (``nms``, image decoding) stay unavailable. Where the extension loads this does
nothing.
"""

from __future__ import annotations

import importlib.util
import os

_DONE = False
_LIB = None  # keep the Library object alive: dropping it unregisters the schemas


def ensure_torchvision_importable() -> None:
    global _DONE, _LIB
    if _DONE:
        return
    _DONE = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    pkg_dir = os.path.dirname(spec.origin)
    ext = [f for f in os.listdir(pkg_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if ext:
        try:
            torch.ops.load_library(os.path.join(pkg_dir, ext[0]))
            return
        except (OSError, RuntimeError):
            pass
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already defined (e.g. by an earlier import)
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define(
        "qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor"
    )
