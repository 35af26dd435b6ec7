"""The schedule shared by the sample-grid, metrics and likelihood callbacks: every N optimizer steps and
once more at the end of training (unless that step was just done, or a SIGTERM/SIGINT is stopping the run:
then the job saves and exits, see :func:`diffexp.checkpoint.stop_signal`). The end-of-run evaluation runs after
the final ``last.ckpt`` is written (:func:`diffexp.checkpoint.save_final_checkpoint`)."""

from __future__ import annotations

import lightning as L

from diffexp.checkpoint import save_final_checkpoint, stop_signal


class PeriodicCallback(L.Callback):
    """Calls :meth:`evaluate` when ``trainer.global_step`` is a positive multiple of ``every_n_steps`` (``None``
    or 0: never during training) and at the end of training when ``at_end``. ``evaluate`` records the step it
    ran at in ``self._last_step``, so gradient accumulation (several batches at one step) and a last step
    that is also a multiple do not run it twice.
    (``evaluate`` runs on every rank; a subclass decides what happens on which.)"""

    def __init__(self, every_n_steps: int | None, at_end: bool):
        super().__init__()
        self.every_n_steps, self.at_end = every_n_steps, at_end
        self._last_step = -1

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> object:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end and trainer.global_step != self._last_step and stop_signal(trainer) is None:
            # Lightning runs the checkpoint callback's on_train_end after this one: save the final last.ckpt
            # first, so that an evaluation that fails cannot lose the trained state.
            save_final_checkpoint(trainer)
            self.evaluate(trainer, pl_module)
