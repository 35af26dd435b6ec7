"""Loading a trained autoencoder (first stage) from its checkpoint, with errors that name the file.

The returned network is frozen (eval mode, no gradients). Its identity is :func:`autoencoder_hash`, a
sha256 prefix over every state-dict entry, scale factor included: latent caches and latent diffusion
checkpoints are keyed by it, so retraining (or re-estimating the scale of) an autoencoder invalidates them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from diffexp.autoencoder.module import AUTOENCODER_FORMAT, AUTOENCODER_KEY
from diffexp.autoencoder.networks import KLAutoencoder
from diffexp.checkpoint import CHECKPOINT_KEY, CheckpointError, read_checkpoint
from diffexp.metrics.utils import state_dict_sha256

PREFIX = "autoencoder."
TRAIN_HINT = "train one with `python train_autoencoder.py` (its checkpoints are in outputs/autoencoder/runs/<time>/checkpoints/)"


def autoencoder_hash(autoencoder: KLAutoencoder, length: int = 12) -> str:
    """sha256 prefix over (name, dtype, shape, bytes) of every state-dict entry (scale factor included)."""
    return state_dict_sha256(autoencoder, length)


def build_autoencoder(architecture: dict[str, Any]) -> KLAutoencoder:
    return KLAutoencoder(**architecture)


def load_autoencoder(path: str | os.PathLike, map_location="cpu") -> tuple[KLAutoencoder, dict[str, Any]]:
    """(frozen autoencoder, info) from a ``train_autoencoder.py`` checkpoint. ``info``: path, hash,
    scale_factor, latent_shape, data_range, architecture, global_step."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"autoencoder checkpoint not found: {path} (latent=...); {TRAIN_HINT}")
    ckpt = read_checkpoint(path, map_location, require_diffexp=False)
    meta = ckpt.get(AUTOENCODER_KEY)
    if meta is None:
        what = "a diffusion checkpoint" if CHECKPOINT_KEY in ckpt else "not an autoencoder checkpoint"
        raise CheckpointError(f"{path} is {what} (no '{AUTOENCODER_KEY}' entry); latent=... needs an autoencoder "
                              f"checkpoint: {TRAIN_HINT}")
    if meta.get("format") != AUTOENCODER_FORMAT:
        raise CheckpointError(f"{path} has autoencoder format {meta.get('format')}, this diffexp reads {AUTOENCODER_FORMAT}")
    autoencoder = build_autoencoder(meta["architecture"])
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    try:
        autoencoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"autoencoder checkpoint {path} does not match the architecture it records: {e}") from e
    autoencoder.eval().requires_grad_(False)
    scale = float(autoencoder.scale_factor)
    if not (math.isfinite(scale) and scale > 0):
        raise CheckpointError(f"autoencoder checkpoint {path} has an invalid latent scale factor {scale}; "
                              "retrain it (the scale, 1/std of the latents, is estimated whenever a checkpoint is written)")
    info = {"path": str(path.resolve()), "hash": autoencoder_hash(autoencoder), "scale_factor": scale,
            "latent_shape": list(autoencoder.latent_shape), "data_range": meta.get("data_range"),
            "architecture": dict(meta["architecture"]), "global_step": int(ckpt.get("global_step", 0))}
    return autoencoder, info
