"""Any folder of images (optionally one sub-folder per class), decoded once with PIL into memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffexp.data.base import BaseDataModule, split_off
from diffexp.data.readers import DatasetNotFoundError, reading

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def scan_folder(root: Path, extensions=EXTENSIONS, use_labels: bool = True) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names). Labelled when ``root`` holds no loose images and has sub-folders
    with images: the class is the top-level sub-folder (sorted names). Otherwise every image found
    recursively, label 0, no classes."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    loose = [p for p in files if p.parent == root]
    if not use_labels or loose or not files:
        return files, [0] * len(files), []
    classes = sorted({p.relative_to(root).parts[0] for p in files})
    index = {c: i for i, c in enumerate(classes)}
    return files, [index[p.relative_to(root).parts[0]] for p in files], classes


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode, convert to L/RGB, resize the shorter side to ``size`` (bicubic), centre-crop -> uint8 (C,H,W)."""
    from PIL import Image

    with reading(path, "image"), Image.open(path) as im:
        im = im.convert({1: "L", 3: "RGB"}[channels])
        w, h = im.size
        s = size / min(w, h)
        if s != 1:
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im, np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


class ImageFolderDataModule(BaseDataModule):
    """Images from ``root`` as float32 in [-1, 1], shape (channels, image_size, image_size).

    Args:
        root: the folder (scanned at construction, so ``num_classes`` is known before ``setup``).
        image_size: output side; images are resized (shorter side) and centre-cropped.
        channels: 1 (grayscale) or 3 (RGB).
        use_labels: use class sub-folders as labels (``num_classes`` = their number) when present.
        val_size, test_size: held-out examples (int) or fractions; ``test_size=0`` means no test split.
        split_seed: seed of the held-out subsets (None: the last files in sorted order).
        **kwargs: loader options of :class:`~diffexp.data.base.BaseDataModule`.
    """

    name = "image_folder"

    def __init__(self, root: str, image_size: int = 64, channels: int = 3, use_labels: bool = True,
                 val_size: int | float = 0.1, test_size: int | float = 0, split_seed: int | None = 0, **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root, self.image_size, self.channels = Path(root), int(image_size), int(channels)
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.files, self.labels, self.classes = scan_folder(self.root, use_labels=use_labels)
        if not self.files:
            raise DatasetNotFoundError(self.name, [self.root / f"**/*{e}" for e in EXTENSIONS],
                                       f"Put images (optionally in one sub-folder per class) under {self.root}.",
                                       root=self.root)
        self.num_classes = len(self.classes) or None
        self.data_shape = (self.channels, self.image_size, self.image_size)

    def _load(self):
        x = torch.from_numpy(np.stack([load_image(p, self.image_size, self.channels) for p in self.files]))
        y = torch.tensor(self.labels, dtype=torch.long)
        rest, test = split_off(x, y, self.test_size, self.split_seed)
        seed = None if self.split_seed is None else self.split_seed + 1
        train, val = split_off(*rest, self.val_size, seed)
        return {"train": train, "val": val, "test": test}

    def _key_params(self):
        return {"root": str(self.root.resolve()), "n_files": len(self.files), "classes": self.classes,
                "val_size": self.val_size, "test_size": self.test_size, "split_seed": self.split_seed}
