"""How the evaluation callbacks hand numbers to the loggers (shared by the metrics and NLL callbacks).

Why values go to ``trainer.loggers`` directly: Lightning forbids ``self.log`` in ``on_train_end`` and
sends ``on_step`` values to the loggers only on ``log_every_n_steps`` boundaries, so an FID at step
5000 with ``log_every_n_steps=64`` would never reach CSV/TensorBoard/W&B. The values are logged at
``trainer.global_step`` by rank 0 and also stored in ``trainer.callback_metrics`` (on every rank, they
are identical), where checkpoint monitors, the progress bar and ``optimized_metric`` see them.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch

from diffexp.metrics.provenance import jsonable
from diffexp.metrics.utils import dist_info


def log_values(trainer: L.Trainer, values: dict[str, float], step: int) -> None:
    """Send ``values`` to every logger at ``step`` (rank 0; Lightning's loggers are rank-zero only) and
    keep them in ``trainer.callback_metrics`` (all ranks)."""
    if not values:
        return
    cm = trainer.callback_metrics
    for k, v in values.items():
        cm[k] = torch.tensor(float(v))
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=step)


def log_provenance(trainer: L.Trainer, params: dict[str, Any]) -> None:
    """Add ``params`` to every logger's hyper-parameters (CSV hparams.yaml, TensorBoard, W&B config)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            try:
                logger.log_hyperparams(jsonable(params))
            except Exception as e:  # noqa: BLE001 - a logger refusing late hparams must not stop training
                warnings.warn(f"{type(logger).__name__} did not take the metric provenance: {e}", stacklevel=2)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist_info()[1] > 1:
        torch.distributed.barrier()
