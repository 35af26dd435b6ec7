"""CIFAR-10: 50k train / 10k test, 3×32×32 uint8, 10 classes, from the standard python pickle batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffexp.data.base import BaseDataModule, as_tensors, split_off
from diffexp.data.readers import DatasetNotFoundError, read_cifar_batch, reading

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]


class CIFAR10DataModule(BaseDataModule):
    """CIFAR-10 as float32 in [-1, 1], shape (3, 32, 32); random horizontal flips on by default.

    Args:
        root: folder holding ``cifar-10-batches-py/`` (the extracted official tarball) or the batch files.
        val_size: validation examples taken from the 50k training set (int or fraction).
        split_seed: None: the last ``val_size`` examples; int: a seeded random subset.
        **kwargs: loader options of :class:`~diffexp.data.base.BaseDataModule` (``hflip`` default True).
    """

    name = "cifar10"
    data_shape = (3, 32, 32)
    num_classes = 10
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self, root: str = "data/cifar10", val_size: int | float = 5000, split_seed: int | None = None, **kwargs):
        kwargs.setdefault("hflip", True)
        super().__init__(**kwargs)
        self.root, self.val_size, self.split_seed = Path(root), val_size, split_seed

    def _folder(self) -> Path:
        dirs = [self.root / "cifar-10-batches-py", self.root]
        for d in dirs:
            if all((d / f).is_file() for f in TRAIN_FILES + TEST_FILES):
                return d
        raise DatasetNotFoundError(
            self.name, [d / f for d in dirs for f in TRAIN_FILES + TEST_FILES],
            "Not available offline: extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) "
            f"into {self.root}.", root=self.root,
        )

    def _load(self):
        d = self._folder()
        def batch(path):
            with reading(path, "CIFAR-10 batch"):
                return read_cifar_batch(path)

        read = lambda files: as_tensors(*(np.concatenate(a) for a in zip(*[batch(d / f) for f in files])))
        train = read(TRAIN_FILES)
        train, val = split_off(*train, self.val_size, self.split_seed)
        return {"train": train, "val": val, "test": read(TEST_FILES)}

    def _key_params(self):
        return {"val_size": self.val_size, "split_seed": self.split_seed}
