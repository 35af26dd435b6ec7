"""The first stage of latent diffusion (diffexp.autoencoder): shapes, the KL term against its closed form,
the latent scale factor, the training CLI and the errors for bad autoencoder checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import MNIST as MNIST_ROOT
from conftest import compose
from diffexp.autoencoder import DiagonalGaussian, KLAutoencoder, estimate_scale_factor, load_autoencoder
from diffexp.autoencoder.module import reconstruction_loss
from diffexp.checkpoint import CheckpointError

TINY = dict(embed_dim=3, ch=8, ch_mult=(1, 1, 1), groups=4, attention=True)
TINY_AE = ["autoencoder=kl_f4_small"]
QUIET = ["print_config=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
MNIST_SMALL = [f"data.root={MNIST_ROOT}", "data.subset=128", "data.val_subset=64", "data.batch_size=16",
               "extractor=random"]
FEW = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
       "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.reconstruction.every_n_steps=0",
       "callbacks.reconstruction.num_samples=32", "callbacks.reconstruction.num_grid=8", "~callbacks.progress_bar"]


@pytest.mark.parametrize("image_size,in_channels,latent", [(28, 1, 7), (32, 3, 8), (8, 1, 2)])
def test_encode_decode_shapes(image_size, in_channels, latent):
    ae = KLAutoencoder(in_channels=in_channels, image_size=image_size, **TINY)
    x = torch.randn(2, in_channels, image_size, image_size)
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 3, latent, latent)
    assert ae.latent_shape == (3, latent, latent) and ae.factor == 4
    assert ae.decode(posterior.sample()).shape == x.shape
    x_hat, _ = ae(x)
    assert x_hat.shape == x.shape


def test_image_size_must_be_divisible_by_the_factor():
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f = 4"):
        KLAutoencoder(image_size=30, **TINY)


def test_kl_matches_closed_form_and_independent_oracle():
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over latents equals ½Σ(μ² + σ² − 1 − log σ²) and torch.distributions'
    independent implementation; it is 0 exactly at the prior."""
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    q = DiagonalGaussian(torch.cat([mean, logvar], 1))
    closed = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    oracle = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(q.kl(), closed, rtol=1e-12) and torch.allclose(q.kl(), oracle, rtol=1e-10)
    prior = DiagonalGaussian(torch.zeros(2, 4, 3, 3))
    assert torch.equal(prior.kl(), torch.zeros(2))


def test_posterior_samples_have_the_posterior_moments():
    """n = 20000 reparameterised samples: mean within 5 standard errors (5σ/√n), std within 5·σ/√(2n)."""
    mean, logvar = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1), torch.tensor([0.4, -1.0]).view(1, 2, 1, 1)
    q = DiagonalGaussian(torch.cat([mean, logvar], 1).expand(20000, 4, 1, 1))
    z = q.sample(torch.Generator().manual_seed(0)).squeeze()
    std = (0.5 * logvar).exp().flatten()
    n = z.shape[0]
    assert ((z.mean(0) - mean.flatten()).abs() < 5 * std / math.sqrt(n)).all()
    assert ((z.std(0) - std).abs() < 5 * std / math.sqrt(2 * n)).all()


def test_reconstruction_loss_sums_over_pixels():
    x, x_hat = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    assert torch.allclose(reconstruction_loss(x, x_hat, "l1"), torch.tensor([2.0, 2.0]))
    assert torch.allclose(reconstruction_loss(x, x_hat, "mse"), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="'l1' or 'mse'"):
        reconstruction_loss(x, x_hat, "lpips")


