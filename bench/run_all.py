"""Run the benchmarks (``make bench``; ``make bench ARGS=--full`` for the long ones) and write
``bench/results/summary.md``.

Quick (default; ~7 min on the shared 2-core CPU it was written on):
  bench_train.py          Lightning DiffusionModule vs hand-written loop, images/s (target ratio ≥ 0.95)
  bench_samplers.py       sampler cost per NFE vs the bare forward (target overhead ≤ 5 %)
  bench_speed_options.py  step time with channels_last / fused AdamW / bf16 autocast
  bench_fid.py            classifier-feature extraction throughput, FID time and peak memory
                          (owned by the metrics part; quick: n=2000)
--full adds more rounds, bench_fid at n=10000, torch.compile in bench_speed_options, and
  bench_time_to_quality.py  classifier-FID of `make train`'s EMA samples vs training wall-clock (~15 min).
The throughput scripts default to one torch thread (robust on a shared machine; bench_time_to_quality uses
torch's default, as `make train` does); pass --threads N to set it for all.
--peer adds bench_peer.py: denoising-diffusion-pytorch's recipe vs `make train`'s under the same 15-minute
  training budget (needs the optional [peer] extra; ~50 min).
Not run here: net_step_time.py, the training-step time of one network preset (for choosing a model size).

Every script writes ``bench/results/<name>.json`` and prints a table; this runner streams their output,
keeps each one's table and writes them, with the machine, the load average and the commands, to
``bench/results/summary.md``. A failing benchmark is reported and the others still run (exit status 1).

    .venv/bin/python bench/run_all.py [--full] [--only bench_train bench_samplers] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def plan(full: bool, threads: int | None) -> list[tuple[str, list[str]]]:
    th = ["--threads", str(threads)] if threads else []
    if full:
        return [
            ("bench_train", ["--rounds", "8", "--block", "10", "--profile", "200"] + th),
            ("bench_samplers", ["--rounds", "5"] + th),
            ("bench_speed_options", ["--rounds", "5", "--block", "5", "--compile"] + th),
            ("bench_fid", [] + th),
            ("bench_time_to_quality", [] + th),
        ]
    return [
        ("bench_train", [] + th),
        ("bench_samplers", [] + th),
        ("bench_speed_options", [] + th),
        ("bench_fid", ["--n", "2000"] + th),
    ]


def relative_paths(text: str) -> str:
    """``text`` as committed results name things: the checkout's paths relative, the cache as ``$DIFFEXP_CACHE``
    (``common.portable``, the rule of every JSON record too)."""
    from common import portable

    return portable(text)


def table_part(stdout: str) -> str:
    """The table a benchmark printed: from its '## ' heading on, else its whole stdout (progress lines
    of Lightning / tqdm dropped)."""
    lines = [ln for ln in stdout.splitlines() if "it/s]" not in ln and not ln.startswith(("Epoch ", "Training:"))]
    for i, ln in enumerate(lines):
        if ln.startswith("## "):
            return "\n".join(lines[i:]).strip()
    return "\n".join(lines).strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="more rounds, n=10k FID, torch.compile and time-to-quality")
    p.add_argument("--only", nargs="*", help="run only these benchmarks (names without .py)")
    p.add_argument("--threads", type=int, default=None, help="pass --threads to every benchmark")
    p.add_argument("--peer", action="store_true", help="add bench_peer.py (the peer comparison, ~50 min)")
    args = p.parse_args()

    from common import cpu_model, loadavg

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    sections, failed = [], []
    start = time.time()
    load0 = loadavg()
    runs = plan(args.full, args.threads) + ([("bench_peer", ["--threads", str(args.threads)] if args.threads else [])]
                                            if args.peer else [])
    for name, extra in runs:
        if args.only and name not in args.only:
            continue
        script = HERE / f"{name}.py"
        if not script.exists():
            sections.append(f"### {name}\n\nskipped: {script.name} not found\n")
            continue
        cmd = [sys.executable, str(script), *extra]
        shown = "python " + " ".join([f"bench/{name}.py", *extra])
        print(f"\n>>> {shown}  (load average {loadavg()})", flush=True)
        t = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
        out = []
        for line in proc.stdout:  # stream it and keep it
            sys.stdout.write(line)
            out.append(line)
        rc = proc.wait()
        secs = time.time() - t
        status = "ok" if rc == 0 else f"FAILED (exit status {rc})"
        if rc != 0:
            failed.append(name)
        sections.append(f"### {name}\n\n`{shown}` — {status}, {secs:.0f} s, load average at the end {loadavg()}\n\n"
                        f"```\n{relative_paths(table_part(''.join(out)))}\n```\n")

    import torch

    header = (f"# diffexp benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M')} · {cpu_model()} · "
              f"{os.cpu_count()} cores · torch {torch.__version__} · mode {'full' if args.full else 'quick'} · "
              f"load average {load0} at the start, {loadavg()} at the end · {time.time() - start:.0f} s in all\n\n"
              "Raw records (machine, settings, min/median/max over repeats): `bench/results/<name>.json`. "
              "Reproduce: `make bench` (quick) or `make bench ARGS=--full`.\n\n")
    (RESULTS / "summary.md").write_text(header + "\n".join(sections))
    print(f"\nsummary: {RESULTS / 'summary.md'}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
