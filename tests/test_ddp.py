"""DDP on CPU (gloo, 2 processes) under Hydra: per-rank streams, identical weights and EMA, one directory per
job, and ``--multirun`` + ``strategy=ddp`` training each job's own hyper-parameters on every rank.

The end-to-end test runs ``train.py -m objective=simple,elbo ... trainer.devices=2`` once (rank 0 of each job
starts rank 1 through diffexp.launch's child command) with a probe callback that dumps, on every rank, the
first normal draws of the training noise stream, the batch, the weights and the EMA.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffexp import launch
from diffexp.launch import ddp_child_command, ddp_job, shared_run_id
from diffexp.rng import make_generator

REPO = Path(__file__).resolve().parents[1]


# ---- seeds split across ranks -------------------------------------------------------------------
def test_samples_do_not_depend_on_the_number_of_ranks():
    """Per-sample seeds split across ranks as compute_metrics does (rank r: r, r+W, ...) give the same images as
    one process (stochastic sampler)."""
    from diffexp.denoiser import Denoiser
    from diffexp.models.mlp import MLP
    from diffexp.process import DiffusionProcess
    from diffexp.samplers import DDIMSampler
    from diffexp.schedules import linear

    torch.manual_seed(0)
    net = MLP(in_channels=2, hidden_dim=16, num_blocks=1, time_embed_dim=16).eval()
    den = Denoiser(net, DiffusionProcess(linear(50)), "eps", data_range=None)
    sampler = DDIMSampler(steps=5, eta=1.0)  # eta=1: fresh noise at every step
    seeds = list(range(10, 17))
    whole = sampler(den, shape=(2,), seeds=seeds)
    for world in (2, 3):
        parts = [sampler(den, shape=(2,), seeds=seeds[r::world]) for r in range(world)]
        for r, part in enumerate(parts):
            torch.testing.assert_close(part, whole[r::world], rtol=1e-5, atol=1e-6)
    assert torch.unique(whole, dim=0).shape[0] == len(seeds)  # no duplicated image


# ---- strategy selection and the child command ---------------------------------------------------
def test_devices_greater_than_one_selects_ddp_with_the_script_launcher():
    """strategy=auto + devices=N>1 → DDPStrategy re-running the script (Lightning's _choose_strategy returns
    "ddp" for several devices of any accelerator, GPUs included); that launcher's command is ours."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers import subprocess_script as pl_launcher

    launch.install_ddp_launcher()
    trainer = L.Trainer(accelerator="cpu", devices=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert type(trainer.strategy) is DDPStrategy
    assert isinstance(trainer.strategy.launcher, pl_launcher._SubprocessScriptLauncher)
    assert pl_launcher._hydra_subprocess_cmd is launch.ddp_child_command


def _hydra_cfg(task, hydra_overrides, output_dir="/logs/train/multiruns/2026-01-01_00-00-00/1"):
    return OmegaConf.create({
        "mode": "MULTIRUN",
        "job": {"name": "train", "config_name": "train"},
        "runtime": {
            "output_dir": output_dir,
            "cwd": "/somewhere",
            "config_sources": [
                {"path": "pkg://hydra.conf", "schema": "pkg", "provider": "hydra"},
                {"path": "/repo/conf", "schema": "file", "provider": "main"},
                {"path": "/extra/conf", "schema": "file", "provider": "command-line"},
            ],
        },
        "overrides": {"task": task, "hydra": hydra_overrides},
    })


def test_child_command_is_a_plain_run_of_the_same_job():
    hc = _hydra_cfg(
        ["objective=elbo", "optimizer.lr=0.000123", "+callbacks.x._target_=a.B", "trainer.devices=2"],
        ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "hydra/sweeper=optuna_tpe", "hydra.sweeper.n_trials=4",
         "hydra.sweep.dir=/logs/x", "hydra.mode=MULTIRUN", "hydra.job.chdir=false", "hydra/job_logging=default"],
        output_dir="/logs/it's/a=b,c d/1",
    )
    cmd, cwd = ddp_child_command(1, hc)
    assert cmd[:3] == [sys.executable, "-m", "diffexp.cli.train"]
    assert cwd == "/somewhere"
    assert "-m" not in cmd[3:] and "--multirun" not in cmd
    assert "--config-path=/repo/conf" in cmd and "--config-dir=/extra/conf" in cmd and "--config-name=train" in cmd
    # the job's own values, as the sweeper chose them, in order
    i = cmd.index("objective=elbo")
    assert cmd[i : i + 4] == ["objective=elbo", "optimizer.lr=0.000123", "+callbacks.x._target_=a.B", "trainer.devices=2"]
    # sweep machinery dropped, other hydra settings kept
    assert not any(c.startswith(("hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.sweep.", "hydra.mode=MULTI")) for c in cmd)
    assert "hydra.job.chdir=false" in cmd and "hydra/job_logging=default" in cmd
    assert cmd[-5:] == [
        "hydra.run.dir='/logs/it\\'s/a=b,c d/1'", "hydra.output_subdir=null", "hydra/job_logging=stdout",
        "hydra.job.name=train_ddp_rank1", "hydra.mode=RUN",
    ]
    # the quoted directory survives Hydra's override parser unchanged
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(cmd[-5])
    assert parsed.value() == "/logs/it's/a=b,c d/1"


