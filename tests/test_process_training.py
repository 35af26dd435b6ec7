"""Every process family trains, checkpoints, reloads and samples (sample.py) through the shipped configs; bad family
combinations fail before training with a message naming what fits (issue 11)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose
from diffexp.build import ConfigError, load_module
from diffexp.cli.train import train

TINY = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
        "model=mlp", "model.hidden_dim=32", "model.num_blocks=1", "model.time_embed_dim=16",
        "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
        "logger=none", "callbacks=default", "~callbacks.lr_monitor", "~callbacks.progress_bar",
        "callbacks.sample.every_n_steps=null", "callbacks.sample.num_samples=4",
        "callbacks.model_checkpoint.every_n_train_steps=3", "print_config=false",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
CASES = [("vp_sde", "eps", "heun"), ("subvp_sde", "v", "dpmpp_2m"), ("ve", "score", "heun"),
         ("edm", "x0", "dpmpp_2m"), ("flow", "velocity", "ddim")]


@pytest.mark.parametrize("process,prediction,sampler", CASES)
def test_every_family_trains_reloads_and_samples(process, prediction, sampler, tmp_path):
    cfg = compose("train", TINY + [f"process={process}", f"prediction={prediction}", f"sampler={sampler}",
                                   "sampler.steps=4"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 3 and math.isfinite(metrics["val/loss"])
    assert list((tmp_path / "run" / "samples").glob("*.png")), "the sample grid callback ran on this family"
    module = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.process.name == process and module.schedule is None and not module.process.is_discrete
    import numpy as np

    from diffexp.cli.sample import sample

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    record = sample(compose("sample", [f"ckpt_path={ckpt}", f"sampler={sampler}", "sampler.steps=4", "num_samples=3",
                                       "seed=0"], tmp_path / "sample"))
    points = np.load(tmp_path / "sample" / "run" / "samples.npz")["points"]
    assert points.shape == (3, 2) and np.isfinite(points).all() and record["nfe"] > 0


def test_velocity_on_ddpm_is_a_config_error(tmp_path):
    cfg = compose("train", TINY + ["prediction=velocity"], tmp_path)
    with pytest.raises(ConfigError, match="prediction=velocity.*valid targets there"):
        train(cfg)


def test_bad_family_parameter_is_a_config_error(tmp_path):
    cfg = compose("train", TINY + ["process=ve", "process.sigma_min=100", "sampler=heun"], tmp_path)
    with pytest.raises(ConfigError, match="process \\(diffexp.processes.VEProcess\\): need 0 < sigma_min < sigma_max"):
        train(cfg)


def test_resume_refuses_another_family_or_family_parameter(tmp_path):
    from diffexp.checkpoint import CheckpointError

    train(compose("train", TINY + ["process=ve", "sampler=heun", "sampler.steps=2"], tmp_path / "a"))
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    for change, key in ((["process=ve", "process.sigma_max=40"], "process.sigma_max"), (["process=edm"], "process")):
        cfg = compose("train", TINY + change + ["sampler=heun", "sampler.steps=2", "trainer.max_steps=5",
                                                f"ckpt_path={ckpt}"], tmp_path / key)
        with pytest.raises(CheckpointError, match=f"cannot resume.*\\n.*{key}"):
            train(cfg)


def test_loss_quarters_follow_the_family_time_range():
    """train/loss_t0..3 split the family's range into quarters of network time (ddpm: index·4 // T): of t on
    flow, of log σ on edm (boundaries σ = 0.002 · 40000^(k/4) = 0.028, 0.4, 5.7)."""
    from diffexp.models import MLP
    from diffexp.module import DiffusionModule
    from diffexp.objectives import SimpleObjective
    from diffexp.process import EDMProcess, FlowProcess

    net = MLP(in_channels=2, hidden_dim=8, num_blocks=1, time_embed_dim=8)
    for process, t in ((FlowProcess(), [0.0, 0.24, 0.26, 0.5, 0.99, 1.0]),
                       (EDMProcess(), [0.002, 0.028, 0.029, 0.5, 79.0, 80.0])):
        module = DiffusionModule(net, None, SimpleObjective(), process=process, data_shape=(2,), data_range=None)
        assert module._quarter(torch.tensor(t, dtype=torch.float64)).tolist() == [0, 0, 1, 2, 3, 3]


def test_validation_times_are_uniform_in_network_time():
    """The pinned validation t of a continuous family is uniform in network time over [t_min, t_max]: on edm
    log σ is uniform on [log 0.002, log 80] (mean of log σ within 6 SE of the midpoint, n = 4000)."""
    from diffexp.models import MLP
    from diffexp.module import DiffusionModule
    from diffexp.objectives import SimpleObjective
    from diffexp.process import EDMProcess

    seen = []

    class Spy(SimpleObjective):
        def validation_loss(self, net_fn, x0, process, prediction, t, noise, y=None):
            seen.append(t)
            return super().validation_loss(net_fn, x0, process, prediction, t, noise, y)

    net = MLP(in_channels=2, hidden_dim=8, num_blocks=1, time_embed_dim=8)
    module = DiffusionModule(net, None, Spy(), process=EDMProcess(), data_shape=(2,), data_range=None, ema_decay=0)
    module.log = lambda *a, **k: None
    module._eval_step((torch.zeros(4000, 2), torch.zeros(4000)), 0, "val")
    log_sigma = torch.log(seen[0])
    lo, hi = math.log(0.002), math.log(80)
    assert float(log_sigma.min()) >= lo - 1e-9 and float(log_sigma.max()) <= hi + 1e-9
    se = (hi - lo) / math.sqrt(12 * 4000)
    assert abs(float(log_sigma.mean()) - (lo + hi) / 2) < 6 * se
