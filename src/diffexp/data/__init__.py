"""Data modules (LightningDataModules) of diffexp; see docs/CONTRACTS.md "Data module contract".

Every module exposes ``data_shape``, ``num_classes``, ``data_range``, ``name`` after construction,
``tensors(split)`` and ``cache_key(split)``; batches are ``(x float32, y int64)``.
"""

from diffexp.data.base import ArrayDataset, BaseDataModule, EpochSampler, resize_images, split_off
from diffexp.data.cifar10 import CIFAR10DataModule
from diffexp.data.digits import DigitsDataModule
from diffexp.data.image_folder import ImageFolderDataModule
from diffexp.data.mnist import FashionMNISTDataModule, MNISTDataModule, find_mnist
from diffexp.data.readers import (
    DatasetNotFoundError,
    load_mnist_pkl,
    read_cifar_batch,
    read_idx,
    write_cifar_batch,
    write_idx,
)
from diffexp.data.toy2d import Toy2DDataModule

__all__ = [
    "ArrayDataset", "BaseDataModule", "CIFAR10DataModule", "DatasetNotFoundError", "DigitsDataModule",
    "EpochSampler", "FashionMNISTDataModule", "ImageFolderDataModule", "MNISTDataModule", "Toy2DDataModule",
    "find_mnist", "load_mnist_pkl", "read_cifar_batch", "read_idx", "resize_images", "split_off", "write_cifar_batch", "write_idx",
]
