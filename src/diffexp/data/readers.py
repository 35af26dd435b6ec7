"""Readers (and tiny writers, for tests) of the standard on-disk dataset formats.

- idx (LeCun's MNIST format, also Fashion-MNIST): big-endian header ``0x0000 <dtype> <ndim>``, then
  ``ndim`` big-endian uint32 sizes, then the raw array. Files may be gzip-compressed (``.gz``).
- ``mnist.pkl.gz``: the classic pickle ``(train, valid, test)`` of ``(float32 images/256, int64 labels)``.
- CIFAR-10 python batches: pickled dicts with ``data`` (N, 3072) uint8 in CHW order and ``labels``.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from diffexp.errors import UserError, unreadable

# idx type codes -> numpy dtypes (big-endian where it matters)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are missing; the message says what was looked for, where, and how to get it, in
    two lines (folders once, file names once): ``data.root=<root>: <dataset> data not found in <folders>
    (looked for <names>)`` then the hint."""

    def __init__(self, dataset: str, searched: list[str | Path], hint: str, root: str | Path | None = None):
        self.dataset, self.searched, self.hint = dataset, [str(p) for p in searched], hint
        folders = list(dict.fromkeys(str(Path(p).parent) for p in self.searched))
        names = list(dict.fromkeys(Path(p).name for p in self.searched))
        where = f"data.root={root}: " if root is not None else ""
        super().__init__(f"{where}{dataset} data not found in {', '.join(folders)} (looked for {', '.join(names)})."
                         f"\n{hint}")


@contextmanager
def reading(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn a reader's failure on ``path`` (truncated gzip, bad pickle, bad header, I/O error, undecodable
    image) into a :class:`~diffexp.errors.DataError` that names the file."""
    try:
        yield
    except UserError:
        raise
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, pickle.UnpicklingError, zlib.error) as e:
        raise unreadable(path, e, what) from e


def _open(path: str | Path):
    path = str(path)
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally ``.gz``) into a numpy array of its stored shape and type."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic {data[:4]!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    arr = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzip-compressed when the name ends in ``.gz``)."""
    array = np.asarray(array)
    code = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = array.astype(np.dtype(_IDX_DTYPES[code]), copy=False).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def find_file(dirs: list[Path], names: list[str]) -> Path | None:
    """The first existing ``dir/name`` (dirs outer loop, names inner loop), else None."""
    for d in dirs:
        for n in names:
            if (Path(d) / n).is_file():
                return Path(d) / n
    return None


@functools.lru_cache(maxsize=2)
def _load_mnist_pkl_cached(path: str, mtime_ns: int, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    out = {}
    for name, (x, y) in zip(("train", "valid", "test"), splits):
        # stored as uint8/256 in float32 (exact), so round(x*256) recovers the bytes exactly
        u8 = np.rint(np.asarray(x, np.float32) * 256.0).astype(np.uint8)
        u8.setflags(write=False)
        y = np.asarray(y, np.int64)
        y.setflags(write=False)
        out[name] = (u8.reshape(-1, 28, 28), y)
    return out


def load_mnist_pkl(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``mnist.pkl.gz`` -> {'train' (50k), 'valid' (10k), 'test' (10k)}: (uint8 (N,28,28), int64 (N,)).

    Cached in memory per (path, mtime, size): the file takes about 1.5 s to unpickle. Arrays are read-only.
    """
    st = os.stat(path)
    return _load_mnist_pkl_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 (N,3,32,32), int64 (N,))."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    x = np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d["labels"], np.int64)


def write_cifar_batch(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write a CIFAR-10-format python batch (for tests): x uint8 (N,3,32,32), y int labels."""
    with open(path, "wb") as f:
        pickle.dump({"batch_label": Path(path).name, "data": np.asarray(x, np.uint8).reshape(len(x), -1),
                     "labels": [int(v) for v in y], "filenames": [f"{i}.png" for i in range(len(x))]}, f)
