"""+model.learn_sigma=true through the shipped configs: trains with objective=hybrid on vector and image nets,
samples (also respaced) and reports the bound with Σ_θ; every invalid combination is a ConfigError."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose
from diffexp.build import build_module
from diffexp.cli.train import train
from diffexp.metrics.nll import evaluate_nll
from diffexp.models.learned_variance import LearnedVarianceNet
from diffexp.samplers import DDPMSampler
from diffexp.validation import ConfigError

QUIET = ["logger=none", "callbacks=none", "print_config=false", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "trainer.enable_checkpointing=false"]
STEPS = ["data.batch_size=8", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
         "schedule.num_timesteps=50"]
TOY = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "model=mlp", "model.hidden_dim=32",
       "model.num_blocks=1", "model.time_embed_dim=16"]
UNET = ["data=digits", "data.subset=64", "model=unet", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[4]", "model.num_res_blocks=1"]
LEARNED = ["+model.learn_sigma=true", "objective=hybrid"]
INFO = {"data_shape": [2], "num_classes": None, "data_range": None}


@pytest.mark.parametrize("data", [TOY, UNET], ids=["mlp", "unet"])
def test_trains_samples_and_bounds_with_learned_sigma(data, tmp_path):
    cfg = compose("train", data + STEPS + QUIET + LEARNED, tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    shape = [2] if data is TOY else [1, 8, 8]
    module = build_module(cfg, {"data_shape": shape, "num_classes": None,
                                "data_range": None if data is TOY else (-1.0, 1.0)})
    assert isinstance(module.net, LearnedVarianceNet)
    den = module.denoiser(ema=False)
    for steps in (None, 10):  # full chain and a respaced grid
        x = DDPMSampler(steps=steps)(den, shape, seeds=[0, 1, 2])
        assert x.shape == (3, *shape) and bool(torch.isfinite(x).all())
    x0 = torch.rand(4, *shape) * 2 - 1 if data is TOY else (torch.randint(0, 256, (4, *shape)) / 127.5 - 1)
    result = evaluate_nll(den, x0, batch_size=4)
    assert result["reverse_variance"] == "learned" and math.isfinite(result["bpd"])


@pytest.mark.parametrize("overrides,needle", [
    (["objective=hybrid"], r"objective=hybrid is Nichol & Dhariwal's L_hybrid.*\+model.learn_sigma=true.*objective=hybrid_fixed"),
    (["+model.learn_sigma=true", "objective=simple"], r"\+model.learn_sigma=true needs objective=hybrid"),
    (["+model.learn_sigma=true", "objective=hybrid", "process=vp_sde"], r"\+model.learn_sigma=true .*process=ddpm"),
    (["+model.learn_sigma=true", "objective=hybrid", "+model.energy=true"], "model.energy=true"),
])
def test_invalid_learn_sigma_configs(overrides, needle, tmp_path):
    cfg = compose("train", TOY + STEPS + QUIET + overrides, tmp_path)
    with pytest.raises(ConfigError, match=needle):
        build_module(cfg, INFO)


def test_hybrid_fixed_keeps_the_old_objective(tmp_path):
    cfg = compose("train", TOY + STEPS + QUIET + ["objective=hybrid_fixed"], tmp_path)
    module = build_module(cfg, INFO)
    assert type(module.objective).__name__ == "FixedSigmaHybridObjective"
    assert not isinstance(module.net, LearnedVarianceNet)
    assert type(instantiate(cfg.objective)).objective_name == "hybrid_fixed"
