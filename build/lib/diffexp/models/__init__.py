"""Denoiser networks: ``net(x, t, y=None) -> tensor shaped like x`` (see docs/CONTRACTS.md).

Every class accepts the data-dependent keyword arguments ``in_channels``, ``image_size`` and
``num_classes`` so that configs (``conf/model/*.yaml``, ``_partial_: true``) never hardcode them.
"""

from diffexp.models.dit import DiT
from diffexp.models.embeddings import LabelEmbedding, TimestepEmbedding, timestep_embedding
from diffexp.models.mlp import MLP
from diffexp.models.unet import UNet


def count_parameters(module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["UNet", "DiT", "MLP", "TimestepEmbedding", "LabelEmbedding", "timestep_embedding", "count_parameters"]
