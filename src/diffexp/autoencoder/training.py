"""Training the first stage: the code path shared by ``train_autoencoder.py`` and ``latent=auto`` (train.py).

:func:`prepare_autoencoder_run` builds everything a run needs (data, :class:`AutoencoderModule`, callbacks,
loggers, Trainer) and raises a :class:`ConfigError` for what cannot be built, before anything trains;
:func:`fit_autoencoder` trains it and writes ``metrics.json`` (scale factor, latent shape, weights hash) next
to ``checkpoints/last.ckpt`` in ``paths.output_dir``. ``key_prefix`` names the block the config came from in
error messages (``latent_train.`` when train.py composed it for ``latent=auto``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffexp.atomic import atomic_write_json
from diffexp.autoencoder.load import autoencoder_hash
from diffexp.autoencoder.module import AutoencoderModule
from diffexp.errors import ConfigError
from diffexp.validation import instantiate_checked, instantiate_group


def build_autoencoder_module(cfg: DictConfig, datamodule, key_prefix: str = "") -> AutoencoderModule:
    """The AutoencoderModule for ``cfg.autoencoder`` on the data's image shape (ConfigError when it cannot be)."""
    shape = tuple(datamodule.data_shape)
    if len(shape) != 3 or getattr(datamodule, "data_range", None) is None:
        raise ConfigError(f"{key_prefix}autoencoder: data={datamodule.name} has data_shape {shape}; the autoencoder "
                          "needs images (C, H, W) in a bounded range (e.g. data=mnist, fashion_mnist, cifar10, digits)")
    ae_cfg = cfg.autoencoder
    try:
        net = instantiate(ae_cfg.model)(in_channels=shape[0], image_size=shape[-1])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key_prefix}autoencoder.model cannot be built for data={datamodule.name} "
                          f"(data_shape {shape}): {e}") from e
    values = {}
    for key, kind, default in (("kl_weight", float, None), ("rec_loss", str, None), ("scale_examples", int, 2048)):
        raw = ae_cfg.get(key, default)
        try:
            values[key] = kind(raw)
        except (ValueError, TypeError):
            raise ConfigError(f"{key_prefix}autoencoder.{key}={raw}: must be {kind.__name__}") from None
    return AutoencoderModule(
        net, kl_weight=values["kl_weight"], rec_loss=values["rec_loss"],
        optimizer=instantiate(cfg.optimizer) if "optimizer" in cfg else None,
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        data_range=tuple(datamodule.data_range), seed=int(cfg.seed),
        config=OmegaConf.to_container(cfg, resolve=True), scale_examples=values["scale_examples"],
    )


@dataclass
class AutoencoderRun:
    cfg: DictConfig
    datamodule: Any
    module: AutoencoderModule
    callbacks: list[Any]
    loggers: list[Any]
    trainer: L.Trainer


def prepare_autoencoder_run(cfg: DictConfig, key_prefix: str = "") -> AutoencoderRun:
    """Seed, then build data, module, callbacks, loggers and Trainer; every user mistake is a ConfigError
    naming ``<key_prefix><key>``, raised here (before training)."""
    from diffexp.validation import check_training

    problems = check_training(cfg)
    if problems:  # one line for one problem, else the list (as validate_config)
        lines = [key_prefix + p for p in problems]
        raise ConfigError(lines[0] if len(lines) == 1 else "invalid config:\n  - " + "\n  - ".join(lines))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_checked(cfg.data, f"{key_prefix}data")
    module = build_autoencoder_module(cfg, datamodule, key_prefix)
    callbacks = instantiate_group(cfg.get("callbacks"), f"{key_prefix}callbacks")
    loggers = instantiate_group(cfg.get("logger"), f"{key_prefix}logger")
    trainer = instantiate_checked(cfg.trainer, f"{key_prefix}trainer", callbacks=callbacks, logger=loggers or False)
    return AutoencoderRun(cfg, datamodule, module, callbacks, loggers, trainer)


def fit_autoencoder(run: AutoencoderRun) -> dict[str, Any]:
    """Train ``run``; write ``config.yaml`` and ``metrics.json`` into ``paths.output_dir``; return the metrics."""
    cfg, trainer, module = run.cfg, run.trainer, run.module
    out_dir = Path(cfg.paths.output_dir)
    for logger in run.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    start = time.time()
    trainer.fit(module, datamodule=run.datamodule, ckpt_path=cfg.get("ckpt_path"))
    elapsed = time.time() - start
    scale = module.update_scale_factor()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step, params=module.num_parameters(),
                   scale_factor=scale, latent_shape=list(module.autoencoder.latent_shape),
                   autoencoder_hash=autoencoder_hash(module.autoencoder))
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "metrics.json", metrics, indent=2, sort_keys=True)
    return metrics


def budget(cfg: DictConfig) -> str:
    """``max_steps=4000, max_time=00:00:08:00`` of the config's trainer (for the messages)."""
    trainer = cfg.get("trainer") or {}
    return ", ".join(f"{k}={trainer.get(k)}" for k in ("max_steps", "max_time") if trainer.get(k) not in (None, -1))
