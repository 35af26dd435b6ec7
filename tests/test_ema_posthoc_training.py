"""Post-hoc EMA through training: snapshots written by the callback, resume, and the ``ema.py`` CLI.

Tiny runs (toy2d, a 16-unit MLP, 20 steps). Exactness oracle: reconstructing a *tracked* length at the
last snapshot must give that profile's weights as saved in ``last.ckpt`` (the wanted profile is in the span).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import compose
from diffexp.build import load_denoiser
from diffexp.checkpoint import read_checkpoint
from diffexp.cli.ema import main as ema_main
from diffexp.cli.train import train
from diffexp.posthoc_ema import list_snapshots, reconstruct, weights_label

N, EVERY = 20, 5
BASE = [
    "data=toy2d", "data.num_train=96", "data.num_val=32", "data.num_test=32", "data.batch_size=16",
    "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16",
    "schedule.num_timesteps=40", "sampler.steps=5", "optimizer.lr=1e-2", "lr_scheduler.warmup_steps=3",
    f"trainer.max_steps={N}", "trainer.val_check_interval=10", "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "logger=none", "callbacks=[model_checkpoint,posthoc_ema]", "print_config=false",
    "module.posthoc_ema.sigma_rel=[0.05,0.10]", f"callbacks.posthoc_ema.every_n_steps={EVERY}",
    f"callbacks.model_checkpoint.every_n_train_steps={EVERY}",
]


class Crash(Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"injected crash at step {self.at_step}")


def run(tmp, tag: str, extra=()):
    cfg = compose("train", BASE + list(extra), tmp)
    cfg.paths.output_dir = str(tmp / "train" / "runs" / tag)
    cfg.callbacks.posthoc_ema.dirpath = str(tmp / "train" / "runs" / tag / "phema")
    cfg.callbacks.model_checkpoint.dirpath = str(tmp / "train" / "runs" / tag / "checkpoints")
    return train(cfg), tmp / "train" / "runs" / tag


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phema")
    metrics, run_dir = run(tmp, "ref")
    assert metrics["global_step"] == N
    return run_dir


def _phema(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith("phema.")}


def test_snapshots_are_written_every_n_steps_and_reconstruct_the_tracked_profile_exactly(reference, capsys):
    snaps = list_snapshots(reference)
    assert [s.global_step for s in snaps] == list(range(EVERY, N + 1, EVERY))
    assert [s.num_updates for s in snaps] == [s.global_step for s in snaps]  # one update per optimizer step
    last = read_checkpoint(reference / "checkpoints" / "last.ckpt")
    assert int(last["state_dict"]["phema.num_updates"]) == N
    assert last["diffexp"]["posthoc_ema_sigma_rel"] == [0.05, 0.10]

    assert ema_main([f"ckpt_dir={reference}", "sigma_rel=0.1,0.2"]) == 0
    out = capsys.readouterr().out
    assert "sigma_rel 0.100" in out and "evaluate.py -m ckpt_path=" in out
    path = reference / "posthoc_ema" / f"ema-sigma0.100-step{N:07d}.ckpt"
    denoiser, module = load_denoiser(path)  # sample.py / evaluate.py read it like any checkpoint
    assert module.uses_ema and denoiser.net is module.ema.net
    assert weights_label(module, True) == "phema-sigma0.100"  # metric keys tell it from the classic EMA
    tracked = {k[len("phema.nets.1."):]: v for k, v in last["state_dict"].items() if k.startswith("phema.nets.1.")}
    for key, value in module.ema.net.state_dict().items():
        torch.testing.assert_close(value, tracked[key], rtol=0, atol=1e-6)
    # The raw weights are the base checkpoint's; the classic EMA's were replaced.
    torch.testing.assert_close(module.net.state_dict(), {k[4:]: v for k, v in last["state_dict"].items()
                                                          if k.startswith("net.")})
    meta = read_checkpoint(path)["diffexp"]["posthoc_ema"]
    assert meta["sigma_rel"] == 0.1 and meta["relative_residual"][0] < 1e-9 and meta["written_into"] == "ema.net"
    assert (reference / "posthoc_ema" / f"ema-sigma0.200-step{N:07d}.ckpt").is_file()


def test_resume_continues_the_profiles_and_links_the_earlier_snapshots(reference, tmp_path):
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, "crashed", ["+callbacks.crash._target_=test_ema_posthoc_training.Crash", "+callbacks.crash.at_step=13"])
    last = tmp_path / "train" / "runs" / "crashed" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 10
    metrics, resumed = run(tmp_path, "resumed", [f"ckpt_path={last}"])
    assert metrics["global_step"] == N
    ref = _phema(read_checkpoint(reference / "checkpoints" / "last.ckpt")["state_dict"])
    got = _phema(read_checkpoint(resumed / "checkpoints" / "last.ckpt")["state_dict"])
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    # The resumed run's folder holds the whole basis: steps 5 and 10 linked from the crashed run.
    snaps = list_snapshots(resumed)
    assert [s.global_step for s in snaps] == list(range(EVERY, N + 1, EVERY))
    a, _ = reconstruct(list_snapshots(reference), [0.15])
    b, _ = reconstruct(snaps, [0.15])
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert ema_main([f"ckpt_dir={tmp_path}", "sigma_rel=0.1"]) == 2
    assert "no post-hoc EMA snapshots" in capsys.readouterr().err
    assert ema_main([f"ckpt_dir={tmp_path}", "sigma_rel=0.1", "sigma=3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert ema_main([f"ckpt_dir={tmp_path}", "sigma_rel=0.5"]) == 2
    assert "(0, 0.2887)" in capsys.readouterr().err
    assert ema_main([f"ckpt_dir={tmp_path}"]) == 2
    assert "sigma_rel=... is required" in capsys.readouterr().err


def test_invalid_length_is_a_config_error_before_training(tmp_path):
    from diffexp.validation import ConfigError

    with pytest.raises(ConfigError, match=r"module\.posthoc_ema\.sigma_rel=0\.5"):
        run(tmp_path, "bad", ["module.posthoc_ema.sigma_rel=[0.05,0.5]"])


def test_evaluate_reconstructs_a_length_and_labels_the_weights(reference, tmp_path):
    from diffexp.build import load_module
    from diffexp.checkpoint import CheckpointError
    from diffexp.cli.evaluate import evaluate
    from diffexp.posthoc_ema import apply_posthoc_ema

    last = reference / "checkpoints" / "last.ckpt"
    module = load_module(last)
    assert weights_label(module, True) == "ema" and weights_label(module, False) == "raw"
    info = apply_posthoc_ema(module, last, 0.10)  # a tracked length at a snapshot step: that profile itself
    assert info["num_updates"] == N and weights_label(module, True) == "phema-sigma0.100"
    tracked = read_checkpoint(last)["state_dict"]
    for key, value in module.ema.net.state_dict().items():
        torch.testing.assert_close(value, tracked[f"phema.nets.1.{key}"], rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="no post-hoc EMA snapshot at the checkpoint's step 0"):
        module.checkpoint_info["global_step"] = 0
        apply_posthoc_ema(module, last, 0.10)

    cfg = compose("evaluate", [f"ckpt_path={last}", "ema_sigma_rel=0.15", "metrics=[swd]", "num_samples=16",
                               "batch_size=16", "sampler=ddim", "sampler.steps=5", "num_real=32",
                               f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    record = evaluate(cfg)
    assert record["weights"] == "phema-sigma0.150"
    assert record["keys"] and all("/phema-sigma0.150/" in k for k in record["keys"])
