"""Residual MLP denoiser for vector data (toy 2-D distributions, or any D).

h₀ = W_in x;  h_{l+1} = h_l + W₂ Dropout(SiLU(W₁ (LN(h_l)·(1 + s_l) + b_l))),  [s_l, b_l] = A_l SiLU(e);
out = W_out SiLU(LN(h_L)), with e = MLP(sinusoidal(t)) (+ label embedding, null row = num_classes).
W₂ and W_out are zero-initialised: every block starts as the identity and the output is 0 at init.

Input dimension: ``dim = in_channels`` when ``image_size`` is None (the toy-data case, data_shape
(D,) → ``in_channels=D``); when ``image_size`` is given, ``dim = in_channels · image_size²`` and image
batches (B, C, H, W) are flattened on entry and reshaped on exit (an MLP baseline for tiny images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffexp.models.embeddings import LabelEmbedding, TimestepEmbedding, check_labels


class MLPBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0, expansion: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.emb_proj = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, expansion * hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(expansion * hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb_proj(emb).chunk(2, dim=-1)
        z = torch.addcmul(shift, self.norm(h), scale + 1.0)
        return h + self.fc2(self.dropout(F.silu(self.fc1(z))))


class MLP(nn.Module):
    """Residual MLP ``net(x, t, y=None)`` for (B, D) data.

    Args:
        in_channels: data dimension D (see module docstring for images).
        image_size: None for vector data; else images are flattened (dim = in_channels·image_size²).
        hidden_dim: width of the residual stream.
        num_blocks: number of residual blocks (depth).
        time_embed_dim: width of the time embedding (sinusoidal features have the same width).
        expansion: hidden expansion inside each block.
        dropout: dropout inside each block.
        num_classes: conditioning classes (None: unconditional); label num_classes is the null label.
        out_channels: output dimension (default: same as the input).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int | None = None,
        hidden_dim: int = 256,
        num_blocks: int = 4,
        time_embed_dim: int = 128,
        expansion: int = 2,
        dropout: float = 0.0,
        num_classes: int | None = None,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.dim = in_channels * (image_size * image_size if image_size else 1)
        out_channels = out_channels or in_channels
        self.out_dim = out_channels * (image_size * image_size if image_size else 1)
        self.num_classes = num_classes
        self.time_embed = TimestepEmbedding(time_embed_dim, time_embed_dim)
        self.label_embed = LabelEmbedding(num_classes, time_embed_dim) if num_classes is not None else None
        self.inp = nn.Linear(self.dim, hidden_dim)
        self.blocks = nn.ModuleList(
            [MLPBlock(hidden_dim, time_embed_dim, dropout, expansion) for _ in range(num_blocks)]
        )
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, self.out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_labels(y, self.num_classes, "MLP")
        shape = x.shape
        B = shape[0]
        if x[0].numel() != self.dim:
            raise ValueError(f"MLP built for inputs of {self.dim} features, got x of shape {tuple(shape)}")
        if t.ndim == 0:
            t = t.expand(B)
        emb = self.time_embed(t)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, B)
        emb = F.silu(emb)
        h = self.inp(x.reshape(B, self.dim))
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(F.silu(self.norm_out(h)))
        if self.out_dim == self.dim:
            return out.view(shape)
        return out.view(B, -1, *shape[2:]) if x.ndim > 2 else out
