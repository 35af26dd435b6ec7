"""Turning samples into pictures: uint8 grids, 2-D scatter plots, and logging them everywhere."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Map data-range floats to uint8 (wandb >= 0.31 logs float images in [0,1] as black)."""
    lo, hi = data_range
    return ((x.detach().float().cpu() - lo) / (hi - lo) * 255.0).round().clamp(0, 255).to(torch.uint8)


def image_grid(x: Tensor, nrow: int | None = None, data_range=(-1.0, 1.0), padding: int = 2) -> np.ndarray:
    """(B,C,H,W) images → one HWC uint8 grid (grayscale expanded to RGB)."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    imgs = to_uint8(x, data_range)
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    grid = make_grid(imgs, nrow=nrow, padding=padding, pad_value=255)
    return grid.permute(1, 2, 0).contiguous().numpy()


def scatter_plot(x: Tensor, reference: Tensor | None = None, title: str = "") -> np.ndarray:
    """2-D samples (and optionally reference data) as an HWC uint8 image."""
    # A pyplot-free figure: rendering it never switches the process's matplotlib backend (matplotlib.use("Agg")
    # would stop a notebook's inline plots once a training run had drawn its sample scatter).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, c="gray", label="data")
    p = x.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.7, c="C0", label="samples")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    from PIL import Image

    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def samples_to_image(x: Tensor, data_range, nrow: int | None = None, title: str = "") -> np.ndarray:
    if x.ndim == 4:
        return image_grid(x, nrow=nrow, data_range=data_range or (-1.0, 1.0))
    return scatter_plot(x, title=title)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def as_uint8_hwc(image) -> np.ndarray:
    """An image as loggers need it: HWC uint8. uint8 passes through; floats are read as [0, 1] (clamped,
    rounded: wandb >= 0.31 would log them black); CHW with C in {1, 3, 4} is transposed; HW gets 3 channels."""
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3:
        raise ValueError(f"expected an HW, HWC or CHW image, got shape {image.shape}")
    if image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            image = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0)
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def log_image(trainer, key: str, image, step: int) -> None:
    """Send an image to every logger that takes images (CSV keeps the PNG on disk only), as HWC uint8
    (see :func:`as_uint8_hwc`). Loggers' experiments exist on rank 0 only; other ranks do nothing."""
    image = as_uint8_hwc(image)
    for logger in getattr(trainer, "loggers", []):
        name = type(logger).__name__
        if name == "TensorBoardLogger":
            logger.experiment.add_image(key, image, step, dataformats="HWC")
        elif name == "WandbLogger":
            logger.log_image(key=key, images=[image], step=step)
