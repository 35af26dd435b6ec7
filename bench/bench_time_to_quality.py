"""Time to quality on MNIST: classifier-FID of the default recipe's EMA samples against training wall-clock.

Trains with the default recipe — ``experiment=mnist_cpu``, what ``make train`` runs: MNIST, the default
1.19M-parameter UNet, ε-prediction on the linear T=1000 schedule, AdamW 1e-3 with warm-up, EMA 0.999,
batch 64, bf16 autocast where the CPU has native bf16, a 12-minute wall-clock budget — and pauses the
training clock every ``--eval-every-min`` minutes of training (and at the end) to evaluate FID/KID of
``--n`` samples of the EMA weights (the recipe's sampler, per-sample seeds 0..n-1) against
the MNIST test split, in the feature space of diffexp's MNIST classifier
(``diffexp.metrics.ClassifierExtractor``; trained once and cached, its hash is recorded). The evaluations
are excluded from the training clock but not from the recipe's ``max_time`` budget, so the recipe's
budget is raised by the evaluation time as it goes (``trainer.max_time`` is re-set after each evaluation).
The sample-grid callback is switched off (a visualisation); validation, checkpoints, logging and the
progress bar run as in ``make train``.

Recorded per evaluation: step, training wall-clock so far (evaluations excluded), FID, KID, the
evaluation's own time. FID at n=500 is biased upwards against the full test-set reference (compare runs at
equal n only); the floor at this n — FID of n real training images — is measured too.

    .venv/bin/python bench/bench_time_to_quality.py                    # ~15 min on a 2-core CPU
    .venv/bin/python bench/bench_time_to_quality.py --max-minutes 1 --eval-every-min 0.5 --n 64 --sampler-steps 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import diffexp  # noqa: F401  (first: the torchvision shim must precede lightning)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from common import compose, machine, machine_line, mnist_root, rel, set_threads, table, write_result  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from diffexp.build import build_module, data_info  # noqa: E402
from diffexp.metrics import ClassifierExtractor, compute_metrics, default_cache_dir, reference_stats  # noqa: E402


class QualityClock(L.Callback):
    """Evaluates FID every ``every_s`` seconds of training (evaluations excluded) and at the end."""

    def __init__(self, every_s: float, n: int, sampler, extractor, real, batch_size: int):
        self.every_s, self.n, self.sampler = every_s, n, sampler
        self.extractor, self.real, self.batch_size = extractor, real, batch_size
        self.rows: list[dict] = []
        self.train_s = 0.0
        self.eval_s = 0.0
        self._t0: float | None = None

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.train_s + time.perf_counter() - self._t0 >= self.every_s * (len(self.rows) + 1):
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer, pl_module):
        self.train_s += time.perf_counter() - self._t0
        t = time.perf_counter()
        den = pl_module.denoiser(ema=True)
        shape = tuple(pl_module.data_shape)
        res = compute_metrics(lambda seeds: self.sampler(den, shape=shape, seeds=seeds), self.n, self.extractor,
                              self.real, batch_size=self.batch_size, metrics=("fid", "kid"),
                              kid_subset_size=min(1000, self.n), sampler=self.sampler.name, ema=pl_module.uses_ema)
        seconds = time.perf_counter() - t
        self.eval_s += seconds
        loss = trainer.callback_metrics.get("train/loss")
        row = {"step": trainer.global_step, "train_seconds": self.train_s, "fid": res["fid"], "kid": res["kid"],
               "eval_seconds": seconds, "ema": pl_module.uses_ema, "train_loss": float(loss) if loss is not None else None}
        self.rows.append(row)
        print(f"[time_to_quality] step {row['step']}: {self.train_s:.0f} s of training, FID {row['fid']:.2f}, "
              f"KID {row['kid']:.4f} (evaluated in {seconds:.0f} s)", file=sys.stderr, flush=True)
        # The recipe's wall-clock budget counts training only: push the Timer's limit by the evaluation.
        timer = next((cb for cb in trainer.callbacks if type(cb).__name__ == "Timer"), None)
        if timer is not None and timer._duration is not None:
            timer._duration += seconds
        self._t0 = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="mnist_cpu", help="the recipe (default: mnist_cpu, what `make train` runs)")
    p.add_argument("--max-minutes", type=float, default=None, help="training budget (default: the recipe's max_time)")
    p.add_argument("--eval-every-min", type=float, default=4.0, help="minutes of training between evaluations")
    p.add_argument("--n", type=int, default=500, help="samples per FID evaluation")
    p.add_argument("--sampler-steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch size")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, as `make train` runs; on a machine shared with other jobs "
                        "--threads 1 is steadier)")
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
    over = [f"experiment={args.experiment}", f"data.root={root}", "callbacks.sample.every_n_steps=null",
            "callbacks.sample.at_end=false", f"paths.log_dir={tmp}", "print_config=false"]
    if args.sampler_steps:
        over.append(f"sampler.steps={args.sampler_steps}")
    if args.max_minutes:
        secs = int(round(args.max_minutes * 60))
        over.append(f"trainer.max_time='00:{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}'")
    cfg = compose(over + list(args.override), output_dir=tmp)
    cache_dir = args.cache_dir or str(default_cache_dir())  # shared with bench_fid.py and `python evaluate.py`

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
    sampler = instantiate(cfg.sampler)  # the recipe's sampler (mnist_cpu: DDIM-50, eta=1), as in its grids
    clock = QualityClock(args.eval_every_min * 60, args.n, sampler, ext, real, args.batch_size)

    from diffexp.cli.train import instantiate_group

    callbacks = instantiate_group(cfg.get("callbacks")) + [clock]
    loggers = instantiate_group(cfg.get("logger")) or False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    total_s = time.perf_counter() - t

    max_time = cfg.trainer.get("max_time")
    record = {
        "machine": m,
        "settings": {"recipe": f"experiment={args.experiment}", "max_steps": int(cfg.trainer.max_steps),
                     "max_time": str(max_time), "precision": str(trainer.precision),
                     "batch_size": int(cfg.data.batch_size), "eval_every_min": args.eval_every_min, "n": args.n,
                     "sampler": sampler.name, "threads": threads, "overrides": list(args.override),
                     "extractor": f"{ext.name}-{ext.weights_hash}",
                     "classifier_test_accuracy": ext.info.get("test_accuracy"),
                     "reference": {"split": "test", "n": real.n},
                     "command": "python bench/bench_time_to_quality.py " + " ".join(sys.argv[1:])},
        "evaluations": clock.rows, "fid_floor_real_train_images": {"fid": floor["fid"], "kid": floor["kid"]},
        "setup_seconds": setup_s, "fit_seconds_total": total_s, "eval_seconds_total": clock.eval_s,
        "train_seconds": clock.train_s, "steps": trainer.global_step, "params": module.num_parameters(),
    }
    out = write_result("bench_time_to_quality", record, Path(args.out_dir) if args.out_dir else None)
    print(f"\n## bench_time_to_quality: experiment={args.experiment} on MNIST ({trainer.precision}), EMA samples, "
          f"{sampler.name}, n={args.n}, classifier FID ({ext.name}-{ext.weights_hash})")
    print(machine_line(record["machine"]))
    rows = [[r["step"], r["train_seconds"] / 60, r["fid"], r["kid"], r["eval_seconds"]] for r in clock.rows]
    print(table(["step", "training wall-clock (min)", "FID", "KID", "eval s"], rows, floatfmt=".3g"))
    print(f"FID floor at n={args.n} (real training images vs test): {floor['fid']:.3g}; "
          f"{trainer.global_step} steps in {clock.train_s / 60:.1f} min of training")
    print(f"results: {rel(out)}")


if __name__ == "__main__":
    main()
