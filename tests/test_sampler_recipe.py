"""A checkpoint is sampled with its recipe's sampler unless told otherwise: ``sampler=recipe`` (the default of
sample.py and evaluate.py) becomes the ``sampler`` stored in the checkpoint's training config, with the options
given on the command line on top; ``sampler=<name>`` wins; a checkpoint that stores none gets conf/sampler/ddim.yaml.
The records say which (``sampler_source``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, TOY_MLP, compose, save_checkpoint
from diffexp.build import build_module, data_info
from diffexp.cli.evaluate import evaluate
from diffexp.cli.sample import sample
from diffexp.samplers.recipe import is_recipe_placeholder, recipe_sampler_config
from diffexp.validation import ConfigError

TOY = TOY_MLP
RECIPE = ["sampler=dpmpp_2m", "sampler.steps=7", "sampler.spacing=logsnr"]
SAMPLE = ["num_samples=12", "batch_size=12", "seed=3"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A toy2d MLP whose recipe samples with DPM-Solver++(2M)-7 on the log-SNR grid (built, weights redrawn so that
    samplers differ), and the same weights in a checkpoint whose config stores no sampler."""
    tmp = tmp_path_factory.mktemp("recipe_sampler")
    cfg = compose("train", [*TOY, *RECIPE], tmp)
    module = build_module(cfg, data_info(instantiate(cfg.data)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    assert module.config["sampler"]["steps"] == 7
    return {"recipe": save_checkpoint(module, tmp / "recipe.ckpt"),
            "bare": save_checkpoint(module, tmp / "bare.ckpt", lambda c: c.pop("sampler"))}


def _sample(tmp_path, name, ckpt, *overrides):
    rec = sample(compose("sample", [f"ckpt_path={ckpt}", *SAMPLE, *overrides], tmp_path / name))
    return rec, np.load(tmp_path / name / "run" / "samples.npz")["points"]


def test_the_tools_default_to_the_placeholder():
    for tool in ("sample", "evaluate"):
        cfg = compose(tool, [])
        assert is_recipe_placeholder(cfg.sampler) and cfg.sampler.steps is None
    assert not is_recipe_placeholder(compose("sample", ["sampler=ddim"]).sampler)
    assert not is_recipe_placeholder(compose("train", []).sampler)


def test_resolution_rules(ckpts):
    class Stored:  # what load_model gives: the training config as a plain dict
        config = {"sampler": {"_target_": "diffexp.samplers.HeunSampler", "steps": 9, "rho": 7.0}}

    placeholder = OmegaConf.load(CONF / "sampler" / "recipe.yaml")
    config, source = recipe_sampler_config(placeholder, Stored())
    assert source == "checkpoint" and config.steps == 9 and config._target_.endswith("HeunSampler")
    assert "_recipe_" not in config
    placeholder.steps = 4
    assert recipe_sampler_config(placeholder, Stored())[0].steps == 4  # a given option wins over the stored one
    config, source = recipe_sampler_config(placeholder, object())  # stores nothing: the shipped DDIM, steps 4
    assert source == "default" and config._target_.endswith("DDIMSampler") and config.steps == 4
    explicit = OmegaConf.create({"_target_": "diffexp.samplers.DDIMSampler", "steps": 3})
    assert recipe_sampler_config(explicit, Stored()) == (explicit, "explicit")


def test_sample_uses_the_checkpoint_sampler_and_an_explicit_one_wins(ckpts, tmp_path, capsys):
    rec, x = _sample(tmp_path, "recipe", ckpts["recipe"])
    assert rec["sampler"] == "dpmpp_2m-7" and rec["nfe"] == 7 and rec["sampler_source"] == "checkpoint"
    assert rec["sampler_config"]["spacing"] == "logsnr"
    assert "the checkpoint's recipe (its stored sampler)" in capsys.readouterr().out
    same, y = _sample(tmp_path, "same", ckpts["recipe"], *RECIPE)
    assert same["sampler_source"] == "explicit" and np.array_equal(x, y)  # the very sampler it names
    fewer, z = _sample(tmp_path, "fewer", ckpts["recipe"], "sampler.steps=3")
    assert fewer["nfe"] == 3 and fewer["sampler_config"]["spacing"] == "logsnr" and not np.array_equal(x, z)
    other, _ = _sample(tmp_path, "other", ckpts["recipe"], "sampler=ddim", "sampler.steps=4")
    assert other["sampler"] == "ddim-4" and other["nfe"] == 4 and other["sampler_source"] == "explicit"
    bare, _ = _sample(tmp_path, "bare", ckpts["bare"])
    assert bare["sampler"] == "ddim-50" and bare["nfe"] == 50 and bare["sampler_source"] == "default"


def test_wrong_options_on_the_recipe_sampler_name_the_key(ckpts, tmp_path):
    with pytest.raises(ConfigError, match=r"sampler.steps=0: must be a positive integer"):  # before loading
        _sample(tmp_path, "zero", ckpts["recipe"], "sampler.steps=0")
    with pytest.raises(ConfigError, match=r"sampler.steps=80 with schedule.num_timesteps=50"):  # DDIM: steps <= T
        _sample(tmp_path, "many", ckpts["bare"], "sampler.steps=80")
    with pytest.raises(ConfigError, match=r"sampler.spacing=nope"):
        _sample(tmp_path, "spacing", ckpts["recipe"], "+sampler.spacing=nope")


def test_a_training_run_must_name_its_sampler(tmp_path):
    from diffexp.validation import validate_config

    with pytest.raises(ConfigError, match=r"sampler=recipe: the checkpoint's own sampler, for sample.py and evaluate"):
        validate_config(compose("train", [*TOY, "sampler=recipe"], tmp_path))


def test_evaluate_scores_with_the_checkpoint_sampler(ckpts, tmp_path):
    small = ["metrics=[swd]", "num_samples=16", "batch_size=16", "num_real=64", "swd_projections=16",
             f"paths.cache_dir={tmp_path / 'cache'}"]
    rec = evaluate(compose("evaluate", [f"ckpt_path={ckpts['recipe']}", *small], tmp_path / "recipe"))
    assert rec["sampler_source"] == "checkpoint" and rec["sampler_name"] == "dpmpp_2m-7" and rec["nfe"] == 7
    assert rec["keys"] and all("/dpmpp_2m-7/" in k for k in rec["keys"])
    same = evaluate(compose("evaluate", [f"ckpt_path={ckpts['recipe']}", *small, *RECIPE], tmp_path / "same"))
    assert same["sampler_source"] == "explicit" and same["values"]["swd"] == rec["values"]["swd"]
