"""Errors caused by the user's input or data, as opposed to bugs.

The rule: a mistake in a config, a file or the data ends in ONE short message that names the key or the
file and says what would be valid, raised before the Trainer starts wherever it can be known then. Every
such error derives from :class:`UserError`; the command-line tools (:mod:`diffexp.cli.errors`) print its
message alone, without a traceback, and exit with status 2. Anything else is a bug and keeps its full
traceback. ``DIFFEXP_DEBUG=1`` shows the traceback of user errors too.

The concrete classes keep a standard exception as second base (``ValueError``, ``FileNotFoundError``,
``FloatingPointError``, ...) so that code catching those still catches them.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error in the user's input or data; its message alone is what the user needs to read."""


class ConfigError(UserError, ValueError):
    """A config that cannot train; the message names the offending keys."""


class DataError(UserError, ValueError):
    """Data that cannot be trained on: an unreadable or corrupt file (named), non-finite values, an empty
    split. Not a training problem: the fix is in the data, not in the learning rate."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the config points to (weights, statistics) is not there; the message names the path and the key."""


class NonFiniteError(UserError, FloatingPointError):
    """A non-finite loss or gradient with ``module.nonfinite=raise`` (the message names the step and why)."""


def unreadable(path: str | Path, error: BaseException, what: str = "file") -> DataError:
    """A :class:`DataError` naming ``path`` and the reader's complaint in one line."""
    detail = " ".join(str(error).split()) or type(error).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return DataError(f"cannot read {what} {path}: {detail} (replace or remove the file)")
