"""Class-conditional training with label dropout, and classifier-free guidance in every sampler.

1. Mechanics, against the exact conditional oracle of a Gaussian mixture: every sampler takes ``y`` and
   ``guidance_scale``; a guided evaluation is ONE network call on the batch [x, x] with labels [y, null];
   the Denoiser combines ε̃ = ε_u + w (ε_c - ε_u) (Ho & Salimans 2022, eq. 6); guided samples land in
   their class's component.
2. Learning: a small conditional MLP trained through ``train`` (toy2d mixture of 4 components, labels =
   component, label dropout 0.2) for 150 steps. Samples are classified by their nearest mixture mean.
   Unconditional samples (null label) hit class c at the mixture weight 1/4; conditional ones mostly;
   guided ones (w=3) more often still: the model is not yet perfect, and guidance sharpens p(c|x).
3. The sample grid of a conditional image model has one row per class.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose
from diffexp.build import build_module, data_info, load_module
from diffexp.callbacks import SampleCallback
from diffexp.cli.train import train
from diffexp.denoiser import Denoiser
from diffexp.oracles import GaussianMixtureOracle
from diffexp.process import DiffusionProcess
from diffexp.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2MSampler, HeunSampler, LangevinSampler, PCSampler
from diffexp.schedules import linear

PROC = DiffusionProcess(linear(100))
MEANS = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]])
K = len(MEANS)


class Recording(torch.nn.Module):
    """The oracle, recording the batch size and labels of every call."""

    def __init__(self):
        super().__init__()
        self.oracle = GaussianMixtureOracle(torch.ones(K), MEANS, 0.01, PROC)
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x, t, y=None):
        self.calls.append((x.shape[0], y.clone()))
        return self.oracle(x, t, y=y)


SAMPLERS = [DDPMSampler(steps=20), DDIMSampler(steps=10), HeunSampler(steps=10), DPMSolverPP2MSampler(steps=10),
            PCSampler(steps=10), LangevinSampler(num_levels=3, steps_per_level=2, step_size=1e-4)]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_every_sampler_guides_with_one_batched_pass(sampler):
    net = Recording()
    den = Denoiser(net, PROC, "eps", num_classes=K, data_range=None)
    n = 32
    y = torch.arange(K).repeat_interleave(n // K)
    x = sampler(den, shape=(2,), seeds=range(n), y=y, guidance_scale=3.0)
    assert len(net.calls) == sampler.nfe(PROC.num_timesteps)  # a guided evaluation counts once
    null = torch.full_like(y, K)
    assert all(b == 2 * n and torch.equal(labels, torch.cat([y, null])) for b, labels in net.calls)
    if not isinstance(sampler, LangevinSampler):  # (3x2 Langevin steps do not reach the data)
        assert torch.equal(torch.cdist(x.float(), MEANS).argmin(1), y)
    net.calls.clear()
    sampler(den, shape=(2,), seeds=range(n), y=y, guidance_scale=1.0)  # w = 1: the conditional model only
    assert all(b == n and torch.equal(labels, y) for b, labels in net.calls)


def test_guided_prediction_is_the_cfg_combination():
    net = Recording()
    den = Denoiser(net, PROC, "eps", num_classes=K, data_range=None)
    x_t, t, y = torch.randn(8, 2), torch.full((8,), 60), torch.arange(8) % K
    eps_c, _ = net.oracle.eps_and_x0(x_t, t, y)
    eps_u, _ = net.oracle.eps_and_x0(x_t, t, torch.full_like(y, K))
    for w in (0.0, 2.5):
        guided = den(x_t, t, y=y, guidance_scale=w)
        torch.testing.assert_close(guided.eps.double(), eps_u + w * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
        a, s = PROC.scales(t, x_t)
        torch.testing.assert_close(guided.x0, (x_t - s * guided.eps) / a)


@pytest.fixture(scope="module")
def conditional_module(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cond")
    cfg = compose("train", [
        "data=toy2d", "data.num_components=4", "data.num_train=2048", "data.batch_size=128", "data.num_val=64",
        "model=mlp", "model.hidden_dim=32", "model.num_blocks=2", "model.time_embed_dim=32",
        "conditional=true", "module.label_dropout=0.2", "module.ema_decay=0.95",
        "schedule=cosine", "schedule.num_timesteps=100", "optimizer.lr=3e-3", "lr_scheduler.warmup_steps=20",
        "trainer.max_steps=150", "trainer.val_check_interval=150", "trainer.limit_val_batches=1", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "sampler.steps=20",
        "logger=none", "callbacks=model_checkpoint", "print_config=false", "seed=0"], tmp)
    train(cfg)
    module = load_module(tmp / "run" / "checkpoints" / "last.ckpt")
    assert module.num_classes == K and module.label_dropout == 0.2 and int(module.ema.num_updates) == 150
    return module


def rate(module, sampler, y, w) -> float:
    x = sampler(module.denoiser(ema=True), shape=(2,), seeds=range(len(y)), y=y, guidance_scale=w)
    return float((torch.cdist(x.float(), MEANS).argmin(1) == torch.arange(K).repeat_interleave(len(y) // K)).float().mean())


@pytest.mark.parametrize("sampler", [DDIMSampler(steps=20), DDPMSampler(steps=50)], ids=lambda s: s.name)
def test_guided_samples_land_in_their_class_more_often(conditional_module, sampler):
    """n = 512 samples (128 per class). Binomial standard errors: 0.019 at p = 1/4, <= 0.013 at p >= 0.9;
    the conditional rate of this short run is ~0.8-0.93 over seeds and w=3 adds 0.05-0.15 (3 seeds
    checked), so the margins below are >= 3 standard errors of the paired difference."""
    n = 128
    y = torch.arange(K).repeat_interleave(n)
    uncond = rate(conditional_module, sampler, torch.full_like(y, K), 1.0)
    cond = rate(conditional_module, sampler, y, 1.0)
    guided = rate(conditional_module, sampler, y, 3.0)
    se = math.sqrt(0.25 * 0.75 / len(y))
    assert abs(uncond - 0.25) < 4 * se, (uncond, cond, guided)  # the null label: the unconditional model
    assert cond > 0.6, (uncond, cond, guided)
    assert guided >= 0.9 and guided > cond + 0.03, (uncond, cond, guided)


class RecordingSampler:
    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def nfe(self, T):
        return self.inner.nfe(T)

    def __call__(self, denoiser, **kwargs):
        self.calls.append(kwargs)
        return self.inner(denoiser, **kwargs)


def test_sample_grid_has_one_row_per_class(tmp_path):
    cfg = compose("train", ["data=digits", "model=mlp", "model.hidden_dim=16", "model.num_blocks=1",
                            "conditional=true", "logger=none", "print_config=false"], tmp_path)
    from hydra.utils import instantiate

    module = build_module(cfg, data_info(instantiate(cfg.data)))
    sampler = RecordingSampler(DDIMSampler(steps=3))
    callback = SampleCallback(sampler, num_samples=30, guidance_scale=2.0, out_dir=str(tmp_path / "samples"))
    trainer = type("T", (), {"global_step": 7, "loggers": [], "default_root_dir": str(tmp_path), "is_global_zero": True})()
    callback.sample_and_log(trainer, module)
    (call,) = sampler.calls
    assert torch.equal(call["y"], torch.arange(10).repeat_interleave(3)) and call["guidance_scale"] == 2.0
    image = np.asarray(Image.open(callback.last_paths[0]))
    assert image.shape[:2] == (10 * (8 + 2) + 2, 3 * (8 + 2) + 2)  # 10 rows (classes) of 3 samples, 2-px padding


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_guidance_at_zero_terminal_snr_stays_finite(prediction):
    """At the last step of a zero-terminal-SNR schedule α = 0: x_T is pure noise, so E[x_0|x_T, y] = μ_y and
    E[x_0|x_T] = Σ_k w_k μ_k exactly, and the guided x̂_0 is their CFG combination μ_u + w (μ_y - μ_u) (with
    ε̂ = x_T). The combination never divides by α (it gave NaN with v and x0 targets); a whole guided
    DDIM run ends finite, in its class's component."""
    proc = DiffusionProcess(linear(50, zero_terminal_snr=True))
    oracle = GaussianMixtureOracle(torch.ones(K), MEANS, 0.01, proc, prediction)
    den = Denoiser(oracle, proc, prediction, num_classes=K, data_range=None)
    x_T, y, w = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8) % K, 3.0
    t = torch.full((8,), proc.num_timesteps - 1)
    for clip in (None, (-10.0, 10.0)):
        guided = den(x_T, t, y=y, guidance_scale=w, clip=clip)
        uncond = MEANS.mean(0)
        torch.testing.assert_close(guided.x0, uncond + w * (MEANS[y] - uncond), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(guided.eps, x_T, rtol=1e-5, atol=1e-5)
    x = DDIMSampler(steps=20)(den, shape=(2,), seeds=range(16), y=torch.arange(16) % K, guidance_scale=w)
    assert torch.isfinite(x).all() and torch.equal(torch.cdist(x, MEANS).argmin(1), torch.arange(16) % K)
