"""Every private attribute of Lightning, Lightning's W&B logger, OmegaConf and torch that diffexp touches, in
one place.

Each is a workaround for something the public API does not offer (the reason is next to it). The version
ranges declared in pyproject.toml (``lightning>=2.4,<2.7``, ``wandb>=0.17,<0.32``, ``torch>=2.3,<2.14``,
``omegaconf>=2.3,<2.4``) bound what was tested (lightning 2.6, wandb 0.31, torch 2.13, omegaconf 2.3).
:func:`check` verifies that every attribute still exists, and tests/test_structure.py runs it, so an upgrade
that renames one fails in a single test naming the attribute rather than deep inside a training run. No
other module of diffexp may read or write a private attribute of a foreign object (tests/test_structure.py
checks that too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer

__all__ = ["CheckpointCallbackBase", "attached_trainer", "check", "config_key", "extend_time_budget", "foreach_lerp_",
           "install_ddp_child_command", "logs_this_step", "mark_saved", "override_index_sampler", "wandb_init_kwargs",
           "wandb_offline", "wandb_project", "wandb_run_id", "wandb_run_if_started", "wandb_set_id", "wandb_set_name"]


# ---- LightningModule / Trainer ---------------------------------------------------------------------------
def attached_trainer(module: Any) -> Any | None:
    """The module's trainer, or None when detached (``LightningModule.trainer`` raises instead)."""
    return module._trainer


def logs_this_step(trainer: Any | None) -> bool:
    """Whether Lightning writes this training step's on-step values to the loggers (every
    ``log_every_n_steps``): skips computing values that would be dropped. True when unknown."""
    connector = getattr(trainer, "_logger_connector", None) if trainer is not None else None
    return bool(getattr(connector, "should_update_logs", True))


def extend_time_budget(trainer: Any, seconds: float) -> bool:
    """Lengthen the Trainer's wall-clock budget (``trainer.max_time``, Lightning's ``Timer``) by ``seconds``.

    The benchmarks evaluate sample quality during training and exclude that time from the recipe's budget;
    ``Timer`` has no public way to change its duration. False (nothing changed) when there is no Timer or it
    has no duration (no ``max_time``)."""
    timer = next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, Timer)), None)
    if timer is None or timer._duration is None:
        return False
    timer._duration += float(seconds)
    return True


# ---- ModelCheckpoint ---------------------------------------------------------------------------------------
class CheckpointCallbackBase(ModelCheckpoint):
    """``ModelCheckpoint`` with the private methods diffexp uses under public names. Lightning offers no
    public way to save ``last.ckpt`` now, to replace its last-link step, or to record a save made elsewhere
    (the SIGTERM save) so that it is not repeated."""

    @staticmethod
    def link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
        """Make ``linkpath`` (``last.ckpt`` in ``save_last="link"`` mode) point to ``filepath``."""
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)

    def _link_checkpoint(self, trainer: Any, filepath: str, linkpath: str) -> None:  # Lightning's hook
        self.link_checkpoint(trainer, filepath, linkpath)

    def should_skip_saving(self, trainer: Any) -> bool:
        return self._should_skip_saving_checkpoint(trainer)

    def monitor_candidates(self, trainer: Any) -> dict[str, Any]:
        return self._monitor_candidates(trainer)

    def save_checkpoint_file(self, trainer: Any, filepath: str) -> None:
        """Save to ``filepath`` as the callback does (loggers notified, step recorded)."""
        self._save_checkpoint(trainer, filepath)

    def save_last_checkpoint(self, trainer: Any) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def mark_saved(callback: Any, step: int) -> None:
    """Record in a ``ModelCheckpoint`` that the state of ``step`` is saved (it then does not save it again)."""
    callback._last_global_step_saved = int(step)


# ---- OmegaConf ------------------------------------------------------------------------------------------------
def config_key(node: Any) -> str:
    """The key under which a config node sits in its parent (``callbacks`` for ``cfg.callbacks``): error
    messages name the full key of what failed."""
    return str(node._key())


