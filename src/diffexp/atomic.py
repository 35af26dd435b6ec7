"""Atomic files: the one way diffexp writes a file that someone else may read (checkpoints, cached
statistics, classifier weights, JSON records, summaries, plots).

:func:`atomic_write` writes into a temporary file in the target's own folder (same file system, so
the rename is atomic), flushes and ``fsync`` s it, ``os.replace`` s it over the target and ``fsync`` s
the folder (POSIX: the rename itself reaches the disk). A reader sees the old file or the complete new
one, never a partial one, whatever kills the writer; a failure in the middle of the write removes the
temporary file and leaves the old one untouched.

A process killed mid-write (SIGKILL, OOM killer, power loss) cannot remove its temporary file.
Temporary names record the host and the process id, ``.<name>.<host>.<pid>.<thread>.tmp``, so
:func:`clean_partial_files` (called when a run, a cache or a summary folder is next used) can remove
those whose writer is gone: on this host, a pid that no longer runs; from another host (a shared
file system) or with an unreadable name, a file untouched for ``max_age`` seconds. Temporary names never
end in ``.ckpt``/``.pt``/``.json``, so no glob for results mistakes one for a result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_link", "atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text",
           "clean_partial_files", "temporary_path"]

STALE_SECONDS = 24 * 3600.0  # age after which a temporary file of another host (or unparseable) is abandoned
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<tid>\d+)\.tmp$")
_LEGACY_TMP = re.compile(r"^\..+\.\d+(\.\d+)?\.tmp(\.png)?$")  # names written before this module existed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"


def temporary_path(path: str | os.PathLike) -> Path:
    """``<folder>/.<name>.<host>.<pid>.<thread>.tmp``: unique per writer, recognisable by the cleaner."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{threading.get_ident()}.tmp")


def fsync_dir(folder: str | os.PathLike) -> None:
    """``fsync`` a folder so that a rename in it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then make it ``path`` atomically (see the
    module docstring). Creates the folder. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """``obj`` as indented JSON (it must be JSON-serialisable; see :func:`diffexp.metrics.provenance.jsonable`)."""
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that leaves either the previous file or the complete new one."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_link(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Make ``link`` point to ``target`` (a relative symlink, or a copy where symlinks fail), atomically."""
    target, link = Path(target), Path(link)
    if os.path.abspath(target) == os.path.abspath(link):
        return
    tmp = temporary_path(link)
    try:
        try:
            os.symlink(os.path.relpath(target, link.parent), tmp)
        except OSError:
            shutil.copyfile(target, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _abandoned(p: Path, now: float, max_age: float) -> bool:
    m = _TMP.match(p.name)
    if m and m["host"] == _host():
        return not _pid_alive(int(m["pid"]))
    if m or _LEGACY_TMP.match(p.name):
        try:
            return now - p.lstat().st_mtime > max_age
        except OSError:
            return False
    return False


def clean_partial_files(folder: str | os.PathLike | None, *, recursive: bool = False,
                        max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes in ``folder`` (and below it when
    ``recursive``) whose writer is gone (see the module docstring); return what was removed. Files of
    live writers, and every other file, are left alone. A missing folder is not an error."""
    if folder is None or not Path(folder).is_dir():
        return []
    now = time.time()
    removed = []
    for p in (Path(folder).rglob(".*.tmp*") if recursive else Path(folder).glob(".*.tmp*")):
        if (p.is_file() or p.is_symlink()) and _abandoned(p, now, max_age):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass  # e.g. removed by another rank at the same moment
    return removed


def clean_partial_dirs(folder: str | os.PathLike | None, *, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove the folders named by :func:`temporary_path` in ``folder`` whose writer is gone (a run killed while
    it filled a folder it would have renamed into place, e.g. diffexp.latent_auto); return what was removed."""
    if folder is None or not Path(folder).is_dir():
        return []
    now = time.time()
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_dir() and not p.is_symlink() and _abandoned(p, now, max_age):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> bool:
    """Rename the finished folder ``tmp`` (a :func:`temporary_path` beside ``final``) to ``final`` atomically and
    ``fsync`` the parent. When ``final`` appeared meanwhile (another process finished the same work first), keep
    that one, remove ``tmp`` and return False."""
    tmp, final = Path(tmp), Path(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    fsync_dir(final.parent)
    return True
