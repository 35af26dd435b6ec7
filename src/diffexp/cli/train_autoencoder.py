"""`python train_autoencoder.py` / `diffexp-train-autoencoder`: train the first stage of latent diffusion.

Composes ``conf/train_autoencoder.yaml`` (data, ``autoencoder=``, optimizer, trainer, callbacks), trains the
KL autoencoder, and prints where the checkpoint is and the command that trains a latent diffusion model on
it. Every checkpoint carries the latent scale factor of its weights (see diffexp.autoencoder.module).
"""

from __future__ import annotations

import time
from pathlib import Path

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, print_config_tree, setup_environment

setup_environment()
enable_debug_tracebacks()

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.atomic import atomic_write_json  # noqa: E402
from diffexp.autoencoder import AutoencoderModule, autoencoder_hash  # noqa: E402
from diffexp.cli.train import instantiate_group  # noqa: E402
from diffexp.validation import ConfigError  # noqa: E402


def build_autoencoder_module(cfg: DictConfig, datamodule) -> AutoencoderModule:
    """The AutoencoderModule for ``cfg.autoencoder`` on the data's image shape (ConfigError when it cannot be)."""
    shape = tuple(datamodule.data_shape)
    if len(shape) != 3 or getattr(datamodule, "data_range", None) is None:
        raise ConfigError(f"autoencoder: data={datamodule.name} has data_shape {shape}; the autoencoder needs "
                          "images (C, H, W) in a bounded range (e.g. data=mnist, fashion_mnist, cifar10, digits)")
    ae_cfg = cfg.autoencoder
    try:
        net = instantiate(ae_cfg.model)(in_channels=shape[0], image_size=shape[-1])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"autoencoder.model cannot be built for data={datamodule.name} (data_shape {shape}): {e}") from e
    return AutoencoderModule(
        net, kl_weight=float(ae_cfg.kl_weight), rec_loss=str(ae_cfg.rec_loss),
        optimizer=instantiate(cfg.optimizer) if "optimizer" in cfg else None,
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        data_range=tuple(datamodule.data_range), seed=int(cfg.seed),
        config=OmegaConf.to_container(cfg, resolve=True), scale_examples=int(ae_cfg.get("scale_examples", 2048)),
    )


def train_autoencoder(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_autoencoder_module(cfg, datamodule)
    if cfg.get("print_config", True):
        print_config_tree(cfg, order=("data", "autoencoder", "optimizer", "lr_scheduler", "trainer", "callbacks",
                                      "logger", "paths"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    elapsed = time.time() - start
    scale = module.update_scale_factor()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step, params=module.num_parameters(),
                   scale_factor=scale, latent_shape=list(module.autoencoder.latent_shape),
                   autoencoder_hash=autoencoder_hash(module.autoencoder))
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "metrics.json", metrics, indent=2, sort_keys=True)
        last = out_dir / "checkpoints" / "last.ckpt"
        print("\n" + "=" * 72)
        print(f"run directory : {out_dir}")
        print(f"checkpoint    : {last}")
        for cb in callbacks:
            for p in getattr(cb, "last_paths", []):
                print(f"reconstructions: {p}")
        shown = {k: round(v, 5) for k, v in metrics.items() if isinstance(v, float) and k.startswith(("val/", "rec_"))}
        print(f"final metrics : {shown}  ({elapsed:.0f} s, {trainer.global_step} steps)")
        print(f"latents       : {tuple(module.autoencoder.latent_shape)}, scale factor {scale}")
        print(f"latent diffusion: python train.py experiment=ldm_mnist latent={last}")
        print("=" * 72)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_autoencoder")
def main(cfg: DictConfig) -> None:
    with user_errors("train_autoencoder"):  # a mistake in the config, a file or the data: one message, exit status 2
        train_autoencoder(cfg)


if __name__ == "__main__":
    main()
