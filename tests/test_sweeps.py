"""Sweeps: Hydra multiruns over config groups (basic and joblib launchers), the Optuna sweeper driven by the
metric train.py returns, the launcher/sweeper configs, and the experiment bundles.

Multiruns run in this process through ``diffexp.cli.train.main`` (as ``python train.py -m ...`` would), on
toy 2-D data with a tiny MLP and two optimizer steps per job.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose

TINY = [
    "data=toy2d", "data.num_train=256", "data.num_val=64", "data.batch_size=32",
    "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=100",
    "lr_scheduler=none", "logger=none", "callbacks=none", "print_config=false",
    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=2", "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1", "trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
OBJECTIVES = {"simple": "diffexp.objectives.SimpleObjective", "elbo": "diffexp.objectives.ELBOObjective"}


def run_train(args: list[str], monkeypatch) -> None:
    """``python train.py <args>`` in this process."""
    from hydra.core.global_hydra import GlobalHydra

    import diffexp.cli.train as cli

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    try:
        cli.main()
    finally:
        GlobalHydra.instance().clear()


def sweep_jobs(log_dir: Path) -> tuple[Path, dict[str, Path]]:
    sweeps = list((log_dir / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    assert [p.name for p in (log_dir / "train").iterdir()] == ["multiruns"]
    return sweeps[0], {p.name: p for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith(".")}


def check_objective_jobs(jobs: dict[str, Path]) -> dict[str, float]:
    """Each job trained its own objective and wrote a finite validation loss; returns objective -> val/loss."""
    assert sorted(jobs) == ["0", "1"]
    found = {}
    for job_dir in jobs.values():
        cfg = OmegaConf.load(job_dir / "config.yaml")
        name = [k for k, v in OBJECTIVES.items() if v == cfg.objective._target_]
        assert len(name) == 1, cfg.objective._target_
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["global_step"] == 2 and math.isfinite(metrics["val/loss"])
        assert cfg.paths.output_dir == str(job_dir)
        found[name[0]] = metrics["val/loss"]
    assert sorted(found) == ["elbo", "simple"]
    return found


def test_basic_multirun_over_objectives(tmp_path, monkeypatch):
    run_train(["-m", "objective=simple,elbo", *TINY, f"paths.log_dir={tmp_path}"], monkeypatch)
    _, jobs = sweep_jobs(tmp_path)
    losses = check_objective_jobs(jobs)
    assert losses["elbo"] != losses["simple"]  # the L_vlb in bits/dim is not the ε-MSE


def test_optuna_sweeper_minimises_the_returned_metric(tmp_path, monkeypatch):
    """train.py returns cfg.optimized_metric (val/loss); Optuna's best trial is the job with the lowest one."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    run_train(["-m", "hydra/sweeper=optuna_tpe", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2",
               "objective=simple,elbo", *TINY, f"paths.log_dir={tmp_path}"], monkeypatch)
    sweep, jobs = sweep_jobs(tmp_path)
    losses = check_objective_jobs(jobs)
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    best = min(losses, key=losses.get)
    assert result.best_params == {"objective": best}
    assert result.best_value == pytest.approx(losses[best], rel=1e-6)


