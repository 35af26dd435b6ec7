"""scikit-learn's ``load_digits``: 1797 images, 1×8×8, values 0..16, 10 classes (no download needed)."""

from __future__ import annotations

import torch

from diffexp.data.base import BaseDataModule, split_off


class DigitsDataModule(BaseDataModule):
    """8×8 digits as float32 ``x/8 - 1`` in [-1, 1]. No official split: seeded val/test subsets.

    Args:
        val_size, test_size: examples (int) or fractions held out for validation / test.
        split_seed: seed of the held-out subsets (None: the last examples).
        **kwargs: loader options of :class:`~diffexp.data.base.BaseDataModule`.
    """

    name = "digits"
    data_shape = (1, 8, 8)
    num_classes = 10
    div = 8.0  # 0..16 -> [-1, 1]

    def __init__(self, val_size: int | float = 200, test_size: int | float = 200, split_seed: int | None = 0, **kwargs):
        super().__init__(**kwargs)
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed

    def _load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.round()).to(torch.uint8).unsqueeze(1)
        y = torch.from_numpy(d.target).long()
        rest, test = split_off(x, y, self.test_size, self.split_seed)
        seed = None if self.split_seed is None else self.split_seed + 1
        train, val = split_off(*rest, self.val_size, seed)
        return {"train": train, "val": val, "test": test}

    def _key_params(self):
        return {"val_size": self.val_size, "test_size": self.test_size, "split_seed": self.split_seed}
