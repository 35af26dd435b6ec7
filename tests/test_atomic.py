"""diffexp.atomic: the one atomic-write helper. A failure mid-write keeps the old file; the temporary
files of a writer killed mid-write are removed when the folder is next used, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from diffexp.atomic import (
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    clean_partial_files,
    temporary_path,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_replace_the_file_and_leave_nothing_else(tmp_path):
    target = tmp_path / "sub" / "record.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":2}'
    atomic_write_text(tmp_path / "sub" / "t.md", "héllo")
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "sub" / "s.pt")
    assert torch.equal(torch.load(tmp_path / "sub" / "s.pt")["x"], torch.arange(3))
    assert _names(tmp_path / "sub") == ["record.json", "s.pt", "t.md"]  # no temporary file left


@pytest.mark.parametrize("error", [OSError("injected: disk full"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "summary.csv"
    atomic_write_text(target, "old,complete\n")

    def half_then_fail(f):
        f.write("new,trunc")
        f.flush()
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail, binary=False)
    assert target.read_text() == "old,complete\n" and _names(tmp_path) == ["summary.csv"]


def _killed_writer(folder: Path, name: str) -> Path:
    """A child process that dies (os._exit: no cleanup, like SIGKILL) in the middle of an atomic save."""
    # diffexp/atomic.py alone (no torch import: a fast child); the same code path as atomic_torch_save.
    code = textwrap.dedent(f"""
        import importlib.util, os
        spec = importlib.util.spec_from_file_location("atomic", {str(REPO / "src" / "diffexp" / "atomic.py")!r})
        atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)
        def die(f):
            f.write(b"PK\\x03\\x04" + b"\\0" * 64); f.flush(); os._exit(9)
        atomic.atomic_write({str(folder / name)!r}, die)
    """)
    rc = subprocess.run([sys.executable, "-c", code], timeout=120).returncode
    assert rc == 9
    left = [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]
    assert len(left) == 1 and left[0].name.endswith(".tmp")  # what a killed save leaves behind
    return left[0]


def test_clean_removes_only_the_leftovers_of_dead_writers(tmp_path):
    dead = _killed_writer(tmp_path, "last.ckpt")
    live = temporary_path(tmp_path / "step.ckpt")  # this process: a save in progress
    live.write_bytes(b"partial")
    fresh_other_host = tmp_path / ".ref.pt.otherhost.123.456.tmp"  # another node, maybe still writing
    old_other_host = tmp_path / ".ref2.pt.otherhost.123.456.tmp"
    old_legacy = tmp_path / ".evaluation.json.4242.tmp"  # name from before the helper existed
    keep = tmp_path / "notes.tmp"  # not a hidden temporary file: never ours
    for p in (fresh_other_host, old_other_host, old_legacy, keep):
        p.write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    for p in (old_other_host, old_legacy):
        os.utime(p, (old, old))
    removed = clean_partial_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, old_other_host.name, old_legacy.name])
    assert _names(tmp_path) == sorted([live.name, fresh_other_host.name, keep.name])
    assert clean_partial_files(tmp_path / "missing") == []


def test_a_killed_save_is_cleaned_when_training_next_starts(tmp_path):
    """AtomicModelCheckpoint.setup (every run with the shipped callbacks) removes a killed save's file."""
    from diffexp.checkpoint import AtomicModelCheckpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    atomic_torch_save({"x": 0}, ckpts / "last.ckpt")
    _killed_writer(ckpts, "last.ckpt")

    class _Trainer:  # what ModelCheckpoint.setup reads
        is_global_zero = True
        strategy = type("S", (), {"broadcast": staticmethod(lambda x, src=0: x)})()
        default_root_dir = str(tmp_path)
        loggers = []
        log_dir = None
        fast_dev_run = False

    AtomicModelCheckpoint(dirpath=str(ckpts)).setup(_Trainer(), None, "fit")
    assert _names(ckpts) == ["last.ckpt"] and torch.load(ckpts / "last.ckpt")["x"] == 0