def test_scale_factor_is_one_over_latent_std():
    """An encoder whose posterior mean is 3·(pooled x) on N(0, 1) data has latent std 3·(1/2) (2×2 average
    pooling of unit-variance pixels): the estimate is 1/1.5 within 4 standard errors of a std estimate
    from n latents (relative error 1/√(2n))."""
    ae = KLAutoencoder(image_size=8, **TINY)

    def encode(x):
        m = 3 * torch.nn.functional.avg_pool2d(x, 2).repeat(1, 3, 1, 1)  # (B, 3, 4, 4)
        return DiagonalGaussian(torch.cat([m, torch.zeros_like(m)], 1))

    ae.encode = encode
    x = torch.randn(2000, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    scale = estimate_scale_factor(ae, x, batch_size=300)
    n = 2000 * 16  # independent latent values (the 3 channels are copies)
    assert abs(scale * 1.5 - 1) < 4 / math.sqrt(2 * n), scale


def _train_tiny(tmp_path, extra=()):
    from diffexp.cli.train_autoencoder import train_autoencoder

    cfg = compose("train_autoencoder", TINY_AE + MNIST_SMALL + FEW + QUIET + list(extra), tmp_path)
    metrics = train_autoencoder(cfg)
    return cfg, metrics, tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory):
    """One tiny autoencoder training run on 128 MNIST images (3 steps), shared by the tests below."""
    return _train_tiny(tmp_path_factory.mktemp("ae"))


def test_training_run_writes_checkpoint_with_scale_factor(tiny_autoencoder):
    cfg, metrics, ckpt = tiny_autoencoder
    assert metrics["global_step"] == 3 and ckpt.is_file()
    for key in ("val/rec_mse", "val/kl", "val/loss"):
        assert math.isfinite(metrics[key]), key
    assert any(k.startswith("rec_fid/random-") and k.endswith("/n32/ref-test-n64") for k in metrics)
    assert (ckpt.parent.parent / "reconstructions" / "reconstructions_step0000003.png").is_file()
    ae, info = load_autoencoder(ckpt)
    assert info["latent_shape"] == [2, 7, 7] and not any(p.requires_grad for p in ae.parameters())
    # The stored scale is 1/std of the posterior means of the first scale_examples validation images.
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    x, _ = dm.tensors("val")
    expected = estimate_scale_factor(ae, x[: cfg.autoencoder.scale_examples])
    assert info["scale_factor"] == pytest.approx(expected, rel=1e-5)
    assert metrics["scale_factor"] == pytest.approx(expected, rel=1e-5)
    assert info["hash"] == metrics["autoencoder_hash"]


def test_missing_autoencoder_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"autoencoder checkpoint not found: .*nope\.ckpt.*train_autoencoder\.py"):
        load_autoencoder(tmp_path / "nope.ckpt")


def test_corrupt_autoencoder_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_autoencoder(bad)


def test_a_diffusion_checkpoint_is_not_an_autoencoder(tmp_path):
    from diffexp.checkpoint import CHECKPOINT_KEY

    path = tmp_path / "diffusion.ckpt"
    torch.save({"state_dict": {}, CHECKPOINT_KEY: {"format": 1}}, path)
    with pytest.raises(CheckpointError, match="is a diffusion checkpoint .*needs an autoencoder checkpoint"):
        load_autoencoder(path)


def test_autoencoder_on_points_is_a_config_error(tmp_path):
    from diffexp.cli.train_autoencoder import train_autoencoder
    from diffexp.validation import ConfigError

    cfg = compose("train_autoencoder", ["data=toy2d"] + QUIET, tmp_path)
    with pytest.raises(ConfigError, match=r"needs images"):
        train_autoencoder(cfg)


def test_reconstruction_fid_with_the_classifier_extractor(tmp_path):
    """The default extractor is trained (once, cached) inside the callback: gradients must be enabled there."""
    _, metrics, _ = _train_tiny(tmp_path, ["extractor=classifier", "extractor.min_steps=4",
                                           f"paths.cache_dir={tmp_path}/cache"])
    fid = [v for k, v in metrics.items() if k.startswith("rec_fid/classifier-")]
    assert len(fid) == 1 and math.isfinite(fid[0]) and fid[0] >= 0