@pytest.mark.slow
def test_joblib_parallel_multirun_over_objectives(tmp_path, monkeypatch):
    """hydra/launcher=parallel (joblib, 2 loky processes): same outputs as the sequential launcher."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_train(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "objective=simple,elbo", *TINY,
               f"paths.log_dir={tmp_path}"], monkeypatch)
    check_objective_jobs(sweep_jobs(tmp_path)[1])


# ---- launcher and sweeper configs ---------------------------------------------------------------
def test_launcher_configs_compose_and_instantiate(tmp_path):
    from hydra.utils import instantiate

    expected = {
        "sequential": "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "parallel": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "submitit": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    }
    for name, target in expected.items():
        cfg = compose("train", [f"hydra/launcher={name}", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
        assert cfg.hydra.launcher._target_ == target
        if not target.startswith("hydra._internal"):  # Hydra builds its own launchers only from trusted code
            launcher = instantiate(cfg.hydra.launcher)
            assert type(launcher).__name__ == target.rsplit(".", 1)[1]
    slurm = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                              "hydra.launcher.partition=gpu"], tmp_path).hydra.launcher
    # one task per GPU, as many nodes as the trainer: SLURM starts the ranks Lightning expects
    assert (slurm.tasks_per_node, slurm.gpus_per_node, slurm.nodes, slurm.partition) == (4, 4, 2, "gpu")
    assert compose("train", ["hydra/launcher=parallel"], tmp_path).hydra.launcher.n_jobs == 2


def test_optuna_sweeper_config(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra.utils import instantiate

    cfg = compose("train", ["hydra/sweeper=optuna_tpe", "hydra.sweeper.sampler.seed=7"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 7
    sampler = instantiate(sweeper).sweeper.sampler
    assert type(sampler).__name__ == "TPESampler"
    assert cfg.optimized_metric == "val/loss"


# ---- experiment bundles -------------------------------------------------------------------------
def _params(cfg, shape) -> int:
    from diffexp.build import build_net

    return sum(p.numel() for p in build_net(cfg, shape, None).parameters())


def test_experiment_ddpm_cifar10(tmp_path):
    cfg = compose("train", ["experiment=ddpm_cifar10"], tmp_path)
    assert cfg.data._target_.endswith("CIFAR10DataModule") and cfg.data.hflip
    assert cfg.schedule._target_ == "diffexp.schedules.linear" and cfg.schedule.num_timesteps == 1000
    assert cfg.objective._target_ == OBJECTIVES["simple"] and cfg.prediction == "eps"
    assert cfg.optimizer.lr == 2e-4 and cfg.data.batch_size == 128 and cfg.module.ema_decay == 0.9999
    assert cfg.model.dropout == 0.1 and cfg.trainer.max_steps == 800_000 and cfg.lr_scheduler.warmup_steps == 5000
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.sampler.variance == "beta"
    assert round(_params(cfg, (3, 32, 32)) / 1e6, 1) == 35.7  # Ho et al.: 35.7M parameters


def test_experiment_iddpm_cifar10(tmp_path):
    cfg = compose("train", ["experiment=iddpm_cifar10"], tmp_path)
    assert cfg.schedule._target_ == "diffexp.schedules.cosine" and cfg.schedule.num_timesteps == 4000
    assert cfg.objective._target_ == "diffexp.objectives.HybridObjective" and cfg.objective.vlb_weight == 0.001
    assert cfg.model.learn_sigma is True  # the paper's L_hybrid trains learned variances
    assert cfg.optimizer.lr == 1e-4 and cfg.data.batch_size == 128 and cfg.trainer.max_steps == 500_000
    assert (cfg.model.num_res_blocks, list(cfg.model.attention_resolutions), cfg.model.dropout) == (3, [16, 8], 0.3)


def test_experiment_mnist_cpu_is_the_default_recipe(tmp_path):
    """`make train` runs experiment=mnist_cpu: the recipe issue 16's measured search chose (class-conditional latent
    flow matching, CFG 1.25, the autoencoder trained first by latent=auto) on the default data, with wall-clock
    budgets that keep the whole job within 15 minutes and a final sample grid."""
    default, recipe = compose("train", [], tmp_path), compose("train", ["experiment=mnist_cpu"], tmp_path)
    assert OmegaConf.to_container(recipe.data) == OmegaConf.to_container(default.data)
    assert recipe.latent == "auto" and recipe.conditional is True and recipe.guidance_scale == 1.25
    assert recipe.process._target_.endswith("FlowProcess") and recipe.prediction == "velocity"
    assert recipe.objective._target_.endswith("FlowMatchingObjective")
    assert recipe.sampler._target_.endswith("DPMSolverPP2MSampler") and recipe.sampler.steps == 30  # the tested default

    def seconds(hms: str) -> int:
        h, m, s = (int(v) for v in hms.split(":")[1:])
        return h * 3600 + m * 60 + s

    budget = seconds(recipe.trainer.max_time) + seconds(recipe.latent_train.trainer.max_time)
    assert 0 < budget <= 12 * 60
    assert recipe.callbacks.sample.at_end and recipe.trainer.precision in ("32", "bf16-mixed")
    assert "experiment=mnist_cpu" in (Path(__file__).resolve().parents[1] / "Makefile").read_text()


def test_experiment_mnist_cpu_trains_a_few_steps(tmp_path):
    """The default experiment as shipped (its process, objective, target, conditioning, CFG scale, latent=auto and
    sampler) runs end to end on CPU: a tiny autoencoder first, then two diffusion steps, a grid and a checkpoint that
    sample.py's loader reads back as a conditional latent flow model."""
    from conftest import MNIST
    from diffexp.build import load_module
    from diffexp.cli.train import train

    if MNIST is None:
        pytest.skip("no MNIST copy (make data)")
    ae = ("latent_train={autoencoder: kl_f4_small, extractor: random, trainer.max_steps: 3, trainer.val_check_interval: 3, "
          "trainer.limit_val_batches: 1, callbacks.progress_bar: null, trainer.enable_model_summary: false, "
          "callbacks.reconstruction.num_samples: 16, callbacks.reconstruction.every_n_steps: 0}")
    cfg = compose("train", ["experiment=mnist_cpu", "~latent_train", "+" + ae, f"paths.cache_dir={tmp_path}/cache", f"data.root={MNIST}",
                            "data.subset=64", "data.val_subset=32", "data.batch_size=16", "model.base_channels=8",
                            "model.num_res_blocks=1", "model.attention_resolutions=[]", "model.num_groups=4",
                            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                            "sampler.steps=3", "print_config=false", "trainer.enable_progress_bar=false",
                            "trainer.enable_model_summary=false", "logger=csv", "callbacks.sample.num_samples=4",
                            "callbacks.sample.every_n_steps=null", "callbacks.model_checkpoint.every_n_train_steps=2",
                            "~callbacks.progress_bar", "trainer.precision=32"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train/loss"])
    assert list((tmp_path / "run" / "samples").glob("*.png"))
    module = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.process.name == "flow" and module.prediction == "velocity" and module.num_classes == 10


def test_experiment_toy2d(tmp_path):
    from hydra.utils import instantiate

    cfg = compose("train", ["experiment=toy2d"], tmp_path)
    dm = instantiate(cfg.data)
    assert dm.data_shape == (2,) and dm.data_range is None and cfg.trainer.accelerator == "cpu"
    assert _params(cfg, dm.data_shape) < 1_000_000 and cfg.trainer.max_steps <= 5000


def test_wandb_sweep_file_drives_train_py_with_hydra_overrides(tmp_path):
    import yaml

    repo = Path(__file__).resolve().parents[1]
    sweep = yaml.safe_load((repo / "wandb" / "sweep.yaml").read_text())
    assert (repo / sweep["program"]).is_file()
    assert "${args_no_hyphens}" in sweep["command"] and "logger=wandb" in sweep["command"]
    overrides = []
    for key, spec in sweep["parameters"].items():
        value = spec["values"][-1] if "values" in spec else spec["min"]
        overrides.append(f"{key}={value}")
    cfg = compose("train", overrides, tmp_path)  # every parameter is a valid override of the train config
    assert cfg.objective._target_.endswith("ELBOObjective") and cfg.optimizer.lr == sweep["parameters"]["optimizer.lr"]["min"]
    assert sweep["metric"]["name"] == cfg.optimized_metric and sweep["metric"]["goal"] == "minimize"
