"""Numerics of a training step: non-finite losses/gradients (raise or skip), gradient accumulation with
the EMA updated once per optimizer step, gradient clipping, the global batch, and mixed precision
(bf16-mixed on CPU; 16-mixed with loss scaling on GPU, a config error on CPU)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from conftest import compose
from diffexp.build import build_module, data_info
from diffexp.checkpoint import read_checkpoint
from diffexp.validation import ConfigError, apply_global_batch

TINY = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
        "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=50",
        "sampler.steps=5", "trainer.accelerator=cpu", "trainer.val_check_interval=1000", "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
        "callbacks=model_checkpoint", "print_config=false", "optimizer.lr=1e-2", "lr_scheduler.warmup_steps=0"]


def fit(tmp_path, overrides, extra_callbacks=()):
    cfg = compose("train", TINY + list(overrides), tmp_path)
    dm = instantiate(cfg.data)
    module = build_module(cfg, data_info(dm))
    callbacks = [instantiate(node) for node in cfg.callbacks.values()] + list(extra_callbacks)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    return cfg, trainer, module, dm


class Inject(Callback):
    """Makes the loss (a NaN input) or only the gradients (an inf gradient hook) non-finite during the
    optimizer step that starts at global step ``step``."""

    def __init__(self, step: int, where: str = "loss"):
        self.step, self.where, self.handle = step, where, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        if self.where == "loss":
            batch[0][0, 0] = float("nan")
        else:
            self.handle = pl_module.net.out.weight.register_hook(lambda g: g * float("inf"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class Snapshot(Callback):
    """The weights, EMA and optimizer state at the start of every optimizer step."""

    def __init__(self):
        self.at: dict[int, tuple] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at[trainer.global_step] = (
            copy.deepcopy(pl_module.net.state_dict()), copy.deepcopy(pl_module.ema.state_dict()),
            copy.deepcopy(trainer.optimizers[0].state_dict()["state"]))

    def on_train_end(self, trainer, pl_module):
        self.on_train_batch_start(trainer, pl_module, None, 0)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_skip_leaves_weights_optimizer_and_ema_unchanged(tmp_path, where, capsys):
    snap = Snapshot()
    _, trainer, module, dm = fit(tmp_path, ["trainer.max_steps=5", "module.nonfinite=skip"], [Inject(2, where), snap])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 5 and module.skipped_steps == 1
    before, after = snap.at[2], snap.at[3]  # step 2 -> 3 was skipped
    assert same(before[0], after[0]) and same(before[1], after[1]) and same(before[2], after[2])
    assert not same(snap.at[3][0], snap.at[4][0]) and not same(snap.at[1][2], snap.at[2][2])  # other steps do change
    assert int(module.ema.num_updates) == 4  # 5 optimizer steps, one skipped
    assert all(torch.isfinite(p).all() for p in list(module.net.parameters()) + list(module.ema.parameters()))
    assert f"skipping step 2: non-finite {'loss' if where == 'loss' else 'gradient norm'}" in capsys.readouterr().out


def test_raise_stops_with_step_and_terms_and_keeps_the_last_good_checkpoint(tmp_path):
    _, trainer, module, dm = fit(tmp_path, ["trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=2"],
                                 [Inject(3, "loss")])
    with pytest.raises(FloatingPointError) as e:
        trainer.fit(module, datamodule=dm)
    msg = str(e.value)
    assert "non-finite loss nan" in msg and "terms: {'mse': nan}" in msg and "at step 3" in msg
    assert "the last good checkpoint is kept" in msg and "last.ckpt" in msg and "module.nonfinite=skip" in msg
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]


class GradNormAtStep(Callback):
    """The gradient norm the optimizer stepped with (after clipping), read by a step post-hook (Lightning
    runs forward, backward and clipping inside optimizer.step(closure), i.e. after any pre-hook)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_train_start(self, trainer, pl_module):
        def hook(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))
        trainer.optimizers[0].register_step_post_hook(hook)


def test_accumulation_updates_ema_once_per_optimizer_step_and_clips(tmp_path):
    norms = GradNormAtStep()
    cfg, trainer, module, dm = fit(tmp_path, ["trainer.max_steps=3", "trainer.accumulate_grad_batches=2",
                                              "trainer.gradient_clip_val=0.01"], [norms])
    assert apply_global_batch(cfg, trainer) == (
        "global batch = 32 = data.batch_size 16 × trainer.accumulate_grad_batches 2 × devices 1 × nodes 1")
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3 and int(module.ema.num_updates) == 3  # 6 micro-batches, 3 optimizer steps
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 6
    assert len(norms.norms) == 3 and all(0 < n <= 0.01 * (1 + 1e-4) for n in norms.norms), norms.norms


def test_global_batch_size_sets_accumulation(tmp_path):
    cfg = compose("train", TINY + ["+global_batch_size=64"], tmp_path)

    def trainer_for(global_batch_size, accumulate=1):
        cfg.global_batch_size, cfg.trainer.accumulate_grad_batches = global_batch_size, accumulate
        return instantiate(cfg.trainer, callbacks=[], logger=False)

    trainer = trainer_for(64)
    assert "global batch = 64" in apply_global_batch(cfg, trainer) and trainer.accumulate_grad_batches == 4
    with pytest.raises(ConfigError, match="global_batch_size=40 is not a multiple of .* 16 × 1 × 1 = 16"):
        apply_global_batch(cfg, trainer_for(40))
    with pytest.raises(ConfigError, match="needs trainer.accumulate_grad_batches=4"):
        apply_global_batch(cfg, trainer_for(64, 2))


class OutputDtype(Callback):
    def on_train_start(self, trainer, pl_module):
        self.dtypes = []
        pl_module.net.out.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))


def test_bf16_mixed_on_cpu_trains_with_fp32_weights_and_ema(tmp_path):
    probe = OutputDtype()
    _, trainer, module, dm = fit(tmp_path, ["trainer.max_steps=3", "trainer.precision=bf16-mixed"], [probe])
    init = copy.deepcopy(module.ema.net.state_dict())
    trainer.fit(module, datamodule=dm)
    assert probe.dtypes and all(d == torch.bfloat16 for d in probe.dtypes)  # the network ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in module.net.parameters())
    assert all(p.dtype == torch.float32 for p in module.ema.net.parameters())
    assert int(module.ema.num_updates) == 3 and not same(init, module.ema.net.state_dict())
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed (fp16 with loss scaling) needs a GPU")
def test_16_mixed_on_gpu_scales_the_loss_and_keeps_fp32_ema(tmp_path):
    _, trainer, module, dm = fit(tmp_path, ["trainer.max_steps=4", "trainer.precision=16-mixed", "trainer.accelerator=gpu"])
    trainer.fit(module, datamodule=dm)
    scaler = trainer.precision_plugin.scaler
    assert scaler is not None and scaler.get_scale() > 1  # loss scaling active
    assert all(p.dtype == torch.float32 for p in module.ema.net.parameters())
    # overflowed steps are skipped by the scaler (not raised) and leave the EMA alone
    assert int(module.ema.num_updates) <= 4 and module.skipped_steps == 0
