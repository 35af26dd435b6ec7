"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", §3 and App. G), written for small images.

Encoder: conv → per level ``num_res_blocks`` ResNet blocks, then a stride-2 conv (all levels but the
last) → middle (ResNet block, self-attention, ResNet block) → GroupNorm, SiLU, conv to 2·c channels
(μ and log σ² of q(z | x)). The decoder mirrors it with nearest-neighbour ×2 upsampling. With
``ch_mult`` of length L the downsampling factor is f = 2^(L−1): the default (1, 2, 2) gives LDM's f = 4,
so a 28×28 image becomes a 7×7×c latent. 1×1 convolutions around the bottleneck (LDM's
``quant_conv``/``post_quant_conv``) are kept, so ``embed_dim`` may differ from the internal width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffexp.autoencoder.distribution import DiagonalGaussian


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))) with a 1×1 skip when the width changes (LDM's ResnetBlock)."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            _norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout, groups), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection (LDM's AttnBlock)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (b, hw, c)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv; odd sizes (e.g. 7) are padded on the right/bottom only, as in LDM."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(ch: int, groups: int, attention: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResBlock(ch, ch, groups, dropout), AttnBlock(ch, groups) if attention else nn.Identity(),
                         ResBlock(ch, ch, groups, dropout))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 groups: int, attention: bool, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        cin = ch
        for level, mult in enumerate(ch_mult):
            cout = ch * mult
            for _ in range(num_res_blocks):
                layers.append(ResBlock(cin, cout, groups, dropout))
                cin = cout
            if level != len(ch_mult) - 1:
                layers.append(Downsample(cin))
        layers += [_middle(cin, groups, attention, dropout), _norm(cin, groups), nn.SiLU(),
                   nn.Conv2d(cin, 2 * z_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, out_channels: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 groups: int, attention: bool, dropout: float):
        super().__init__()
        cin = ch * ch_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(z_channels, cin, 3, padding=1), _middle(cin, groups, attention, dropout)]
        for level in reversed(range(len(ch_mult))):
            cout = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(cin, cout, groups, dropout))
                cin = cout
            if level != 0:
                layers.append(Upsample(cin))
        layers += [_norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class KLAutoencoder(nn.Module):
    """x (B, C, H, W) ↔ z (B, embed_dim, H/f, W/f), f = 2^(len(ch_mult) − 1).

    ``scale_factor`` (a buffer, so it travels with the weights and their hash) is 1/std of the
    latents, estimated from data after training (:func:`diffexp.autoencoder.estimate_scale_factor`);
    diffusion runs on ``z · scale_factor`` (LDM §4.3.2: unit-variance latents for the noise schedule).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, embed_dim: int = 4, ch: int = 32,
                 ch_mult: tuple[int, ...] | list[int] = (1, 2, 2), num_res_blocks: int = 1, z_channels: int | None = None,
                 groups: int = 8, attention: bool = True, dropout: float = 0.0):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        self.factor = 2 ** (len(ch_mult) - 1)
        if image_size % self.factor:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor f = {self.factor} "
                             f"(ch_mult={list(ch_mult)}); use an image size divisible by {self.factor} or fewer levels")
        z_channels = int(z_channels or embed_dim)
        # Everything needed to rebuild the network from a checkpoint without its training config.
        self.architecture = {"in_channels": int(in_channels), "image_size": int(image_size), "embed_dim": int(embed_dim),
                             "ch": int(ch), "ch_mult": list(ch_mult), "num_res_blocks": int(num_res_blocks),
                             "z_channels": z_channels, "groups": int(groups), "attention": bool(attention),
                             "dropout": float(dropout)}
        self.in_channels, self.image_size, self.embed_dim = int(in_channels), int(image_size), int(embed_dim)
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, groups, attention, dropout)
        self.decoder = Decoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, groups, attention, dropout)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.factor
        return (self.embed_dim, s, s)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior
