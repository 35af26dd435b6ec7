"""Small helpers for the metrics package: hashing, cache dirs, distributed info (atomic writes: diffexp.atomic)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

HASH_LEN = 12  # hex characters of sha256 kept in names and cache keys


def default_cache_dir() -> Path:
    """``$DIFFEXP_CACHE`` or ``~/.cache/diffexp`` (reference stats, classifiers). Hydra runs pass
    ``paths.cache_dir`` explicitly (conf/extractor/classifier.yaml)."""
    return Path(os.environ.get("DIFFEXP_CACHE", Path.home() / ".cache" / "diffexp"))


def slug(text: str) -> str:
    """File-name-safe version of a cache key (keeps letters, digits, ``.-_=``)."""
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", str(text)).strip("_")


def file_sha256(path: str | os.PathLike, length: int = HASH_LEN) -> str:
    """Hex sha256 prefix of a file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def state_dict_sha256(module: torch.nn.Module, length: int = HASH_LEN) -> str:
    """Hex sha256 prefix over (name, dtype, shape, bytes) of every state-dict entry, in key order."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly (the bytes are the same)
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:length]


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
