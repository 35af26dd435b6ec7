"""`python train_autoencoder.py` / `diffexp-train-autoencoder`: train the first stage of latent diffusion.

Composes ``conf/train_autoencoder.yaml`` (data, ``autoencoder=``, optimizer, trainer, callbacks), trains the
KL autoencoder, and prints where the checkpoint is and the command that trains a latent diffusion model on
it. Every checkpoint carries the latent scale factor of its weights (see diffexp.autoencoder.module).
"""

from __future__ import annotations

from pathlib import Path

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, print_config_tree, setup_environment

setup_environment()
enable_debug_tracebacks()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from diffexp.autoencoder.training import (  # noqa: E402  (the code path shared with train.py's latent=auto)
    build_autoencoder_module,  # noqa: F401  (re-exported for older callers)
    fit_autoencoder,
    prepare_autoencoder_run,
)


def train_autoencoder(cfg: DictConfig) -> dict:
    run = prepare_autoencoder_run(cfg)
    if cfg.get("print_config", True):
        print_config_tree(cfg, order=("data", "autoencoder", "optimizer", "lr_scheduler", "trainer", "callbacks",
                                      "logger", "paths"))
    metrics = fit_autoencoder(run)
    if run.trainer.is_global_zero:
        out_dir = Path(cfg.paths.output_dir)
        last = out_dir / "checkpoints" / "last.ckpt"
        print("\n" + "=" * 72)
        print(f"run directory : {out_dir}")
        print(f"checkpoint    : {last}")
        for cb in run.callbacks:
            for p in getattr(cb, "last_paths", []):
                print(f"reconstructions: {p}")
        shown = {k: round(v, 5) for k, v in metrics.items() if isinstance(v, float) and k.startswith(("val/", "rec_"))}
        print(f"final metrics : {shown}  ({metrics['train_seconds']:.0f} s, {metrics['global_step']} steps)")
        print(f"latents       : {tuple(metrics['latent_shape'])}, scale factor {metrics['scale_factor']}")
        print(f"latent diffusion: python train.py experiment=ldm_mnist latent={last}   (or latent=auto: train.py "
              "trains and caches the autoencoder itself)")
        print("=" * 72)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_autoencoder")
def main(cfg: DictConfig) -> None:
    with user_errors("train_autoencoder"):  # a mistake in the config, a file or the data: one message, exit status 2
        train_autoencoder(cfg)


if __name__ == "__main__":
    main()