# ---- DDP launcher ---------------------------------------------------------------------------------------------
def install_ddp_child_command(command: Callable[..., list[str]]) -> None:
    """Make Lightning's script launcher build the command of DDP ranks 1..N-1 with ``command`` (Lightning
    re-runs ``sys.argv``, which under a Hydra multirun starts a whole sweep per rank)."""
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as pl_launcher

    for module in (pl_launcher, fabric_launcher):
        if not hasattr(module, "_hydra_subprocess_cmd"):
            raise RuntimeError(
                f"{module.__name__} has no _hydra_subprocess_cmd: this Lightning version builds DDP child "
                "commands differently; update diffexp._internals.install_ddp_child_command"
            )
        module._hydra_subprocess_cmd = command


# ---- Lightning's WandbLogger ----------------------------------------------------------------------------------
# The logger's init arguments must be completed before the run starts (config, name, group, tags, resumed
# id), and its run id is needed in checkpoints on ranks where ``logger.experiment`` would start a run.
def wandb_init_kwargs(logger: Any) -> dict[str, Any]:
    """The (mutable) keyword arguments the logger will pass to ``wandb.init``."""
    return logger._wandb_init


def wandb_set_name(logger: Any, name: str) -> None:
    logger._name = name


def wandb_set_id(logger: Any, run_id: str) -> None:
    logger._id = run_id


def wandb_run_id(logger: Any) -> str | None:
    return logger._id


def wandb_project(logger: Any) -> str | None:
    return logger._project


def wandb_run_if_started(logger: Any) -> Any | None:
    """The W&B run, or None when it was never started (``logger.experiment`` would start one)."""
    return logger._experiment


def wandb_offline(logger: Any) -> bool:
    return bool(logger._offline)


# ---- torch -----------------------------------------------------------------------------------------------------
def foreach_lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor], weight: float) -> None:
    """``t += weight * (s - t)`` for every pair, as one fused kernel per device (the EMA update)."""
    torch._foreach_lerp_(targets, sources, weight)


def override_index_sampler(cls: type, wrap: Callable[[Any, Any], Any]) -> None:
    """Make ``DataLoader`` subclass ``cls`` iterate ``wrap(loader, index_sampler)`` instead of its index
    sampler (``DataLoader._index_sampler``, what each new iterator reads): resuming mid-epoch skips the
    consumed indices without loading their data, with any sampler, any number of workers."""
    base = torch.utils.data.DataLoader._index_sampler
    cls._index_sampler = property(lambda self: wrap(self, base.fget(self)))


# ---- the check ---------------------------------------------------------------------------------------------------
def check() -> list[str]:
    """The private attributes above that the installed versions lack ([] when all are there)."""
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as pl_launcher
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.loggers import WandbLogger
    from omegaconf import DictConfig

    missing = []
    for owner, names in [
        (ModelCheckpoint, ("_link_checkpoint", "_should_skip_saving_checkpoint", "_monitor_candidates",
                           "_save_checkpoint", "_save_last_checkpoint")),
        (torch, ("_foreach_lerp_",)),
        (DictConfig, ("_key",)),
        (torch.utils.data.DataLoader, ("_index_sampler",)),
        (pl_launcher, ("_hydra_subprocess_cmd",)),
        (fabric_launcher, ("_hydra_subprocess_cmd",)),
    ]:
        missing += [f"{getattr(owner, '__name__', owner)}.{n}" for n in names if not hasattr(owner, n)]
    if "_last_global_step_saved" not in vars(ModelCheckpoint(dirpath=None)):
        missing.append("ModelCheckpoint()._last_global_step_saved")
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    if not hasattr(getattr(trainer, "_logger_connector", None), "should_update_logs"):
        missing.append("Trainer._logger_connector.should_update_logs")
    if "_duration" not in vars(Timer(duration="00:00:01:00")):
        missing.append("Timer()._duration")
    if "_trainer" not in vars(LightningModule()):
        missing.append("LightningModule()._trainer")
    try:
        logger = WandbLogger(offline=True, project="diffexp-check")
    except ModuleNotFoundError:  # wandb not installed: the W&B logger is not used either
        return missing
    missing += [f"WandbLogger().{n}" for n in ("_wandb_init", "_name", "_id", "_project", "_experiment", "_offline")
                if n not in vars(logger)]
    return missing
