"""Config validation: nonsense is rejected before anything is built or trained, naming the config keys."""

from __future__ import annotations

import copy

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose
from diffexp.cli.train import train
from diffexp.validation import ConfigError, validate_config

TOY = ["data=toy2d", "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "logger=none", "print_config=false",
       "trainer.accelerator=cpu"]
_COMPOSED: dict[tuple, object] = {}


def configure(tmp_path, overrides, base=TOY):
    """compose(base + group choices) once per set of group choices, then set the dotted keys on a copy
    (composing costs ~1 s on a loaded machine; this file checks dozens of variants)."""
    overrides = list(base) + list(overrides)
    groups = tuple(o for o in overrides if "." not in o.split("=", 1)[0])
    keys = [o for o in overrides if o not in groups]
    if groups not in _COMPOSED:
        _COMPOSED[groups] = compose("train", list(groups), tmp_path)
    cfg = copy.deepcopy(_COMPOSED[groups])
    for o in keys:
        key, value = o.lstrip("+").split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


def check(tmp_path, overrides, base=TOY):
    cfg = configure(tmp_path, overrides, base)
    validate_config(cfg, instantiate(cfg.data))
    return cfg


def rejected(tmp_path, overrides, *needles, base=TOY) -> str:
    with pytest.raises(ConfigError) as e:
        check(tmp_path, overrides, base)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("experiment", [[], ["experiment=toy2d"], ["experiment=mnist_cpu"], ["data=mnist"],
                                        ["experiment=ddpm_cifar10"], ["experiment=iddpm_cifar10"]])
def test_shipped_configs_pass(tmp_path, experiment):
    check(tmp_path, experiment + ["trainer.accelerator=cpu"], base=[])


@pytest.mark.parametrize("overrides,needles", [
    (["trainer.max_steps=0"], ["trainer.max_steps=0", "positive"]),
    (["trainer.max_steps=-5"], ["trainer.max_steps=-5"]),
    (["trainer.max_steps=-1", "trainer.max_epochs=-1"], ["never stop"]),
    (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    (["trainer.val_check_interval=0"], ["trainer.val_check_interval=0"]),
    (["data.batch_size=0"], ["data.batch_size=0"]),
    (["schedule.num_timesteps=0"], ["schedule.num_timesteps=0"]),
    (["sampler.steps=0"], ["sampler.steps=0"]),
    (["lr_scheduler.warmup_steps=-10"], ["lr_scheduler.warmup_steps=-10"]),
    (["callbacks.sample.every_n_steps=-1"], ["callbacks.sample.every_n_steps=-1"]),
    (["callbacks.model_checkpoint.every_n_train_steps=-100"], ["callbacks.model_checkpoint.every_n_train_steps=-100"]),
])
def test_negative_or_zero_steps(tmp_path, overrides, needles):
    rejected(tmp_path, overrides, *needles)


@pytest.mark.parametrize("sampler,option,value,valid", [
    ("ddim", "spacing", "leading", "'uniform', 'quadratic', 'trailing'"),
    ("ddpm", "variance", "large", "'beta', 'beta_tilde'"),
    ("pc", "variance", "fixed", "'beta', 'beta_tilde'"),
    ("pc", "spacing", "karras", "'uniform', 'quadratic', 'trailing'"),
    ("pc", "norms", "mean", "'batch', 'sample', 'expected'"),
    ("pc", "predictor", "euler", "'ancestral', 'ddim'"),
    ("dpmpp_2m", "spacing", "uniform", "'time', 'karras', 'logsnr', 'shift'"),
    ("heun", "solver", "rk4", "'heun', 'euler'"),
    ("heun", "rho", "-1", "positive"),
    ("langevin", "num_levels", "0", "positive integer"),
])
def test_unknown_sampler_options_are_rejected_naming_the_key(tmp_path, sampler, option, value, valid):
    """Caught at config validation (before the Trainer), not at the first sampling callback."""
    rejected(tmp_path, [f"sampler={sampler}", f"sampler.{option}={value}"], f"sampler.{option}={value}", valid)


@pytest.mark.parametrize("overrides,needles", [
    (["sampler=euler_maruyama"], ["sampler (", "use sampler=ddpm", "process=vp_sde|subvp_sde|ve|edm|flow"]),
    (["process=ve", "sampler=ddim", "sampler.spacing=trailing"], ["sampler.spacing=trailing", "on the ve process",
                                                                    "'uniform', 'time', 'karras', 'logsnr', 'shift'"]),
    (["process=flow", "sampler=pc", "sampler.spacing=quadratic"], ["sampler.spacing=quadratic", "on the flow process"]),
])
def test_a_sampler_that_cannot_run_on_the_family_is_named_at_config_time(tmp_path, overrides, needles):
    rejected(tmp_path, overrides, *needles)


@pytest.mark.parametrize("family", ["flow"])
def test_every_sampler_is_accepted_on_continuous_families(tmp_path, family):
    for sampler in ["ddpm", "ddim", "pc", "euler_maruyama", "heun", "adaptive"]:
        check(tmp_path, [f"process={family}", f"sampler={sampler}"])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "pc"])
