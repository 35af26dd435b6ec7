"""Shared helpers of the benchmarks: machine record, statistics, JSON results, tables, configs.

Every benchmark writes ``bench/results/<name>.json`` holding ``machine`` (CPU model, cores, affinity,
torch / lightning / python versions, torch threads, load average at start and end), ``settings`` and
its measurements with min / median / max over repeated runs, and prints a short table.

Timings on a shared machine are noisy: the load average (``os.getloadavg``) is recorded at the start and
the end of every benchmark, and besides wall-clock time the process CPU time is recorded where it
matters (with ``--threads 1`` it is insensitive to other processes competing for the cores).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import diffexp  # noqa: F401  (first: the torchvision shim must precede lightning)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CONF = REPO / "conf"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    import lightning

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "loadavg_start": loadavg(),
        "time_start": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def summary(values: list[float]) -> dict[str, float]:
    """min / median / max (and n) of repeated measurements."""
    v = [float(x) for x in values]
    if not v:
        return {"n": 0}
    return {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}


def write_result(name: str, record: dict[str, Any], out_dir: Path | None = None) -> Path:
    record = dict(record)
    record.setdefault("benchmark", name)
    if "machine" in record:
        record["machine"]["loadavg_end"] = loadavg()
        record["machine"]["time_end"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(out_dir or RESULTS) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(record, indent=2, default=str)))
    return out


def portable(text: str) -> str:
    """``text`` with this machine's cache folder written as ``$DIFFEXP_CACHE`` and this checkout's paths made
    relative (results are committed; the repository speaks of itself, not of the machine it was measured on)."""
    from diffexp.metrics import default_cache_dir

    text = text.replace(str(default_cache_dir()), "$DIFFEXP_CACHE")
    return text.replace(str(REPO) + os.sep, "")


def rel(path: str | os.PathLike) -> str:
    """``path`` relative to the repository (as results and summaries name files), else unchanged."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def table(headers: list[str], rows: list[list[Any]], floatfmt: str = ".3g") -> str:
    """A plain, aligned text table (also valid Markdown)."""

    def fmt(x):
        if isinstance(x, float):
            return format(x, floatfmt)
        return str(x)

    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']} | {m['cpu_affinity']} cores | torch {m['torch']} ({m['torch_threads']} threads) | "
            f"lightning {m['lightning']} | load avg {m.get('loadavg_start')} -> {m.get('loadavg_end', loadavg())}")


def compose(overrides: list[str] | None = None, config_name: str = "train", output_dir: str | None = None):
    """Compose a shipped Hydra config (with HydraConfig set, so ${hydra:...} interpolations resolve)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from diffexp.config import setup_environment

    setup_environment()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    out = output_dir or str(REPO / "outputs" / "bench")
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = out
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "bench"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = out
    return cfg


def mnist_root() -> Path | None:
    """The MNIST folder (``make data``'s data/mnist, or an offline copy): :func:`diffexp.data.find_mnist`."""
    from diffexp.data.mnist import find_mnist

    return find_mnist(repo=REPO)


def set_threads(n: int | None) -> int:
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()
