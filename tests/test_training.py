"""Training end to end through the shipped configs: every model x objective x target takes a few
steps, a toy mixture is learned to within a stated tolerance, and bad input fails before training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import MNIST, compose
from diffexp.cli.train import train

QUIET = ["logger=none", "callbacks=none", "print_config=false", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "trainer.enable_checkpointing=false"]
TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.num_res_blocks=1", "model.dropout=0.0"]
TINY_DIT = ["model=dit", "model.hidden_size=32", "model.depth=2", "model.num_heads=2", "model.patch_size=2"]
TINY_MLP = ["model=mlp", "model.hidden_dim=32", "model.num_blocks=1", "model.time_embed_dim=16"]
FEW_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
             "data.batch_size=8", "schedule.num_timesteps=50"]

OBJECTIVES = ["simple", "elbo", "hybrid_fixed", "score"]
PREDICTIONS = ["eps", "x0", "v", "score"]
CASES = (
    [("mlp", o, p) for o in OBJECTIVES for p in PREDICTIONS]
    + [("unet", o, "eps") for o in OBJECTIVES] + [("unet", "simple", p) for p in PREDICTIONS[1:]]
    + [("dit", o, "eps") for o in OBJECTIVES] + [("dit", "simple", p) for p in PREDICTIONS[1:]]
)


@pytest.mark.parametrize("model,objective,prediction", CASES)
def test_few_steps_every_model_objective_target(model, objective, prediction, tmp_path):
    if model == "mlp":
        data = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16"] + TINY_MLP
    else:
        data = ["data=digits", "data.subset=64"] + (TINY_UNET if model == "unet" else TINY_DIT)
    cfg = compose("train", data + FEW_STEPS + QUIET + [f"objective={objective}", f"prediction={prediction}"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2


def test_toy2d_mixture_is_learned(tmp_path):
    """A 4-component mixture (weights 1/4, std 0.1, means on a circle of radius 2), learned in a short
    run (1000 steps) sampled with ancestral DDPM. Of n=2000 samples, at least 90% must lie within 5 std
    (0.5) of a mean (the true mixture puts all but 4e-6 there; the rest is the short run's model error); samples assigned to their nearest mean must reproduce the weights within 0.06
    (sampling error at n=2000 is 4·sqrt(.25·.75/2000) ≈ 0.04, the rest is model error) and each
    component's inlier mean must be within 0.05 of the true mean (≈ 7x its sampling error)."""
    cfg = compose(
        "train",
        ["data=toy2d", "data.num_components=4", "data.std=0.1", "data.radius=2.0", "data.num_train=4000",
         "data.batch_size=256", "model=mlp", "model.hidden_dim=128", "model.num_blocks=2",
         "schedule=cosine", "schedule.num_timesteps=200", "trainer.max_steps=1000", "trainer.val_check_interval=500",
         "trainer.limit_val_batches=1", "optimizer.lr=2e-3", "lr_scheduler.warmup_steps=50", "module.ema_decay=0.99",
         "sampler=ddpm", "sampler.variance=beta_tilde", "callbacks=default", "callbacks.sample.every_n_steps=null",
         "callbacks.sample.num_samples=500", "callbacks.model_checkpoint.every_n_train_steps=500"]
        + ["logger=csv", "print_config=false", "~callbacks.progress_bar", "trainer.enable_progress_bar=false"],
        tmp_path,
    )
    train(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("*.png")), "the run must end with a picture"
    from diffexp.build import load_module
    from diffexp.cli.sample import generate

    module = load_module(run / "checkpoints" / "last.ckpt")
    dm = instantiate(cfg.data)
    means = torch.as_tensor(dm.means, dtype=torch.float32)
    x = generate(module, instantiate(cfg.sampler), 2000, seed=123, batch_size=1000)
    dist = torch.cdist(x, means)
    nearest, assign = dist.min(1)
    inlier = nearest < 0.5
    assert inlier.float().mean() > 0.90, f"only {inlier.float().mean():.3f} of samples near a mode"
    weights = torch.bincount(assign[inlier], minlength=4).float() / int(inlier.sum())
    assert torch.allclose(weights, torch.full((4,), 0.25), atol=0.06), weights
    for k in range(4):
        centre = x[inlier & (assign == k)].mean(0)
        assert torch.linalg.norm(centre - means[k]) < 0.05, (k, centre, means[k])


def test_missing_dataset_is_a_clear_error_before_training(tmp_path):
    cfg = compose("train", ["data=mnist", f"paths.data_dir={tmp_path / 'nowhere'}"] + QUIET + FEW_STEPS, tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        train(cfg)
    msg = str(e.value)
    assert "mnist.pkl.gz" in msg and str(tmp_path / "nowhere") in msg and "make data" in msg


@pytest.mark.parametrize("overrides,needle", [
    (["model=dit", "model.patch_size=3"], "patch"),
    (["model=unet", "model.channel_mult=[1,2,2,2,2]"], "image_size"),
])
def test_image_size_the_model_cannot_take(overrides, needle, tmp_path):
    cfg = compose("train", ["data=digits"] + overrides + QUIET + FEW_STEPS, tmp_path)
    with pytest.raises(ValueError) as e:
        train(cfg)
    assert needle in str(e.value) and "8" in str(e.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.skipif(MNIST is None, reason="no MNIST copy (make data)")
def test_default_mnist_config_trains_a_step(tmp_path):
    """The default experiment's exact config (MNIST, default UNet) runs: two steps on real data."""
    cfg = compose("train", [f"paths.data_dir={MNIST.parent}", "trainer.max_steps=2", "trainer.val_check_interval=2",
                            "trainer.limit_val_batches=1"] + QUIET, tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["val/loss"])
