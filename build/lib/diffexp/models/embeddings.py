"""Conditioning embeddings shared by the denoiser networks.

* :func:`timestep_embedding` — the sinusoidal embedding of Vaswani et al. (2017, §3.5) used for the
  diffusion timestep by Ho et al. (2020, App. B): for frequencies ω_k = P^{-k/h}, k = 0..h-1 (h = dim/2,
  P = ``max_period``), emb(t) = [cos(t ω_0), …, cos(t ω_{h-1}), sin(t ω_0), …, sin(t ω_{h-1})]
  (the ordering of improved-diffusion). ``t`` may be fractional: continuous-time samplers evaluate the
  network between the integer training timesteps and the embedding is smooth in t.
* :class:`TimestepEmbedding` — sinusoidal features followed by Linear → SiLU → Linear (Ho et al. 2020).
* :class:`LabelEmbedding` — a table with ``num_classes + 1`` rows; row ``num_classes`` is the *null*
  label of classifier-free guidance (Ho & Salimans 2022), which label dropout substitutes during training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _frequencies(dim: int, max_period: float, device=None) -> Tensor:
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B,) → (B, dim), float32; t may be integer or fractional.

    emb(t)_k = cos(t ω_k), emb(t)_{h+k} = sin(t ω_k), ω_k = max_period^{-k/h}, h = dim // 2
    (a trailing zero column is appended when ``dim`` is odd).
    """
    if t.ndim == 0:
        t = t[None]
    args = t.float()[:, None] * _frequencies(dim, max_period, t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """t ↦ W₂ SiLU(W₁ sin-cos(t)) : (B,) → (B, out_dim)."""

    def __init__(self, freq_dim: int, out_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.register_buffer("freqs", _frequencies(freq_dim, max_period), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def sinusoidal(self, t: Tensor) -> Tensor:
        if t.ndim == 0:
            t = t[None]
        args = t.to(torch.float32)[:, None] * self.freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoidal(t))


class LabelEmbedding(nn.Module):
    """Class label ↦ vector; ``num_classes + 1`` rows, the last one being the CFG null label.

    ``forward(None, batch_size)`` returns the null-label embedding for the whole batch, so a
    conditional network can also be called unconditionally (``net(x, t)``).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, y: Tensor | None, batch_size: int | None = None) -> Tensor:
        if y is None:
            if batch_size is None:
                raise ValueError("LabelEmbedding needs batch_size when y is None")
            y = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=self.table.weight.device)
        return self.table(y)


def check_labels(y: Tensor | None, num_classes: int | None, name: str) -> None:
    """Raise a clear error when labels are passed to an unconditional network."""
    if y is not None and num_classes is None:
        raise ValueError(f"{name} was built without num_classes (unconditional) but labels y were passed")
