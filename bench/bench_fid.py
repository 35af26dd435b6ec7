"""Benchmark: classifier-feature FID/KID/IS of 10,000 generated images in constant memory.

Steps (MNIST from --root, or sklearn digits with --data digits):
1. the diffexp classifier for the data set (trained once, cached; accuracy reported),
2. reference statistics of the test split (computed once, cached),
3. in a *fresh subprocess per run* (so that ru_maxrss is that run's peak): ``compute_metrics`` on n
   images from a trivial "sampler" — uniform noise, or real training images picked by seed (the FID
   floor at that n) — generated in batches, features extracted batch by batch.
   Reported: images/s of feature extraction (sampling time excluded), peak RSS (VmHWM; also
   ``resource.getrusage`` ru_maxrss, which Linux floors at the parent's RSS at fork), RSS before the
   loop, FID/KID/IS. Equal peak RSS for n=1,000 and n=10,000 shows the memory is constant in n.

Results go to ``bench/results/bench_fid_<data>.json`` and a table on stdout.

    .venv/bin/python bench/bench_fid.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffexp.metrics import ClassifierExtractor, compute_metrics, default_cache_dir, reference_stats

HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak RSS of this process image: ``VmHWM`` from /proc (Linux). ``ru_maxrss`` is reported too, but
    after fork+exec Linux carries the parent's RSS at fork time into it, so it cannot go below that."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_datamodule(args):
    if args.data == "mnist":
        from diffexp.data import MNISTDataModule

        return MNISTDataModule(root=args.root)
    from diffexp.data import DigitsDataModule

    return DigitsDataModule()


def child(args) -> dict:
    """One measured run (called in a subprocess): cached classifier + reference stats, n images."""
    torch.set_num_threads(args.threads)
    dm = make_datamodule(args)
    ext = ClassifierExtractor.from_datamodule(dm, cache_dir=args.cache_dir)
    real = reference_stats(dm, "test", ext, cache_dir=args.cache_dir)
    shape = tuple(dm.data_shape)
    x_train = dm.tensors("train")[0] if args.sampler == "train-images" else None
    sample_time = [0.0]

    def sample_fn(seeds):
        t = time.perf_counter()
        if x_train is not None:  # a "perfect sampler": real training images picked by seed
            out = x_train[torch.tensor(seeds) % len(x_train)].clone()
        else:  # uniform noise, one generator per batch seeded by its first seed
            g = torch.Generator().manual_seed(seeds[0])
            out = torch.rand(len(seeds), *shape, generator=g) * 2 - 1
        sample_time[0] += time.perf_counter() - t
        return out

    rss_before = rss_mib()
    res = compute_metrics(sample_fn, args.n, ext, real, batch_size=args.batch_size, sampler=args.sampler)
    extract_s = res["seconds"] - sample_time[0]
    return {
        "sampler": args.sampler, "n": args.n, "batch_size": args.batch_size, "threads": args.threads,
        "fid": res["fid"], "kid": res["kid"], "kid_std": res["kid_std"], "is": res["is"], "is_std": res["is_std"],
        "n_real": res["n_real"], "extractor": f"{res['extractor']}-{res['extractor_hash']}",
        "loop_seconds": res["seconds"], "sampling_seconds": sample_time[0], "extract_seconds": extract_s,
        "extract_images_per_s": args.n / extract_s, "rss_before_loop_mib": rss_before, "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": ru_maxrss_mib(),
        "data_cached_in_rss": x_train is not None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--root", default=None, help="MNIST folder (default: diffexp.data.find_mnist(), i.e. `make data`'s)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cache-dir", default=str(default_cache_dir()))
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sampler", default="noise", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.root is None:
        from diffexp.data.mnist import default_mnist_root

        args.root = str(default_mnist_root())
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return

    torch.set_num_threads(args.threads)
    dm = make_datamodule(args)
    t = time.perf_counter()
    ext = ClassifierExtractor.from_datamodule(dm, cache_dir=args.cache_dir)
    clf_s = time.perf_counter() - t
    t = time.perf_counter()
    real = reference_stats(dm, "test", ext, cache_dir=args.cache_dir)
    ref_s = time.perf_counter() - t
    setup = {"classifier": {k: ext.info.get(k) for k in ("arch", "epochs", "test_accuracy", "train_seconds", "path")},
             "classifier_load_or_train_s": clf_s, "reference": {"n": real.n, "cached": real.meta["cached"],
                                                                 "seconds": ref_s, "path": real.meta["path"]}}
    runs = []
    for sampler, n in (("noise", 1000), ("noise", args.n), ("train-images", args.n)):
        cmd = [sys.executable, __file__, "--child", "--sampler", sampler, "--n", str(n), "--data", args.data,
               "--root", args.root, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--cache-dir", args.cache_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))

    result = {"benchmark": "bench_fid", "data": args.data, "torch": torch.__version__, "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "setup": setup, "runs": runs,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out_path = Path(args.out or HERE / "results" / f"bench_fid_{args.data}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from common import portable  # cache and checkout paths written machine-independently

    out_path.write_text(portable(json.dumps(result, indent=2)))

    c = setup["classifier"]
    print(f"classifier {ext.tag}: test accuracy {c['test_accuracy']:.4f}, trained in {c['train_seconds']:.1f}s "
          f"({c['epochs']} epoch(s)); reference stats n={real.n} ({'cached' if real.meta['cached'] else f'{ref_s:.1f}s'})")
    print(f"{'sampler':<13}{'n':>6}{'extract img/s':>14}{'loop s':>8}{'RSS before':>11}{'peak RSS':>10}"
          f"{'ru_maxrss':>10}{'FID':>10}{'KID':>10}{'IS':>6}")
    for r in runs:
        print(f"{r['sampler']:<13}{r['n']:>6}{r['extract_images_per_s']:>14.0f}{r['loop_seconds']:>8.1f}"
              f"{r['rss_before_loop_mib']:>9.0f}MB{r['peak_rss_mib']:>8.0f}MB{r['ru_maxrss_mib']:>8.0f}MB"
              f"{r['fid']:>10.4g}{r['kid']:>10.4g}{r['is']:>6.2f}")
    print(f"threads={args.threads}; results: {os.path.relpath(out_path, HERE.parent)}")


if __name__ == "__main__":
    main()
