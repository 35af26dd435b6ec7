"""Resuming a run: where its data order stands mid-epoch, and which checkpoint ``ckpt_path=auto`` takes.

Mid-epoch data order
--------------------
Lightning 2.6 saves a training dataloader's position only if the loader itself is *stateful*
(``state_dict``/``load_state_dict``; see ``FitLoop.on_save_checkpoint`` and ``_load_combined_loader_states``
in ``lightning/pytorch/loops/fit_loop.py``). Otherwise a run resumed from a mid-epoch checkpoint restarts
the epoch's iteration from its first batch (``TrainingEpochLoop.reset`` only warns), so it trains again
on batches it has seen and never on the rest of the epoch: not the uninterrupted run.

:class:`ResumableDataLoader` is a ``DataLoader`` that counts the batches it has handed out in the current
pass and saves ``{epoch, batches}``. On load it (1) sets the sampler's epoch (the order is
``randperm(seed + epoch)``, see :mod:`diffexp.data.base`), and (2) makes the next pass skip that many
batches *at the index level*: the skipped batches are never loaded, also with worker processes. Skipping
whole batches of the batch sampler is exact because a batch is a consecutive slice of the epoch's
permutation. A checkpoint taken after the last batch of an epoch resumes at the next epoch (Lightning
advances the epoch itself), so nothing is skipped there.

The count is of batches *returned to Lightning*; Lightning (2.6) does not pre-fetch from loaders whose
length is known (``_PrefetchDataFetcher``), so at a checkpoint every returned batch has been trained on.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from diffexp._internals import override_index_sampler


class _SkipFirst:
    """An index sampler whose iteration starts ``loader._skipping`` items in (read when iterated)."""

    def __init__(self, base, loader: ResumableDataLoader):
        self.base, self.loader = base, loader

    def __iter__(self):
        return itertools.islice(iter(self.base), self.loader._skipping, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.loader._skipping)


class _CountingIterator:
    """Wraps a DataLoader iterator and counts the batches it returns into ``loader._yielded``."""

    def __init__(self, it, loader: ResumableDataLoader):
        self._it, self._loader = it, loader

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self._loader._yielded += 1
        return batch

    def __len__(self) -> int:
        return len(self._it)

    def __getattr__(self, name: str) -> Any:  # e.g. _shutdown_workers
        return getattr(self._it, name)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position within the epoch is saved in Lightning checkpoints.

    ``state_dict() -> {"epoch", "batches", "batch_size", "length"}``; ``load_state_dict`` makes the next
    ``iter()`` continue after ``batches`` batches of epoch ``epoch``. Same constructor as ``DataLoader``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0  # batches returned in the current pass (including skipped ones)
        self._pending_skip = 0  # set by load_state_dict, consumed by the next __iter__
        self._skipping = 0  # non-zero only while __iter__ builds the iterator

    def __iter__(self):
        self._skipping, self._pending_skip = self._pending_skip, 0
        try:
            it = super().__iter__()
        finally:
            skipped, self._skipping = self._skipping, 0
        self._yielded = skipped
        return _CountingIterator(it, self)

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": int(self._yielded), "batch_size": int(self.batch_size or 0),
                "length": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        n, epoch = int(state.get("batches", 0)), int(state.get("epoch", 0))
        if (state.get("batch_size"), state.get("length")) != (self.batch_size, len(self)):
            warnings.warn(
                f"the training data changed since the checkpoint (batch_size {state.get('batch_size')} -> "
                f"{self.batch_size}, {state.get('length')} -> {len(self)} batches per epoch): the resumed run "
                "continues after the same number of batches, but it is not the uninterrupted run",
                stacklevel=2,
            )
        if n >= len(self):  # the epoch was complete: Lightning starts the next one from its first batch
            n = 0
        if n and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)  # Lightning sets it too, but only after it has called iter()
        self._pending_skip = n


# While ``__iter__`` builds an iterator (``_skipping`` > 0 only then), its index sampler starts after the
# consumed batches: their indices are skipped without loading their data.
override_index_sampler(ResumableDataLoader, lambda loader, base: _SkipFirst(base, loader) if loader._skipping else base)


# ---- ckpt_path=auto -------------------------------------------------------------------------------
def candidate_checkpoints(root: str | Path) -> list[Path]:
    """Every ``last.ckpt`` under ``root`` (a task's log folder), newest first (by modification time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("**/checkpoints/last.ckpt") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_auto_checkpoint(root: str | Path, config: dict | None = None) -> tuple[str | None, list[str]]:
    """The newest ``last.ckpt`` under ``root`` whose stored config is compatible with ``config``.

    Returns (path or None, notes): notes say which newer checkpoints were passed over and why. Unreadable
    (e.g. truncated) files are passed over too, so a crash during a save never blocks ``auto``.
    """
    from diffexp.checkpoint import CheckpointError, config_mismatches, read_checkpoint_meta

    notes: list[str] = []
    for path in candidate_checkpoints(root):
        try:
            meta = read_checkpoint_meta(path)
        except CheckpointError as e:
            notes.append(f"skipped {path}: {e}")
            continue
        diffs = config_mismatches(meta.get("config") or {}, config or {}) if config else []
        if diffs:
            notes.append(f"skipped {path}: other config ({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''})")
            continue
        return str(path), notes
    return None, notes


def _say(message: str) -> None:
    """Print once per job: on the process of global rank 0 (DDP ranks all resolve the same checkpoint)."""
    import os

    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:
        from diffexp.logs import say

        say(message)


def resolve_ckpt_path(cfg) -> str | None:
    """The checkpoint ``train`` resumes from, checked before anything trains.

    ``ckpt_path=null``: none. A path: it must be a readable diffexp checkpoint whose stored config builds the
    same model on the same process and target (:func:`diffexp.checkpoint.config_mismatches`), else a
    :class:`~diffexp.checkpoint.CheckpointError` names the file or the differing keys. ``auto``: the newest
    compatible ``last.ckpt`` under ``paths.log_dir/task_name`` (none: train from scratch).

    The resumed run writes into its *own new* run directory (Hydra's ``paths.output_dir``), and says so;
    the directory of the run it continues is left as it was, except for the temporary files of a save that
    was killed there, which are removed (:func:`diffexp.atomic.clean_partial_files`). (``auto`` then finds
    the newest ``last.ckpt`` of the chain, wherever it is.) Call it once per job (it reads and prints).
    """
    from omegaconf import OmegaConf

    from diffexp.atomic import clean_partial_files
    from diffexp.checkpoint import CheckpointError, config_mismatches, read_checkpoint_meta

    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "", "null"):
        return None
    root = Path(cfg.paths.log_dir) / cfg.task_name
    out_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    current = OmegaConf.to_container(cfg, resolve=True)
    if ckpt == "auto":
        path, notes = find_auto_checkpoint(root, current)
        for note in notes:
            _say(f"[diffexp] ckpt_path=auto: {note}")
        if path is None:
            _say(f"[diffexp] ckpt_path=auto: no compatible last.ckpt under {root}; training from scratch")
    else:
        path = str(ckpt)
        meta = read_checkpoint_meta(path)  # CheckpointError: missing, truncated, not diffexp's
        diffs = config_mismatches(meta.get("config") or {}, current)
        if diffs:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with another config; differing keys:\n  "
                + "\n  ".join(diffs)
                + "\nresume with the checkpoint's config (its run directory holds config.yaml) or start a new run"
            )
    if path is not None:
        meta = read_checkpoint_meta(path)
        _say(f"[diffexp] resuming from {path} (global step {meta.get('global_step')}, epoch {meta.get('epoch')}); "
              f"this run writes to its own new directory {out_dir}")
        for p in clean_partial_files(Path(path).parent):
            _say(f"[diffexp] removed {p.name}, left in {p.parent} by an interrupted save")
    return path
