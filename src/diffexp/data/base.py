"""Shared base of all diffexp data modules: in-memory splits served a whole batch per index operation.

How batches are made: each split is one tensor ``x`` (raw storage, e.g. uint8 (N,C,H,W)) plus labels
``y``. :class:`ArrayDataset` implements ``__getitems__``, so the DataLoader's fetcher passes the
whole list of batch indices at once; the batch is one fancy-index ``x[idx]``, one conversion to
float32 in [-1, 1] and (optionally) one batched horizontal flip. ``collate_fn`` is the identity.

Shuffling and sharding: the sampler is :class:`EpochSampler`, a ``DistributedSampler`` built with the
trainer's world size and global rank (1 and 0 without a trainer). Its order is
``randperm(n, generator seeded with seed + epoch)``, and Lightning calls ``set_epoch`` every epoch, so a
resumed run sees exactly the same order. Because it *is* a ``DistributedSampler``, Lightning does not
inject its own under DDP (with or without ``use_distributed_sampler``); each rank reads a disjoint shard.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from diffexp.errors import DataError
from diffexp.resume import ResumableDataLoader
from diffexp.rng import derive_seed

SPLITS = ("train", "val", "test")


def _identity(batch):
    return batch


class ArrayDataset(Dataset):
    """A split held in memory; ``__getitems__`` returns a whole batch ``(x, y)`` from one index op.

    Output ``x = raw / div - 1`` as float32 (``div=None``: raw is already float and is returned as is),
    so uint8 pixels use ``div=127.5`` (0 -> -1, 255 -> 1 exactly). With ``hflip`` each image is mirrored
    with probability 1/2, drawn from a generator seeded by (seed, epoch, batch's first index, batch size):
    deterministic, and independent of the number of workers.

    The gather and conversion run in numpy: single-threaded, they cost ~0.1 ms per MNIST batch, whereas
    torch's 2-thread intra-op parallelism stalls for milliseconds per op on a busy 2-core machine.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, div: float | None = None, hflip: bool = False, seed: int = 0):
        assert len(x) == len(y), (x.shape, y.shape)
        self.x, self.y = x.contiguous(), y.long().contiguous()
        self._x, self._y = self.x.numpy(), self.y.numpy()  # views sharing memory
        self.div, self.hflip, self.seed, self.epoch = div, hflip, int(seed), 0

    def __len__(self) -> int:
        return len(self.x)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        i = indices.numpy() if torch.is_tensor(indices) else np.asarray(indices, dtype=np.int64)
        x = self._x.take(i, axis=0)  # a fresh copy
        if self.div is None:
            x = x.astype(np.float32, copy=False)
        else:
            x = x.astype(np.float32)
            x /= np.float32(self.div)
            x -= np.float32(1.0)
        if self.hflip and len(i):
            rng = np.random.default_rng(derive_seed(self.seed, "augment", self.epoch, int(i[0]), len(i)))
            flip = rng.random(len(i)) < 0.5
            x[flip] = x[flip][..., ::-1]
        return torch.from_numpy(x), torch.from_numpy(self._y.take(i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (order = randperm seeded by ``seed + epoch``) that also tells the dataset
    the epoch (for the augmentation stream). Works with ``num_replicas=1`` and no process group."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def count(size: int | float, n: int) -> int:
    """``size`` as a count out of ``n``: a float in (0, 1) is a fraction, otherwise an int."""
    k = int(round(size * n)) if isinstance(size, float) and 0 < size < 1 else int(size)
    if not 0 <= k <= n:
        raise DataError(f"split size {size} out of range for {n} examples (data.val_size / data.test_size: an "
                        f"integer in [0, {n}] or a fraction in (0, 1))")
    return k


def split_off(x, y, size: int | float, split_seed: int | None):
    """Split ``size`` examples off ``(x, y)`` -> ``((x_rest, y_rest), (x_part, y_part))``.

    ``split_seed=None`` takes the last ``size`` examples (e.g. MNIST's classic 50k/10k split); an int takes a
    seeded random subset. Both parts keep the original order.
    """
    n = len(x)
    k = count(size, n)
    if split_seed is None:
        perm = torch.arange(n)
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    rest, part = perm[: n - k].sort().values, perm[n - k :].sort().values
    return (x[rest], y[rest]), (x[part], y[part])


def resize_images(x: torch.Tensor, size: int, mode: str = "pad") -> torch.Tensor:
    """Resize a uint8 (N,C,H,W) batch to ``size``×``size``.

    ``mode='pad'``: when larger than the images, zero-pad centred (MNIST 28 -> 32); when smaller, resize.
    ``mode='resize'``: always antialiased bilinear interpolation, rounded back to uint8.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if mode == "pad" and size >= h and size >= w:
        return F.pad(x, ((size - w) // 2, size - w - (size - w) // 2, (size - h) // 2, size - h - (size - h) // 2))
    if mode not in ("pad", "resize"):
        raise ValueError(f"resize mode must be 'pad' or 'resize', got {mode!r}")
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class BaseDataModule(L.LightningDataModule):
    """Common machinery; subclasses set ``name``, ``data_shape``, ``num_classes`` and implement ``_load``.

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size of val/test loaders (default: ``batch_size``).
        num_workers: DataLoader workers (0: batches are made in the main process, usually fastest here).
        seed: seed of the shuffling order (``seed + epoch``) and augmentation.
        shuffle: shuffle the training split.
        drop_last: drop the last incomplete training batch.
        hflip: random horizontal flips of training batches.
        subset: use only the first ``subset`` training examples (quick runs / tests).
        val_subset: use only the first ``val_subset`` examples of the val and test splits.
        pin_memory: pin batches (default: when CUDA is available).
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
    """

    name: str = "base"
    data_shape: tuple[int, ...] = ()
    num_classes: int | None = None
    data_range: tuple[float, float] | None = (-1.0, 1.0)
    div: float | None = 127.5  # raw uint8 -> [-1, 1]; None for float data

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        hflip: bool = False,
        subset: int | None = None,
        val_subset: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
    ):
        super().__init__()
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size or batch_size)
        self.num_workers, self.seed, self.shuffle, self.drop_last = int(num_workers), int(seed), shuffle, drop_last
        self.hflip, self.subset, self.val_subset = hflip, subset, val_subset
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # --- to implement -------------------------------------------------------------------------
    def _load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Raw splits {'train', 'val'[, 'test']}: (x in raw storage, y int64). Called once."""
        raise NotImplementedError

    def _key_params(self) -> dict[str, Any]:
        """Preprocessing parameters that change the data (for :meth:`cache_key`)."""
        return {}

    # --- loading ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Nothing is downloaded; files must be present (see ``make data``)."""

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        splits = self._load()
        if "test" in splits and len(splits["test"][0]) == 0:
            del splits["test"]  # e.g. test_size=0: no test split
        for split, n in (("train", self.subset), ("val", self.val_subset), ("test", self.val_subset)):
            if n is not None and split in splits:
                x, y = splits[split]
                splits[split] = (x[: int(n)], y[: int(n)])
        for split, (x, _) in splits.items():
            if tuple(x.shape[1:]) != tuple(self.data_shape):
                raise DataError(f"data ({self.name}) {split} split: examples of shape {tuple(x.shape[1:])}, "
                                f"expected {self.data_shape}")
        self._splits = {k: (x.contiguous(), y.long().contiguous()) for k, (x, y) in splits.items()}

    def check(self, world_size: int = 1) -> None:
        """Load the data now, before the Trainer starts, and reject what cannot be trained on, each with one
        message: missing or unreadable files (named, from :meth:`setup`), an empty training split, NaN/inf
        values (bad data, named by split and example index: otherwise it surfaces later as a non-finite
        loss that looks like a learning-rate problem) and a batch larger than the training split each of
        the ``world_size`` processes reads (it would train silently on one short batch per epoch)."""
        self.setup()
        n_train = len(self._splits["train"][0]) if "train" in self._splits else 0
        if n_train == 0:
            raise DataError(f"data ({self.name}): the training split is empty; check data.* (subset, sizes, root)")
        for split, (x, _) in self._splits.items():
            if not x.is_floating_point() or len(x) == 0:
                continue  # integer storage (uint8 images) cannot hold NaN/inf
            finite = torch.isfinite(x.reshape(len(x), -1)).all(1)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten()
                raise DataError(f"bad data ({self.name}) {split} split: {len(bad)} of {len(x)} examples hold NaN/inf "
                                f"values (first: example {int(bad[0])}); fix the data (or its data.* options)")
        per_process = n_train // max(1, world_size)
        if self.batch_size > per_process:
            procs = f" split over {world_size} processes" if world_size > 1 else ""
            raise DataError(f"data.batch_size={self.batch_size} is larger than the training split ({n_train} examples"
                            f"{procs}): use data.batch_size <= {per_process}, or more data")

    @property
    def splits(self) -> tuple[str, ...]:
        self.setup()
        return tuple(s for s in SPLITS if s in self._splits)

    def _raw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.setup()
        if split not in self._splits:
            raise ValueError(f"{self.name} has no {split!r} split (available: {', '.join(self._splits)})")
        return self._splits[split]

    def dataset(self, split: str, train: bool | None = None) -> ArrayDataset:
        """The split as an :class:`ArrayDataset` (augmented when ``train`` and ``hflip``)."""
        x, y = self._raw(split)
        train = split == "train" if train is None else train
        return ArrayDataset(x, y, self.div, hflip=self.hflip and train, seed=self.seed)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split in memory: (x float32 (N, *data_shape), y int64 (N,)); no augmentation."""
        ds = self.dataset(split, train=False)
        return ds.__getitems__(torch.arange(len(ds)))

    def cache_key(self, split: str) -> str:
        """A string naming dataset, split and preprocessing, e.g. ``mnist-test-1x28x28-3f2a9c1e``."""
        params = {"name": self.name, "split": split, "shape": list(self.data_shape), **self._key_params()}
        params["subset"] = self.subset if split == "train" else self.val_subset
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.name}-{split}-{'x'.join(map(str, self.data_shape))}-{digest}"

    # --- loaders ------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1)), int(getattr(trainer, "global_rank", 0))

    def make_loader(self, split: str, train: bool | None = None) -> DataLoader:
        """A DataLoader over ``split``: shuffled/augmented/drop_last iff ``train`` (default: split == 'train')."""
        train = split == "train" if train is None else train
        ds = self.dataset(split, train)
        world, rank = self._world()
        sampler = EpochSampler(ds, num_replicas=world, rank=rank, shuffle=train and self.shuffle, seed=self.seed)
        # Training: a loader whose position in the epoch is saved in checkpoints (exact mid-epoch resume).
        return (ResumableDataLoader if train else DataLoader)(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train and self.drop_last and len(ds) // world >= self.batch_size,
            collate_fn=_identity,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self.make_loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.make_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.make_loader("test")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, data_shape={self.data_shape}, "
                f"num_classes={self.num_classes}, batch_size={self.batch_size})")

    __str__ = __repr__  # Lightning's __str__ would build (and load) every dataloader


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """numpy -> torch (copies: the cached arrays are read-only)."""
    return torch.from_numpy(np.array(x)), torch.from_numpy(np.asarray(y, np.int64).copy())
