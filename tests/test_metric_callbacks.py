"""The metrics and NLL callbacks: keys with provenance, two metric callbacks side by side, 2-D data
(identity features, sliced Wasserstein against its closed form), the NLL bound decreasing with training,
and the sharding of samples / NLL chunks over DDP ranks."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys

import pytest
import torch

from conftest import compose, free_port
from diffexp.cli.train import train
from diffexp.metrics import FeatureStats, compute_metrics, make_extractor, sliced_wasserstein
from diffexp.metrics.provenance import sampler_family
from diffexp.metrics.selection import PointsExtractor, make_metrics_extractor, resolve_metrics

TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.dropout=0.0"]
QUIET = ["print_config=false", "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]


def read_csv_metrics(run_dir):
    """{column: [(step, value), ...]} from the CSV logger's metrics.csv."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None) and k not in ("step", "epoch"):
                    out.setdefault(k, []).append((int(row["step"]), float(v)))
    return out


# ------------------------------------------------------------------------------- unit: 2-D metrics
def test_sliced_wasserstein_matches_closed_forms():
    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    # Scale change: every projection of N(0, I) vs N(0, 4I) is N(0,1) vs N(0,4), W2 = |1 - 2| = 1 exactly.
    y = 2 * torch.randn(n + 1000, 2, generator=g, dtype=torch.float64)  # unequal sizes use the quantile grid
    assert sliced_wasserstein(x, y, projections=64) == pytest.approx(1.0, abs=0.06)
    # Shift: SW2^2 = E(θᵀμ)^2 = |μ|^2 / D. Errors: mean shift std ≈ |μ| sqrt(2/n) ≈ 0.04, 1000 directions ≈ 0.04.
    mu = torch.tensor([1.5, -1.0], dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64) + mu
    assert sliced_wasserstein(x, z, projections=1000) ** 2 == pytest.approx(mu.square().sum().item() / 2, abs=0.2)
    # Same distribution: close to 0 (finite-sample W2 of 1-D Gaussians at n=4000 is ~0.03).
    same = torch.randn(n, 2, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, same) < 0.08
    assert sliced_wasserstein(x, x) == 0.0


def test_points_extractor_and_metric_resolution():
    ext = make_metrics_extractor("classifier", type("DM", (), {"data_shape": (2,), "num_classes": 8})())
    assert isinstance(ext, PointsExtractor) and ext.tag.startswith("points-") and ext.num_classes is None
    f, logits = ext(torch.ones(3, 2))
    assert f.shape == (3, 2) and logits is None
    with pytest.raises(ValueError, match="points"):
        ext(torch.ones(3, 1, 2, 2))
    assert resolve_metrics(None, points=True) == ("fid", "kid", "swd")
    assert resolve_metrics(None, points=False) == ("fid", "kid", "is", "confident")
    with pytest.warns(UserWarning, match="IS needs"):
        assert resolve_metrics(["fid", "is"], points=True) == ("fid",)
    with pytest.raises(ValueError, match="unknown"):
        resolve_metrics(["fid", "lpips"], points=False)
    assert [sampler_family(s) for s in ("ddim-50", "ddim-10-eta1", "heun-18", "langevin-10x100", "ddpm")] == \
        ["ddim", "ddim-eta1", "heun", "langevin-10x100", "ddpm"]


def test_classifier_extractor_on_unlabelled_images_suggests_alternatives():
    dm = type("DM", (), {"data_shape": (1, 8, 8), "num_classes": None, "name": "faces"})()
    partial = functools.partial(make_extractor, name="classifier")
    with pytest.raises(ValueError, match=r"no labels.*extractor=inception.*extractor=random"):
        make_metrics_extractor(partial, dm)


def _noise_points(seeds):
    """A seed-determined sample per seed (what samplers guarantee), shifted so the FID is > 0."""
    return torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(s)) + 0.5 for s in seeds])


def test_samples_depend_on_their_seed_only_and_ranks_take_disjoint_indices(monkeypatch):
    real = FeatureStats.from_features(torch.randn(500, 2, generator=torch.Generator().manual_seed(1)),
                                      kid_max_samples=500)
    ext = PointsExtractor(2)
    kw = dict(metrics=("fid", "kid", "swd"), seed_offset=7, data_range=None, kid_subset_size=50, kid_subsets=5)
    a = compute_metrics(_noise_points, 101, ext, real, batch_size=8, **kw)
    b = compute_metrics(_noise_points, 101, ext, real, batch_size=33, **kw)
    assert a["n_gen"] == 101 and a["fid"] > 0.1
    for m in ("fid", "kid", "swd"):
        assert a[m] == pytest.approx(b[m], rel=1e-9, abs=1e-12), m
    # Under DDP rank r of W draws global indices r, r+W, ...: seeds offset + r, offset + r + W, ...
    import diffexp.metrics.evaluate as evaluate

    seen = []
    monkeypatch.setattr(evaluate, "dist_info", lambda: (1, 3))
    compute_metrics(lambda s: (seen.extend(s), _noise_points(s))[1], 10, ext, real, batch_size=2, **kw)
    assert seen == [8, 11, 14]


