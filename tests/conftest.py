"""Shared test fixtures: offline W&B, small thread count, composing the shipped configs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import diffexp  # noqa: E402,F401  (torchvision shim)
from diffexp.config import setup_environment  # noqa: E402
from diffexp.data.mnist import find_mnist  # noqa: E402

setup_environment()
# One thread: tests use tiny models, where a second thread costs more than it gives (and on a loaded
# machine it was measured 10-25x slower).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# MNIST wherever the project's data step put it (diffexp.data.find_mnist: data/mnist from `make data`, or an
# offline copy in ../shared/data/mnist); None when there is none (tests that need it skip).
MNIST = find_mnist()


@pytest.fixture(autouse=True)
def _known_harmless_warnings_filtered():
    """The run's warning filter (diffexp.logs) inside pytest's per-test warning capture."""
    from diffexp.logs import filter_known_warnings

    filter_known_warnings()
    yield


def free_port() -> int:
    """A TCP port the OS reports free now, for a gloo rendezvous. (Not ``random``: tests seed it, so two
    suites running side by side drew the same port and one failed with EADDRINUSE.)"""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose(config_name: str = "train", overrides: list[str] | None = None, tmp_path: Path | None = None):
    """Compose a shipped config (with Hydra's runtime resolvers available) as a test would run it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    overrides = list(overrides or [])
    if tmp_path is not None:
        overrides.append(f"paths.log_dir={tmp_path}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        out = tmp_path / "run" if tmp_path is not None else Path("outputs/test")
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.job.num = 0
            cfg.hydra.job.id = "test"
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
        return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(overrides=None, config_name="train"):
        return compose(config_name, overrides, tmp_path)

    return _compose


# A toy2d MLP small enough to build, save and sample in a fraction of a second (checkpoint-level CLI tests).
TOY_MLP = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=64", "data.batch_size=16", "model=mlp",
           "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=50",
           "trainer.accelerator=cpu", "logger=none", "print_config=false"]


def save_checkpoint(module, path, edit=None):
    """``module`` saved as Lightning saves it (with diffexp's own entry); ``edit(config)`` may change the stored
    training config first (to make an older or a corrupted checkpoint)."""
    from diffexp.checkpoint import CHECKPOINT_KEY

    ckpt = {"state_dict": module.state_dict(), "global_step": 0, "epoch": 0}
    module.on_save_checkpoint(ckpt)
    if edit is not None:
        edit(ckpt[CHECKPOINT_KEY]["config"])
    torch.save(ckpt, path)
    return path