def test_sampler_steps_beyond_the_schedule(tmp_path, sampler):
    rejected(tmp_path, [f"sampler={sampler}", "sampler.steps=2000", "schedule.num_timesteps=1000"],
             "sampler.steps=2000 with schedule.num_timesteps=1000", "cannot take 2000 steps")
    check(tmp_path, [f"sampler={sampler}", "sampler.steps=1000", "schedule.num_timesteps=1000"])  # = T is fine


def test_min_snr_with_a_target_it_cannot_train(tmp_path):
    """min-SNR/P2 weight the x0- and v-losses by ~SNR, i.e. 0 at t=T under zero terminal SNR, where the
    sampler starts; eps/score and schedules with SNR_T > 0 are fine (see diffexp.validation)."""
    ztsnr = ["schedule.zero_terminal_snr=true", "objective.weighting=min_snr"]
    for prediction in ("x0", "v"):
        rejected(tmp_path, ztsnr + [f"prediction={prediction}"], "objective.weighting=min_snr",
                 f"prediction={prediction}", "schedule.zero_terminal_snr=true", "t=T")
    rejected(tmp_path, ["schedule.zero_terminal_snr=true", "objective.weighting=p2", "prediction=v"], "objective.weighting=p2")
    rejected(tmp_path, ["objective=hybrid_fixed", "objective.weighting=min_snr", "prediction=v", "schedule.zero_terminal_snr=true"],
             "objective.weighting=min_snr")
    check(tmp_path, ztsnr + ["prediction=eps"])  # eps under zero terminal SNR: the objective only warns
    for prediction in ("eps", "x0", "v", "score"):  # Hang et al. 2023: min-SNR with every target on usual schedules
        check(tmp_path, ["objective.weighting=min_snr", f"prediction={prediction}"])
    rejected(tmp_path, ["objective=elbo", "+objective.weighting=min_snr"], "objective.weighting=min_snr",
             "ELBOObjective has no loss weighting")


def test_guidance_needs_a_conditional_model_trained_with_label_dropout(tmp_path):
    rejected(tmp_path, ["+callbacks.sample.guidance_scale=3.0"], "callbacks.sample.guidance_scale=3.0",
             "class-conditional", "conditional=true")
    rejected(tmp_path, ["conditional=true", "+callbacks.sample.guidance_scale=3.0", "module.label_dropout=0"],
             "module.label_dropout=0")
    check(tmp_path, ["conditional=true", "+callbacks.sample.guidance_scale=3.0"])


