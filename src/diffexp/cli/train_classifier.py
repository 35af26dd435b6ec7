"""`python train_classifier.py` / `diffexp-train-classifier`: train the noise-conditional classifier of
classifier guidance on x_t of the chosen process (``process=``, ``schedule=``), see diffexp.guidance.

Then: ``python sample.py ckpt_path=CKPT guidance=classifier guidance.scale=2 classifier_ckpt=<run>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import time
from pathlib import Path

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, setup_environment

setup_environment()
enable_debug_tracebacks()

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.atomic import atomic_write_json  # noqa: E402
from diffexp.build import build_process  # noqa: E402
from diffexp.cli.train import instantiate_group  # noqa: E402
from diffexp.guidance.noisy_classifier import NoisyClassifierModule, build_classifier  # noqa: E402
from diffexp.validation import ConfigError  # noqa: E402


def build_classifier_module(cfg: DictConfig, datamodule) -> NoisyClassifierModule:
    shape = tuple(datamodule.data_shape)
    if len(shape) != 3 or not datamodule.num_classes:
        raise ConfigError(f"train_classifier: data={datamodule.name} has data_shape {shape} and num_classes="
                          f"{datamodule.num_classes}; the noisy classifier needs labelled images (e.g. data=mnist, digits)")
    process = build_process(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.update(in_channels=shape[0], num_classes=int(datamodule.num_classes))
    net = build_classifier(cfg, shape[0], int(datamodule.num_classes))
    return NoisyClassifierModule(net, process, lr=float(cfg.lr), config=config, seed=int(cfg.seed))


def train_classifier(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_classifier_module(cfg, datamodule)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    start = time.time()
    trainer.fit(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(train_seconds=time.time() - start, global_step=trainer.global_step)
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        last = out_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(last)
        metrics["checkpoint"] = str(last)
        atomic_write_json(out_dir / "metrics.json", metrics, indent=2, sort_keys=True)
        print(f"noisy classifier: {last}  (val/acc {metrics.get('val/acc', float('nan')):.3f} over all noise levels)")
        print(f"guided sampling: python sample.py ckpt_path=CKPT guidance=classifier guidance.scale=2 classifier_ckpt={last}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    with user_errors("train_classifier"):
        train_classifier(cfg)


if __name__ == "__main__":
    main()
