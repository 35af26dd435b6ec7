"""Checkpoints you can trust: atomic writes, clear errors, config compatibility, saving on SIGTERM/SIGINT.

* :class:`AtomicCheckpointIO` (a ``TorchCheckpointIO`` given to the Trainer as a plugin, see
  ``conf/trainer/default.yaml``) saves through :func:`diffexp.atomic.atomic_write` (a temporary file
  in the same folder, ``fsync``, ``os.replace``, ``fsync`` of the folder): a reader sees the old file or
  the new one, never a partial one, whatever kills the process; the temporary files of a killed save are
  removed when the checkpoint folder is next used (:meth:`AtomicModelCheckpoint.setup`). Loading turns torch's errors about truncated or
  foreign files into a :class:`CheckpointError` that names the file.
* :class:`AtomicModelCheckpoint` (``conf/callbacks/model_checkpoint.yaml``) is Lightning's
  ``ModelCheckpoint`` with two changes: ``save_last="link"`` replaces ``last.ckpt`` atomically (a new
  symlink, or copy, under a temporary name, then ``os.replace``; Lightning deletes the old one first),
  and the final step is always saved as ``last.ckpt`` when training ends (Lightning only saves every
  ``every_n_train_steps``, so a run whose ``max_steps`` is not a multiple lost its last steps), before any
  end-of-run evaluation (:func:`save_final_checkpoint`), so a failing sample grid or metric cannot lose it.
* :class:`SignalCheckpoint`: on SIGTERM (schedulers, ``timeout``, preemption) or SIGINT (Ctrl+C) the
  current optimizer step finishes, ``last.ckpt`` is saved, and training stops cleanly, skipping the optional
  end-of-run work (validation, sample grids, metrics: :func:`stop_signal`), so the process exits within the
  grace period of a preempted job. Lightning 2.6
  alone only flags SIGTERM and raises ``SIGTERMException`` at the end of the batch (single device: at the
  end of the *epoch*), saving nothing, and turns Ctrl+C into ``sys.exit(1)`` without a checkpoint.
* :func:`config_mismatches`: the keys that make a checkpoint incompatible with a config (model,
  schedule, prediction, ...), used when resuming (:meth:`DiffusionModule.on_load_checkpoint`) and by
  ``ckpt_path=auto``.
"""

from __future__ import annotations

import os
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from diffexp._internals import CheckpointCallbackBase, mark_saved
from diffexp.atomic import atomic_link, atomic_torch_save, clean_partial_files
from diffexp.errors import UserError

CHECKPOINT_KEY = "diffexp"
CHECKPOINT_FORMAT = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, corrupt, not diffexp's, or incompatible with the config."""


def _is_local(path) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local saves and loading errors that name the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return read_checkpoint(path, map_location=map_location or "cpu", require_diffexp=False)


# ---- reading ------------------------------------------------------------------------------------------
def _not_found(path: Path) -> CheckpointError:
    hint = ""
    if path.parent.is_dir():
        found = sorted(p.name for p in path.parent.glob("*.ckpt"))
        hint = f"; checkpoints in {path.parent}: {found or 'none'}"
    return CheckpointError(f"checkpoint not found: {path}{hint}")


def _torch_load(path: Path, map_location, mmap: bool = False) -> Any:
    if not path.is_file():
        raise _not_found(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, Exception) as e:  # noqa: BLE001
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); "
            "use another checkpoint of the run (e.g. an earlier step)"
        ) from e


def _check_diffexp(path: Path, ckpt: Any, require_diffexp: bool = True) -> None:
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    if CHECKPOINT_KEY not in ckpt:
        if require_diffexp:
            raise CheckpointError(f"{path} is not a diffexp checkpoint (no '{CHECKPOINT_KEY}' entry)")
        return
    fmt = ckpt[CHECKPOINT_KEY].get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt}, this diffexp reads format {CHECKPOINT_FORMAT}")


