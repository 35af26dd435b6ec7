"""Latent diffusion (diffexp.latent): latents encoded once and cached by the autoencoder's hash, a latent
training run through the shipped configs, decoding for grids, sample.py and the metrics, latent NLL keys,
and clear errors for a missing autoencoder."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import MNIST as MNIST_ROOT
from conftest import compose
from diffexp.autoencoder import KLAutoencoder, autoencoder_hash
from diffexp.checkpoint import CheckpointError, config_mismatches
from diffexp.latent import LatentDataModule, image_range, image_shape, is_latent, to_images

MNIST = [f"data.root={MNIST_ROOT}", "data.subset=96", "data.val_subset=32", "data.batch_size=16"]
TINY_AE = dict(in_channels=1, image_size=28, embed_dim=2, ch=8, ch_mult=(1, 1, 1), groups=4, attention=False)
TINY_LATENT_UNET = ["model.base_channels=8", "model.num_res_blocks=1", "model.attention_resolutions=[]",
                    "model.num_groups=4"]
FEW = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "schedule.num_timesteps=50",
       "sampler.steps=4", "print_config=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "logger=csv", "callbacks.sample.num_samples=4", "callbacks.sample.every_n_steps=null",
       "callbacks.model_checkpoint.every_n_train_steps=2", "~callbacks.progress_bar", "trainer.precision=32"]


def _mnist(tmp_path):
    cfg = compose("train", ["data=mnist"] + MNIST, tmp_path)
    return instantiate(cfg.data)


def _autoencoder(seed: int = 0, scale: float = 2.0) -> KLAutoencoder:
    torch.manual_seed(seed)
    ae = KLAutoencoder(**TINY_AE)
    ae.scale_factor.fill_(scale)
    return ae


def test_latents_are_encoded_once_and_cached_by_autoencoder_hash(tmp_path):
    ae = _autoencoder()
    first = LatentDataModule(_mnist(tmp_path), ae, tmp_path / "cache")
    z, y = first.tensors("train")
    assert first.encoded == ["train", "val", "test"] and z.shape == (96, 2, 7, 7) and first.data_range is None
    x, y_pix = first.pixels.tensors("train")
    with torch.no_grad():
        expected = ae.encode(x).mode() * 2.0  # scaled posterior means
    assert torch.allclose(z, expected, atol=1e-5) and torch.equal(y, y_pix)
    path = first.cache_path("train")
    assert path.is_file() and autoencoder_hash(ae) in str(path)
    # Same autoencoder: read from the cache, nothing encoded.
    second = LatentDataModule(_mnist(tmp_path), ae, tmp_path / "cache")
    assert torch.equal(second.tensors("train")[0], z) and second.encoded == []
    # Training batches are served from the cached tensors (no encoder call per step).
    batch, _ = next(iter(second.train_dataloader()))
    assert batch.shape == (16, 2, 7, 7) and any(torch.equal(batch[0], row) for row in z)
    # Another scale factor (or any weight) is another hash: new files, encoded again.
    other = LatentDataModule(_mnist(tmp_path), _autoencoder(scale=3.0), tmp_path / "cache")
    other.setup()
    assert other.encoded == ["train", "val", "test"] and other.cache_path("train") != path
    assert other.cache_key("train") != first.cache_key("train")


def test_a_stale_cache_file_is_re_encoded(tmp_path):
    ae = _autoencoder()
    dm = LatentDataModule(_mnist(tmp_path), ae, tmp_path / "cache")
    path = dm.cache_path("val")
    path.parent.mkdir(parents=True)
    torch.save({"z": torch.zeros(32, 2, 7, 7), "y": torch.zeros(32, dtype=torch.long), "autoencoder_hash": "other"}, path)
    dm.setup()
    assert "val" in dm.encoded and dm.tensors("val")[0].abs().sum() > 0


def test_autoencoder_must_match_the_image_shape(tmp_path):
    ae = KLAutoencoder(**{**TINY_AE, "image_size": 32})
    with pytest.raises(ValueError, match=r"takes \(1, 32, 32\) images but data 'mnist' has shape \(1, 28, 28\)"):
        LatentDataModule(_mnist(tmp_path), ae, tmp_path)


def test_resuming_with_another_autoencoder_is_refused():
    a = {"model": {"x": 1}, "latent_autoencoder": {"hash": "aaa"}}
    b = {"model": {"x": 1}, "latent_autoencoder": {"hash": "bbb"}}
    assert config_mismatches(a, b) == ["latent_autoencoder.hash: checkpoint 'aaa', config 'bbb'"]
    assert config_mismatches({"model": {"x": 1}}, {"model": {"x": 1}}) == []


def test_missing_autoencoder_is_a_clear_error_before_training(tmp_path):
    from diffexp.cli.train import train

    cfg = compose("train", ["experiment=ldm_mnist", f"latent={tmp_path}/missing.ckpt"] + MNIST + FEW, tmp_path)
    with pytest.raises(CheckpointError, match=r"autoencoder checkpoint not found: .*missing\.ckpt"):
        train(cfg)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A 3-step tiny autoencoder, then 2 steps of experiment=ldm_mnist on its latents (with the NLL callback)."""
    from diffexp.cli.train import train
    from diffexp.cli.train_autoencoder import train_autoencoder

    root = tmp_path_factory.mktemp("ldm")
    ae_cfg = compose("train_autoencoder", ["autoencoder=kl_f4_small", "extractor=random", "trainer.max_steps=3",
                                           "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
                                           "callbacks.reconstruction.num_samples=16", "print_config=false",
                                           "callbacks.reconstruction.every_n_steps=0", "~callbacks.progress_bar",
                                           f"paths.cache_dir={root}/cache"] + MNIST, root / "ae")
    train_autoencoder(ae_cfg)
    ae_ckpt = root / "ae" / "run" / "checkpoints" / "last.ckpt"
    cfg = compose("train", ["experiment=ldm_mnist", f"latent={ae_ckpt}", f"paths.cache_dir={root}/cache",
                            "callbacks=with_eval", "callbacks.metrics.metrics=[kid]", "callbacks.metrics.num_samples=8", "callbacks.metrics.batch_size=8",
                            "callbacks.metrics.every_n_steps=null", "callbacks.metrics.kid_subset_size=4",
                            "extractor=random", "callbacks.nll.num_examples=4", "callbacks.nll.every_n_steps=null"]
                  + MNIST + FEW + TINY_LATENT_UNET, root / "ldm")
    metrics = train(cfg)
    return root, ae_ckpt, cfg, metrics


