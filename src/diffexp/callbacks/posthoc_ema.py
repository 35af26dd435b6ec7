"""Snapshots of the power-function EMA profiles for post-hoc EMA (EDM2), written during training.

With ``module.posthoc_ema.sigma_rel`` set, the module tracks the profiles (:class:`diffexp.ema.PowerEMA`,
saved in every checkpoint as ``phema.*``); this callback writes their averages every ``every_n_steps``
optimizer steps and at the end to ``dirpath`` (``<run>/phema/phema-step<step>.pt``, atomically, rank 0
only). Without post-hoc EMA in the module it does nothing. A resumed run (its own, new run directory)
first links the snapshots of the run it resumes from, up to the resumed step, so that its folder holds the
whole basis: ``python ema.py ckpt_dir=<run> sigma_rel=...`` reconstructs from one folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_info

from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.posthoc_ema import SNAPSHOT_NAME, save_snapshot


class PostHocEMASnapshots(PeriodicCallback):
    def __init__(self, dirpath: str, every_n_steps: int | None = 500, at_end: bool = True):
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"callbacks.posthoc_ema.every_n_steps={every_n_steps}: must be a positive step count")
        super().__init__(every_n_steps, at_end)
        self.dirpath = Path(dirpath)
        self.saved: list[Path] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if getattr(pl_module, "phema", None) is None or not trainer.is_global_zero or not trainer.ckpt_path:
            return
        source = Path(trainer.ckpt_path).resolve().parent.parent / "phema"
        if not source.is_dir() or source.resolve() == self.dirpath.resolve():
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        linked = 0
        for path in sorted(source.glob("phema-step*.pt")):
            m = SNAPSHOT_NAME.search(path.name)
            target = self.dirpath / path.name
            if m is None or int(m.group(1)) > trainer.global_step or target.exists():
                continue  # later snapshots belong to the abandoned continuation of the old run
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
            linked += 1
        if linked:
            rank_zero_info(f"[diffexp] post-hoc EMA: {linked} snapshots of the resumed run linked from {source}")

    def evaluate(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        phema = getattr(pl_module, "phema", None)
        if phema is None or int(phema.num_updates) == 0 or not trainer.is_global_zero:
            return
        self.saved.append(save_snapshot(phema.snapshot(), self.dirpath, trainer.global_step))
