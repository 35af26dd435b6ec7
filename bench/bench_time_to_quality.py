"""Time to quality on MNIST: sample quality of a recipe's EMA weights against training wall-clock.

Trains a recipe as ``python train.py`` does — by default ``experiment=mnist_cpu``, what ``make train`` runs; any
``--experiment`` with ``--override``s works: pixel or latent (``--override latent=<autoencoder checkpoint>``, or the
recipe's ``latent: auto``), unconditional or class-conditional with classifier-free guidance — and pauses the
training clock every ``--eval-every-min`` minutes of training (and at the end) to score ``--n`` samples of the
EMA weights drawn exactly as ``python evaluate.py`` draws them (:class:`diffexp.metrics.sampling.ModuleSampleSource`:
seeds 0..n-1, sample i for class i mod K, the recipe's ``guidance_scale`` or ``--guidance-scale``, latents
decoded, images clamped) with the recipe's sampler (``--sampler-steps``: its steps; ``--eta``: only for a sampler
that has one), against the MNIST test split in the feature space of diffexp's MNIST classifier
(``diffexp.metrics.ClassifierExtractor``; trained once and cached, its hash is recorded): FID, KID, the share of
samples classified with max softmax >= 0.9 (``confident``) and the class balance (``class_entropy``).

The evaluations are excluded from the training clock but not from the recipe's ``max_time`` budget, so the
budget is extended by each evaluation (bench/recipe_quality.py). A latent recipe's time axis includes its
autoencoder's training time (``autoencoder_seconds``, recorded separately; ``total_seconds`` = autoencoder +
diffusion training): that is part of what ``make train`` costs. The sample-grid callback is switched off (a
visualisation); validation, checkpoints, logging and the progress bar run as in ``make train``.

Recorded per evaluation: step, training wall-clock so far (evaluations excluded), autoencoder and total seconds,
FID, KID, confident, class entropy and counts, sampler, NFE, guidance scale, the evaluation's own time. FID at
n=500 is biased upwards against the full test-set reference (compare runs at equal n only); the floor at this n
— n real training images — is measured too.

    .venv/bin/python bench/bench_time_to_quality.py                    # ~15 min on a 2-core CPU
    .venv/bin/python bench/bench_time_to_quality.py --max-minutes 1 --eval-every-min 0.5 --n 64 --sampler-steps 5
    .venv/bin/python bench/bench_time_to_quality.py --experiment ldm_mnist --override latent=AE.ckpt \
        process=flow objective=flow_matching prediction=velocity sampler=dpmpp_2m conditional=true
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import diffexp  # noqa: F401  (first: the torchvision shim must precede lightning)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import compose, machine, machine_line, mnist_root, rel, set_threads, table, write_result  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from recipe_quality import (  # noqa: E402
    ROW_KEYS,
    SCORED,
    QualityCallback,
    TrainClock,
    build_recipe,
    max_time,
    recipe_evaluator,
    recipe_trainer,
    set_sampler_options,
)

from diffexp.lr_schedules import parse_duration  # noqa: E402
from diffexp.metrics import ClassifierExtractor, compute_metrics, default_cache_dir, reference_stats  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="mnist_cpu", help="the recipe (default: mnist_cpu, what `make train` runs)")
    p.add_argument("--max-minutes", type=float, default=None, help="training budget (default: the recipe's max_time)")
    p.add_argument("--eval-every-min", type=float, default=4.0, help="minutes of training between evaluations")
    p.add_argument("--n", type=int, default=500, help="samples per evaluation")
    p.add_argument("--sampler-steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    p.add_argument("--eta", type=float, default=None, help="sampler eta, for a sampler that has one (default: the recipe's)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the recipe's guidance_scale, else 1)")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch size")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, as `make train` runs; on a machine shared with other jobs "
                        "--threads 1 is steadier)")
    p.add_argument("--cache-dir", default=None, help="classifier / reference-statistics cache (default: diffexp's)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of the recipe")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)

    threads = set_threads(args.threads)
    m = machine()
    root = mnist_root()
    if root is None:
        raise SystemExit("MNIST not found (run `make data`); time-to-quality is defined on MNIST")
    tmp = tempfile.mkdtemp(prefix="diffexp-bench-ttq-")
    over = [f"experiment={args.experiment}", f"data.root={root}", "callbacks.sample.every_n_steps=null",
            "callbacks.sample.at_end=false", f"paths.log_dir={tmp}", "print_config=false"]
    if args.max_minutes:
        over.append(max_time(args.max_minutes * 60))
    if args.guidance_scale is not None:
        over.append(f"++guidance_scale={args.guidance_scale}")
    cfg = compose(over + list(args.override), output_dir=tmp)
    sampler_options = set_sampler_options(cfg, args.sampler_steps, args.eta)
    cache_dir = args.cache_dir or str(default_cache_dir())  # shared with bench_fid.py and `python evaluate.py`

    recipe = build_recipe(cfg)  # latent: auto trains the autoencoder here, as train.py does
    dm, module = recipe.pixels, recipe.module
    dm.setup("fit")
    t = time.perf_counter()
    ext = ClassifierExtractor.from_datamodule(dm, cache_dir=cache_dir)
    real = reference_stats(dm, "test", ext, cache_dir=cache_dir)
    setup_s = time.perf_counter() - t
    # The FID floor at this n: n real training images against the same reference.
    x_train = dm.tensors("train")[0]
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    floor = compute_metrics(lambda seeds: x_train[idx[torch.tensor(seeds)]].float(), min(args.n, len(x_train)), ext,
                            real, batch_size=args.batch_size, metrics=SCORED, kid_subset_size=min(1000, args.n))
    sampler = instantiate(cfg.sampler)  # the recipe's sampler, as in its grids and `python evaluate.py sampler=...`
    max_s = parse_duration(cfg.trainer.get("max_time"))
    every = args.eval_every_min * 60
    clock = TrainClock(None, [every * k for k in range(1, int((max_s or 86400.0) // every) + 2)])
    quality = QualityCallback(clock, recipe_evaluator(recipe, sampler, clock, args.n, ext, real, args.batch_size,
                                                      label="time_to_quality"))

    trainer = recipe_trainer(cfg, quality)
    t = time.perf_counter()
    quality.fit_started = t
    trainer.fit(module, datamodule=recipe.datamodule)
    total_s = time.perf_counter() - t

    T = module.process.num_timesteps
    record = {
        "machine": m,
        "settings": {"recipe": f"experiment={args.experiment}", "max_steps": int(cfg.trainer.max_steps),
                     "max_time": str(cfg.trainer.get("max_time")), "precision": str(trainer.precision),
                     "batch_size": int(cfg.data.batch_size), "eval_every_min": args.eval_every_min, "n": args.n,
                     "sampler": sampler.name, "sampler_class": type(sampler).__name__, "nfe": sampler.nfe(T),
                     "sampler_config": OmegaConf.to_container(cfg.sampler, resolve=True),
                     "sampler_options": sampler_options, "guidance_scale": recipe.guidance_scale,
                     "process": module.process.name, "prediction": module.prediction,
                     "num_classes": module.num_classes, "latent": recipe.autoencoder is not None,
                     "threads": threads, "overrides": list(args.override),
                     "extractor": f"{ext.name}-{ext.weights_hash}",
                     "classifier_test_accuracy": ext.info.get("test_accuracy"),
                     "reference": {"split": "test", "n": real.n},
                     "time_axis": "total_seconds = autoencoder_seconds + train_seconds (evaluations excluded)",
                     "command": "python bench/bench_time_to_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)},
        "run_dir": tmp, "autoencoder": recipe.autoencoder, "autoencoder_seconds": recipe.autoencoder_seconds,
        "prepare_seconds": recipe.prepare_seconds, "before_train_seconds": quality.before_train_seconds,
        "evaluations": quality.rows, "fid_floor_real_train_images": {k: floor[k] for k in ROW_KEYS},
        "setup_seconds": setup_s, "fit_seconds_total": total_s, "eval_seconds_total": quality.eval_seconds,
        "train_seconds": clock.train_s, "steps": trainer.global_step, "params": module.num_parameters(),
    }
    out = write_result("bench_time_to_quality", record, Path(args.out_dir) if args.out_dir else None)
    print(f"\n## bench_time_to_quality: experiment={args.experiment} on MNIST ({trainer.precision}), EMA samples, "
          f"{sampler.name} ({sampler.nfe(T)} NFE), guidance scale {recipe.guidance_scale:g}, n={args.n}, "
          f"classifier FID ({ext.name}-{ext.weights_hash})")
    print(machine_line(record["machine"]))
    rows = [[r["step"], r["train_seconds"] / 60, r["total_seconds"] / 60, r["fid"], r["kid"], r["confident"],
             r["class_entropy"], r["eval_seconds"]] for r in quality.rows]
    print(table(["step", "training (min)", "with autoencoder (min)", "FID", "KID", "share p>=0.9", "class entropy",
                 "eval s"], rows, floatfmt=".3g"))
    print(f"FID floor at n={args.n} (real training images vs test): {floor['fid']:.3g}; "
          f"{trainer.global_step} steps in {clock.train_s / 60:.1f} min of training"
          + (f" after {recipe.autoencoder_seconds / 60:.1f} min of autoencoder training" if recipe.autoencoder else ""))
    print(f"results: {rel(out)}")
    return out


if __name__ == "__main__":
    main()
