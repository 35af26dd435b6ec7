"""`python export.py ckpt_path=CKPT format=diffusers out=DIR` / `diffexp-export`.

``format=diffusers``: a diffusers pipeline folder (networks built with model=diffusers_unet/diffusers_dit),
loadable offline by ``DDPMPipeline.from_pretrained(DIR)``; ``format=safetensors``: any diffexp network as
safetensors + config + loader. EMA weights by default (``ema=false`` for the raw ones). See
:mod:`diffexp.interop.export`.
"""

from __future__ import annotations

import diffexp  # noqa: F401
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, setup_environment

setup_environment()
enable_debug_tracebacks()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from diffexp.interop.export import export_checkpoint  # noqa: E402


def export(cfg: DictConfig) -> dict:
    return export_checkpoint(cfg.ckpt_path, cfg.out, format=cfg.format, ema=cfg.ema, variance=cfg.variance,
                             overwrite=cfg.overwrite)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors("export"):  # a mistake in the config or checkpoint: one message, exit status 2
        export(cfg)


if __name__ == "__main__":
    main()
