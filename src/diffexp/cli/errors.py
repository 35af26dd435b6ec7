"""How the command-line tools end on a user's mistake: one short message on stderr and exit status 2.

Every error caused by the user's input or data derives from :class:`diffexp.errors.UserError`
(:class:`~diffexp.validation.ConfigError`, :class:`~diffexp.errors.DataError`,
:class:`~diffexp.data.readers.DatasetNotFoundError`, :class:`~diffexp.checkpoint.CheckpointError`,
:class:`~diffexp.errors.NonFiniteError`); a ``???`` value the user did not fill in (OmegaConf's
``MissingMandatoryValue``) and Lightning's ``MisconfigurationException`` (contradictory Trainer and
callback settings) count as ones too. Inside :func:`user_errors` such an error is printed as

    <tool>: error: <message naming the key or file, and what is valid>
    (set DIFFEXP_DEBUG=1 to see the traceback)

and the process exits with status 2 — no traceback, and nothing after it (it is the last thing on stderr).
Inside a multirun (``-m``) the message is printed the same way, but the exception is then re-raised so that
the launcher and sweeper record the job as failed (a joblib/submitit worker must not simply exit).
Any other exception is a bug and propagates with its traceback (Hydra prints it). ``DIFFEXP_DEBUG=1``
re-raises user errors too and sets ``HYDRA_FULL_ERROR=1``, so Hydra's own errors show their full stack.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from diffexp.errors import UserError

DEBUG_ENV = "DIFFEXP_DEBUG"
EXIT_USER_ERROR = 2


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def enable_debug_tracebacks() -> None:
    """With ``DIFFEXP_DEBUG=1``, Hydra's own errors (composition, overrides) print their full stack as well."""
    if debug_enabled():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")


def user_message(error: BaseException) -> str | None:
    """The message to show for a user error, or None when ``error`` is not one (a bug)."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and isinstance(error.__cause__, UserError):
        error = error.__cause__  # e.g. a data module whose constructor found no files
    if isinstance(error, UserError):
        return str(error).strip() or type(error).__name__
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MisconfigurationException):  # Lightning's word for a contradictory trainer/callback setup
        return f"trainer/callbacks: {str(error).strip()}"
    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or "a key"
        return f"{key}=??? must be given on the command line (e.g. {key}=<value>)"
    return None


@contextmanager
def user_errors(tool: str) -> Iterator[None]:
    """Around a CLI's work: a user error becomes ``<tool>: error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is the user's mistake
        message = user_message(e)
        if message is None or debug_enabled():
            raise
        sys.stdout.flush()
        if _in_multirun():  # the sweep's launcher/sweeper must see the job fail as a job (a worker must not exit)
            sys.stderr.write(f"{tool}: error: {message}\n")
            sys.stderr.flush()
            raise
        sys.stderr.write(f"{tool}: error: {message}\n(set {DEBUG_ENV}=1 to see the traceback)\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.initialized() and str(HydraConfig.get().mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    except Exception:  # noqa: BLE001 - no Hydra context
        return False
