"""`python train.py` / `diffexp-train`: compose the config, check it, train, and say where things are."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, print_config_tree, setup_environment
from diffexp.launch import ddp_job, finish_loggers, prepare_launch, setup_loggers
from diffexp.logs import route_to_run_log, say, to_log_file

setup_environment()
enable_debug_tracebacks()
prepare_launch()  # DDP ranks under Hydra runs/multiruns; one run dir for torchrun/srun ranks (diffexp/launch.py)

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.build import build_module, data_info  # noqa: E402
from diffexp.validation import (  # noqa: E402
    ConfigError,
    apply_global_batch,
    instantiate_checked,
    instantiate_group,  # noqa: F401  (re-exported: train_classifier.py and older callers import it from here)
    planned_world_size,
)


def validate_config(cfg: DictConfig, datamodule=None) -> None:
    """Reject nonsense before anything is built, naming the keys (all problems at once; see diffexp.validation)."""
    from diffexp.validation import validate_config as _validate

    _validate(cfg, datamodule)


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: `ckpt_path=<path>` (checked: readable, same model/schedule/target)
    or `auto` (the newest compatible last.ckpt under paths.log_dir/task_name). The resumed run writes
    into its own, new run directory; see diffexp.resume.resolve_ckpt_path."""
    from diffexp.resume import resolve_ckpt_path

    return resolve_ckpt_path(cfg)


def _stop_signal(callbacks) -> int | None:
    """The signal (SIGTERM/SIGINT) that stopped training early, if any (see diffexp.checkpoint.SignalCheckpoint)."""
    return next((int(cb.received) for cb in callbacks if getattr(cb, "received", None)), None)


def _exit_after_signal(signum: int | None, callbacks, trainer) -> None:
    """After a signal: the checkpoint is saved and the loggers are closed; exit with 128 + signal, no traceback."""
    if signum is None:
        return
    import signal
    import sys

    path = next((cb.saved_path for cb in callbacks if getattr(cb, "saved_path", None)), None)
    if trainer.is_global_zero:
        say(f"[diffexp] stopped by {signal.Signals(signum).name} at step {trainer.global_step}; resumable checkpoint: "
            f"{path}\n[diffexp] skipped the end-of-run sample grids, metrics and validation (a preempted job's grace "
            f"period is short)\n[diffexp] resume with the same command plus ckpt_path=auto (or ckpt_path={path})")
    sys.exit(128 + signum)


def train(cfg: DictConfig, prepare_module=None) -> dict[str, float]:
    """``prepare_module(module)``: called once the module is built, before the Trainer (distill.py: the
    student starts from the teacher's weights)."""
    out_dir = Path(cfg.paths.output_dir)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):  # (the data config reads it too)
        raise ConfigError(f"invalid config:\n  - seed={seed}: must be an integer")
    L.seed_everything(seed, workers=True, verbose=False)  # network initialisation only
    datamodule = instantiate_checked(cfg.data, "data")
    from diffexp.latent import latent_datamodule, wants_latent
    from diffexp.latent_auto import is_auto

    if wants_latent(cfg):  # latent diffusion: the data's latents, encoded once and cached (diffexp/latent.py)
        if is_auto(cfg):  # latent=auto trains (or reuses) the autoencoder first (diffexp/latent_auto.py) ...
            validate_config(cfg, datamodule)  # ... once the diffusion config is known to be sound
        datamodule = latent_datamodule(cfg, datamodule)
    validate_config(cfg, datamodule)  # every problem named by its key, before anything is built
    if hasattr(datamodule, "check"):  # files present and readable, values finite, batch <= split: before the Trainer
        datamodule.check(planned_world_size(cfg))
    module = build_module(cfg, data_info(datamodule))  # a model that cannot take the data: ConfigError too
    if prepare_module is not None:
        prepare_module(module)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # logger=none: Lightning's LearningRateMonitor refuses to start without a logger
        callbacks = [cb for cb in callbacks if type(cb).__name__ != "LearningRateMonitor"]
    ckpt_path = find_resume_checkpoint(cfg)  # resolved once: `auto` scans the log dir, a path is read and checked
    callbacks += setup_loggers(cfg, loggers, ckpt_path)  # W&B: config at init, run id in ckpt
    trainer = instantiate_checked(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    batch_line = apply_global_batch(cfg, trainer)  # derives accumulation from global_batch_size when set
    if trainer.is_global_zero:
        say(batch_line)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        to_log_file("resolved config:\n" + OmegaConf.to_yaml(cfg, resolve=True))
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    elapsed = time.time() - start
    stopped = _stop_signal(callbacks)
    if cfg.get("test") and stopped is None:
        trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if stopped is None:
        metrics.update(_validate_if_missing(cfg, trainer, module, datamodule, metrics))
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step, params=module.num_parameters())
    if stopped is not None:
        metrics["stopped_by_signal"] = stopped
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        _print_summary(out_dir, callbacks, metrics)
    finish_loggers(loggers, trainer.is_global_zero)  # one W&B run per job, even in multiruns; prints `wandb sync`
    _exit_after_signal(stopped, callbacks, trainer)
    return metrics


def _validate_if_missing(cfg: DictConfig, trainer, module, datamodule, metrics: dict[str, float]) -> dict[str, float]:
    """A run that ended before its first validation (trainer.max_steps < trainer.val_check_interval, as in a
    quick sweep) has no val/* metric, and a sweeper would get None for ``optimized_metric`` (Optuna then
    aborts with "No trials are completed yet"): validate once now, so every run returns its metric."""
    wanted = cfg.get("optimized_metric")
    if not wanted or wanted in metrics or not str(wanted).startswith("val/") or not trainer.limit_val_batches:
        return {}
    if trainer.is_global_zero:
        say(f"[diffexp] optimized_metric={wanted} was not computed during training (no validation ran before "
            f"step {trainer.global_step}); validating once now")
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and k.startswith("val/")}


def _print_summary(out_dir: Path, callbacks, metrics: dict[str, float]) -> None:
    samples = [p for cb in callbacks for p in getattr(cb, "last_paths", [])]
    ckpts = sorted((out_dir / "checkpoints").glob("*.ckpt")) if (out_dir / "checkpoints").is_dir() else []
    say("\n" + "=" * 72)
    say(f"run directory : {out_dir}")
    for p in samples:
        say(f"samples       : {p}")
    if ckpts:
        say(f"checkpoints   : {out_dir / 'checkpoints'} ({', '.join(p.name for p in ckpts[-3:])})")
    say(f"metrics       : {out_dir / 'metrics.json'}")
    shown = {k: round(v, 5) for k, v in metrics.items() if k.startswith(("val/", "train/loss"))}
    say(f"final metrics : {shown}  ({metrics['train_seconds']:.0f} s, {metrics['global_step']} steps)")
    say("=" * 72)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    route_to_run_log()  # Lightning's messages and ours also go to the run's train.log
    # A mistake in the config or data: one message naming the key or file, exit status 2 (DIFFEXP_DEBUG=1: traceback).
    with user_errors("train"), ddp_job():  # a sequential sweep's next job launches its own DDP ranks
        metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None or math.isnan(value) else value


if __name__ == "__main__":
    main()
