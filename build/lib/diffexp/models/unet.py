"""DDPM UNet (Ho et al. 2020, App. B) with the improvements of Nichol & Dhariwal (2021).

Structure (improved-diffusion layout)::

    conv_in ─ [ResBlock (+Attn)] × num_res_blocks ─ Down ─ … ─ Mid(Res, Attn, Res) ─ … ─ Up ─
              [ResBlock(cat skip) (+Attn)] × (num_res_blocks + 1) ─ GroupNorm ─ SiLU ─ conv_out (zero-init)

* ResBlock: h = conv₁(SiLU(GN(x))); with ``use_scale_shift_norm`` the embedding e = SiLU(emb) is
  injected as FiLM, h ← GN(h)·(1 + s) + b with [s, b] = W e (Nichol & Dhariwal 2021, §3 / "AdaGN" of
  Dhariwal & Nichol 2021); otherwise additively, h ← GN(h + W e) (Ho et al. 2020). Then
  out = skip(x) + conv₂(Dropout(SiLU(h))), conv₂ zero-initialised so every block starts as identity.
* Self-attention: softmax(QKᵀ/√d)V over the H·W positions, multi-head, through
  ``F.scaled_dot_product_attention``; residual, zero-initialised output projection.
* Time: sinusoidal(t) → Linear → SiLU → Linear (dim 4·base_channels); an optional class embedding with
  ``num_classes + 1`` rows (the last = null label for classifier-free guidance) is added to it.
* The output convolution is zero-initialised, so the network outputs exactly 0 at initialisation.

CPU notes: the attention block works on the (B, H·W, C) view of the activations, which is free (no
copy) in ``channels_last`` layout; SiLU(emb) is computed once per forward instead of once per block;
dropout 0 is an Identity. Pass ``channels_last=True`` to store conv weights and run the forward in
channels_last (the input is converted on entry and the output returned in the input's layout). On
CPU this routes GroupNorm(+FiLM+SiLU) through the fused kernel of :mod:`diffexp.models.norm`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffexp.models.attention import attention
from diffexp.models.embeddings import LabelEmbedding, TimestepEmbedding, check_labels
from diffexp.models.norm import GroupNorm, group_norm_act


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups: the largest divisor of ``channels`` that divides ``max_groups``."""
    return math.gcd(max_groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def valid_image_sizes(num_levels: int, up_to: int = 64) -> list[int]:
    m = 2 ** (num_levels - 1)
    return list(range(m, up_to + 1, m))


class ResBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        max_groups: int = 32,
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = GroupNorm(norm_groups(in_channels, max_groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = GroupNorm(norm_groups(out_channels, max_groups), out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``emb`` is SiLU(time/class embedding), shape (B, emb_dim)."""
        h = self.conv1(group_norm_act(x, self.norm1))
        e = self.emb_proj(emb)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = group_norm_act(h, self.norm2, scale, shift)  # SiLU(GN(h)(1 + s) + t)
        else:
            h = group_norm_act(h + e[:, :, None, None], self.norm2)
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions (Ho et al. 2020; Vaswani et al. 2017, Eq. 1)."""

    def __init__(self, channels: int, num_heads: int = 1, max_groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm(norm_groups(channels, max_groups), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        n, nh = H * W, self.num_heads
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C): a view in channels_last
        q, k, v = self.qkv(h).view(B, n, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k, v)  # (B, nh, HW, d)
        o = self.proj(o.transpose(1, 2).reshape(B, n, C))
        return x + o.transpose(1, 2).view(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResAttn(nn.Module):
    """A ResBlock optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None = None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return x


class UNet(nn.Module):
    """DDPM-style UNet ``net(x, t, y=None)`` for (B, C, H, W) images, H = W = ``image_size``.

    Args:
        in_channels: image channels (1 or 3 …).
        image_size: spatial size; must be divisible by 2^(len(channel_mult) - 1).
        base_channels: channels of the first level (Ho et al. CIFAR-10: 128).
        channel_mult: per-level channel multipliers; one level per entry, downsampling between levels.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: spatial resolutions (pixels, e.g. [16] or [7]) with self-attention.
        dropout: dropout in every ResBlock.
        num_heads: attention heads.
        num_classes: number of classes for conditioning (None: unconditional). Labels are in
            [0, num_classes]; num_classes is the null label. ``net(x, t)`` uses the null label.
        out_channels: output channels (default ``in_channels``).
        use_scale_shift_norm: FiLM conditioning (True) or additive (False, as Ho et al.).
        mid_attention: self-attention in the middle block (Ho et al.: yes).
        num_groups: maximum GroupNorm groups; the actual number is gcd(num_groups, channels).
        time_embed_dim: width of the time embedding (default 4·base_channels).
        channels_last: keep conv weights and activations in channels_last memory format.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_classes: int | None = None,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        mid_attention: bool = True,
        num_groups: int = 32,
        time_embed_dim: int | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(r) for r in (attention_resolutions or ()))
        levels = len(channel_mult)
        if levels < 1:
            raise ValueError("channel_mult must have at least one entry")
        factor = 2 ** (levels - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(
                f"UNet: image_size={image_size} is not divisible by 2^(levels-1)={factor} for "
                f"channel_mult={list(channel_mult)} ({levels} levels, {levels - 1} downsamplings); "
                f"valid sizes: {valid_image_sizes(levels)}… (multiples of {factor}), or use fewer levels"
            )
        resolutions = [image_size // 2**i for i in range(levels)]
        missing = [r for r in attention_resolutions if r not in resolutions]
        if missing:
            warnings.warn(
                f"UNet: attention_resolutions {missing} match no level (level resolutions: {resolutions}); "
                "no attention is applied there",
                stacklevel=2,
            )
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.channels_last = channels_last

        ch = base_channels
        emb_dim = time_embed_dim or 4 * base_channels
        self.time_embed = TimestepEmbedding(base_channels, emb_dim)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, use_scale_shift_norm, num_groups)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_heads, num_groups)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        for level, mult in enumerate(channel_mult):
            res_px = resolutions[level]
            for _ in range(num_res_blocks):
                cout = base_channels * mult
                self.down.append(ResAttn(res(ch, cout), attn(cout) if res_px in attention_resolutions else None))
                ch = cout
                skips.append(ch)
            if level != levels - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.mid = nn.ModuleList([ResAttn(res(ch, ch), attn(ch) if mid_attention else None), ResAttn(res(ch, ch))])

        self.up = nn.ModuleList()
        self._up_is_res: list[bool] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res_px = resolutions[level]
            for i in range(num_res_blocks + 1):
                cout = base_channels * mult
                self.up.append(
                    ResAttn(res(ch + skips.pop(), cout), attn(cout) if res_px in attention_resolutions else None)
                )
                self._up_is_res.append(True)
                ch = cout
                if level != 0 and i == num_res_blocks:
                    self.up.append(Upsample(ch))
                    self._up_is_res.append(False)
        assert not skips

        self.norm_out = GroupNorm(norm_groups(ch, num_groups), ch)
        self.conv_out = zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_labels(y, self.num_classes, "UNet")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(t)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, x.shape[0])
        emb = F.silu(emb)
        nchw_out = False
        if self.channels_last:
            nchw_out = x.is_contiguous()
            x = x.contiguous(memory_format=torch.channels_last)

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block, is_res in zip(self.up, self._up_is_res):
            if is_res:
                h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb)
        out = self.conv_out(group_norm_act(h, self.norm_out))
        return out.contiguous() if nchw_out else out  # hand back the caller's layout (no-op for 1 channel)
