"""diffusers networks as diffexp denoisers: ``model=diffusers_unet`` and ``model=diffusers_dit``.

Thin adapters with the diffexp network contract ``forward(x, t, y=None) -> tensor shaped like x`` (see
docs/CONTRACTS.md) around Hugging Face diffusers' ``UNet2DModel`` and ``DiTTransformer2DModel``; the wrapped
model is kept whole (``.unet`` / ``.transformer``), so it can be saved with ``save_pretrained`` and loaded by
diffusers pipelines as it is (:mod:`diffexp.interop.export`). Any constructor keyword of the diffusers class
can be given in the model config; the adapter sets the ones the data decides (channels, size, classes).

Timesteps: diffusers' models embed t sinusoidally from a float tensor, so integer indices in [0, T) and the
fractional t of the continuous-σ samplers both work (not ``time_embedding_type: learned``, a lookup table).

Class conditioning (``num_classes=K``): labels in [0, K] where K is the null label of classifier-free
guidance. The UNet gets ``num_class_embeds = K + 1`` (an embedding added to the time embedding, diffusers'
``class_embed_type: null``); the DiT gets ``num_embeds_ada_norm = K``, whose table already has the extra
(null) row at index K. The DiT's own random label dropout is switched off: diffexp's module drops labels
itself (``label_dropout``) from its seeded generator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from diffexp.interop import require_diffusers

_SET_BY_ADAPTER = ("in_channels", "out_channels", "sample_size")


def _plain(value: Any) -> Any:
    """Hydra's ListConfig/DictConfig -> lists/dicts (diffusers writes its config as JSON)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_kwargs(name: str, kwargs: dict[str, Any], also: tuple[str, ...]) -> dict[str, Any]:
    fixed = [k for k in (*_SET_BY_ADAPTER, *also) if k in kwargs]
    if fixed:
        raise ValueError(f"{name}: {fixed} are set from the data (channels, image size, classes); remove them "
                         "from the model config")
    return {k: _plain(v) for k, v in kwargs.items()}


def _batch_t(t: Tensor, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class DiffusersUNet(nn.Module):
    """diffusers ``UNet2DModel`` with the diffexp contract. ``unet_kwargs``: any ``UNet2DModel`` keyword
    (``block_out_channels``, ``down_block_types``, ``layers_per_block``, ``norm_num_groups``, ...)."""

    def __init__(self, in_channels: int, image_size: int | None = None, num_classes: int | None = None, **unet_kwargs):
        super().__init__()
        diffusers = require_diffusers()
        kwargs = _check_kwargs("model=diffusers_unet", unet_kwargs, ("num_class_embeds",))
        if image_size is None:
            raise ValueError("model=diffusers_unet needs image data (C, H, W); for vectors use model=mlp")
        levels = len(kwargs.get("block_out_channels", (224, 448, 672, 896)))
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size={image_size} cannot be halved {levels - 1} times (one per block after the "
                             f"first of block_out_channels, {levels} blocks); use fewer blocks or another image size")
        if num_classes is not None:
            kwargs["num_class_embeds"] = int(num_classes) + 1  # + the null label K
        self.unet = diffusers.UNet2DModel(sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
                                          **kwargs)
        self.num_classes = num_classes

    @classmethod
    def wrap(cls, unet: nn.Module, num_classes: int | None = None) -> DiffusersUNet:
        """Adapter around an existing ``UNet2DModel`` (e.g. loaded with ``from_pretrained``)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.unet, self.num_classes = unet, num_classes
        return self

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.unet(x, _batch_t(t, x), class_labels=y).sample


class DiffusersDiT(nn.Module):
    """diffusers ``DiTTransformer2DModel`` (Peebles & Xie 2023) with the diffexp contract.
    ``dit_kwargs``: ``num_attention_heads``, ``attention_head_dim``, ``num_layers``, ``patch_size``, ..."""

    def __init__(self, in_channels: int, image_size: int | None = None, num_classes: int | None = None, **dit_kwargs):
        super().__init__()
        diffusers = require_diffusers()
        kwargs = _check_kwargs("model=diffusers_dit", dit_kwargs, ("num_embeds_ada_norm",))
        if image_size is None:
            raise ValueError("model=diffusers_dit needs image data (C, H, W); for vectors use model=mlp")
        patch = int(kwargs.get("patch_size", 2))
        if image_size % patch:
            raise ValueError(f"patch_size={patch} does not divide image_size={image_size}")
        # Unconditional: one label embedding, always label 0.
        kwargs["num_embeds_ada_norm"] = int(num_classes) if num_classes is not None else 1
        self.transformer = diffusers.DiTTransformer2DModel(in_channels=in_channels, out_channels=in_channels,
                                                            sample_size=image_size, **kwargs)
        self.num_classes = num_classes
        _disable_label_dropout(self.transformer)

    @classmethod
    def wrap(cls, transformer: nn.Module, num_classes: int | None = None) -> DiffusersDiT:
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.transformer, self.num_classes = transformer, num_classes
        _disable_label_dropout(transformer)
        return self

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.transformer(x, _batch_t(t, x), class_labels=y).sample


def _disable_label_dropout(model: nn.Module) -> None:
    # diffusers' LabelEmbedding drops labels at random (global RNG) in train mode; diffexp does it itself.
    for m in model.modules():
        if hasattr(m, "token_drop") and hasattr(m, "dropout_prob"):
            m.dropout_prob = 0.0


def inner_model(net: nn.Module) -> tuple[str, nn.Module] | None:
    """("unet", model) / ("transformer", model) for an adapter, else None (a diffexp network)."""
    if isinstance(net, DiffusersUNet):
        return "unet", net.unet
    if isinstance(net, DiffusersDiT):
        return "transformer", net.transformer
    return None