def test_the_recipe_guidance_scale_is_checked_under_its_own_key(tmp_path):
    """The top-level guidance_scale (which the sample/metrics callbacks interpolate) is named as itself, once."""
    msg = rejected(tmp_path, ["guidance_scale=1.25", "callbacks=with_metrics"], "guidance_scale=1.25 needs a class-conditional",
                   "conditional=true")
    assert "callbacks." not in msg and msg.count("guidance_scale=1.25") == 1, msg
    rejected(tmp_path, ["conditional=true", "guidance_scale=1.25", "module.label_dropout=0"], "guidance_scale=1.25",
             "module.label_dropout=0")
    rejected(tmp_path, ["guidance_scale=-0.5"], "guidance_scale=-0.5: must be >= 0")
    rejected(tmp_path, ["guidance_scale=abc"], "guidance_scale=abc: must be a number")
    rejected(tmp_path, ["guidance_scale=null"], "guidance_scale=None: must be a number")
    cfg = check(tmp_path, ["conditional=true", "guidance_scale=1.25"])
    assert cfg.callbacks.sample.guidance_scale == 1.25
    check(tmp_path, ["guidance_scale=1"])  # an unconditional recipe at w = 1 (the default)
    # a callback's own value differing from the recipe's is named by the callback key
    rejected(tmp_path, ["conditional=true", "guidance_scale=1.25", "callbacks.sample.guidance_scale=-1"],
             "callbacks.sample.guidance_scale=-1: must be >= 0")


def test_unknown_prediction(tmp_path):
    rejected(tmp_path, ["prediction=noise"], "prediction=noise", "valid", "'eps'")


def test_conditional_on_unlabelled_data(tmp_path):
    rejected(tmp_path, ["conditional=true", "data.dataset=swiss_roll"], "conditional=true", "swiss_roll",
             "no class labels")
    check(tmp_path, ["conditional=true", "data.dataset=moons"])


def test_precision(tmp_path):
    rejected(tmp_path, ["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs a GPU", "bf16-mixed")
    rejected(tmp_path, ["trainer.precision=bf16-true"], "trainer.precision=bf16-true", "32, bf16-mixed")
    check(tmp_path, ["trainer.precision=bf16-mixed"])


def test_every_problem_is_listed_at_once(tmp_path):
    msg = rejected(tmp_path, ["trainer.max_steps=0", "prediction=noise", "sampler.steps=5000"])
    assert msg.count("\n  - ") == 3


def test_errors_stop_train_before_any_work(tmp_path):
    cfg = configure(tmp_path, ["trainer.max_steps=0"])
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="trainer.max_steps=0"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,needles", [
    (["model=unet", "model.channel_mult=[1,2,2,2,2]"], ["model=unet", "data_shape=(1, 8, 8)", "image_size"]),
    (["model=dit", "model.patch_size=3"], ["model=dit", "data_shape=(1, 8, 8)", "patch"]),
])
def test_image_size_the_model_cannot_take_names_the_keys(tmp_path, overrides, needles):
    cfg = configure(tmp_path, ["data=digits", "logger=none", "print_config=false", "trainer.accelerator=cpu"] + overrides,
                    base=[])
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert all(n in str(e.value) for n in needles), str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["schedule=cosine", "schedule.num_timesteps=50", "++schedule.num_timesteps=100"])
def test_schedule_overrides_on_a_continuous_process_are_rejected(tmp_path, override):
    """process=flow (or any continuous family) has its own alpha(t), sigma(t): a schedule override would be ignored."""
    cfg = compose("train", TOY + ["process=flow", "prediction=velocity", "objective=flow_matching", override], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, instantiate(cfg.data))
    assert f"{override} with process=flow" in str(e.value) and "only applies to process=ddpm" in str(e.value)


def test_the_default_schedule_does_not_trip_the_continuous_process_check(tmp_path):
    """train.yaml composes `schedule: linear` for every run: without a user override, process=flow is valid;
    with process=ddpm, schedule overrides are what the schedule group is for."""
    flow = compose("train", TOY + ["process=flow", "prediction=velocity", "objective=flow_matching"], tmp_path)
    assert flow.schedule._target_ == "diffexp.schedules.linear"
    validate_config(flow, instantiate(flow.data))
    ddpm = compose("train", TOY + ["process=ddpm", "schedule=cosine", "schedule.num_timesteps=50"], tmp_path)
    validate_config(ddpm, instantiate(ddpm.data))