# ----------------------------------------------------------------- digits: two metric callbacks, CSV
@pytest.fixture(scope="module")
def digits_metrics_run(tmp_path_factory):
    """4 steps on 8x8 digits with two metric callbacks (DDIM-5 and DPM-Solver++ 3 steps), random extractor."""
    tmp = tmp_path_factory.mktemp("digits_metrics")
    common = ["num_samples=16", "batch_size=8", "every_n_steps=2", "num_real=64", "kid_subset_size=8",
              "kid_subsets=10"]
    cfg = compose("train", [
        "data=digits", "data.subset=128", "data.batch_size=16", *TINY_UNET, "schedule.num_timesteps=100",
        "sampler=ddim", "sampler.steps=5", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "logger=csv", "extractor=random",
        "callbacks=[default,metrics]", "callbacks.sample.every_n_steps=0",
        "+callbacks@callbacks.metrics_dpm=metrics", "+sampler@callbacks.metrics_dpm.sampler=dpmpp_2m",
        "callbacks.metrics_dpm.sampler.steps=3", "callbacks.model_checkpoint.every_n_train_steps=4",
        f"paths.cache_dir={tmp / 'cache'}", *QUIET,
        *[f"callbacks.metrics.{o}" for o in common], *[f"callbacks.metrics_dpm.{o}" for o in common]], tmp)
    metrics = train(cfg)
    return tmp / "run", metrics, tmp / "cache"


def test_metric_callbacks_log_keys_with_provenance(digits_metrics_run):
    run, final, cache = digits_metrics_run
    logged = read_csv_metrics(run)
    tag = "random-" + RandomHash.get()
    for sampler in ("ddim-5", "dpmpp_2m-3"):
        suffix = f"{tag}/n16/ddpm/{sampler}/ema/ref-test-n64"
        for metric in ("fid", "kid", "is"):
            key = f"{metric}/{suffix}"
            assert key in logged, (key, sorted(k for k in logged if "/" in k))
            assert [s for s, _ in logged[key]] == [2, 4], logged[key]  # every 2 steps; the end (4) not twice
            assert all(math.isfinite(v) for _, v in logged[key])
            assert key in final  # also in trainer.callback_metrics -> metrics.json / optimized_metric
        assert all(v > 0 for _, v in logged[f"fid/{suffix}"])
    # The two callbacks' samples differ (different samplers), so their FIDs do.
    assert logged[f"fid/{tag}/n16/ddpm/ddim-5/ema/ref-test-n64"] != logged[f"fid/{tag}/n16/ddpm/dpmpp_2m-3/ema/ref-test-n64"]
    # Full provenance per evaluation, and per key family in provenance.json and the logged hparams.
    records = [json.loads(line) for line in (run / "metrics" / "evaluations.jsonl").read_text().splitlines()]
    assert sorted((r["sampler"], r["step"]) for r in records) == [("ddim-5", 2), ("ddim-5", 4), ("dpmpp_2m-3", 2),
                                                                  ("dpmpp_2m-3", 4)]
    for r in records:
        assert r["n_gen"] == 16 and r["n_real"] == 64 and r["weights"] == "ema" and r["extractor"] == "random"
        assert r["nfe"] == int(r["sampler"].rsplit("-", 1)[1]) and len(r["extractor_hash"]) == 12
        assert r["real"]["split"] == "test" and r["real"]["path"].startswith(str(cache))
        assert r["seeds"] == {"offset": 0, "first": 0, "last": 15, "rule": r["seeds"]["rule"]}
        assert all(f"/n16/ddpm/{r['sampler']}/" in k for k in r["keys"])
    prov = json.loads((run / "metrics" / "provenance.json").read_text())
    assert set(prov) == {f"{tag}/n16/ddpm/ddim-5/ema/ref-test-n64", f"{tag}/n16/ddpm/dpmpp_2m-3/ema/ref-test-n64"}
    assert prov[f"{tag}/n16/ddpm/dpmpp_2m-3/ema/ref-test-n64"]["sampler_config"]["steps"] == 3
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert f"metrics/{tag}/n16/ddpm/ddim-5/ema/ref-test-n64" in hparams and "extractor_hash" in hparams
    # Reference statistics computed once and shared by both callbacks (same split, extractor and n).
    assert len(list((cache / "refstats").glob("*.pt"))) == 1


class RandomHash:
    @staticmethod
    def get() -> str:
        from diffexp.metrics import RandomExtractor

        return RandomExtractor(num_features=64, num_classes=10, seed=0).weights_hash[:6]


