"""`python train.py` / `diffexp-train`: compose the config, check it, train, and say where things are."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.config import CONFIG_DIR, print_config_tree, setup_environment

setup_environment()

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.build import build_module, data_info  # noqa: E402


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a dict-of-configs group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]


def validate_config(cfg: DictConfig, module, datamodule) -> None:
    """Reject nonsense before any work starts, naming the bad value and what would be valid."""
    T = module.schedule.num_timesteps
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps is not None and max_steps != -1 and max_steps <= 0:
        raise ValueError(f"trainer.max_steps must be a positive number of steps (or -1 for epochs), got {max_steps}")
    if "sampler" in cfg and cfg.sampler is not None:
        sampler = instantiate(cfg.sampler)
        sampler.nfe(T)  # raises a ValueError naming the bad steps when they cannot run on this schedule
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("guidance_scale", 1.0) not in (None, 1.0) and module.num_classes is None:
            raise ValueError(
                f"callbacks.{name}.guidance_scale={node.guidance_scale} needs a class-conditional model; "
                "set conditional=true (on labelled data) or guidance_scale=1.0"
            )


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """`ckpt_path=auto`: the newest last.ckpt of this task's runs; a path is used as given."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    if ckpt != "auto":
        return str(ckpt)
    root = Path(cfg.paths.log_dir) / cfg.task_name
    candidates = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return str(candidates[-1]) if candidates else None


def train(cfg: DictConfig) -> dict[str, float]:
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # network initialisation only
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, data_info(datamodule))
    validate_config(cfg, module, datamodule)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    ckpt_path = find_resume_checkpoint(cfg)
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    elapsed = time.time() - start
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step, params=module.num_parameters())
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        _print_summary(out_dir, callbacks, metrics)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            run_dir = getattr(logger.experiment, "dir", None)
            wandb.finish()  # one W&B run per job, even in multiruns
            if logger._offline and run_dir:
                print(f"W&B offline run saved; upload with: wandb sync {Path(run_dir).parent}")
    return metrics


def _print_summary(out_dir: Path, callbacks, metrics: dict[str, float]) -> None:
    samples = [p for cb in callbacks for p in getattr(cb, "last_paths", [])]
    ckpts = sorted((out_dir / "checkpoints").glob("*.ckpt")) if (out_dir / "checkpoints").is_dir() else []
    print("\n" + "=" * 72)
    print(f"run directory : {out_dir}")
    for p in samples:
        print(f"samples       : {p}")
    if ckpts:
        print(f"checkpoints   : {out_dir / 'checkpoints'} ({', '.join(p.name for p in ckpts[-3:])})")
    print(f"metrics       : {out_dir / 'metrics.json'}")
    shown = {k: round(v, 5) for k, v in metrics.items() if k.startswith(("val/", "train/loss"))}
    print(f"final metrics : {shown}  ({metrics['train_seconds']:.0f} s, {metrics['global_step']} steps)")
    print("=" * 72)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None or math.isnan(value) else value


if __name__ == "__main__":
    main()
