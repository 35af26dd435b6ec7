"""Explicit, purpose- and rank-specific random streams.

``seed_everything`` alone gives every DDP rank the same stream (Lightning #16166), so ranks would
train on duplicated noise. Instead every random draw of diffexp comes from a ``torch.Generator``
seeded from (base seed, purpose, rank, step, ...) through numpy's SeedSequence, so streams are
independent across ranks and purposes, and a resumed run re-derives exactly the same streams from the
step counter alone (nothing to save, nothing to drift). Sampling uses one generator per sample
(see :class:`diffexp.samplers.base.NoiseSource`) so images depend only on their seed.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

PURPOSES = ("train", "val", "sample", "label_dropout", "test")


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed from a base seed, a purpose name and integer keys (rank, step, batch...)."""
    words = [int(seed) & 0xFFFFFFFF, zlib.crc32(purpose.encode()), *(int(k) & 0xFFFFFFFF for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def make_generator(device: torch.device | str, seed: int, purpose: str, *keys: int) -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(derive_seed(seed, purpose, *keys))
    return g
