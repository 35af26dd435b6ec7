"""Interoperability with Hugging Face diffusers (the optional extra ``pip install -e .[diffusers]``).

* :mod:`diffexp.interop.schedulers`: diffusers scheduler configs <-> diffexp's discrete DDPM process.
* :mod:`diffexp.interop.pretrained`: a local diffusers pipeline folder as a diffexp model (``pretrained=DIR``).
* :mod:`diffexp.interop.export`: a diffexp checkpoint as a diffusers pipeline folder, or as safetensors.
* :mod:`diffexp.models.diffusers`: diffusers networks (``UNet2DModel``, ``DiTTransformer2DModel``) as denoisers.

Nothing here downloads: every path is a local folder.
"""

from __future__ import annotations


def require_diffusers():
    """Import diffusers, or fail with the install command (it is an optional extra)."""
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("this needs the optional package diffusers: pip install -e '.[diffusers]'") from e
    return diffusers
