"""distill.py end to end on toy2d: a tiny ddpm teacher from train.py, then each method as a Lightning run
(checkpoints the sampling tools load, progressive rounds, resume bit-identical, user errors)."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import compose
from diffexp.build import load_denoiser
from diffexp.checkpoint import read_checkpoint
from diffexp.cli.distill import distill
from diffexp.cli.train import train
from diffexp.errors import UserError
from diffexp.samplers import ConsistencySampler, DDIMSampler
from test_resume import assert_same

COMMON = [
    "data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=1", "trainer.val_check_interval=4", "logger=none", "callbacks=model_checkpoint",
    "print_config=false", "module.ema_decay=0.9",
]
TEACHER = ["model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16",
           "schedule.num_timesteps=16", "sampler.steps=8", "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = compose("train", COMMON + TEACHER, tmp)
    cfg.paths.output_dir = str(tmp / "teacher")
    train(cfg)
    return tmp / "teacher" / "checkpoints" / "last.ckpt"


def distill_cfg(tmp, teacher, method, extra=(), name="student"):
    cfg = compose("distill", COMMON + [f"teacher={teacher}", f"distill={method}", "trainer.max_steps=6", *extra], tmp)
    cfg.paths.output_dir = str(tmp / name)
    return cfg


@pytest.mark.parametrize("method", ["consistency_distillation", "consistency_training"])
def test_consistency_methods_train_and_sample(method, teacher, tmp_path):
    distill(distill_cfg(tmp_path, teacher, method))
    ckpt = tmp_path / "student" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(ckpt)["state_dict"]
    assert int(state["objective.steps_done"]) == 6
    assert any(k.startswith("objective.target_net.") for k in state) == (method == "consistency_distillation")
    model, module = load_denoiser(ckpt)
    assert model.prediction == "x0" and type(module.net).__name__ == "ConsistencyParameterization"
    x = ConsistencySampler(steps=2)(model, shape=(2,), seeds=range(8))
    assert x.shape == (8, 2) and bool(torch.isfinite(x).all())


@pytest.mark.parametrize("method", ["progressive", "consistency_distillation"])
def test_student_starts_from_the_teacher(method, teacher, tmp_path):
    """PD: the student's network is the teacher's; CD: F inside the consistency wrapper is, and so is θ⁻."""
    extra = ["distill.start_steps=2", "distill.objective.student_steps=1"] if method == "progressive" else []
    cfg = distill_cfg(tmp_path, teacher, method, extra)
    from hydra.utils import instantiate

    from diffexp.build import build_module, data_info
    from diffexp.cli.distill import init_from, student_config

    scfg = student_config(cfg, read_checkpoint(teacher)["diffexp"]["config"])
    module = build_module(scfg, data_info(instantiate(scfg.data)))
    init_from(str(teacher), method)(module)
    _, t_module = load_denoiser(teacher)
    nets = [module.net, module.ema.net] if method == "progressive" else [module.net.net, module.objective.target_net.net]
    want = t_module.sampling_net().state_dict()
    for net in nets:
        got = net.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_progressive_rounds_halve_the_steps(teacher, tmp_path):
    distill(distill_cfg(tmp_path, teacher, "progressive", ["distill.start_steps=8", "distill.end_steps=1", "trainer.max_steps=3"]))
    rounds = json.loads((tmp_path / "student" / "rounds.json").read_text())
    assert sorted(int(k) for k in rounds) == [1, 2, 4]
    for steps in (4, 2, 1):
        ckpt = tmp_path / "student" / f"round-{steps}" / "checkpoints" / "last.ckpt"
        meta = read_checkpoint(ckpt)["diffexp"]["config"]
        assert meta["objective"]["student_steps"] == steps
        teacher_of_round = meta["objective"]["teacher"]
        assert teacher_of_round == (str(teacher) if steps == 4 else str(tmp_path / "student" / f"round-{2 * steps}" / "checkpoints" / "last.ckpt"))
        model, _ = load_denoiser(ckpt)
        x = DDIMSampler(steps=steps, spacing="trailing")(model, shape=(2,), seeds=range(4))
        assert bool(torch.isfinite(x).all())


class Crash(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 4:  # after step 3 was checkpointed
            raise RuntimeError("injected crash")


def test_resume_mid_distillation_is_bit_identical(teacher, tmp_path):
    extra = ["callbacks.model_checkpoint.every_n_train_steps=3"]
    distill(distill_cfg(tmp_path, teacher, "consistency_distillation", extra, name="ref"))
    crash = distill_cfg(tmp_path, teacher, "consistency_distillation", extra + ["+callbacks.crash._target_=test_distill_cli.Crash"], name="crashed")
    with pytest.raises(RuntimeError, match="injected crash"):
        distill(crash)
    resumed = distill_cfg(tmp_path, teacher, "consistency_distillation",
                          extra + [f"ckpt_path={tmp_path / 'crashed' / 'checkpoints' / 'step0000003.ckpt'}"], name="resumed")
    distill(resumed)
    ref = read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    got = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert ref["global_step"] == got["global_step"] == 6
    assert_same(ref["state_dict"], got["state_dict"], "state_dict")  # student, EMA, target θ⁻, step counter
    assert_same(ref["optimizer_states"], got["optimizer_states"], "optimizer")


def test_user_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match="teacher=null"):
        distill(compose("distill", COMMON + ["distill=consistency_distillation"], tmp_path))
    with pytest.raises(UserError, match="not found"):
        distill(distill_cfg(tmp_path, tmp_path / "nope.ckpt", "progressive"))


def test_method_alias_and_config_errors(tmp_path, monkeypatch):
    import sys

    import diffexp.cli.distill as cli

    seen = []
    monkeypatch.setattr(cli, "_main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["distill.py", "teacher=x.ckpt", "method=progressive"])
    cli.main()
    assert seen == [["distill.py", "teacher=x.ckpt", "distill=progressive"]]
    with pytest.raises(UserError, match="trainer.max_steps"):  # an epoch-based run has no length for N(k)
        distill(compose("distill", COMMON + ["model=mlp", "distill=consistency_training", "trainer.max_steps=-1", "trainer.max_epochs=1"], tmp_path))


def test_consistency_runs_draw_sample_grids_at_1_2_4_nfe(teacher, tmp_path):
    cfg = distill_cfg(tmp_path, teacher, "consistency_distillation",
                      ["callbacks=[model_checkpoint,sample]", "callbacks.sample.num_samples=4", "trainer.max_steps=2"])
    distill(cfg)
    names = sorted(p.name for p in (tmp_path / "student" / "samples").rglob("*") if p.is_file())
    for nfe in (1, 2, 4):
        assert any(f"consistency-{nfe}" in n for n in names), names
