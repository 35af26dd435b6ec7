"""Build diffexp objects from a composed Hydra config, and load them back from checkpoints.

The data-dependent sizes (channels, image size, number of classes) come from the data module when
training and from the checkpoint when sampling, so a checkpoint is self-describing: it stores the
resolved config next to the weights and :func:`load_module` rebuilds the network without the dataset.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffexp.checkpoint import CHECKPOINT_KEY, CheckpointError, read_checkpoint
from diffexp.module import DiffusionModule
from diffexp.validation import ConfigError

__all__ = ["CheckpointError", "ConfigError", "build_module", "build_net", "build_process", "data_info", "load_denoiser",
           "load_module", "read_checkpoint", "resolve_num_classes"]


def data_info(datamodule) -> dict[str, Any]:
    info = {
        "data_shape": list(datamodule.data_shape),
        "num_classes": getattr(datamodule, "num_classes", None),
        "data_range": list(datamodule.data_range) if getattr(datamodule, "data_range", None) is not None else None,
    }
    if getattr(datamodule, "autoencoder", None) is not None:  # latent data: the first stage it was encoded with
        info["autoencoder"] = datamodule.autoencoder
    return info


def resolve_num_classes(cfg: DictConfig, dataset_classes: int | None) -> int | None:
    """``conditional: true`` uses the dataset's classes; an explicit ``model.num_classes`` wins."""
    explicit = cfg.model.get("num_classes") if "model" in cfg else None
    if explicit is not None:
        return int(explicit)
    if not cfg.get("conditional", False):
        return None
    if dataset_classes is None:
        raise ConfigError(
            f"conditional=true needs labelled data, but data ({_data_name(cfg)}) has no class labels; "
            "set conditional=false or use a labelled dataset"
        )
    return int(dataset_classes)


def _data_name(cfg: DictConfig) -> str:
    data = cfg.get("data") or {}
    name = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}, dataset={data.dataset}" if "dataset" in data else name


def _model_name(cfg: DictConfig) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get("model")
    except Exception:  # noqa: BLE001  (no Hydra context: tests, notebooks)
        choice = None
    target = str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    if choice and str(choice).split("_")[0].lower() in target.lower():  # (a stale Hydra context names another)
        return f"model={choice} ({target})"
    return f"model ({target})"


# Keys of the model group read by diffexp, not passed to the network factory (models/energy.py,
# models/learned_variance.py).
WRAPPER_KEYS = ("energy", "energy_head", "learn_sigma")


def build_net(cfg: DictConfig, data_shape, num_classes: int | None):
    model_cfg = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in WRAPPER_KEYS])
    factory = instantiate(model_cfg)
    if not callable(factory) or isinstance(factory, torch.nn.Module):
        raise ValueError("model configs must be partials (`_partial_: true`) taking in_channels, image_size, num_classes")
    shape = list(data_shape)
    image_size = shape[-1] if len(shape) == 3 else None
    learn_sigma = bool(cfg.model.get("learn_sigma", False))
    extra = {"out_channels": 2 * shape[0]} if learn_sigma else {}  # mean output | v (models/learned_variance.py)
    try:
        net = factory(in_channels=shape[0], image_size=image_size, num_classes=num_classes, **extra)
        if learn_sigma:
            from diffexp.models.learned_variance import LearnedVarianceNet

            net = LearnedVarianceNet(net, shape[0])
        return net
    except (ValueError, TypeError, AssertionError) as e:
        size = f"image_size={image_size}, in_channels={shape[0]}" if image_size else f"in_channels={shape[0]}"
        raise ConfigError(
            f"{_model_name(cfg)} cannot be built with its model.* options for the data ({_data_name(cfg)}: "
            f"data_shape={tuple(shape)}, {size}): {e}. Change the model.* options or the data (e.g. data.image_size)"
        ) from e


def _instantiate_checked(node):
    """``instantiate`` that lets a ConfigError raised by the target itself through unwrapped (Hydra wraps it
    in an InstantiationException whose message repeats the traceback's context)."""
    try:
        return instantiate(node)
    except Exception as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def is_ddpm(cfg: DictConfig) -> bool:
    """Whether the config trains the discrete ddpm chain: ``process: ddpm``, or no ``process`` key at all
    (configs, experiments and checkpoints from before the process families)."""
    node = cfg.get("process")
    return node is None or str(node.get("_target_", "")).endswith("DiffusionProcess")


def build_process(cfg: DictConfig, schedule=None):
    """The process of ``cfg.process`` (group ``process``); ddpm (and a config without the key) runs over
    ``cfg.schedule``, the other families ignore the schedule group."""
    if is_ddpm(cfg):
        from diffexp.process import DiffusionProcess

        return DiffusionProcess(schedule if schedule is not None else instantiate(cfg.schedule))
    try:
        return instantiate(cfg.process)
    except Exception as e:  # noqa: BLE001  (Hydra wraps the family's ValueError)
        cause = e.__cause__ or e
        raise ConfigError(f"process ({cfg.process.get('_target_', '?')}): {cause}") from e


