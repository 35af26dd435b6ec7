"""W&B logging, offline: one run per multirun job (own id, sweep group, names/tags from the config choices),
the full resolved config at init, loss / loss-per-t / grad norm / learning rate / validation curves, uint8
sample images, the `wandb sync` hint, and resuming a checkpoint continuing the same W&B run.

The runs are read back from the offline transaction log ``offline-run-*/run-<id>.wandb`` (a LevelDB-style log
of ``wandb_internal_pb2.Record`` protobufs; wandb 0.31 ships no Python reader for it, so a small one is here).
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("wandb")

from diffexp import launch  # noqa: E402
from diffexp.images import as_uint8_hwc  # noqa: E402

TINY = [
    "data=toy2d", "data.num_train=256", "data.num_val=64", "data.batch_size=32",
    "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=100",
    "print_config=false", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false", "callbacks=default", "~callbacks.progress_bar",
    "callbacks.sample.every_n_steps=1", "callbacks.sample.num_samples=16", "sampler.steps=5",
    "callbacks.model_checkpoint.every_n_train_steps=2", "logger=wandb",
]


# ---- reading an offline run ---------------------------------------------------------------------
def wandb_records(path: Path):
    """The protobuf records of a .wandb transaction log (header ':W&B' 0xBEE1 v0, 32 KiB blocks, records
    of (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) that never span a block)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
    records = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def read_run(run_dir: Path, wait_s: float = 60.0) -> dict:
    """run id/name/group/tags, the init config, and history as key -> [(trainer/global_step, value)].

    wandb's service process writes the file asynchronously; on a loaded machine the run record can land
    after ``wandb.finish()`` has returned, so wait (bounded) until it is there."""
    deadline = time.monotonic() + wait_s
    while True:
        info = _read_run_once(run_dir)
        if "id" in info or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def _read_run_once(run_dir: Path) -> dict:
    (log,) = run_dir.glob("run-*.wandb")
    info = {"history": defaultdict(list), "config": {}}
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group, tags=list(r.run.tags),
                        project=r.run.project)
            info["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for key, value in row.items():
                info["history"][key].append((row.get("trainer/global_step"), value))
    return info


def run_train(args, monkeypatch) -> str:
    """``python train.py <args>`` in this process; returns what it printed."""
    from hydra.core.global_hydra import GlobalHydra

    import diffexp.cli.train as cli

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            cli.main()
    finally:
        GlobalHydra.instance().clear()
    return out.getvalue()


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")  # WandbLogger also sets it to "dryrun": restored afterwards
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_API_KEY", raising=False)
        printed = run_train(["-m", "objective=simple,elbo", *TINY, "trainer.max_steps=2", f"paths.log_dir={tmp}"], mp)
    (sweep,) = (tmp / "train" / "multiruns").iterdir()
    return tmp, sweep, printed


def offline_runs(job_dir: Path) -> list[Path]:
    return sorted((job_dir / "wandb").glob("offline-run-*"))


def test_each_multirun_job_is_its_own_wandb_run(wandb_sweep):
    _, sweep, printed = wandb_sweep
    runs = {job: offline_runs(sweep / job) for job in ("0", "1")}
    assert all(len(r) == 1 for r in runs.values()), runs  # wandb.finish() per job: nothing merged or reused
    info = {job: read_run(r[0]) for job, r in runs.items()}
    assert info["0"]["id"] != info["1"]["id"]
    assert info["0"]["group"] == info["1"]["group"] == f"train-{sweep.name}"  # the sweep is the group
    assert info["0"]["name"] == "mlp-linear-simple-eps-0" and info["1"]["name"] == "mlp-linear-elbo-eps-1"
    assert {"model:mlp", "data:toy2d", "schedule:linear", "objective:elbo", "prediction:eps"} <= set(info["1"]["tags"])
    assert info["0"]["project"] == "diffexp"
    for r in runs.values():  # the sync command of every job, with its run directory
        assert f"wandb sync {r[0]}" in printed


def test_wandb_run_holds_config_curves_and_uint8_images(wandb_sweep):
    _, sweep, _ = wandb_sweep
    run_dir = offline_runs(sweep / "1")[0]
    info = read_run(run_dir)
    config = info["config"]  # the full resolved config, given at wandb.init (offline runs keep it)
    assert {"data", "model", "schedule", "objective", "sampler", "optimizer", "trainer", "module"} <= set(config)
    assert config["objective"]["_target_"] == "diffexp.objectives.ELBOObjective"
    assert config["model"]["hidden_dim"] == 16 and config["trainer"]["max_steps"] == 2
    hist = info["history"]
    for key in ("train/loss", "train/grad_norm", "lr-AdamW", "val/loss"):
        assert hist[key] and all(np.isfinite(v) for _, v in hist[key]), key
    assert any(key.startswith("train/loss_t") for key in hist)  # loss per quarter of the t range
    assert [s for s, _ in hist["train/loss"]] == [0, 1]
    images = [json.loads(json.dumps(v)) for _, v in hist["samples/ddim-5/filenames"]]
    assert [s for s, _ in hist["samples/ddim-5/filenames"]] == [1, 2]  # every step, and at the end
    for names in images:
        png = np.asarray(Image.open(run_dir / "files" / names[0]))
        assert png.dtype == np.uint8 and png.std() > 10 and png.max() > 128  # a real picture, not black


def test_resumed_run_continues_the_same_wandb_run(wandb_sweep, monkeypatch):
    tmp, sweep, _ = wandb_sweep
    first = read_run(offline_runs(sweep / "0")[0])
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)[launch.WANDB_CKPT_KEY]
    assert stored["id"] == first["id"] and stored["project"] == "diffexp"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_train(["objective=simple", *TINY, "trainer.max_steps=3", f"ckpt_path={ckpt}", f"paths.log_dir={tmp}",
               "callbacks.sample.every_n_steps=0", "callbacks.sample.at_end=false"], monkeypatch)
    (run,) = list((tmp / "train" / "runs").glob("*/wandb/offline-run-*"))
    second = read_run(run)
    assert second["id"] == first["id"]  # same W&B run, continued
    assert [s for s, _ in second["history"]["train/loss"]] == [2]  # only the step that was left


