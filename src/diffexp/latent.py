"""Latent diffusion (Rombach et al. 2022): the same DiffusionModule, trained on the scaled latents z·s of a
frozen first-stage autoencoder (diffexp.autoencoder) and decoded to images wherever images are needed.

- :class:`LatentDataModule` wraps the image data module. Every split is encoded ONCE (posterior means,
  LDM's deterministic encoding) and cached on disk at ``{cache_dir}/latents/{autoencoder hash}/{cache key}.pt``;
  training reads the cached tensors like any in-memory split (never re-encoded per step). The autoencoder
  hash covers every weight and the scale factor, so a retrained autoencoder gets new files.
  Its ``tensors``/loaders serve latents (data_shape (c, h, w), ``data_range=None``: unbounded, no clipping);
  ``.pixels`` is the image data module (FID reference statistics).
- :func:`attach_autoencoder` gives a module its frozen ``first_stage`` (weights saved in the diffusion
  checkpoint, so sample.py / evaluate.py need no other file) and ``latent_info``; ``cfg.latent_autoencoder``
  (architecture, hash, scale factor) is recorded in the run's config and checkpoint, and resuming with
  another autoencoder is refused (checkpoint.COMPATIBILITY_KEYS).
- :func:`to_images`, :func:`image_shape`, :func:`image_range` are what samplers' callers use: identity and
  the module's own shape/range for pixel models, decoding x = D(z / s) for latent ones.
- Likelihoods are of the latents (:func:`label_latent_nll` marks them ``latent-continuous``): a bound on the
  density of z·s, in bits per latent dimension — not comparable with pixel bits/dim.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from diffexp.atomic import atomic_torch_save
from diffexp.autoencoder import KLAutoencoder, autoencoder_hash, build_autoencoder, load_autoencoder
from diffexp.data.base import BaseDataModule
from diffexp.metrics.utils import default_cache_dir, slug

LATENT_CONVENTION = ("latent-continuous: variational bound on −log p of the scaled autoencoder latents z·s (Gaussian "
                     "density decoder), in bits per latent dimension; not a pixel likelihood")


class FrozenAutoencoder(nn.Module):
    """The first stage inside a diffusion module: always in eval mode, never trained."""

    def __init__(self, autoencoder: KLAutoencoder):
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenAutoencoder:  # noqa: ARG002 - stays in eval mode
        return super().train(False)

    @property
    def scale_factor(self) -> float:
        return float(self.autoencoder.scale_factor)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Scaled latents z·s of images x (posterior means)."""
        return self.autoencoder.encode(x).mode() * self.autoencoder.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images D(z / s) of scaled latents."""
        return self.autoencoder.decode(z / self.autoencoder.scale_factor)


# ------------------------------------------------------------------------------------------------- data
def latent_cache_path(cache_dir: str | os.PathLike, ae_hash: str, pixel_cache_key: str) -> Path:
    return Path(cache_dir) / "latents" / ae_hash / f"{slug(pixel_cache_key)}.pt"


@torch.no_grad()
def encode_images(autoencoder: KLAutoencoder, x: Tensor, batch_size: int = 500, device: str | torch.device = "cpu") -> Tensor:
    """Posterior means (unscaled) of ``x``, in batches, on ``device``; float32 on the CPU."""
    autoencoder = autoencoder.to(device).eval()
    return torch.cat([autoencoder.encode(x[i:i + batch_size].to(device)).mode().float().cpu()
                      for i in range(0, len(x), batch_size)])


class LatentDataModule(BaseDataModule):
    """Scaled latents z·s of an image data module's splits, cached on disk (see the module docstring)."""

    div = None
    data_range = None

    def __init__(self, pixels: BaseDataModule, autoencoder: KLAutoencoder, cache_dir: str | os.PathLike | None = None,
                 encode_batch_size: int = 500, device: str | None = None):
        super().__init__(batch_size=pixels.batch_size, eval_batch_size=pixels.eval_batch_size,
                         num_workers=pixels.num_workers, seed=pixels.seed, shuffle=pixels.shuffle,
                         drop_last=pixels.drop_last, hflip=False, pin_memory=pixels.pin_memory)
        shape = tuple(pixels.data_shape)
        image = (autoencoder.in_channels, autoencoder.image_size, autoencoder.image_size)
        if shape != image:
            raise ValueError(f"the autoencoder takes {image} images but data {pixels.name!r} has shape {shape}; "
                             f"use the data config it was trained on")
        self.pixels, self.autoencoder = pixels, autoencoder.eval().requires_grad_(False)
        self.hash = autoencoder_hash(autoencoder)
        self.scale_factor = float(autoencoder.scale_factor)
        self.name = f"{pixels.name}-latent"
        self.data_shape = tuple(autoencoder.latent_shape)
        self.num_classes = getattr(pixels, "num_classes", None)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.encode_batch_size = int(encode_batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.encoded: list[str] = []  # splits encoded by this instance (the rest came from the cache)

    def prepare_data(self) -> None:
        """Encode the splits missing from the cache (Lightning calls this on one process per node before any
        ``setup``, so DDP ranks then read the cache instead of all encoding)."""
        self.pixels.prepare_data()
        for split in self.pixels.splits:
            if not self.cache_path(split).is_file():
                self._latents(split)

    def _key_params(self) -> dict[str, Any]:
        return {"autoencoder": self.hash}

    def cache_key(self, split: str) -> str:
        return f"{self.pixels.cache_key(split)}-latent-{self.hash}"

    def cache_path(self, split: str) -> Path:
        return latent_cache_path(self.cache_dir, self.hash, self.pixels.cache_key(split))

    def _latents(self, split: str) -> tuple[Tensor, Tensor]:
        path = self.cache_path(split)
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached.get("autoencoder_hash") == self.hash:
                    return cached["z"], cached["y"]
            except Exception:  # noqa: BLE001 - an unreadable cache file is re-encoded and replaced
                pass
        x, y = self.pixels.tensors(split)
        t0 = time.perf_counter()
        z = encode_images(self.autoencoder, x, self.encode_batch_size, self.device)
        self.autoencoder.cpu()
        atomic_torch_save({"z": z, "y": y, "autoencoder_hash": self.hash, "cache_key": self.pixels.cache_key(split),
                           "scale_factor": self.scale_factor}, path)
        self.encoded.append(split)
        print(f"[latent] encoded {len(x)} {split} images -> {tuple(z.shape[1:])} latents in "
              f"{time.perf_counter() - t0:.1f} s; cached at {path}")
        return z, y

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for split in self.pixels.splits:
            z, y = self._latents(split)
            out[split] = (z * self.scale_factor, y)
        return out


# ---------------------------------------------------------------------------------------------- config
def wants_latent(cfg: DictConfig) -> bool:
    """Whether ``cfg`` trains on latents (``latent=CKPT``); a required but unset ``latent`` is a ConfigError."""
    if "latent" in cfg and (OmegaConf.is_missing(cfg, "latent") or cfg.latent == "required"):
        from diffexp.validation import ConfigError

        raise ConfigError("latent: this config (e.g. experiment=ldm_mnist) trains on autoencoder latents; set "
                          "latent=<autoencoder checkpoint> (train one with `python train_autoencoder.py`) or "
                          "latent=auto (train.py trains and caches one first, see latent_train)")
    return bool(cfg.get("latent"))


def latent_datamodule(cfg: DictConfig, pixels: BaseDataModule) -> LatentDataModule:
    """The latent data module for ``cfg.latent`` (an autoencoder checkpoint, or ``auto``: trained or reused first
    and ``cfg.latent`` set to its checkpoint, see diffexp.latent_auto); records ``cfg.latent_autoencoder``
    (architecture, hash, scale factor, path, image shape and range; ``auto``: how latent=auto found it)."""
    auto = None
    if cfg.get("latent") == "auto":
        from diffexp.latent_auto import use_auto_autoencoder

        auto = use_auto_autoencoder(cfg, pixels)
    autoencoder, info = load_autoencoder(cfg.latent)
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    dm = LatentDataModule(pixels, autoencoder, cache_dir)
    with open_dict(cfg):
        cfg.latent_autoencoder = _record(info, list(pixels.data_shape), list(pixels.data_range))
        if auto is not None:
            cfg.latent_autoencoder.auto = auto
    return dm


def _record(info: dict[str, Any], image_shape_: list[int], image_range_: list[float]) -> dict[str, Any]:
    return {"path": info["path"], "hash": info["hash"], "scale_factor": info["scale_factor"],
            "architecture": info["architecture"], "latent_shape": list(info["latent_shape"]),
            "image_shape": list(image_shape_), "image_range": list(image_range_)}


def attach_autoencoder(module, cfg: DictConfig, autoencoder: KLAutoencoder | None = None) -> None:
    """Give ``module`` its frozen first stage and record it in ``module.config["latent_autoencoder"]``.

    ``autoencoder``: the loaded network (training: the data module's). Without it, a config that records
    ``latent_autoencoder`` (a diffusion checkpoint's) rebuilds the architecture — the weights then come with the
    checkpoint's state dict, so the autoencoder file is not needed — and a bare ``latent=PATH`` loads the file."""
    record = cfg.get("latent_autoencoder")
    record = OmegaConf.to_container(record, resolve=True) if isinstance(record, DictConfig) else record
    if autoencoder is None and record is not None:
        autoencoder = build_autoencoder(record["architecture"])
        autoencoder.scale_factor.fill_(float(record["scale_factor"]))
    elif autoencoder is None:
        autoencoder, info = load_autoencoder(cfg.latent)
        arch = info["architecture"]
        record = _record(info, [arch["in_channels"], arch["image_size"], arch["image_size"]],
                         info["data_range"] or [-1.0, 1.0])
    if tuple(autoencoder.latent_shape) != tuple(module.data_shape):
        raise ValueError(f"the autoencoder's latents {tuple(autoencoder.latent_shape)} do not match the diffusion "
                         f"model's data_shape {tuple(module.data_shape)}")
    module.first_stage = FrozenAutoencoder(autoencoder)
    module.latent_info = dict(record)
    module.config["latent_autoencoder"] = dict(record)


# ------------------------------------------------------------------------------------------- images
def is_latent(module) -> bool:
    return getattr(module, "first_stage", None) is not None


def image_shape(module) -> tuple[int, ...]:
    return tuple(module.latent_info["image_shape"]) if is_latent(module) else tuple(module.data_shape)


def image_range(module) -> tuple[float, float] | None:
    if is_latent(module):
        return tuple(module.latent_info["image_range"])
    return module.data_range


def to_images(module, x: Tensor) -> Tensor:
    """Samples of ``module`` as data: decoded D(z / s) for latent models (clamped to the image range), else x."""
    if not is_latent(module):
        return x
    return module.first_stage.decode(x.to(next(module.first_stage.parameters()).device)).clamp(*image_range(module))


def label_latent_nll(result: dict[str, Any], module) -> dict[str, Any]:
    """Mark an NLL result of a latent model as a bound on the latents (its keys then say ``latent-continuous``)."""
    if is_latent(module):
        result.update(convention_tag="latent-continuous", convention=LATENT_CONVENTION, space="latent",
                      autoencoder_hash=module.latent_info["hash"])
    return result


def nll_datamodule(module, pixels: BaseDataModule, cache_dir: str | os.PathLike | None = None):
    """The data an NLL of ``module`` is evaluated on: the cached latents of ``pixels`` for latent models."""
    if not is_latent(module):
        return pixels
    return LatentDataModule(pixels, module.first_stage.autoencoder, cache_dir)
