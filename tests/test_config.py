"""Every option of every config group composes and instantiates (a YAML typo fails CI)."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from conftest import CONF, compose

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def all_options():
    return [(g, o) for g in GROUPS for o in options(g)]


def _target_accepts(node: DictConfig) -> None:
    """The target imports and every configured key is a parameter of it."""
    target = node._target_
    try:
        fn = get_class(target)
        params = inspect.signature(fn.__init__).parameters
    except (ImportError, ValueError):
        fn = get_method(target)
        params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keys = [k for k in node.keys() if not str(k).startswith("_")]
    unknown = [k for k in keys if k not in params]
    assert not unknown, f"{target} does not take {unknown}"


def _instantiate_option(cfg: DictConfig, group: str) -> None:
    node = cfg[group] if group in cfg else None
    if group in ("experiment", "debug"):
        return  # composing is the test (they are @package _global_ overrides)
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        return
    if group == "data":
        _target_accepts(node)
        return
    if group == "model":
        from diffexp.build import WRAPPER_KEYS  # read by diffexp (energy, learn_sigma), not the factory's

        shape = (2,) if "MLP" in node._target_ else (3, 32, 32)
        node = OmegaConf.masked_copy(node, [k for k in node if k not in WRAPPER_KEYS])
        net = instantiate(node)(in_channels=shape[0], image_size=shape[-1] if len(shape) == 3 else None, num_classes=None)
        if "unet_large" in str(cfg.get("_test_option", "")):
            return
        x = torch.randn(2, *shape)
        if sum(p.numel() for p in net.parameters()) < 5e6:
            assert net(x, torch.tensor([0, 5])).shape == x.shape
        return
    if group in ("callbacks", "logger"):
        for sub in node.values():
            if isinstance(sub, DictConfig) and "_target_" in sub:
                _target_accepts(sub)
        return
    if group == "extractor":
        _target_accepts(node)
        return
    if group == "autoencoder":
        _target_accepts(node.model)
        net = instantiate(node.model)(in_channels=1, image_size=28)
        assert net.decode(net.encode(torch.randn(2, 1, 28, 28)).mode()).shape == (2, 1, 28, 28)
        return
    if group == "trainer":
        _target_accepts(node)
        return
    if group == "guidance":  # sample.py/evaluate.py: a name and a scale, read by diffexp.guidance
        assert node.name in ("none", "classifier") and float(node.scale) >= 0
        return
    if group == "process":  # ddpm runs over the schedule group
        from diffexp.build import build_process

        assert build_process(cfg).name == OmegaConf.select(cfg, "hydra.runtime.choices.process")
        return
    if group == "distill":  # a method: its objective (the teacher is loaded lazily) and the wrapper it trains
        assert type(instantiate(node.objective)).__name__ in ("ProgressiveDistillation", "ConsistencyDistillation",
                                                              "ConsistencyTraining")
        assert node.precondition in ("none", "consistency")
        return
    obj = instantiate(node)
    assert obj is not None


CONFIG_OF_GROUP = {"autoencoder": "train_autoencoder", "distill": "distill", "guidance": "sample"}  # groups of another entry point's config


@pytest.mark.parametrize("group,option", all_options())
def test_every_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose(CONFIG_OF_GROUP.get(group, "train"), [f"{group}={option}"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    _instantiate_option(cfg, group)


def test_sampler_labels_carry_nfe(tmp_path):
    from diffexp.metrics.provenance import sampler_label

    for option in options("sampler"):
        if option in ("adaptive", "recipe"):  # adaptive: NFE known after a call (tests/test_samplers.py);
            continue  # recipe: a placeholder for the checkpoint's sampler (tests/test_sampler_recipe.py)
        cfg = compose("train", [f"sampler={option}"], tmp_path)
        sampler = instantiate(cfg.sampler)
        nfe = sampler.nfe(1000)
        label = sampler_label(sampler, 1000)
        assert nfe > 0 and label.startswith(sampler.name.split("-")[0]) and str(nfe) in label.split("-")[1:], \
            (option, label, nfe)
    from diffexp.samplers import DDIMSampler, DDPMSampler

    assert [sampler_label(s, 1000) for s in (DDIMSampler(steps=50), DDIMSampler(steps=50, eta=1.0), DDPMSampler())] \
        == ["ddim-50", "ddim-50-eta1", "ddpm-1000"]


def test_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(MissingConfigException) as e:
        compose("train", ["model=unett"], tmp_path)
    msg = str(e.value)
    assert "unett" in msg and "unet" in msg.replace("unett", "")  # names the bad value and the valid ones


def test_unknown_key_is_a_clear_error(tmp_path):
    with pytest.raises(Exception) as e:
        compose("train", ["objective.weigting=min_snr"], tmp_path)
    assert "weigting" in str(e.value)


def test_readme_example_syntax_composes(tmp_path):
    cfg = compose("train", ["model=unet", "schedule=cosine", "trainer.devices=4"], tmp_path)
    assert cfg.trainer.devices == 4 and cfg.schedule._target_.endswith("cosine")


def test_sample_and_evaluate_configs_compose(tmp_path):
    for name in ("sample", "evaluate"):
        if (CONF / f"{name}.yaml").is_file():
            cfg = compose(name, ["ckpt_path=x.ckpt"], tmp_path)
            assert cfg.ckpt_path == "x.ckpt"


@pytest.mark.parametrize("name", ["train_autoencoder", "train_classifier", "distill"])
def test_task_configs_keep_their_own_trainer_budget(name, tmp_path):
    """A task config's own `trainer:` block must win over the trainer group's defaults (`_self_` last):
    train_autoencoder shipped with `_self_` first, so its 8-minute budget silently became no budget."""
    import yaml

    from conftest import CONF, compose

    own = yaml.safe_load((CONF / f"{name}.yaml").read_text()).get("trainer") or {}
    cfg = compose(name, [], tmp_path)
    for key, value in own.items():
        assert cfg.trainer[key] == value, (name, key, cfg.trainer[key], value)


def test_config_tree_shows_what_is_trained_first_and_not_hydra(tmp_path, capsys):
    from diffexp.config import print_config_tree

    print_config_tree(compose("train", ["experiment=mnist_cpu"], tmp_path))
    branches = [line[4:].strip() for line in capsys.readouterr().out.splitlines() if line[:4] in ("├── ", "└── ")]
    assert branches[:6] == ["data", "latent", "model", "process", "schedule", "prediction"]
    assert "hydra" not in branches and "extractor" in branches
