"""Checkpoint files: atomic writes (a failure mid-write keeps the previous last.ckpt loadable), clear
errors for corrupt or incompatible checkpoints, ckpt_path=auto, and SIGTERM sent to a real training
process (it saves a resumable last.ckpt and exits with 128+15, no traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, compose
from diffexp.atomic import atomic_torch_save as atomic_save
from diffexp.build import build_module, data_info, load_module
from diffexp.checkpoint import (
    AtomicCheckpointIO,
    AtomicModelCheckpoint,
    CheckpointError,
    config_mismatches,
    read_checkpoint,
)
from diffexp.cli.train import train
from diffexp.resume import find_auto_checkpoint

TINY = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
        "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=50",
        "sampler.steps=5", "trainer.accelerator=cpu", "trainer.val_check_interval=1000", "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
        "callbacks=model_checkpoint", "print_config=false"]


def partial_then_fail(obj, f, *args, **kwargs):
    """A torch.save killed mid-write: some bytes of a zip header land in the file, then an error."""
    f.write(b"PK\x03\x04" + b"\x00" * 100)
    raise OSError("injected: disk full / process killed during the save")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with the shipped trainer config (plugins included); its trainer, module and last.ckpt."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose("train", TINY + ["trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=3"], tmp)
    dm = instantiate(cfg.data)
    module = build_module(cfg, data_info(dm))
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    trainer.fit(module, datamodule=dm)
    return trainer, module, Path(cfg.paths.output_dir) / "checkpoints"


def test_trainer_writes_through_the_atomic_plugin_and_keeps_the_final_step(trained):
    trainer, module, ckpts = trained
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # wired by conf/trainer/default.yaml
    assert isinstance(trainer.checkpoint_callback, AtomicModelCheckpoint)
    # every_n_train_steps=3 saves step 3; the final step 4 is still what last.ckpt holds
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000003.ckpt"]  # no temporary files
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 4
    assert torch.equal(load_module(ckpts / "last.ckpt").ema.net.out.weight, module.ema.net.out.weight)


def test_failure_during_save_keeps_the_previous_last_ckpt(trained, monkeypatch):
    trainer, module, ckpts = trained
    last = ckpts / "last.ckpt"
    before = last.read_bytes()
    monkeypatch.setattr(torch, "save", partial_then_fail)
    with pytest.raises(OSError, match="injected"):
        trainer.save_checkpoint(str(last))
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert read_checkpoint(last)["global_step"] == 4 and load_module(last).ema.num_updates == 4
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000003.ckpt"]  # the partial file is gone
    # What the same failure does without the plugin: a truncated file that cannot be read.
    plain = ckpts.parent / "plain.ckpt"
    plain.write_bytes(before)
    monkeypatch.setattr(torch, "save", partial_then_fail)
    with pytest.raises(OSError):
        with open(plain, "wb") as f:
            torch.save({}, f)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(plain)


def test_link_mode_replaces_last_atomically(tmp_path, monkeypatch):
    step, last = tmp_path / "step0000010.ckpt", tmp_path / "last.ckpt"
    atomic_save({"x": 1}, step)
    atomic_save({"x": 0}, last)

    class _Trainer:
        is_global_zero = True
        strategy = type("S", (), {"barrier": staticmethod(lambda *a: None)})()

    AtomicModelCheckpoint.link_checkpoint(_Trainer(), str(step), str(last))
    assert last.is_symlink() and torch.load(last)["x"] == 1
    # A failure while making the new link (no symlinks, copy dies half-way) leaves the old last.ckpt.
    atomic_save({"x": 2}, step)
    old = tmp_path / "step0000005.ckpt"
    atomic_save({"x": 0}, old)
    AtomicModelCheckpoint.link_checkpoint(_Trainer(), str(old), str(last))

    def no_symlink(*a, **k):
        raise OSError("no symlinks here")

    def broken_copy(src, dst, *a, **k):
        Path(dst).write_bytes(b"PK\x03")
        raise OSError("injected copy failure")

    monkeypatch.setattr(os, "symlink", no_symlink)
    monkeypatch.setattr("shutil.copyfile", broken_copy)
    with pytest.raises(OSError, match="injected"):
        AtomicModelCheckpoint.link_checkpoint(_Trainer(), str(step), str(last))
    monkeypatch.undo()
    assert torch.load(last)["x"] == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt", "step0000005.ckpt", "step0000010.ckpt"]


def test_corrupt_checkpoint_is_a_clear_error_before_training(trained, tmp_path):
    _, _, ckpts = trained
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes((ckpts / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt is corrupt or truncated"):
        AtomicCheckpointIO().load_checkpoint(bad)
    cfg = compose("train", TINY + ["trainer.max_steps=6", f"ckpt_path={bad}"], tmp_path)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    with pytest.raises(CheckpointError, match="checkpoint not found.*last.ckpt"):
        train(compose("train", TINY + [f"ckpt_path={tmp_path / 'nowhere' / 'last.ckpt'}"], tmp_path))


def test_incompatible_config_names_the_differing_keys(trained, tmp_path):
    _, _, ckpts = trained
    last = ckpts / "last.ckpt"
    cfg = compose("train", TINY + ["model.hidden_dim=32", "prediction=v", "optimizer.lr=1e-3", f"ckpt_path={last}"], tmp_path)
    with pytest.raises(CheckpointError) as e:
        train(cfg)
    msg = str(e.value)
    assert "model.hidden_dim: checkpoint 16, config 32" in msg and "prediction: checkpoint 'eps', config 'v'" in msg
    assert "optimizer" not in msg  # allowed to change on resume
    # The module refuses it too when Lightning restores a checkpoint directly (trainer.fit(ckpt_path=...)).
    module = build_module(cfg, data_info(instantiate(cfg.data)))
    with pytest.raises(CheckpointError, match="model.hidden_dim: checkpoint 16, config 32"):
        module.on_load_checkpoint(read_checkpoint(last))
    # An extended run (other max_steps / lr) is compatible.
    ok = compose("train", TINY + ["trainer.max_steps=9", "optimizer.lr=1e-3"], tmp_path)
    assert config_mismatches(read_checkpoint(last)["diffexp"]["config"], OmegaConf.to_container(ok, resolve=True)) == []


def test_the_resume_checkpoint_is_resolved_once_per_run(trained, tmp_path, monkeypatch, capsys):
    """train() reads and checks the checkpoint once (it used to resolve it twice: loggers, then fit)."""
    import diffexp.resume as resume

    _, _, ckpts = trained
    calls = []
    real = resume.resolve_ckpt_path
    monkeypatch.setattr(resume, "resolve_ckpt_path", lambda cfg: calls.append(1) or real(cfg))
    metrics = train(compose("train", TINY + ["trainer.max_steps=5", f"ckpt_path={ckpts / 'last.ckpt'}"], tmp_path))
    assert metrics["global_step"] == 5 and len(calls) == 1
    assert capsys.readouterr().out.count("[diffexp] resuming from") == 1


def test_auto_takes_the_newest_compatible_readable_checkpoint(trained, tmp_path):
    _, _, ckpts = trained
    good = read_checkpoint(ckpts / "last.ckpt")
    other = {**good, "diffexp": {**good["diffexp"], "config": {**good["diffexp"]["config"], "prediction": "v"}}}
    root = tmp_path / "train"
    paths = {name: root / "runs" / name / "checkpoints" / "last.ckpt" for name in ("old", "compatible", "other", "broken")}
    atomic_save(good, paths["old"])
    atomic_save(good, paths["compatible"])
    atomic_save(other, paths["other"])
    paths["broken"].parent.mkdir(parents=True)
    paths["broken"].write_bytes(b"PK\x03\x04garbage")
    for i, name in enumerate(["old", "compatible", "other", "broken"]):  # increasing modification times
        os.utime(paths[name], (1e9 + i, 1e9 + i))
    path, notes = find_auto_checkpoint(root, good["diffexp"]["config"])
    assert path == str(paths["compatible"])
    assert "broken" in notes[0] and "corrupt" in notes[0] and "other" in notes[1] and "prediction" in notes[1]
    assert find_auto_checkpoint(tmp_path / "empty", {}) == (None, [])


@pytest.mark.slow  # ~35 s (a fresh interpreter); the in-process equivalent is tests/test_resume.py::test_sigterm_*
def test_sigterm_to_a_training_process_saves_and_resumes(tmp_path):
    """A real `python train.py` process gets SIGTERM mid-training: it finishes the step, writes last.ckpt,
    prints how to resume, exits with 128+15 without a traceback and without the end-of-run sample grid;
    `ckpt_path=auto` then continues it."""
    overrides = TINY + ["trainer.max_steps=100000", "callbacks=[model_checkpoint,sample]",
                        "callbacks.model_checkpoint.every_n_train_steps=5", "callbacks.sample.every_n_steps=100000",
                        f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 150
        while not list(tmp_path.glob("train/runs/*/checkpoints/step0000005.ckpt")):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "training did not reach step 5"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        to_exit = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "received SIGTERM" in out and "stopped by SIGTERM" in out and "Traceback" not in out, out[-3000:]
    # Save and exit: no end-of-run sample grid (at_end) in a preempted job's grace period (hang guard: 30 s).
    assert "skipped the end-of-run sample grids" in out and to_exit < 30, (to_exit, out[-3000:])
    assert not list(tmp_path.glob("train/runs/*/samples/*.png"))
    (last,) = tmp_path.glob("train/runs/*/checkpoints/last.ckpt")
    stopped_at = read_checkpoint(last)["global_step"]
    assert stopped_at >= 5 and f"at step {stopped_at}" in out
    cfg = compose("train", TINY + [f"trainer.max_steps={stopped_at + 3}", "ckpt_path=auto"], tmp_path)
    cfg.paths.output_dir = str(tmp_path / "train" / "runs" / "resumed")
    assert train(cfg)["global_step"] == stopped_at + 3
    resumed = read_checkpoint(tmp_path / "train" / "runs" / "resumed" / "checkpoints" / "last.ckpt")
    assert int(resumed["state_dict"]["ema.num_updates"]) == stopped_at + 3  # EMA continued from the checkpoint


@pytest.mark.parametrize("end", [["trainer.max_steps=5"], ["trainer.max_steps=-1", "trainer.max_epochs=2"]],
                         ids=["max_steps", "max_epochs"])
def test_a_failing_end_of_run_callback_does_not_lose_the_final_checkpoint(tmp_path, monkeypatch, end):
    """Lightning runs ModelCheckpoint's on_train_end after the other callbacks': the final last.ckpt is saved
    before the end-of-run sample grid runs, so a grid that raises still leaves a resumable final step."""
    from diffexp.callbacks import SampleCallback

    def broken(self, trainer, pl_module):
        raise RuntimeError("injected: the end-of-run sample grid failed")

    monkeypatch.setattr(SampleCallback, "evaluate", broken)
    cfg = compose("train", TINY + end + ["callbacks=[model_checkpoint,sample]", "callbacks.sample.every_n_steps=null",
                                         "callbacks.model_checkpoint.every_n_train_steps=3"], tmp_path)
    with pytest.raises(RuntimeError, match="injected"):
        train(cfg)
    final = 5 if end == ["trainer.max_steps=5"] else 8  # toy2d: 64 points / batch 16 = 4 steps per epoch
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == final
    monkeypatch.undo()
    resumed = compose("train", TINY + ["trainer.max_steps=10", "callbacks.model_checkpoint.every_n_train_steps=3",
                                       f"ckpt_path={last}"], tmp_path / "resumed")
    assert train(resumed)["global_step"] == 10
