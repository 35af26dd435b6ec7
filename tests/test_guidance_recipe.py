"""A recipe's classifier-free guidance scale travels with its checkpoint (issue 16): train.py's top-level
``guidance_scale`` feeds the sample/metrics callbacks and is stored in the checkpoint's config; ``sample.py`` and
``evaluate.py`` (``guidance_scale: null``) sample at it, an explicit value wins, a checkpoint without the key means
1.0; distill.py's student inherits the teacher's; a safetensors export carries it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import TOY_MLP, compose, save_checkpoint
from diffexp.build import build_module, data_info
from diffexp.checkpoint import CHECKPOINT_KEY
from diffexp.cli.distill import student_config
from diffexp.cli.evaluate import evaluate
from diffexp.cli.sample import sample
from diffexp.metrics.summary import write_summary
from diffexp.validation import ConfigError

TOY = TOY_MLP
SAMPLE = ["sampler=ddim", "sampler.steps=4", "num_samples=12", "batch_size=12", "seed=3"]
RECIPE_W = 1.25


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A class-conditional toy2d MLP whose recipe says guidance_scale=1.25 (built, not trained: its weights are
    redrawn from a seeded generator so that the conditional and null-label predictions differ), the same weights as
    an older checkpoint without the key, and one whose stored value is nonsense."""
    tmp = tmp_path_factory.mktemp("recipe_w")
    cfg = compose("train", [*TOY, "conditional=true", f"guidance_scale={RECIPE_W}"], tmp)
    module = build_module(cfg, data_info(instantiate(cfg.data)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    assert module.config["guidance_scale"] == RECIPE_W and module.num_classes == 8
    return {"recipe": save_checkpoint(module, tmp / "recipe.ckpt"),
            "old": save_checkpoint(module, tmp / "old.ckpt", lambda c: c.pop("guidance_scale")),
            "bad": save_checkpoint(module, tmp / "bad.ckpt", lambda c: c.update(guidance_scale=-2.0))}


def _sample(tmp_path, name, ckpt, *overrides):
    rec = sample(compose("sample", [f"ckpt_path={ckpt}", *SAMPLE, *overrides], tmp_path / name))
    return rec, np.load(tmp_path / name / "run" / "samples.npz")["points"]


# ------------------------------------------------------------------------------------------------ the configs
def test_callbacks_sample_at_the_recipe_scale_and_work_without_the_key():
    cfg = compose("train", [*TOY, "conditional=true", "guidance_scale=1.5", "callbacks=with_metrics"])
    assert cfg.callbacks.sample.guidance_scale == 1.5 and cfg.callbacks.metrics.guidance_scale == 1.5
    callback = instantiate(cfg.callbacks.sample)
    assert callback.guidance_scale == 1.5
    # a config without the top-level key (callbacks composed into another tool's config): no guidance
    plain = compose("train", [*TOY, "callbacks=with_metrics"])
    with open_dict(plain):
        del plain["guidance_scale"]
    assert plain.callbacks.sample.guidance_scale == 1.0 and plain.callbacks.metrics.guidance_scale == 1.0
    assert compose("sample", []).guidance_scale is None and compose("evaluate", []).guidance_scale is None


# ------------------------------------------------------------------------------------------------- sample.py
def test_sample_uses_the_checkpoint_recipe_scale_and_an_explicit_one_wins(ckpts, tmp_path, capsys):
    rec, x = _sample(tmp_path, "recipe", ckpts["recipe"])
    assert rec["guidance_scale"] == RECIPE_W and rec["guidance_scale_source"] == "checkpoint"
    assert "classifier-free guidance scale 1.25 (the checkpoint's recipe" in capsys.readouterr().out
    saved = json.loads((tmp_path / "recipe" / "run" / "record.json").read_text())
    assert saved["guidance_scale"] == RECIPE_W and saved["guidance_scale_source"] == "checkpoint"
    rec_w, x_w = _sample(tmp_path, "explicit", ckpts["recipe"], f"guidance_scale={RECIPE_W}")
    rec_1, x_1 = _sample(tmp_path, "one", ckpts["recipe"], "guidance_scale=1.0")
    assert rec_w["guidance_scale_source"] == "explicit" and rec_1["guidance_scale"] == 1.0
    assert np.array_equal(x, x_w)  # the recipe default is exactly the explicit 1.25 (same seeds)
    assert np.abs(x - x_1).max() > 1e-3  # and the scale reached the samples


def test_a_checkpoint_without_the_key_samples_at_1(ckpts, tmp_path, capsys):
    rec, x = _sample(tmp_path, "old", ckpts["old"])
    assert rec["guidance_scale"] == 1.0 and rec["guidance_scale_source"] == "default"
    assert "stores no guidance_scale" in capsys.readouterr().out
    _, x_1 = _sample(tmp_path, "one", ckpts["recipe"], "guidance_scale=1.0")  # same weights, w = 1 given
    assert np.array_equal(x, x_1)


def test_bad_scales_are_config_errors_naming_the_key(ckpts, tmp_path):
    with pytest.raises(ConfigError, match=r"guidance_scale=-1.0: must be >= 0"):
        _sample(tmp_path, "neg", ckpts["recipe"], "guidance_scale=-1.0")
    with pytest.raises(ConfigError, match=r"bad.ckpt stores guidance_scale=-2.0: must be >= 0.*pass guidance_scale="):
        _sample(tmp_path, "stored", ckpts["bad"])
    _sample(tmp_path, "override", ckpts["bad"], "guidance_scale=2.0")  # an explicit value needs no stored one


# ----------------------------------------------------------------------------------------------- evaluate.py
def test_evaluate_records_the_resolved_scale_in_record_keys_and_summary(ckpts, tmp_path):
    small = ["metrics=[swd]", "num_samples=16", "batch_size=16", "num_real=64", "kid_subset_size=8", "kid_subsets=2",
             "swd_projections=16", "sampler=ddim", "sampler.steps=4", f"paths.cache_dir={tmp_path / 'cache'}"]
    jobs = tmp_path / "jobs"
    rec = evaluate(compose("evaluate", [f"ckpt_path={ckpts['recipe']}", *small], jobs / "recipe"))
    assert rec["guidance_scale"] == RECIPE_W and rec["guidance_scale_source"] == "checkpoint"
    assert rec["guidance"]["kind"] == "cfg" and rec["guidance"]["cfg_scale"] == RECIPE_W
    assert all("/ddim-4-cfg1.25/" in k for k in rec["keys"]) and rec["keys"]
    one = evaluate(compose("evaluate", [f"ckpt_path={ckpts['recipe']}", "guidance_scale=1", *small], jobs / "one"))
    assert one["guidance_scale"] == 1.0 and one["guidance_scale_source"] == "explicit" and one["guidance"]["kind"] == "none"
    assert all("/ddim-4/" in k for k in one["keys"])
    old = evaluate(compose("evaluate", [f"ckpt_path={ckpts['old']}", *small], jobs / "old"))
    assert old["guidance_scale"] == 1.0 and old["guidance_scale_source"] == "default"
    assert old["values"]["swd"] == one["values"]["swd"]  # same weights and samples at w = 1
    write_summary(jobs)
    rows = list(csv.DictReader(open(jobs / "summary.csv")))
    assert sorted((r["guidance"], r["cfg_scale"]) for r in rows) == [("cfg", "1.25"), ("none", "1.0"), ("none", "1.0")]


# ------------------------------------------------------------------------------------ distill.py, export.py
def test_the_student_inherits_the_teacher_recipe_scale_unless_given(ckpts):
    teacher = torch.load(ckpts["recipe"], map_location="cpu", weights_only=False)[CHECKPOINT_KEY]["config"]
    base = [*TOY, "distill=progressive", f"teacher={ckpts['recipe']}"]
    student = student_config(compose("distill", base), teacher)
    assert student.guidance_scale == RECIPE_W and student.callbacks.sample.guidance_scale == RECIPE_W
    assert student_config(compose("distill", [*base, "guidance_scale=2.0"]), teacher).guidance_scale == 2.0
    old = {k: v for k, v in teacher.items() if k != "guidance_scale"}
    assert student_config(compose("distill", base), old).guidance_scale == 1.0
    assert student_config(compose("distill", [*TOY, "distill=consistency_training"]), None).guidance_scale == 1.0


def test_a_safetensors_export_carries_the_scale(ckpts, tmp_path):
    from diffexp.interop.export import export_checkpoint

    record = export_checkpoint(ckpts["recipe"], tmp_path / "export", format="safetensors")
    assert record["guidance_scale"] == RECIPE_W and record["config"]["guidance_scale"] == RECIPE_W
    rec = sample(compose("sample", [f"pretrained={tmp_path / 'export'}", *SAMPLE], tmp_path / "pre"))
    assert rec["guidance_scale"] == RECIPE_W and rec["guidance_scale_source"] == "checkpoint"
    _, x = _sample(tmp_path, "ckpt", ckpts["recipe"])
    assert np.allclose(np.load(tmp_path / "pre" / "run" / "samples.npz")["points"], x, atol=1e-5)
