"""The sample callback and the sampling CLI produce images from a checkpoint trained a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, compose
from diffexp.build import CheckpointError
from diffexp.cli.sample import sample
from diffexp.cli.train import train

TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.dropout=0.0"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Digits (8x8), a tiny UNet, 4 steps, with the sample callback (DDIM-5, trajectory strip) on."""
    tmp = tmp_path_factory.mktemp("digits")
    cfg = compose("train", ["data=digits", "data.subset=128", "data.batch_size=16", *TINY_UNET,
                            "schedule.num_timesteps=100", "sampler=ddim", "sampler.steps=5", "trainer.max_steps=4",
                            "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "logger=tensorboard",
                            "callbacks.sample.every_n_steps=2", "callbacks.sample.num_samples=16",
                            "callbacks.sample.trajectory=4", "callbacks.model_checkpoint.every_n_train_steps=2",
                            "print_config=false", "~callbacks.progress_bar", "trainer.enable_progress_bar=false"], tmp)
    train(cfg)
    return tmp / "run"


def test_sample_callback_writes_grids_and_trajectory(digits_run):
    pngs = sorted(p.name for p in (digits_run / "samples").glob("*.png"))
    assert "samples_ddim-5_step0000002.png" in pngs and "samples_ddim-5_step0000004.png" in pngs, pngs
    assert any("trajectory" in p for p in pngs), pngs
    grid = np.asarray(Image.open(digits_run / "samples" / "samples_ddim-5_step0000004.png"))
    assert grid.dtype == np.uint8 and grid.shape[0] >= 4 * 8 and grid.std() > 0  # a 4x4 grid of 8x8 images
    events = list((digits_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "the grid must also reach the configured logger"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    assert "samples/ddim-5" in acc.Tags()["images"], acc.Tags()["images"]


def test_sample_cli_writes_npz_grid_and_record(digits_run, compose_cfg, tmp_path):
    ckpt = digits_run / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(["ckpt_path=" + str(ckpt), "sampler=ddpm", "sampler.steps=10", "num_samples=20", "batch_size=7",
                       "seed=5"], config_name="sample")
    record = sample(cfg)
    out = tmp_path / "run"
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (20, 8, 8, 1) and data["images"].dtype == np.uint8
    assert list(data["seeds"]) == list(range(5, 25))
    saved = json.loads((out / "record.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["nfe"] == 10 and saved["weights"] == "ema" and saved["global_step"] == 4
    assert saved["sampler_config"]["steps"] == 10 and saved["seeds"] == [5, 24]
    assert (out / "grid.png").is_file()
    # Samples depend on their seed only: the same seeds in another batch size give the same images.
    cfg2 = compose("sample", ["ckpt_path=" + str(ckpt), "sampler=ddpm", "sampler.steps=10", "num_samples=20",
                              "batch_size=20", "seed=5"], tmp_path / "again")
    sample(cfg2)
    again = np.load(tmp_path / "again" / "run" / "samples.npz")["images"]
    assert np.abs(again.astype(int) - data["images"].astype(int)).max() <= 1


def test_missing_and_corrupt_checkpoints_are_clear_errors(digits_run, compose_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        sample(compose_cfg([f"ckpt_path={tmp_path / 'nope.ckpt'}"], config_name="sample"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes((digits_run / "checkpoints" / "last.ckpt").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt"):
        sample(compose_cfg([f"ckpt_path={corrupt}"], config_name="sample"))


def test_sample_cli_multirun_over_samplers(digits_run, tmp_path):
    """`python sample.py -m sampler=ddim,dpmpp_2m ...`: one job directory and record per sampler."""
    ckpt = digits_run / "checkpoints" / "last.ckpt"
    env = {**os.environ, "DIFFEXP_LOGS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "sample.py"), "-m", f"ckpt_path={ckpt}", "sampler=ddim,dpmpp_2m",
           "sampler.steps=4", "num_samples=8"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("sample/multiruns/*/*/record.json")]
    assert sorted(r["sampler"] for r in records) == ["ddim-4", "dpmpp_2m-4"]
