"""MNIST (and Fashion-MNIST): 60k train / 10k test, 1×28×28 uint8, 10 classes.

Sources, in order: ``<root>/mnist.pkl.gz`` (the classic pickle; its train+valid in order is the original
60k training set) or the idx files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` in ``<root>`` or ``<root>/MNIST/raw``
(torchvision's layout). Both give identical tensors. Validation: the last ``val_size`` of the 60k
(``split_seed=None``; 10000 reproduces the pickle's train/valid split) or a seeded random subset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffexp.data.base import BaseDataModule, as_tensors, resize_images, split_off
from diffexp.data.readers import DatasetNotFoundError, find_file, load_mnist_pkl, read_idx, reading

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_idx_splits(dirs: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{'train', 'test'}: (uint8 (N,28,28), int64) from idx files in the first dir holding each, or None."""
    out = {}
    for split, names in IDX_FILES.items():
        paths = [find_file(dirs, [n + ".gz", n]) for n in names]
        if None in paths:
            return None
        with reading(paths[0], "idx file"):
            images = read_idx(paths[0])
        with reading(paths[1], "idx file"):
            labels = read_idx(paths[1]).astype(np.int64)
        out[split] = (images, labels)
    return out


MNIST_FILES = ("mnist.pkl.gz",)  # what `make data` provides
MNIST_IDX_FILES = tuple(n + ".gz" for names in IDX_FILES.values() for n in names)


def mnist_candidates(repo: Path | None = None) -> list[Path]:
    """Where an MNIST copy is looked for, in order: ``$DIFFEXP_DATA/mnist``, ``<repo>/data/mnist`` (what
    ``make data`` writes), ``./data/mnist``, and ``<repo>/../shared/data/mnist`` (an offline copy next to
    the checkout, where one exists). ``repo`` defaults to this checkout."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[3]
    out = [Path(os.environ["DIFFEXP_DATA"]) / "mnist"] if os.environ.get("DIFFEXP_DATA") else []
    out += [repo / "data" / "mnist", Path.cwd() / "data" / "mnist", repo.parent / "shared" / "data" / "mnist"]
    return list(dict.fromkeys(p.absolute() for p in out))


def find_mnist(files: tuple[str, ...] = MNIST_FILES, repo: Path | None = None) -> Path | None:
    """The first of :func:`mnist_candidates` that holds all of ``files`` (default: the pickle that
    ``make data`` provides), or None. The one place tests, benchmarks and the data module look for MNIST."""
    return next((d for d in mnist_candidates(repo) if all((d / f).is_file() for f in files)), None)


def default_mnist_root() -> Path:
    """:func:`find_mnist` (pickle or idx files), else the first candidate (``$DIFFEXP_DATA/mnist`` or
    ``<repo>/data/mnist``: where ``make data`` puts it, so that the not-found error names it)."""
    return find_mnist() or find_mnist(MNIST_IDX_FILES) or mnist_candidates()[0]


class MNISTDataModule(BaseDataModule):
    """MNIST digits as float32 in [-1, 1], shape (1, image_size, image_size), labels 0..9.

    Args:
        root: folder holding ``mnist.pkl.gz`` or the idx files (fetch with ``make data``); None:
            :func:`default_mnist_root` (the conf/data/mnist.yaml default is ``${paths.data_dir}/mnist``).
        image_size: 28 (native); larger pads with background (e.g. 32), smaller resizes (see ``resize_mode``).
        resize_mode: 'pad' or 'resize' (antialiased bilinear), see :func:`~diffexp.data.base.resize_images`.
        val_size: validation examples taken from the 60k training set (int, or fraction).
        split_seed: None: the last ``val_size`` examples; int: a seeded random subset.
        source: 'auto' (pickle, else idx), 'pkl' or 'idx'.
        **kwargs: loader options of :class:`~diffexp.data.base.BaseDataModule`.
    """

    name = "mnist"
    num_classes = 10
    pkl_name: str | None = "mnist.pkl.gz"
    raw_subdir = "MNIST/raw"
    fetch_hint = "Fetch it with `make data` (runs `python scripts/fetch_mnist.py data/mnist`)."

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 28,
        resize_mode: str = "pad",
        val_size: int | float = 10000,
        split_seed: int | None = None,
        source: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if source not in ("auto", "pkl", "idx"):
            raise ValueError(f"source must be auto|pkl|idx, got {source!r}")
        self.root = Path(root) if root is not None else default_mnist_root()
        self.image_size, self.resize_mode = int(image_size), resize_mode
        self.val_size, self.split_seed, self.source = val_size, split_seed, source
        self.data_shape = (1, self.image_size, self.image_size)

    def _searched(self) -> list[Path]:
        dirs = [self.root, self.root / self.raw_subdir]
        idx = [d / (n + ".gz") for d in dirs for names in IDX_FILES.values() for n in names]
        pkl = [self.root / self.pkl_name] if self.pkl_name and self.source != "idx" else []
        return pkl + (idx if self.source != "pkl" else [])

    def _read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Full train (60k) and test (10k) as numpy, from the pickle or the idx files."""
        pkl = self.root / self.pkl_name if self.pkl_name else None
        if pkl is not None and self.source != "idx" and pkl.is_file():
            with reading(pkl, "MNIST pickle"):
                d = load_mnist_pkl(pkl)
            train = tuple(np.concatenate([a, b]) for a, b in zip(d["train"], d["valid"]))
            return {"train": train, "test": d["test"]}
        if self.source != "pkl":
            splits = load_idx_splits([self.root, self.root / self.raw_subdir])
            if splits is not None:
                return splits
        raise DatasetNotFoundError(
            self.name, self._searched(),
            ("Needed: " + (f"{self.pkl_name}, or " if pkl is not None and self.source != "idx" else "")
             + "all four idx files (with or without .gz) in one of those folders. " + self.fetch_hint),
            root=self.root,
        )

    def _load(self):
        splits = {}
        for split, (x, y) in self._read().items():
            x, y = as_tensors(x, y)
            splits[split] = (resize_images(x.unsqueeze(1), self.image_size, self.resize_mode), y)
        (splits["train"], splits["val"]) = split_off(*splits["train"], self.val_size, self.split_seed)
        return splits

    def _key_params(self):
        return {"resize_mode": self.resize_mode, "val_size": self.val_size, "split_seed": self.split_seed}


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Zalando): same format and options as :class:`MNISTDataModule`, idx files only,
    in ``<root>`` or ``<root>/FashionMNIST/raw``."""

    name = "fashion_mnist"
    pkl_name = None
    raw_subdir = "FashionMNIST/raw"
    fetch_hint = ("Not available offline: place the four idx files from "
                  "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) in that folder.")

    def __init__(self, root: str = "data/fashion_mnist", **kwargs):
        kwargs.setdefault("source", "idx")
        super().__init__(root=root, **kwargs)