def test_latent_training_run_composes_and_runs(latent_run):
    root, _, cfg, metrics = latent_run
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert cfg.latent_autoencoder.latent_shape == [2, 7, 7]
    # Decoded grids and pixel-space KID (against the image test split; FID needs n > feature dim), latent NLL labelled as such.
    assert any(k.startswith("kid/random-") for k in metrics)
    nll = [k for k in metrics if k.startswith("nll/bpd/")]
    assert nll and all("/latent-continuous/" in k for k in nll), nll
    grids = list((root / "ldm" / "run" / "samples").glob("*.png"))
    assert grids
    from PIL import Image

    w, h = Image.open(grids[0]).size
    assert w >= 2 * 28 and h >= 2 * 28  # 4 decoded 28x28 images, not 7x7 latents


def test_latent_checkpoint_is_self_contained_for_sampling(latent_run, tmp_path):
    """The diffusion checkpoint carries the first stage: sampling works after the autoencoder file is gone,
    and sample.py's generate() returns decoded images in the image range."""
    from diffexp.build import load_module
    from diffexp.cli.sample import generate

    root, ae_ckpt, cfg, _ = latent_run
    moved = ae_ckpt.with_suffix(".moved")
    ae_ckpt.rename(moved)
    try:
        module = load_module(root / "ldm" / "run" / "checkpoints" / "last.ckpt")
    finally:
        moved.rename(ae_ckpt)
    assert is_latent(module) and image_shape(module) == (1, 28, 28) and image_range(module) == (-1.0, 1.0)
    assert module.data_shape == (2, 7, 7)
    sampler = instantiate(cfg.sampler)
    x = generate(module, sampler, num_samples=3, seed=0, batch_size=2)
    assert x.shape == (3, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    # Same seeds, same images; decoding is the first stage's D(z / s).
    z = sampler(module.denoiser(), shape=(2, 7, 7), seeds=[0, 1])
    assert torch.allclose(to_images(module, z), x[:2], atol=1e-5)


@pytest.mark.parametrize("sampler,extra", [("ddpm", []), ("dpmpp_2m", ["sampler.steps=4"]), ("heun", ["sampler.steps=3"]),
                                           ("pc", ["sampler.steps=4"])])
def test_every_sampler_samples_latents(latent_run, sampler, extra):
    from diffexp.build import load_module

    root, _, _, _ = latent_run
    module = load_module(root / "ldm" / "run" / "checkpoints" / "last.ckpt")
    cfg = compose("train", [f"sampler={sampler}"] + extra, root / "sampler")
    x = to_images(module, instantiate(cfg.sampler)(module.denoiser(), shape=module.data_shape, seeds=[0, 1]))
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_evaluate_reports_latent_nll_from_the_cached_latents(latent_run, capsys):
    """evaluate.py metrics=[nll] on a latent checkpoint: the bound is on the latents (keys say so) and the
    latents come from the cache written during training (same autoencoder hash: nothing re-encoded)."""
    from diffexp.cli.evaluate import evaluate

    root, _, _, _ = latent_run
    cfg = compose("evaluate", [f"ckpt_path={root / 'ldm' / 'run' / 'checkpoints' / 'last.ckpt'}", "metrics=[nll]",
                               "nll.num_examples=4", "nll.batch_size=4", f"paths.cache_dir={root}/cache"], root / "eval")
    record = evaluate(cfg)
    assert "[latent] encoded" not in capsys.readouterr().out
    assert record["nll"]["space"] == "latent" and record["nll"]["dims"] == 2 * 7 * 7
    assert all("/latent-continuous/" in k for k in record["keys"]) and math.isfinite(record["values"]["nll_bpd"])


def test_ldm_experiment_without_latent_is_a_config_error(tmp_path):
    from diffexp.cli.train import train
    from diffexp.validation import ConfigError

    cfg = compose("train", ["experiment=ldm_mnist"] + MNIST + FEW, tmp_path)
    with pytest.raises(ConfigError, match=r"set latent=<autoencoder checkpoint> .*train_autoencoder\.py"):
        train(cfg)
