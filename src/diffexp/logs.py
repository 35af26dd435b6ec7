"""A run's messages: one place that filters the warnings known to be harmless here, and routes
Lightning's and diffexp's messages into the run's log file.

* :func:`filter_known_warnings` (called by :func:`diffexp.config.setup_environment`, i.e. by every CLI
  and every DDP rank) silences the warnings listed in :data:`KNOWN_HARMLESS`, each with the reason it
  is expected in diffexp, so that a real warning stands out. Nothing else is filtered.
* :func:`route_to_run_log` (called at the start of a job) lets Lightning's loggers propagate to the root
  logger, which Hydra's job logging (``conf/hydra/job_logging/diffexp.yaml``) sends to the console and to
  ``<run dir>/<job name>.log`` (``train.log``). Lightning adds its own console handler and stops
  propagation when it is imported before logging is configured (lightning/pytorch/__init__.py), so
  without this ``train.log`` stays empty.
* :func:`say` prints one of diffexp's own messages (console output unchanged, also outside Hydra, in
  notebooks and tests) and writes it to the run's log file when there is one; :func:`to_log_file` writes
  to the log file only (e.g. the resolved config).
"""

from __future__ import annotations

import logging
import warnings

# diffexp's messages for the run's log file: no console handler (the console gets them from print), no
# propagation (the root logger's console handler would print them twice).
_file_log = logging.getLogger("diffexp.run")
_file_log.propagate = False
_file_log.setLevel(logging.INFO)

# (message regex, category, why it is harmless here)
KNOWN_HARMLESS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning,
     "the EMA copy of the network is kept in eval mode on purpose (it is never trained)"),
    (r".*isinstance\(treespec, LeafSpec\).*", FutureWarning,
     "torch deprecation triggered inside Lightning's own pytree helper (once per rank), not in diffexp"),
    (r".*does not have many workers which may be a bottleneck.*", UserWarning,
     "num_workers=0 is the intended default: data sets are in memory tensors, workers only add start-up time"),
)

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def filter_known_warnings() -> None:
    """Ignore exactly the warnings of :data:`KNOWN_HARMLESS` (idempotent)."""
    for message, category, _why in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)


def say(message: str, *, file=None) -> None:
    """Print ``message`` (to ``file``, default stdout) and write it to the run's log file, if any."""
    print(message, file=file, flush=True)
    to_log_file(message)


def to_log_file(message: str) -> None:
    if _file_log.handlers:
        _file_log.info(message)


def route_to_run_log() -> None:
    """Send Lightning's log records to the root logger's handlers (console and the run's log file) instead
    of Lightning's own console handler, and :func:`say` to the run's log file. A no-op when the root logger
    has no handler (outside Hydra)."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for h in list(_file_log.handlers):  # the previous job of a multirun
        _file_log.removeHandler(h)
    for h in root.handlers:
        if isinstance(h, logging.FileHandler):
            _file_log.addHandler(h)
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if type(h) is logging.StreamHandler:  # the handler Lightning adds at import (not a FileHandler)
                logger.removeHandler(h)
        logger.propagate = True