def test_as_uint8_hwc_never_logs_floats():
    grid = torch.rand(3, 8, 6)
    img = as_uint8_hwc(grid)
    assert img.dtype == np.uint8 and img.shape == (8, 6, 3)
    np.testing.assert_array_equal(img, np.round(grid.permute(1, 2, 0).numpy().astype(np.float64) * 255).astype(np.uint8))
    assert as_uint8_hwc(np.full((4, 4), 2.0)).max() == 255  # clamped, grayscale expanded
    assert as_uint8_hwc(np.full((4, 4, 1), 7, np.uint8)).shape == (4, 4, 3)


def test_wandb_names_from_config_choices(tmp_path):
    from hydra.utils import instantiate

    from conftest import compose

    cfg = compose("train", ["logger=wandb", "model=mlp", "schedule=cosine", "objective=hybrid_fixed", "prediction=v", "tags=[mine]"], tmp_path)
    logger = instantiate(cfg.logger.wandb)  # composes and resolves without diffexp.launch's help
    (callback,) = launch.setup_loggers(cfg, [logger])
    init = logger._wandb_init
    assert init["name"] == "mlp-cosine-hybrid_fixed-v" and init["group"] == "train" and init["project"] == "diffexp"
    assert init["tags"][0] == "mine" and {"model:mlp", "schedule:cosine", "objective:hybrid_fixed", "prediction:v"} <= set(init["tags"])
    assert init["config"]["objective"]["_target_"] == "diffexp.objectives.FixedSigmaHybridObjective"
    assert isinstance(callback, launch.WandbRunIdCallback) and logger._experiment is None  # nothing started yet
    assert launch.setup_loggers(cfg, []) == []