def check_learn_sigma(cfg: DictConfig, process, objective) -> None:
    """+model.learn_sigma=true (Σ_θ of Nichol & Dhariwal) needs the ddpm chain, objective=hybrid (the loss that
    trains Σ_θ), a raw network (no energy wrapper or preconditioning); objective=hybrid needs learn_sigma."""
    learn = bool(cfg.model.get("learn_sigma", False))
    if getattr(objective, "needs_learn_sigma", False) and not learn:
        from diffexp.objectives.hybrid import NEEDS_LEARN_SIGMA

        raise ConfigError(NEEDS_LEARN_SIGMA)
    if not learn:
        return
    if not process.is_discrete:
        raise ConfigError(f"+model.learn_sigma=true interpolates between β_t and β̃_t of the discrete ddpm chain; "
                          f"process={process.name} has none. Use process=ddpm or model.learn_sigma=false")
    if not getattr(objective, "needs_learn_sigma", False):
        raise ConfigError(f"+model.learn_sigma=true needs objective=hybrid (the loss that trains Σ_θ), got "
                          f"objective={getattr(objective, 'objective_name', type(objective).__name__)}")
    if cfg.model.get("energy", False):
        raise ConfigError("+model.learn_sigma=true cannot be combined with model.energy=true (the energy's "
                          "gradient has the data's channels only)")
    precondition = OmegaConf.select(cfg, "module.precondition", default="none")
    if precondition not in (None, "none"):
        raise ConfigError(f"+model.learn_sigma=true with module.precondition={precondition}: the variance "
                          "channels are raw network outputs; use module.precondition=none")


def build_module(cfg: DictConfig, info: dict[str, Any]) -> DiffusionModule:
    num_classes = resolve_num_classes(cfg, info.get("num_classes"))
    net = build_net(cfg, info["data_shape"], num_classes)
    process = build_process(cfg)
    schedule = process.schedule
    if cfg.model.get("energy", False):  # score = −∇_x E by autograd (diffexp.models.energy)
        from diffexp.models.energy import EnergyNet

        precondition = OmegaConf.select(cfg, "module.precondition", default="none")
        if precondition not in (None, "none"):  # the wrapper reads its input as x_t, not the preconditioner's c_in x_t
            raise ConfigError(f"model.energy=true with module.precondition={precondition}: the energy wraps the raw "
                              "network and reads its input as x_t; use module.precondition=none with an energy model")

        net = EnergyNet(net, process, cfg.prediction, head=cfg.model.get("energy_head", "l2"))
    objective = instantiate(cfg.objective)
    check_learn_sigma(cfg, process, objective)
    module_cfg = OmegaConf.to_container(cfg.module, resolve=True) if "module" in cfg else {}
    optimizer = instantiate(cfg.optimizer) if "optimizer" in cfg else None
    lr_scheduler = _instantiate_checked(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None
    data_range = info.get("data_range")
    module = DiffusionModule(
        net=net,
        schedule=schedule,
        objective=objective,
        prediction=cfg.prediction,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        num_classes=num_classes,
        data_shape=tuple(info["data_shape"]),
        data_range=tuple(data_range) if data_range is not None else None,
        seed=int(cfg.get("seed", 0)),
        config=OmegaConf.to_container(cfg, resolve=True),
        process=process,
        **module_cfg,
    )
    if cfg.get("latent") or cfg.get("latent_autoencoder"):  # latent diffusion: a frozen first stage decodes samples
        from diffexp.latent import attach_autoencoder

        attach_autoencoder(module, cfg, info.get("autoencoder"))
    return module


def load_module(path: str | os.PathLike, map_location="cpu") -> DiffusionModule:
    """Rebuild the module from the config stored in the checkpoint and load its weights (and EMA)."""
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt[CHECKPOINT_KEY]
    cfg = OmegaConf.create(meta["config"])
    info = {"data_shape": meta["data_shape"], "num_classes": meta["num_classes"], "data_range": meta["data_range"]}
    module = build_module(cfg, info)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {e}") from e
    module.checkpoint_info = {"path": str(path), "global_step": int(ckpt.get("global_step", 0)), "epoch": int(ckpt.get("epoch", 0))}
    if meta.get("posthoc_ema"):  # written by `python ema.py`: its weights are a post-hoc EMA reconstruction
        module.checkpoint_info["posthoc_ema"] = meta["posthoc_ema"]
    return module.eval()


def load_denoiser(path: str | os.PathLike, ema: bool = True, map_location="cpu"):
    """(Denoiser, module) for sampling and evaluation; EMA weights when present and updated."""
    module = load_module(path, map_location)
    return module.denoiser(ema=ema), module
