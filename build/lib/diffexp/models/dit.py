"""DiT-lite: a Diffusion Transformer (Peebles & Xie 2023) for small images.

x (B, C, H, W) → non-overlapping p×p patches → tokens (B, N, D), N = (H/p)², plus a 2-D position embedding
(fixed sin-cos as MAE / DiT, or learned). The condition c = MLP(sinusoidal(t)) [+ label embedding, with a
null row for classifier-free guidance] drives every block through adaLN-Zero (DiT §3.2):

    [β₁, γ₁, α₁, β₂, γ₂, α₂] = W SiLU(c)   (W zero-initialised)
    x ← x + α₁ · Attn(LN(x)(1 + γ₁) + β₁)
    x ← x + α₂ · MLP(LN(x)(1 + γ₂) + β₂)

Final layer: LN(x)(1 + γ) + β → Linear(D, p²·C_out) (both zero-initialised, so the output is exactly 0 at
init), then the tokens are folded back into an image. Attention uses ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffexp.models.attention import attention
from diffexp.models.embeddings import LabelEmbedding, TimestepEmbedding, check_labels


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(M,) positions → (M, dim): [sin(p ω_k), cos(p ω_k)], ω_k = 10000^{-k/(dim/2)} (Vaswani et al. 2017)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (MAE/DiT): half the channels encode the row, half the column.

    Returns (grid_size², dim) float32, tokens in row-major order.
    """
    if dim % 4:
        raise ValueError(f"sincos position embedding needs hidden_size divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    gh, gw = torch.meshgrid(coords, coords, indexing="ij")
    # DiT/MAE convention: the first half embeds the w (column) coordinate, the second half the h (row).
    return torch.cat([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x(1 + scale) + shift with (B, D) modulations broadcast over the tokens."""
    return torch.addcmul(shift.unsqueeze(1), x, scale.unsqueeze(1) + 1.0)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"DiT: hidden_size={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, dim),
        )
        self.adaLN_modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``c`` is SiLU(condition), shape (B, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer ``net(x, t, y=None)`` for (B, C, H, W) images, H = W = ``image_size``.

    Args:
        in_channels: image channels.
        image_size: spatial size; must be divisible by ``patch_size``.
        patch_size: patch side p (2 or 4 for small images); N = (image_size / p)² tokens.
        hidden_size: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide hidden_size).
        mlp_ratio: MLP hidden width / D.
        num_classes: conditioning classes (None: unconditional); label num_classes is the null label.
        pos_embed: "sincos" (fixed 2-D sin-cos) or "learned".
        out_channels: output channels (default in_channels).
        dropout: dropout inside the MLPs.
        freq_dim: width of the sinusoidal timestep features (DiT: 256).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden_size: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        pos_embed: str = "sincos",
        out_channels: int | None = None,
        dropout: float = 0.0,
        freq_dim: int = 256,
    ):
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            valid = [p for p in range(1, min(image_size, 16) + 1) if image_size % p == 0]
            raise ValueError(
                f"DiT: image_size={image_size} is not divisible by patch_size={patch_size}; "
                f"valid patch sizes for image_size={image_size}: {valid}"
            )
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"DiT: pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_classes = num_classes
        self.hidden_size = hidden_size

        self.x_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embed = TimestepEmbedding(freq_dim, hidden_size)
        self.label_embed = LabelEmbedding(num_classes, hidden_size) if num_classes is not None else None
        num_tokens = self.grid * self.grid
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid)[None], persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size))
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights(pos_embed)

    def _init_weights(self, pos_embed: str) -> None:
        # DiT reference initialisation (Peebles & Xie 2023, §3.2 and the official code).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        if pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.table.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for lin in (self.final.adaLN_modulation, self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p²·C) → (B, C, H, W)."""
        B, g, p, c = x.shape[0], self.grid, self.patch_size, self.out_channels
        x = x.view(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_labels(y, self.num_classes, "DiT")
        B = x.shape[0]
        if t.ndim == 0:
            t = t.expand(B)
        h = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.t_embed(t)
        if self.label_embed is not None:
            c = c + self.label_embed(y, B)
        c = F.silu(c)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))