# -------------------------------------------------------------------- toy 2-D: NLL and point metrics
def test_nll_bound_finite_and_decreasing_with_training_and_point_metrics(tmp_path):
    """Toy 2-D: the bound (continuous convention) after 150 steps is below the one after 10; the per-t
    breakdown is written; the metrics callback uses identity features and logs the SWD."""
    cfg = compose("train", [
        "experiment=toy2d", "schedule.num_timesteps=50", "model.hidden_dim=64", "model.num_blocks=2",
        "trainer.max_steps=150", "trainer.val_check_interval=150", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=50", "lr_scheduler.warmup_steps=10", "logger=csv", "callbacks=with_eval",
        "callbacks.sample.every_n_steps=0", "callbacks.sample.at_end=false",
        "callbacks.model_checkpoint.every_n_train_steps=1000",
        "callbacks.nll.every_n_steps=10", "callbacks.nll.num_examples=128", "callbacks.nll.batch_size=64",
        "callbacks.nll.ema=false",
        "callbacks.metrics.every_n_steps=10", "callbacks.metrics.num_samples=256", "callbacks.metrics.batch_size=128",
        "callbacks.metrics.kid_subset_size=100", "callbacks.metrics.kid_subsets=10", "sampler.steps=10",
        f"paths.cache_dir={tmp_path / 'cache'}", *QUIET], tmp_path)
    train(cfg)
    run = tmp_path / "run"
    logged = read_csv_metrics(run)
    key = "nll/bpd/continuous/test-n128/raw"
    bpd = dict(logged[key])
    assert sorted(bpd) == list(range(10, 151, 10)), bpd
    assert all(math.isfinite(v) for v in bpd.values())
    stderr = dict(logged["nll/bpd_stderr/continuous/test-n128/raw"])
    # Same examples and noise at every evaluation: the drop is far outside the per-example spread.
    assert bpd[150] < bpd[10] - 3 * stderr[10], (bpd, stderr)
    rec = json.loads((run / "nll" / "nll_test-n128-raw_step0000150.json").read_text())
    assert rec["convention_tag"] == "continuous" and "continuous" in rec["convention"] and not rec["discrete"]
    assert len(rec["per_t"]) == 50 and rec["num_timesteps"] == 50
    assert rec["bpd"] == pytest.approx(sum(rec["per_t"]) + rec["prior_bpd"], rel=1e-9, abs=1e-9)
    rows = (run / "nll" / "nll_test-n128-raw_step0000150_per_t.csv").read_text().splitlines()
    assert rows[0] == "t,bpd" and len(rows) == 51 and rows[1].startswith("1,")
    # 2-D metrics: identity "extractor", SWD logged at the end with provenance in the key.
    swd = [k for k in logged if k.startswith("swd/points-")]
    assert swd == [f"swd/{PointsExtractor(2).tag}/n256/ddpm/ddim-10/ema/ref-test-n2000"], swd
    swd = dict(logged[swd[0]])
    assert sorted(swd) == list(range(10, 151, 10))
    assert not any(k.startswith("is/") for k in logged)
    # Untrained samples land far off (x̂_0 = (x_T - s ε̂)/a_T amplifies errors ~150x at t=T); training fixes it.
    assert swd[150] < swd[10] / 3, swd


# ------------------------------------------------------------------------------------ DDP (gloo, 2)
def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = _ddp_payload()
        if rank == 0:
            torch.save(res, out)
    finally:
        torch.distributed.destroy_process_group()


def _ddp_payload():
    from diffexp.denoiser import Denoiser
    from diffexp.metrics.nll import evaluate_nll
    from diffexp.process import DiffusionProcess
    from diffexp.schedules import linear

    xr = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    # Built directly: FeatureStats.from_features would all-reduce (sum) the same data over both ranks.
    real = FeatureStats(n=300, mu=xr.double().mean(0), cov=torch.cov(xr.double().T), features=xr)
    res = compute_metrics(_noise_points, 37, PointsExtractor(2), real, metrics=("fid", "kid", "swd"), batch_size=5,
                          data_range=None, kid_subset_size=20, kid_subsets=5)
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    den = Denoiser(lambda x, t, y=None: net(x) * 0.1, DiffusionProcess(linear(50)), "eps", data_range=None)
    nll = evaluate_nll(den, torch.randn(11, 2, generator=torch.Generator().manual_seed(2)), batch_size=3)
    return {"fid": res["fid"], "kid": res["kid"], "swd": res["swd"], "n_gen": res["n_gen"], "bpd": nll["bpd"],
            "n": nll["n"], "per_t": nll["per_t"]}


@pytest.mark.ddp
def test_two_ranks_give_the_single_process_numbers(tmp_path):
    """Samples and NLL chunks sharded over 2 gloo ranks, features and sums reduced: the same numbers."""
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")
    ddp = torch.load(out)
    single = _ddp_payload()
    assert ddp["n_gen"] == single["n_gen"] == 37 and ddp["n"] == single["n"] == 11
    for k in ("fid", "kid", "swd", "bpd"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-6, abs=1e-9), k
    assert ddp["per_t"] == pytest.approx(single["per_t"], rel=1e-6)


if __name__ == "__main__":  # spawn workers import this module by name
    sys.exit(pytest.main([__file__, "-x", "-q"]))
