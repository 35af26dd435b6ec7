"""Tests of diffexp.metrics: Fréchet/KID/IS maths against closed forms and reference implementations,
constant-memory accumulation, extractors (Inception stand-in end to end, classifier on digits),
reference-statistics caching, provenance keys, configs and DDP reduction."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import free_port
from diffexp.metrics import (  # (imports diffexp first: torchvision patch before torchmetrics)
    INCEPTION_FILENAME,
    ClassifierExtractor,
    FeatureAccumulator,
    FeatureExtractor,
    FeatureStats,
    InceptionExtractor,
    RandomExtractor,
    build_extractor,
    compute_metrics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    keyed_metrics,
    make_inception_standin,
    polynomial_mmd2,
    provenance_key,
    psd_sqrt,
    reference_stats,
)
from diffexp.metrics.utils import file_sha256

CONF = Path(__file__).resolve().parents[1] / "conf" / "extractor"


# ----------------------------------------------------------------------------------- fixtures
class TensorDM:
    """Minimal stand-in for the data-module contract (tensors(split), cache_key(split), num_classes)."""

    def __init__(self, splits: dict, name: str = "synthetic", num_classes: int | None = 10):
        self.splits, self.name, self.num_classes = splits, name, num_classes
        x = next(iter(splits.values()))[0]
        self.data_shape, self.data_range = tuple(x.shape[1:]), (-1.0, 1.0)
        self.calls = 0

    def tensors(self, split):
        self.calls += 1
        return self.splits[split]

    def cache_key(self, split):
        return f"{self.name}-{split}-v1"


@pytest.fixture(scope="module")
def digits_dm():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16).mul(2).sub(1).unsqueeze(1)  # (1797, 1, 8, 8) in [-1, 1]
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return TensorDM({"train": (x[tr], y[tr]), "test": (x[te], y[te])}, name="digits8")


class IdentityExtractor(FeatureExtractor):
    """Features = the flattened input (images shaped (B, D, 1, 1)), no preprocessing: lets the FID
    pipeline be checked against the Gaussian closed form."""

    name = "identity"

    def __init__(self, d: int):
        super().__init__()
        self.num_features, self.num_classes = d, None
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.weights_hash = "0" * 12
        self.calls = 0

    def preprocess(self, x):
        return x.double().flatten(1)

    def extract(self, x):
        self.calls += 1
        return x, None


def gaussian_sampler(mean, cov):
    """sample_fn(seeds): one draw of N(mean, cov) per seed, shaped (B, D, 1, 1) (batch-size independent)."""
    chol = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    mean = torch.as_tensor(mean, dtype=torch.float64)

    def fn(seeds):
        z = torch.stack([torch.randn(len(mean), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                         for s in seeds])
        return (mean + z @ chol.T)[:, :, None, None]

    return fn


def random_spd(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64))


# --------------------------------------------------------------------------------------- FID maths
def test_frechet_closed_form_diagonal_and_scipy():
    # diagonal covariances: d² = ‖Δμ‖² + Σ (√a_i − √b_i)²
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    a, b = t(1.0, 2.0, 0.5, 4.0), t(3.0, 0.25, 0.5, 1.0)
    m1, m2 = t(0.0, 1.0, -1.0, 2.0), t(1.0, 1.0, 0.0, -1.0)
    expected = ((m1 - m2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(float(expected), rel=1e-10)
    # non-commuting covariances: against scipy's sqrtm of Σ1 Σ2
    from scipy.linalg import sqrtm

    s1, s2 = random_spd(6, 1), random_spd(6, 2, scale=2.0)
    mu1, mu2 = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    ref = 6.0 + np.trace(s1.numpy() + s2.numpy() - 2 * sqrtm(s1.numpy() @ s2.numpy()).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2, cov2_sqrt=psd_sqrt(s2)) == pytest.approx(ref, rel=1e-8)
    assert torch.allclose(psd_sqrt(s2) @ psd_sqrt(s2), s2, atol=1e-12)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


def test_fid_of_sampled_gaussians_matches_closed_form(tmp_path):
    """Whole pipeline (reference_stats + compute_metrics, identity extractor) vs the analytic FID."""
    d, n = 3, 40_000
    s1, s2 = random_spd(d, 3), random_spd(d, 4, scale=1.5)
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64)
    exact = frechet_distance(m1, s1, m2, s2)
    real_x = gaussian_sampler(m1, s1)(list(range(10**6, 10**6 + n)))
    dm = TensorDM({"test": (real_x, torch.zeros(n, dtype=torch.long))}, num_classes=None)
    ext = IdentityExtractor(d)
    real = reference_stats(dm, "test", ext, cache_dir=tmp_path, kid_max_samples=0, batch_size=5000)
    res = compute_metrics(gaussian_sampler(m2, s2), n, ext, real, batch_size=5000, metrics=("fid",), data_range=None)
    # Tolerance from the sample size (delta method): FID = ‖Δμ‖² + f(Σ1, Σ2) with ∂f/∂Σ2 = G2 =
    # I − Σ1^½ (Σ1^½ Σ2 Σ1^½)^−½ Σ1^½ (G1 symmetric in roles). For Gaussian data Var⟨G, Ŝ⟩ = 2 tr(GΣGΣ)/n,
    # Var(‖Δμ̂‖²) ≈ 4 Δμᵀ(Σ1+Σ2)Δμ/n, bias ≈ tr(Σ1+Σ2)/n. Allow 5 sd + bias.
    def mpow(m, p):
        lam, v = torch.linalg.eigh(m)
        return (v * lam ** p) @ v.T

    def grad(sa, sb):  # ∂f/∂sb
        r = mpow(sa, 0.5)
        return torch.eye(d, dtype=torch.float64) - r @ mpow(r @ sb @ r, -0.5) @ r

    g1, g2 = grad(s2, s1), grad(s1, s2)
    dmu = m2 - m1
    var = (4 * float(dmu @ (s1 + s2) @ dmu) + 2 * float((g1 @ s1 @ g1 @ s1).trace() + (g2 @ s2 @ g2 @ s2).trace())) / n
    tol = 5 * math.sqrt(var) + float((s1 + s2).trace()) / n
    assert abs(res["fid"] - exact) < tol, (res["fid"], exact, tol)


def test_running_sums_equal_one_shot_and_batch_size_invariance():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(600, 16, generator=g) * 3 + 1
    one = FeatureStats.from_features(f)
    assert torch.allclose(one.mu, torch.from_numpy(f.double().numpy().mean(0)), atol=1e-12)
    assert torch.allclose(one.cov, torch.from_numpy(np.cov(f.double().numpy().T)), atol=1e-10)
    ref_fid = frechet_distance(one.mu, one.cov, torch.zeros(16), torch.eye(16))
    for bs in (1, 7, 64):
        acc = FeatureAccumulator(16)
        for chunk in f.split(bs):
            acc.update(chunk)
        st = acc.statistics()
        assert st.n == 600 and torch.allclose(st.cov, one.cov, atol=1e-10)
        assert frechet_distance(st.mu, st.cov, torch.zeros(16), torch.eye(16)) == pytest.approx(ref_fid, rel=1e-9)
    assert frechet_distance(one.mu, one.cov, one.mu, one.cov) < 1e-8  # FID of a set with itself


def test_compute_metrics_batch_size_invariant_and_provenance():
    ext = RandomExtractor(num_features=16, num_classes=10, seed=1)
    x_real = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dm = TensorDM({"test": (x_real, torch.zeros(300, dtype=torch.long))})
    acc = FeatureAccumulator(16, 10)
    acc.update(*ext(x_real))
    real = acc.statistics()

    def sample_fn(seeds):  # per-seed "sampler": images depend only on their seed
        return torch.stack([torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(s)) * 2.2 - 1.1
                            for s in seeds])

    kw = dict(kid_subset_size=50, kid_subsets=10, is_splits=5, sampler="ddim-50", nfe=50, ema=True)
    r1 = compute_metrics(sample_fn, 200, ext, real, batch_size=16, **kw)
    r2 = compute_metrics(sample_fn, 200, ext, real, batch_size=200, **kw)
    for k in ("fid", "kid", "is"):
        assert r1[k] == pytest.approx(r2[k], rel=1e-6, abs=1e-9)
    assert r1["fid"] > 0 and 1.0 <= r1["is"] <= 10.0
    assert (r1["n_gen"], r1["n_real"], r1["extractor"], r1["extractor_hash"]) == (200, 300, "random", ext.weights_hash)
    assert (r1["sampler"], r1["nfe"], r1["ema"]) == ("ddim-50", 50, True)
    # One key format (provenance_key): the reference split is unknown here (statistics without meta).
    h6 = ext.weights_hash[:6]
    keyed = keyed_metrics(r1)
    assert keyed[f"fid/random-{h6}/n200/ddim-50/ema/ref-unknown-n300"] == r1["fid"]
    assert set(keyed) == {f"{m}/random-{h6}/n200/ddim-50/ema/ref-unknown-n300" for m in ("fid", "kid", "kid_std", "is", "is_std", "confident", "class_entropy")}
    other = {**r1, "real_split": "test", "weights": "raw", "guidance_scale": 3.0}
    assert provenance_key("kid", other) == f"kid/random-{h6}/n200/ddim-50-cfg3/raw/ref-test-n300"
    assert dm.calls == 0


def test_fid_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Ident(nn.Module):
        num_features = 8

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=g), torch.randn(300, 8, generator=g) * 1.3 + 0.4
    tm = FrechetInceptionDistance(feature=Ident())
    tm.update(a, real=True)
    tm.update(b, real=False)
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    assert frechet_distance(sb.mu, sb.cov, sa.mu, sa.cov) == pytest.approx(float(tm.compute()), rel=1e-4)


# --------------------------------------------------------------------------------------------- KID
def test_kid_formula_and_behaviour():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(6)) / (7 * 6)
    assert polynomial_mmd2(x, y) == pytest.approx(float(xx + yy - 2 * xy), rel=1e-10)

    a, b = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    same, same_std, m = kernel_inception_distance(a, b, subset_size=200, subsets=20)
    assert m == 200 and abs(same) < 2 * same_std + 1e-3  # unbiased: ≈ 0 for one distribution
    diff, diff_std, _ = kernel_inception_distance(a, b + 1.0, subset_size=200, subsets=20)
    assert diff > 0.1 and diff > 10 * diff_std + abs(same)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Ident(nn.Module):
        num_features = 6

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(120, 6, generator=g), torch.randn(120, 6, generator=g) + 0.3
    tm = KernelInceptionDistance(feature=Ident(), subsets=1, subset_size=120)  # one subset = all: permutation-free
    tm.update(a, real=True)
    tm.update(b, real=False)
    assert kernel_inception_distance(b, a, subset_size=120, subsets=1)[0] == pytest.approx(float(tm.compute()[0]),
                                                                                          rel=1e-4)


# ---------------------------------------------------------------------------------------------- IS
def test_inception_score_bounds_and_reference():
    k, splits = 10, 5
    assert inception_score(torch.zeros(500, k), splits)[0] == pytest.approx(1.0, abs=1e-12)  # uniform -> 1
    labels = (torch.arange(500) // splits) % k  # sample i -> split i mod S: every split gets each class 10x
    onehot = nn.functional.one_hot(labels, k).float() * 100.0
    assert inception_score(onehot, splits)[0] == pytest.approx(k, rel=1e-6)  # balanced confident -> K
    rnd = torch.randn(500, k, generator=torch.Generator().manual_seed(0)) * 3
    score, std = inception_score(rnd, splits)
    assert 1.0 < score < k and std >= 0
    # torch-fidelity (contiguous splits, no shuffle) on the same samples regrouped to our i mod S splits
    from torch_fidelity.metric_isc import isc_features_to_metric

    ref = isc_features_to_metric(rnd, splits=splits, shuffle=False)
    ours = inception_score(rnd.reshape(splits, -1, k).transpose(0, 1).reshape(-1, k), splits)
    assert ours[0] == pytest.approx(ref["inception_score_mean"], rel=1e-5)
    assert ours[1] == pytest.approx(ref["inception_score_std"], rel=1e-4, abs=1e-7)


# -------------------------------------------------------------------------------------- extractors
def test_inception_standin_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILENAME
    make_inception_standin(path, seed=0)
    sd = torch.load(path, weights_only=True)
    assert len(sd) == 566 and tuple(sd["fc.weight"].shape) == (1008, 2048)
    ext = InceptionExtractor()  # found through $TORCH_HOME
    assert ext.weights_path == str(path) and ext.weights_hash == file_sha256(path)
    ext.train()
    assert not any(m.training for m in ext.modules())  # cannot be put in train mode
    levels = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x = levels / 127.5 - 1  # grey images on the 8-bit grid, DATA convention [-1, 1]
    u = ext.preprocess(x)
    assert u.dtype == torch.uint8 and u.shape == (3, 3, 8, 8) and torch.equal(u[:, 0], levels[:, 0].to(torch.uint8))
    f, logits = ext(x)
    assert f.shape == (3, 2048) and logits.shape == (3, 1008) and torch.isfinite(f).all() and f.std() > 0
    # uint8 input: a perturbation below half a grey level gives the same network input
    jitter = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9 / 127.5
    assert torch.equal(ext.preprocess(x + jitter), u)
    # end to end: reference stats + compute_metrics with the stand-in
    dm = TensorDM({"test": (x, torch.zeros(3, dtype=torch.long))})
    real = reference_stats(dm, "test", ext, cache_dir=tmp_path / "cache", batch_size=2)
    assert real.n == 3 and torch.allclose(real.mu, f.double().mean(0), atol=1e-5)  # same features as above
    res = compute_metrics(lambda s: x[: len(s)].flip(-1), 2, ext, real, batch_size=2, kid_subset_size=2,
                          kid_subsets=2, is_splits=1)
    assert math.isfinite(res["fid"]) and res["fid"] > 0 and 1.0 <= res["is"] <= 1008
    assert res["extractor"] == "inception" and res["n_real"] == 3 and res["n_gen"] == 2


def test_inception_missing_weights_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    expected = tmp_path / "th" / "hub" / "checkpoints" / INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError) as err:
        InceptionExtractor()
    assert str(expected) in str(err.value) and INCEPTION_FILENAME in str(err.value)
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        InceptionExtractor(weights_path=tmp_path / "elsewhere.pth")
    assert not expected.exists()  # nothing was downloaded


def test_extractor_configs(tmp_path, monkeypatch, digits_dm):
    from omegaconf import OmegaConf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "none"))
    ext = build_extractor(OmegaConf.load(CONF / "random.yaml"))
    assert isinstance(ext, RandomExtractor) and ext.num_features == 64
    assert ext.weights_hash == RandomExtractor(num_features=64, num_classes=10, seed=0).weights_hash  # fixed seed
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILENAME):
        build_extractor(OmegaConf.load(CONF / "inception.yaml"))
    cfg = OmegaConf.load(CONF / "classifier.yaml")
    assert cfg.name == "classifier" and cfg.arch == "small_cnn"
    with pytest.raises(ValueError, match="data module"):
        build_extractor(cfg)


def test_reference_stats_cache_reuse(tmp_path):
    ext = IdentityExtractor(4)
    x = torch.randn(500, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    dm = TensorDM({"train": (x, torch.zeros(500, dtype=torch.long))})
    s1 = reference_stats(dm, "train", ext, n=300, cache_dir=tmp_path, batch_size=64)
    path = Path(s1.meta["path"])
    assert path.is_file() and s1.n == 300 and not s1.meta["cached"]
    for part in ("synthetic-train-v1", "train", "identity-000000000000", "n300"):
        assert part in path.name
    calls, mtime = ext.calls, os.stat(path).st_mtime_ns
    s2 = reference_stats(dm, "train", ext, n=300, cache_dir=tmp_path)
    assert ext.calls == calls and dm.calls == 1 and os.stat(path).st_mtime_ns == mtime  # not recomputed
    assert s2.meta["cached"] and torch.equal(s1.cov, s2.cov) and torch.equal(s1.features, s2.features)
    s3 = reference_stats(dm, "train", ext, n=None, cache_dir=tmp_path)  # other n: other file
    assert s3.n == 500 and ext.calls > calls and Path(s3.meta["path"]) != path


def test_classifier_on_digits(tmp_path, digits_dm, monkeypatch):
    ext = ClassifierExtractor.from_datamodule(digits_dm, cache_dir=tmp_path, min_steps=150, min_accuracy=0.9)
    info = ext.info
    assert info["test_accuracy"] > 0.9 and info["epochs"] == 14
    meta = Path(info["path"]).with_suffix(".json")
    assert meta.is_file() and meta.name == "digits8-train-v1-small_cnn-auto150m4-s0.json" and ext.weights_hash == info["weights_sha256"]
    # cached: a second build must not train again
    import diffexp.metrics.classifier as clf

    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = ClassifierExtractor.from_datamodule(digits_dm, cache_dir=tmp_path, min_steps=150)
    assert again.weights_hash == ext.weights_hash
    x_test = digits_dm.splits["test"][0]
    f1, l1 = ext(x_test[:20])
    f2, l2 = again(x_test[:20])
    assert torch.allclose(f1, f2) and l1.shape == (20, 10) and f1.shape == (20, ext.num_features)
    # FID(train, test digits) is far below FID(train, noise)
    real = reference_stats(digits_dm, "train", ext, cache_dir=tmp_path)
    kw = dict(batch_size=100, kid_subset_size=200, kid_subsets=20)
    good = compute_metrics(lambda s: x_test[s], len(x_test), ext, real, **kw)
    noise = compute_metrics(lambda s: torch.rand(len(s), 1, 8, 8, generator=torch.Generator().manual_seed(s[0])) * 2 - 1,
                            len(x_test), ext, real, **kw)
    assert good["fid"] < 0.1 * noise["fid"], (good["fid"], noise["fid"])
    assert good["kid"] < 0.1 * noise["kid"] and good["is"] > 5.0


# --------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    ext = RandomExtractor(num_features=8, num_classes=10, seed=2)
    x_real = torch.rand(61, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dm = TensorDM({"test": (x_real, torch.zeros(61, dtype=torch.long))})
    real = reference_stats(dm, "test", ext, cache_dir=out_dir, batch_size=16)
    res = compute_metrics(_seeded_images, 61, ext, real, batch_size=8, kid_subset_size=61, kid_subsets=1, is_splits=4)
    torch.save({"n_real": real.n, "res": res}, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _seeded_images(seeds):
    return torch.stack([torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(s)) - 0.8 for s in seeds])


@pytest.mark.ddp
def test_ddp_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    port = free_port()
    # both sets have 61 samples and KID uses one subset of 61: KID is then independent of the order
    # in which the ranks' features were gathered; FID/IS sums are order-free anyway
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True, start_method="fork")
    ext = RandomExtractor(num_features=8, num_classes=10, seed=2)
    x_real = torch.rand(61, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real = reference_stats(TensorDM({"test": (x_real, torch.zeros(61, dtype=torch.long))}), "test", ext,
                           cache_dir=tmp_path / "single")
    single = compute_metrics(_seeded_images, 61, ext, real, batch_size=8, kid_subset_size=61, kid_subsets=1, is_splits=4)
    for rank in (0, 1):
        got = torch.load(tmp_path / "ddp" / f"rank{rank}.pt", weights_only=False)
        assert got["n_real"] == 61 and got["res"]["n_gen"] == 61 == single["n_gen"]
        for k in ("fid", "kid", "is", "is_std"):
            assert got["res"][k] == pytest.approx(single[k], rel=1e-6, abs=1e-9), k


def test_confidence_counts_and_balance():
    f = torch.randn(6, 3)
    logits = torch.tensor([[10., 0, 0], [0, 10., 0], [0, 0, 10.], [1., 1, 1], [10., 0, 0], [0, 0.5, 0]])
    acc = FeatureAccumulator(3, 3, kid_max_samples=0)
    acc.update(f[:3], logits[:3])
    acc.update(f[3:], logits[3:])
    c = acc.statistics().confidence()
    assert c["confident"] == 4 / 6 and c["confident_threshold"] == 0.9
    assert c["class_counts"] == [3, 2, 1]
    p = torch.tensor([3, 2, 1.], dtype=torch.float64) / 6
    assert math.isclose(c["class_entropy"], float(-(p * p.log()).sum() / math.log(3)), rel_tol=1e-9)
