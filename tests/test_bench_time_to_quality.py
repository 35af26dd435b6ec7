"""bench/bench_time_to_quality.py and bench_peer.py's diffexp side (bench/recipe_quality.py) on any recipe.

Fast: sampler options are overridden only where the sampler has them, and the Timer's budget is extended
through diffexp._internals. Slow (one tiny run shared by the tests below): a class-conditional latent flow recipe
(MNIST subset, ``latent=auto`` training a kl_f4_small autoencoder, DPM-Solver++(2M), CFG) through both benches — rows carry FID, KID,
confident, class entropy, sampler, NFE, guidance scale and the autoencoder's time on the time axis — and the
benchmark's sample_fn gives bit-equal images to evaluate.py's on the checkpoint of the same weights, hence the
same FID and confidence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import MNIST as MNIST_ROOT
from conftest import compose

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

MNIST = [f"data.root={MNIST_ROOT}", "data.subset=96", "data.val_subset=32", "data.batch_size=16"]
TINY = ["model.base_channels=8", "model.num_res_blocks=1", "model.attention_resolutions=[]", "model.num_groups=4",
        "model.mid_attention=false", "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
        "callbacks.model_checkpoint.every_n_train_steps=2", "~callbacks.progress_bar", "trainer.enable_model_summary=false",
        "trainer.precision=32", "logger=none"]
# The conditional latent flow-matching recipe of issue 16, sampled with DPM-Solver++(2M) and CFG.
RECIPE = ["conditional=true", "process=flow", "objective=flow_matching", "prediction=velocity", "sampler=dpmpp_2m",
          "~sampler.eta"]  # ldm_mnist sets DDIM's eta, which DPM-Solver++ does not take
N, STEPS, SCALE, BATCH = 20, 3, 1.5, 8
# latent=auto's autoencoder (diffexp.latent_auto): kl_f4_small, 3 steps.
AE = ("latent_train={autoencoder: kl_f4_small, extractor: random, trainer.max_steps: 3, trainer.val_check_interval: 3, "
      "trainer.limit_val_batches: 1, callbacks.progress_bar: null, trainer.enable_model_summary: false, "
      "callbacks.reconstruction.num_samples: 16, callbacks.reconstruction.every_n_steps: 0}")


# ---------------------------------------------------------------------------------------------- fast
def test_sampler_options_are_set_only_where_the_sampler_has_them(tmp_path):
    from recipe_quality import set_sampler_options

    cfg = compose("train", ["sampler=ddim"], tmp_path)
    assert set_sampler_options(cfg, 7, 0.5) == {"set": {"steps": 7, "eta": 0.5}, "skipped": {}}
    assert cfg.sampler.steps == 7 and cfg.sampler.eta == 0.5
    cfg = compose("train", ["sampler=dpmpp_2m"], tmp_path)
    done = set_sampler_options(cfg, 5, 1.0)
    assert done["set"] == {"steps": 5} and "eta" in done["skipped"] and "eta" not in cfg.sampler
    assert set_sampler_options(cfg, None, None) == {"set": {}, "skipped": {}} and cfg.sampler.steps == 5
    cfg = compose("train", ["sampler=langevin"], tmp_path)
    with pytest.raises(SystemExit, match="no `steps` option"):
        set_sampler_options(cfg, 5, None)


def test_time_budget_is_extended_through_internals():
    from lightning.pytorch.callbacks import Timer

    from diffexp._internals import extend_time_budget

    timer = Timer(duration="00:00:01:40")
    trainer = type("T", (), {"callbacks": [timer]})()
    assert extend_time_budget(trainer, 25.0)
    assert timer.time_remaining() == pytest.approx(125.0)  # not started: the whole (extended) budget remains
    assert not extend_time_budget(type("T", (), {"callbacks": []})(), 5.0)  # no max_time: nothing to extend
    assert not extend_time_budget(type("T", (), {"callbacks": [Timer(duration=None)]})(), 5.0)


# ---------------------------------------------------------------------------------------- the tiny run
@pytest.fixture(scope="module")
def latent_bench(tmp_path_factory):
    """bench_time_to_quality.py on the conditional latent flow recipe with ``latent=auto``: the bench trains the
    (kl_f4_small, 3-step) autoencoder first, as train.py does."""
    from bench_time_to_quality import main

    root = tmp_path_factory.mktemp("ttq")
    overrides = ["experiment=ldm_mnist", "latent=auto", AE, f"paths.cache_dir={root}/cache", *RECIPE, *MNIST, *TINY]
    out = main(["--experiment", "ldm_mnist", "--n", str(N), "--sampler-steps", str(STEPS), "--eta", "1.0",
                "--guidance-scale", str(SCALE), "--eval-every-min", "100", "--batch-size", str(BATCH), "--threads", "1",
                "--cache-dir", str(root / "cache"), "--out-dir", str(root / "out"), "--override", *overrides[1:]])
    return root, json.loads(Path(out).read_text()), overrides


@pytest.mark.slow
def test_rows_of_a_conditional_latent_recipe(latent_bench):
    root, record, _ = latent_bench
    rows = record["evaluations"]
    assert [r["step"] for r in rows] == [4]  # evaluated at the end (the first periodic evaluation is far away)
    ae = record["autoencoder"]
    folder = root / "cache" / "autoencoders" / ae["auto"]["config_hash"]  # trained by the bench, as train.py would
    assert ae["auto"]["reused"] is False and Path(ae["path"]) == (folder / "checkpoints" / "last.ckpt").resolve()
    ae_seconds = json.loads((folder / "metrics.json").read_text())["train_seconds"]
    assert ae_seconds > 0 and record["autoencoder_seconds"] == pytest.approx(ae_seconds)
    assert ae["stage_seconds"] >= ae_seconds  # this run trained it: its wall-clock covers the training
    s = record["settings"]
    assert s["latent"] and s["num_classes"] == 10 and s["process"] == "flow" and s["guidance_scale"] == SCALE
    assert s["sampler_class"] == "DPMSolverPP2MSampler" and s["nfe"] > 0
    assert s["sampler_options"]["set"] == {"steps": STEPS} and "eta" in s["sampler_options"]["skipped"]
    for r in rows:
        assert math.isfinite(r["fid"]) and math.isfinite(r["kid"]) and 0.0 <= r["confident"] <= 1.0
        assert 0.0 <= r["class_entropy"] <= 1.0 and sum(r["class_counts"]) == N
        assert r["guidance_scale"] == SCALE and r["nfe"] == s["nfe"] and r["sampler"].startswith("dpmpp_2m-3")
        assert r["total_seconds"] == pytest.approx(r["autoencoder_seconds"] + r["train_seconds"])
        assert r["autoencoder_seconds"] == pytest.approx(ae_seconds) and r["train_seconds"] > 0
    assert "confident" in record["fid_floor_real_train_images"]


@pytest.mark.slow
def test_benchmark_samples_are_evaluate_py_samples(latent_bench, monkeypatch):
    """evaluate.py on the run's last checkpoint (the weights the final row scored): bit-equal images for the same
    seeds (labels i mod K, CFG, decoded, clamped), so the same FID, confidence and class counts as the bench row."""
    from hydra.utils import instantiate

    import diffexp.cli.evaluate as evaluate_cli
    from diffexp.build import load_module
    from diffexp.latent import to_images
    from diffexp.metrics.sampling import ModuleSampleSource

    root, record, _ = latent_bench
    ckpt = Path(record["run_dir"]) / "checkpoints" / "last.ckpt"
    seen: list[torch.Tensor] = []
    original = evaluate_cli.compute_metrics

    def spy(sample_fn, *args, **kwargs):
        return original(lambda seeds: seen.append(sample_fn(seeds)) or seen[-1], *args, **kwargs)

    monkeypatch.setattr(evaluate_cli, "compute_metrics", spy)
    cfg = compose("evaluate", [f"ckpt_path={ckpt}", "sampler=dpmpp_2m", f"sampler.steps={STEPS}", f"num_samples={N}",
                               f"batch_size={BATCH}", f"guidance_scale={SCALE}", "metrics=[fid,kid,confident]",
                               "device=cpu", f"paths.cache_dir={root}/cache"], root / "eval")
    res = evaluate_cli.evaluate(cfg)
    images = torch.cat(seen)
    assert images.shape == (N, 1, 28, 28)

    module = load_module(ckpt).eval()
    assert module.checkpoint_info["global_step"] == record["evaluations"][-1]["step"]
    sampler = instantiate(cfg.sampler)
    source = ModuleSampleSource(module, sampler, SCALE)
    ours = torch.cat([source(list(range(i, min(i + BATCH, N)))) for i in range(0, N, BATCH)])
    assert torch.equal(ours, images)
    # The rule itself, spelled out: sample i for class i mod 10, CFG at SCALE, decoded, clamped to [-1, 1].
    seeds = list(range(BATCH))
    z = sampler(module.denoiser(ema=True), shape=module.data_shape, seeds=seeds, y=torch.tensor(seeds) % 10,
                guidance_scale=SCALE)
    assert torch.equal(to_images(module, z).clamp(-1, 1), images[:BATCH])
    row = record["evaluations"][-1]
    assert res["values"]["fid"] == row["fid"] and res["values"]["confident"] == row["confident"]
    assert res["samples"]["class_counts"] == row["class_counts"]


@pytest.mark.slow
def test_bench_peer_diffexp_side_takes_the_same_recipe(latent_bench):
    """bench_peer.py's diffexp side on the conditional latent recipe: same rows (confidence, guidance, NFE, the
    autoencoder's time), DDIM's eta not forced on a sampler without one."""
    import bench_peer
    from hydra.utils import instantiate
    from recipe_quality import ROW_KEYS

    from diffexp.metrics import ClassifierExtractor, reference_stats

    root, record, overrides = latent_bench
    cfg = compose("train", overrides, root / "peer")
    dm = instantiate(cfg.data)
    ext = ClassifierExtractor.from_datamodule(dm, cache_dir=str(root / "cache"))  # cached by the bench run
    real = reference_stats(dm, "test", ext, cache_dir=str(root / "cache"))
    args = argparse.Namespace(experiment="ldm_mnist", override=overrides[1:], budget_s=600.0, eval_at=[], n=N,
                              sampler_steps=STEPS, eta=1.0, guidance_scale=SCALE, batch_size=BATCH)
    rows, info = bench_peer.train_ours(args, MNIST_ROOT, ext, real)  # latent=auto: the cached autoencoder, reused
    assert info["autoencoder"]["auto"]["reused"] is True and info["autoencoder"]["path"] == record["autoencoder"]["path"]
    assert [r["step"] for r in rows] == [4] and rows[0]["who"] == "diffexp"
    assert all(k in rows[0] for k in ROW_KEYS) and sum(rows[0]["class_counts"]) == N
    assert info["guidance_scale"] == SCALE and info["sampler_options"]["skipped"] and info["nfe"] == record["settings"]["nfe"]
    assert rows[0]["total_seconds"] == pytest.approx(rows[0]["train_seconds"] + record["autoencoder_seconds"])
    assert math.isfinite(rows[0]["fid"]) and rows[0]["guidance_scale"] == SCALE
