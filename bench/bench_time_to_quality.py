"""Time to quality on MNIST: classifier-FID of the default recipe's EMA samples against training wall-clock.

Trains with the default config (``conf/train.yaml``: MNIST, small UNet, ε-prediction, linear T=1000,
AdamW 2e-4 with warm-up, EMA 0.999, batch 64, 3000 steps, validation every 500 steps) and, at the
steps in ``--eval-at``, pauses the clock and evaluates FID/KID of ``--n`` samples of the EMA weights
(DDIM with ``--sampler-steps`` steps, per-sample seeds 0..n-1) against the MNIST test split, in the
feature space of diffexp's MNIST classifier (``diffexp.metrics.ClassifierExtractor``; trained once and
cached, its hash is recorded). The sample-grid callback is switched off (it is a visualisation); the
rest of the recipe (validation, checkpoints, logging, progress bar) runs as in ``python train.py``.

Recorded per evaluation: step, training wall-clock so far (evaluations excluded), FID, KID, the
evaluation's own time. FID at n=500 is biased upwards against the n=10k reference (compare runs at
equal n only); the floor at this n — FID of 500 real training images — is measured too.

    .venv/bin/python bench/bench_time_to_quality.py                  # ~15 min on an idle 2-core CPU
    .venv/bin/python bench/bench_time_to_quality.py --max-steps 20 --eval-at 10,20 --n 64 --sampler-steps 5  # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compose, machine, machine_line, mnist_root, set_threads, table, write_result  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from diffexp.build import build_module, data_info  # noqa: E402
from diffexp.metrics import ClassifierExtractor, compute_metrics, default_cache_dir, reference_stats  # noqa: E402
from diffexp.samplers import DDIMSampler  # noqa: E402


class QualityClock(L.Callback):
    """Evaluates FID at the given steps; keeps a training clock that excludes the evaluations."""

    def __init__(self, eval_at: list[int], n: int, sampler, extractor, real, batch_size: int):
        self.eval_at, self.n, self.sampler = sorted(set(eval_at)), n, sampler
        self.extractor, self.real, self.batch_size = extractor, real, batch_size
        self.rows: list[dict] = []
        self.train_s = 0.0
        self._t0: float | None = None

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step not in self.eval_at or any(r["step"] == step for r in self.rows):
            return
        self.train_s += time.perf_counter() - self._t0
        t = time.perf_counter()
        den = pl_module.denoiser(ema=True)
        was_training = den.net.training
        den.net.eval()
        shape = tuple(pl_module.data_shape)
        res = compute_metrics(lambda seeds: self.sampler(den, shape=shape, seeds=seeds), self.n, self.extractor,
                              self.real, batch_size=self.batch_size, metrics=("fid", "kid"),
                              kid_subset_size=min(1000, self.n), sampler=self.sampler.name, ema=pl_module.uses_ema)
        den.net.train(was_training)
        row = {"step": step, "train_seconds": self.train_s, "fid": res["fid"], "kid": res["kid"],
               "eval_seconds": time.perf_counter() - t, "ema": pl_module.uses_ema,
               "loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}
        self.rows.append(row)
        print(f"[time_to_quality] step {step}: {self.train_s:.0f} s of training, FID {row['fid']:.2f}, "
              f"KID {row['kid']:.4f} (evaluated in {row['eval_seconds']:.0f} s)", file=sys.stderr, flush=True)
        self._t0 = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=None, help="default: the recipe's trainer.max_steps (3000)")
    p.add_argument("--eval-at", default="500,1000,2000,3000", help="comma-separated steps")
    p.add_argument("--n", type=int, default=500, help="samples per FID evaluation")
    p.add_argument("--sampler-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--cache-dir", default=None, help="classifier / reference-statistics cache (default: diffexp's)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of the recipe")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()

    threads = set_threads(args.threads)
    m = machine()
    root = mnist_root()
    if root is None:
        raise SystemExit("MNIST not found (run `make data`); time-to-quality is defined on MNIST")
    tmp = tempfile.mkdtemp(prefix="diffexp-bench-ttq-")
    over = [f"data.root={root}", "callbacks.sample.every_n_steps=null", "callbacks.sample.at_end=false",
            f"paths.log_dir={tmp}", "print_config=false"]
    if args.max_steps:
        over.append(f"trainer.max_steps={args.max_steps}")
    cache_dir = args.cache_dir or str(default_cache_dir())  # shared with bench_fid.py and `python evaluate.py`
    cfg = compose(over + list(args.override), output_dir=tmp)
    eval_at = [int(s) for s in args.eval_at.split(",") if s.strip()]
    eval_at = [s for s in eval_at if s <= cfg.trainer.max_steps] or [int(cfg.trainer.max_steps)]

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = instantiate(cfg.data)
    module = build_module(cfg, data_info(dm))
    dm.setup("fit")
    t = time.perf_counter()
    ext = ClassifierExtractor.from_datamodule(dm, cache_dir=cache_dir)
    real = reference_stats(dm, "test", ext, cache_dir=cache_dir)
    setup_s = time.perf_counter() - t
    # The FID floor at this n: n real training images against the same reference.
    x_train = dm.tensors("train")[0]
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    floor = compute_metrics(lambda seeds: x_train[idx[torch.tensor(seeds)]].float(), args.n, ext, real,
                            batch_size=args.batch_size, metrics=("fid", "kid"), kid_subset_size=min(1000, args.n))
    sampler = DDIMSampler(steps=args.sampler_steps)
    clock = QualityClock(eval_at, args.n, sampler, ext, real, args.batch_size)

    from diffexp.cli.train import instantiate_group

    callbacks = instantiate_group(cfg.get("callbacks")) + [clock]
    loggers = instantiate_group(cfg.get("logger")) or False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    total_s = time.perf_counter() - t

    record = {
        "machine": m,
        "settings": {"recipe": "conf/train.yaml (defaults)", "max_steps": int(cfg.trainer.max_steps),
                     "batch_size": int(cfg.data.batch_size), "eval_at": eval_at, "n": args.n,
                     "sampler": sampler.name, "threads": threads, "overrides": list(args.override),
                     "extractor": f"{ext.name}-{ext.weights_hash}", "classifier_test_accuracy": ext.info.get("test_accuracy"),
                     "reference": {"split": "test", "n": real.n},
                     "command": "python bench/bench_time_to_quality.py " + " ".join(sys.argv[1:])},
        "evaluations": clock.rows, "fid_floor_real_train_images": {"fid": floor["fid"], "kid": floor["kid"]},
        "setup_seconds": setup_s, "fit_seconds_total": total_s,
        "params": module.num_parameters(),
    }
    out = write_result("bench_time_to_quality", record, Path(args.out_dir) if args.out_dir else None)
    print(f"\n## bench_time_to_quality: default recipe on MNIST, EMA samples, {sampler.name}, n={args.n}, "
          f"classifier FID ({ext.name}-{ext.weights_hash})")
    print(machine_line(record["machine"]))
    rows = [[r["step"], r["train_seconds"] / 60, r["fid"], r["kid"], r["eval_seconds"]] for r in clock.rows]
    print(table(["step", "train wall-clock (min)", "FID", "KID", "eval s"], rows, floatfmt=".3g"))
    print(f"FID floor at n={args.n} (real training images vs test): {floor['fid']:.3g}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