def test_shared_run_id_for_external_launchers():
    assert shared_run_id({}) is None
    assert shared_run_id({"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1234"}) is None  # Lightning's own children
    assert shared_run_id({"DIFFEXP_RUN_ID": "mine", "SLURM_JOB_ID": "7"}) == "mine"
    slurm = {"SLURM_JOB_ID": "77", "SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}
    assert shared_run_id(slurm) == "slurm-77.0"
    assert shared_run_id({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: the timestamp is fine
    assert shared_run_id({"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}) == "torchrun-abc"
    assert shared_run_id({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "4"}).startswith("torchrun-")


def test_ranks_started_by_torchrun_or_srun_write_nothing_of_their_own():
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    assert launch.external_rank_overrides({}) == []
    assert launch.external_rank_overrides({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "RANK": "0"}) == []
    assert launch.external_rank_overrides({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "RANK": "3"}) == quiet
    assert launch.external_rank_overrides({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == quiet
    assert launch.external_rank_overrides({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SUBMITIT_EXECUTOR": "slurm"}) == []
    assert launch.external_rank_overrides({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == []  # Lightning's child: our command


def test_ddp_job_restores_the_environment(monkeypatch):
    for key in launch.DDP_ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    with ddp_job():  # what Lightning's launcher does in rank 0
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="5555", LOCAL_RANK="0", NODE_RANK="0", WORLD_SIZE="2")
    assert os.environ["MASTER_ADDR"] == "10.0.0.1"
    assert all(k not in os.environ for k in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))
    # under torchrun/SLURM/a parent rank the variables are the launcher's: left alone
    monkeypatch.setenv("LOCAL_RANK", "1")
    with ddp_job():
        os.environ["MASTER_PORT"] = "6000"
    assert os.environ["MASTER_PORT"] == "6000" and os.environ["LOCAL_RANK"] == "1"


# ---- end to end: train.py -m objective=simple,elbo with 2 gloo ranks per job -------------------
PROBE = '''
from pathlib import Path

import lightning as L
import torch


class Probe(L.Callback):
    """Dumps, on every rank: the first normal draws of each training step's noise stream, the batch, the
    objective's class, the run directory, the weights and the EMA."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.draws = []
        self.batch_idx = None

    def setup(self, trainer, pl_module, stage):
        inner = pl_module.objective.loss
        probe = self

        def loss(net_fn, x, process, prediction, generator=None, **kwargs):
            g = torch.Generator(device=generator.device)
            g.set_state(generator.get_state())
            probe.draws.append({"step": pl_module.global_step, "batch_idx": probe.batch_idx,
                                "noise": torch.randn(x.shape, generator=g), "x": x.detach().clone()})
            return inner(net_fn, x, process, prediction, generator=generator, **kwargs)

        pl_module.objective.loss = loss

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_idx = batch_idx

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        job = Path(trainer.default_root_dir).name
        torch.save({
            "rank": trainer.global_rank, "world_size": trainer.world_size, "seed": pl_module.seed,
            "root_dir": str(Path(trainer.default_root_dir).resolve()),
            "objective": type(pl_module.objective).__name__,
            "net": {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()},
            "ema": {k: v.detach().clone() for k, v in pl_module.ema.state_dict().items()},
            "phema": {k: v.detach().clone() for k, v in pl_module.phema.state_dict().items()},
            "draws": self.draws,
        }, self.out_dir / f"job{job}_rank{trainer.global_rank}.pt")
'''

TINY = [
    "data=toy2d", "data.num_train=256", "data.num_val=64", "data.batch_size=32",
    "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=100",
    "lr_scheduler=none", "logger=none", "print_config=false", "module.posthoc_ema.sigma_rel=[0.05,0.10]",
    "trainer.accelerator=cpu", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
    "trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def ddp_multirun(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_multirun")
    (tmp / "probe").mkdir()
    (tmp / "probe" / "ddp_probe.py").write_text(textwrap.dedent(PROBE))
    logs, dump = tmp / "logs", tmp / "dump"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp / "probe"), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="disabled", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for key in (*launch.DDP_ENV_VARS, "DIFFEXP_LOGS", "DIFFEXP_RUN_ID"):
        env.pop(key, None)
    cmd = [sys.executable, "train.py", "-m", "objective=simple,elbo", *TINY, "trainer.devices=2",
           "callbacks=none", "+callbacks.probe._target_=ddp_probe.Probe", f"+callbacks.probe.out_dir={dump}",
           f"paths.log_dir={logs}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    dumps = {p.stem: torch.load(p, weights_only=False) for p in dump.glob("*.pt")}
    return logs, dumps


@pytest.mark.ddp
def test_multirun_ddp_one_directory_per_job_with_its_hyperparameters(ddp_multirun):
    logs, dumps = ddp_multirun
    sweeps = list((logs / "train" / "multiruns").iterdir())
    assert [p.name for p in (logs / "train").iterdir()] == ["multiruns"]  # no stray single-run directory
    assert len(sweeps) == 1, sweeps  # rank 1 started no sweep of its own
    sweep = sweeps[0]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    expected = {"0": "diffexp.objectives.SimpleObjective", "1": "diffexp.objectives.ELBOObjective"}
    for job, target in expected.items():
        job_dir = sweep / job
        cfg = OmegaConf.load(job_dir / "config.yaml")
        assert cfg.objective._target_ == target
        assert cfg.trainer.devices == 2 and cfg.paths.output_dir == str(job_dir)
        # rank 0's files only: rank 1 wrote no .hydra/, no log file, no sub-run directory
        assert sorted(p.name for p in job_dir.iterdir()) == [".hydra", "config.yaml", "metrics.json", "train.log"]
        assert sorted(dumps) == ["job0_rank0", "job0_rank1", "job1_rank0", "job1_rank1"]
        ranks = [dumps[f"job{job}_rank{r}"] for r in (0, 1)]
        assert [d["rank"] for d in ranks] == [0, 1] and all(d["world_size"] == 2 for d in ranks)
        # both ranks trained this job's objective in this job's directory
        assert {d["objective"] for d in ranks} == {target.rsplit(".", 1)[1]}
        assert {d["root_dir"] for d in ranks} == {str(job_dir.resolve())}


@pytest.mark.ddp
def test_ddp_ranks_share_weights_and_ema_but_not_noise(ddp_multirun):
    _, dumps = ddp_multirun
    for job in ("0", "1"):
        r0, r1 = dumps[f"job{job}_rank0"], dumps[f"job{job}_rank1"]
        for key in r0["net"]:
            assert torch.equal(r0["net"][key], r1["net"][key]), key
        for key in r0["ema"]:
            assert torch.equal(r0["ema"][key], r1["ema"][key]), key
        assert int(r0["ema"]["num_updates"]) == 2  # once per optimizer step
        for key in r0["phema"]:  # post-hoc EMA profiles: identical on every rank, updated once per optimizer step
            assert torch.equal(r0["phema"][key], r1["phema"][key]), key
        assert int(r0["phema"]["num_updates"]) == 2
        assert any(not torch.equal(r0["ema"][k], r0["net"][k.removeprefix("net.")]) for k in r0["ema"] if k.startswith("net."))
        assert len(r0["draws"]) == len(r1["draws"]) == 2
        for d0, d1 in zip(r0["draws"], r1["draws"]):
            assert d0["step"] == d1["step"]
            assert not torch.allclose(d0["noise"], d1["noise"])  # ranks draw different noise/timesteps...
            assert not torch.equal(d0["x"], d1["x"])  # ...on disjoint shards of the data
        for r, dump in ((0, r0), (1, r1)):  # the stream is the one seeded by (seed, "train", global rank, step, batch)
            for d in dump["draws"]:
                g = make_generator("cpu", dump["seed"], "train", r, d["step"], d["batch_idx"])
                assert torch.equal(d["noise"], torch.randn(d["noise"].shape, generator=g))


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_ranks_share_one_run_directory(tmp_path):
    """torchrun starts both ranks (Lightning's TorchElasticEnvironment): they compose Hydra's config
    independently, yet resolve the same run directory (DIFFEXP_RUN_ID from the rendezvous id), and only
    rank 0 writes .hydra/, the log file, config.yaml and metrics.json there."""
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for key in (*launch.DDP_ENV_VARS, "DIFFEXP_LOGS", "DIFFEXP_RUN_ID", "RANK"):
        env.pop(key, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd = [*torchrun, "train.py", *TINY, "trainer.devices=2", "callbacks=none", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = list((tmp_path / "train" / "runs").iterdir())
    assert run.name.startswith("torchrun-")
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "config.yaml", "metrics.json", "train.log"]
    assert OmegaConf.load(run / "config.yaml").trainer.devices == 2
