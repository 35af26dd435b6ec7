"""The family recipes (experiment=ncsn_mnist, vp_sde_mnist, edm_mnist, flow_mnist, flow_toy2d) compose and
train a few steps end to end (tiny network and data, two sampler steps: the recipe's process, objective,
target, preconditioning and sampler are what runs), and objective/process mismatches are config errors
raised before training that name what fits."""

from __future__ import annotations

import math

import pytest

from conftest import compose
from diffexp.cli.train import train
from diffexp.validation import ConfigError, validate_config

QUIET = ["logger=csv", "print_config=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "~callbacks.progress_bar", "~callbacks.lr_monitor"]
TINY_STEPS = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.batch_size=8",
              "trainer.precision=32", "sampler.steps=2", "callbacks.sample.num_samples=4", "callbacks.sample.every_n_steps=null",
              "callbacks.model_checkpoint.every_n_train_steps=2"]
TINY_UNET = ["data=digits", "data.subset=64", "model.base_channels=8", "model.channel_mult=[1,2]",
             "model.attention_resolutions=[4]", "model.num_res_blocks=1"]
TINY_TOY = ["data.num_train=64", "data.num_val=16", "data.num_test=16", "model.hidden_dim=16", "model.num_blocks=1"]
RECIPES = {
    "ncsn_mnist": ("ve", "NCSNObjective", "eps"),
    "vp_sde_mnist": ("vp_sde", "SimpleObjective", "eps"),
    "edm_mnist": ("edm", "EDMObjective", "x0"),
    "flow_mnist": ("flow", "FlowMatchingObjective", "velocity"),
    "flow_toy2d": ("flow", "FlowMatchingObjective", "velocity"),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_composes_and_trains(recipe, tmp_path):
    family, objective, prediction = RECIPES[recipe]
    shipped = compose("train", [f"experiment={recipe}"], tmp_path)
    assert shipped.process._target_.endswith(type_name(family)) and shipped.objective._target_.endswith(objective)
    assert shipped.prediction == prediction
    if recipe.endswith("_mnist"):  # the same 12-minute budget as experiment=mnist_cpu
        assert shipped.trainer.max_time == "00:00:12:00" and shipped.data._target_.endswith("MNISTDataModule")
    tiny = TINY_TOY if recipe == "flow_toy2d" else TINY_UNET
    cfg = compose("train", [f"experiment={recipe}"] + tiny + TINY_STEPS + QUIET, tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert list((tmp_path / "run" / "samples").glob("*.png")), "the recipe's sampler ran at the end"
    from diffexp.build import load_module

    module = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.process.name == family and module.prediction == prediction
    if recipe == "edm_mnist":
        from diffexp.preconditioning import EDMPreconditioned

        assert isinstance(module.net, EDMPreconditioned) and isinstance(module.sampling_net(), EDMPreconditioned)


def type_name(family: str) -> str:
    return {"ve": "VEProcess", "vp_sde": "VPSDEProcess", "edm": "EDMProcess", "flow": "FlowProcess"}[family]


@pytest.mark.parametrize("overrides,needles", [
    (["process=flow", "objective=elbo"], ["objective (ELBOObjective) with process=flow", "process=ddpm", "simple"]),
    (["process=vp_sde", "objective=hybrid_fixed"], ["process=ddpm"]),
    (["process=ve", "objective.timestep_sampler=importance"], ["timestep_sampler=importance", "process=ddpm"]),
    (["objective=flow_matching"], ["continuous family", "process=flow"]),
    (["process=edm", "module.precondition=edm", "prediction=eps"], ["module.precondition=edm", "prediction=x0"]),
    (["module.precondition=karras"], ["module.precondition=karras", "edm"]),
])
def test_objective_process_mismatch_is_a_config_error(overrides, needles, tmp_path):
    groups = [o for o in overrides if "." not in o.split("=")[0]]
    keys = [o for o in overrides if o not in groups]
    cfg = compose("train", ["data=toy2d", "model=mlp", "logger=none", "print_config=false"] + groups + keys, tmp_path)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


@pytest.mark.parametrize("model", ["dit", "mlp"])
def test_precondition_wraps_any_network(model, tmp_path):
    """EDM preconditioning around a DiT and an MLP (the UNet is edm_mnist above): trains and samples."""
    from diffexp.build import load_module
    from diffexp.preconditioning import EDMPreconditioned

    net = (["data=digits", "data.subset=64", "model=dit", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
            "model.patch_size=2"] if model == "dit" else ["data=toy2d", "model=mlp"] + TINY_TOY)
    overrides = ["process=edm", "objective=edm", "prediction=x0", "module.precondition=edm", "sampler=heun"]
    cfg = compose("train", net + overrides + TINY_STEPS + QUIET, tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["val/loss"])
    module = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(module.net, EDMPreconditioned) and type(module.net.net).__name__ == model.upper().replace("DIT", "DiT")