def read_checkpoint(path: str | os.PathLike, map_location="cpu", require_diffexp: bool = True) -> dict:
    """``torch.load`` with errors that say what is wrong with the file."""
    path = Path(path)
    ckpt = _torch_load(path, map_location)
    _check_diffexp(path, ckpt, require_diffexp)
    return ckpt


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The diffexp entry of a checkpoint (config, shapes, step), without reading the tensors (mmap)."""
    path = Path(path)
    ckpt = _torch_load(path, "cpu", mmap=True)
    _check_diffexp(path, ckpt)
    meta = dict(ckpt[CHECKPOINT_KEY])
    meta.setdefault("global_step", int(ckpt.get("global_step", 0)))
    meta.setdefault("epoch", int(ckpt.get("epoch", 0)))
    return meta


# ---- compatibility ------------------------------------------------------------------------------------
# A checkpoint can only continue under a config that builds the same network and trains it on the same
# process and target: these keys must be equal (whole sub-trees for model and schedule). Everything else
# (optimizer, lr, max_steps, callbacks, logging, ...) may change on resume, e.g. to extend a run.
COMPATIBILITY_KEYS = ("model", "schedule", "prediction", "conditional", "objective._target_",
                      "objective.timestep_sampler", "latent_autoencoder.hash")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _select(cfg: dict, key: str) -> dict[str, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return _flatten(node, key)


# Keys added to the configs later, with the value that checkpoints written before them implicitly had.
IMPLICIT_DEFAULTS = {"model.energy": False, "model.energy_head": "l2"}


def config_mismatches(stored: dict, current: dict, keys: tuple[str, ...] = COMPATIBILITY_KEYS) -> list[str]:
    """``["model.hidden_dim: checkpoint 32, config 64", ...]`` for every compatibility key that differs.

    A key missing on one side counts as a difference (shown as ``<unset>``); ``model.num_classes`` unset
    and ``conditional`` compare as written, the resolved class count is compared by the module."""
    if not stored or not current:
        return []
    out = []
    for key in keys:
        a, b = _select(stored, key), _select(current, key)
        for k in sorted(set(a) | set(b)):
            unset = IMPLICIT_DEFAULTS.get(k, "<unset>")
            va, vb = a.get(k, unset), b.get(k, unset)
            if va != vb:
                out.append(f"{k}: checkpoint {va!r}, config {vb!r}")
    return out


# ---- callbacks -----------------------------------------------------------------------------------------
class AtomicModelCheckpoint(CheckpointCallbackBase):
    """``ModelCheckpoint`` whose ``last.ckpt`` is replaced atomically and always holds the final step;
    at setup, the temporary files that a killed save left in its folder are removed."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and _is_local(self.dirpath):
            for p in clean_partial_files(str(self.dirpath).removeprefix("file://")):
                rank_zero_info(f"[diffexp] removed {p.name}, left in {p.parent} by an interrupted save")

    @staticmethod
    def link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            atomic_link(filepath, linkpath)
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # The final step of a max_steps run: saved here, inside the epoch, so that resuming it with a larger
        # max_steps continues the epoch's data order (at on_train_end Lightning has already closed the epoch).
        max_steps = trainer.max_steps
        if self.save_last and max_steps is not None and 0 < max_steps <= trainer.global_step \
                and not self.should_skip_saving(trainer):
            self._save_final(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save_final(trainer)  # e.g. runs that end by epochs (usually done already: save_final_checkpoint)
        super().on_train_end(trainer, pl_module)

    def save_final(self, trainer) -> None:
        """Save the final state as ``last.ckpt`` unless this step is saved already (or saving is off)."""
        if self.save_last and not self.should_skip_saving(trainer):
            self._save_final(trainer)

    def _save_final(self, trainer) -> None:
        if self.save_last == "link":  # no step file holds this step: a link would point to an older one
            self.save_last_now(trainer)
        else:
            self.save_last_checkpoint(trainer)

    def save_last_now(self, trainer) -> str:
        """Write ``last.ckpt`` with the current state (a full save, also in ``save_last='link'`` mode)."""
        candidates = self.monitor_candidates(trainer)
        path = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # part of the saved state, as in ModelCheckpoint._save_last_checkpoint
        self.save_checkpoint_file(trainer, path)
        return path


def save_final_checkpoint(trainer) -> None:
    """Write the final ``last.ckpt`` now, before any end-of-run evaluation.

    Lightning calls the checkpoint callbacks' ``on_train_end`` after every other callback's, so an end-of-run
    sample grid, metric or likelihood that raises would otherwise stop the run before its final state is saved
    (runs that end by epochs or time; a ``max_steps`` run saves its last step at ``on_train_batch_end``). End-of-run
    callbacks call this first (:class:`diffexp.callbacks.periodic.PeriodicCallback`); the save of a step happens
    once (the callback records the step it saved), so the later ``on_train_end`` does not repeat it."""
    for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
        if isinstance(cb, AtomicModelCheckpoint):
            cb.save_final(trainer)


def stop_signal(trainer) -> int | None:
    """The signal (SIGTERM/SIGINT) that stopped this training run after saving ``last.ckpt``, if any: callbacks
    skip their optional end-of-run work (sample grids, metrics) when it is set. (Set on every DDP rank at the
    same step, since the save is decided together, so collectives in that work never wait for a skipping rank.)"""
    for cb in getattr(trainer, "callbacks", None) or []:
        if isinstance(cb, SignalCheckpoint) and cb.received is not None and cb.saved_path is not None:
            return int(cb.received)
    return None


class SignalCheckpoint(Callback):
    """On SIGTERM/SIGINT: finish the optimizer step, save ``last.ckpt``, stop training; ``received`` holds
    the signal number afterwards (the CLI then exits with status 128 + signal, without a traceback).

    The handlers are installed when training starts (after Lightning has installed its own, which they
    replace for the duration of training) and removed when it ends. A second SIGINT interrupts at once
    (``KeyboardInterrupt``). Under DDP every rank checks after each batch whether any rank received a
    signal (one all-reduce of a flag), so all ranks stop after the same step and save together. The save
    waits for the end of a gradient-accumulation cycle: a checkpoint never holds half-accumulated gradients.
    The checkpoint goes where the ``ModelCheckpoint`` callback writes (else ``<root>/checkpoints``).
    """

    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGINT")):
        super().__init__()
        self.signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.received: int | None = None
        self.saved_path: str | None = None
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = -1

    # -- handlers
    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        if self.received is None:
            name = signal.Signals(signum).name
            print(f"\n[diffexp] received {name}: saving last.ckpt after the current step, then stopping without the "
                  f"end-of-run sampling, metrics and validation (resume with ckpt_path=auto or the path printed below)",
                  flush=True)
        self.received = signum

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, handler in self._previous.items():
            if signal.getsignal(s) == self._handler:
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # -- hooks
    def on_train_start(self, trainer, pl_module) -> None:
        self.received, self.saved_path = None, None
        self._install()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop and self.received is None:
                self.received = int(signal.SIGTERM)
        if not stop or trainer.global_step == self._step_at_batch_start:
            return  # no signal, or inside a gradient-accumulation cycle: wait for the optimizer step
        self.saved_path = self._save(trainer)
        trainer.should_stop = True
        # Lightning validates once more when a run is stopped early (EarlyStopping's case); a preempted job's
        # grace period (SLURM KillWait: 30 s) is for saving, not for optional work. See stop_signal().
        trainer.limit_val_batches = 0
        rank_zero_info(f"[diffexp] saved {self.saved_path} at step {trainer.global_step}; stopping")

    def _save(self, trainer) -> str:
        cb = trainer.checkpoint_callback
        if isinstance(cb, AtomicModelCheckpoint):
            return cb.save_last_now(trainer)
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            path = os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
        else:
            path = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
        trainer.save_checkpoint(path)
        if isinstance(cb, ModelCheckpoint):
            mark_saved(cb, trainer.global_step)
        return path

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore()

    def state_dict(self) -> dict:
        return {}
