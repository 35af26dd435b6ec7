"""Peer comparison on MNIST: denoising-diffusion-pytorch's recipe vs diffexp's default, same budget and scoring.

The peer is lucidrains' ``denoising-diffusion-pytorch`` (MIT licence; an optional, bench-only dependency:
``pip install -e ".[peer]"`` with the constraints file — it pulls accelerate, ema-pytorch and pytorch-fid,
never another torch). Its own ``Unet`` and ``GaussianDiffusion`` are trained by a plain loop written here
that does what its ``Trainer`` does — Adam (β = 0.9, 0.99), gradient clipping at 1, the ``ema_pytorch`` EMA
(0.995, updated every 10 steps after step 100), fp32 as it ships — on diffexp's MNIST batches (64, mapped to
[0, 1], which ``GaussianDiffusion`` normalises to [−1, 1]). The peer recipe (``PEER_*`` below): a 0.62M UNet
(dim 16, multipliers 1-2-4, 2 attention heads of 16), v-prediction, sigmoid schedule with T = 1000,
min-SNR-5 loss weighting, lr 1e-3. Its samples come from its own DDIM (``sampling_timesteps`` = our steps,
``ddim_sampling_eta`` = our η): the same number of network evaluations as diffexp's sampler. diffexp's side
is ``experiment=mnist_cpu`` (what ``make train`` runs) with ``trainer.max_time`` set to the same budget.

Both train for ``--budget-s`` seconds of training wall-clock (evaluations excluded; diffexp's Timer is
extended by each evaluation, as in bench_time_to_quality.py) and are scored at the training times
``--eval-at`` (and at the end) on ``--n`` samples of their EMA weights: classifier-feature FID and KID
(diffexp's MNIST classifier, reference: the test split, as bench_time_to_quality.py), the share of samples
the classifier assigns to a class with max softmax ≥ 0.9 (real test images: ≈ 0.99), and the class balance
(entropy of the predicted classes / log 10; 1 = uniform). The FID floor at this n (n real training images)
is recorded too. Results: ``bench/results/bench_peer.json`` (``bench_peer_<side>.json`` with ``--which``).

    .venv/bin/python bench/bench_peer.py                       # 2 x 15 min of training + evaluations (~50 min)
    .venv/bin/python bench/bench_peer.py --smoke               # everything end to end in ~2 min (tiny n, 5 steps)
    .venv/bin/python bench/bench_peer.py --which peer --budget-s 60 --eval-at 30 --n 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's samplers draw a progress bar per call

import diffexp  # noqa: E402,F401  (first: the torchvision shim must precede lightning and the peer)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import compose, machine, machine_line, mnist_root, set_threads, table, write_result  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from recipe_quality import (  # noqa: E402
    QualityCallback,
    TrainClock,
    build_recipe,
    max_time,
    recipe_evaluator,
    recipe_trainer,
    set_sampler_options,
)

from diffexp.metrics import ClassifierExtractor, compute_metrics, default_cache_dir, reference_stats  # noqa: E402
from diffexp.metrics.stats import CONFIDENT  # noqa: E402

PEER_UNET = {"dim": 16, "dim_mults": (1, 2, 4), "attn_heads": 2, "attn_dim_head": 16}
PEER_DIFFUSION = {"timesteps": 1000, "objective": "pred_v", "beta_schedule": "sigmoid", "min_snr_loss_weight": True,
                  "min_snr_gamma": 5}
PEER_TRAIN = {"lr": 1e-3, "adam_betas": (0.9, 0.99), "max_grad_norm": 1.0, "ema_decay": 0.995, "ema_update_every": 10}


def score(sample_fn, n: int, extractor, real, batch_size: int) -> dict:
    """FID/KID of ``n`` samples (seeds 0..n-1) and the classifier's confidence on them (``confident``: share
    with max softmax ≥ 0.9, ``class_entropy``, ``class_counts``; diffexp's ``FeatureStats.confidence``)."""
    res = compute_metrics(sample_fn, n, extractor, real, batch_size=batch_size, metrics=("fid", "kid", "confident"),
                          kid_subset_size=min(1000, n))
    return {k: res[k] for k in ("fid", "kid", "confident", "confident_threshold", "class_entropy", "class_counts")}


def _row(who: str, step: int, clock: TrainClock, res: dict, eval_s: float, loss: float | None) -> dict:
    row = {"who": who, "step": step, "train_seconds": clock.train_s, **res, "eval_seconds": eval_s, "train_loss": loss}
    print(f"[bench_peer] {who}: step {step}, {clock.train_s:.0f} s of training: FID {res['fid']:.2f}, "
          f"confident {res['confident']:.3f}, class entropy {res['class_entropy']:.3f} ({eval_s:.0f} s)",
          file=sys.stderr, flush=True)
    return row


# ---- the peer ---------------------------------------------------------------------------------------
def train_peer(args, dm, extractor, real) -> tuple[list[dict], dict]:
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    torch.manual_seed(args.seed)
    unet = Unet(channels=1, **PEER_UNET)
    diffusion = GaussianDiffusion(unet, image_size=dm.data_shape[-1], sampling_timesteps=args.sampler_steps,
                                  ddim_sampling_eta=args.eta, **PEER_DIFFUSION)
    ema = EMA(diffusion, beta=PEER_TRAIN["ema_decay"], update_every=PEER_TRAIN["ema_update_every"])
    opt = torch.optim.Adam(diffusion.parameters(), lr=PEER_TRAIN["lr"], betas=PEER_TRAIN["adam_betas"])
    loader = dm.train_dataloader()
    batches = iter(loader)
    clock, rows, step, loss = TrainClock(args.budget_s, args.eval_at), [], 0, None

    def sample_fn(seeds):  # the peer's DDIM draws from the global generator: one seed per batch
        torch.manual_seed(seeds[0])
        return ema.ema_model.sample(batch_size=len(seeds)) * 2.0 - 1.0

    def evaluate():
        clock.pause()
        t = time.perf_counter()
        ema.ema_model.eval()
        res = score(sample_fn, args.n, extractor, real, args.batch_size)
        rows.append(_row("peer", step, clock, res, time.perf_counter() - t, loss))
        clock.start()

    diffusion.train()
    clock.start()
    while not clock.over():
        try:
            x, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, _ = next(batches)
        out = diffusion((x.float() + 1.0) / 2.0)  # GaussianDiffusion takes [0, 1] and normalises itself
        out.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), PEER_TRAIN["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update()
        step, loss = step + 1, float(out.detach())
        if clock.due():
            evaluate()
    clock.pause()
    if not rows or rows[-1]["step"] != step:
        evaluate()
    info = {"params": sum(p.numel() for p in unet.parameters()), "steps": step, "unet": PEER_UNET,
            "diffusion": PEER_DIFFUSION, "train": {**PEER_TRAIN, "batch_size": int(dm.batch_size)}, "precision": "32",
            "sampler": f"its DDIM, {args.sampler_steps} steps, eta {args.eta}, one global seed per batch"}
    return rows, info


# ---- diffexp ---------------------------------------------------------------------------------------
def train_ours(args, root, extractor, real) -> tuple[list[dict], dict]:
    """diffexp's recipe built as train.py builds it (any --experiment: pixel or latent, conditional or not),
    scored as ``python evaluate.py`` samples (bench/recipe_quality.py); a latent recipe's rows carry its
    autoencoder's training time (``total_seconds``)."""
    tmp = tempfile.mkdtemp(prefix="diffexp-bench-peer-")
    over = [f"experiment={args.experiment}", f"data.root={root}", "callbacks.sample.every_n_steps=null",
            "callbacks.sample.at_end=false", f"paths.log_dir={tmp}", "print_config=false", max_time(args.budget_s)]
    if args.guidance_scale is not None:
        over.append(f"++guidance_scale={args.guidance_scale}")
    cfg = compose(over + list(args.override), output_dir=tmp)
    sampler_options = set_sampler_options(cfg, args.sampler_steps, args.eta)  # eta only where the sampler has one
    recipe = build_recipe(cfg)
    sampler = instantiate(cfg.sampler)
    clock = TrainClock(args.budget_s, args.eval_at)
    quality = QualityCallback(clock, recipe_evaluator(recipe, sampler, clock, args.n, extractor, real, args.batch_size))

    trainer = recipe_trainer(cfg, quality)
    quality.fit_started = time.perf_counter()
    trainer.fit(recipe.module, datamodule=recipe.datamodule)
    module, T = recipe.module, recipe.module.process.num_timesteps
    info = {"params": module.num_parameters(), "steps": trainer.global_step, "precision": str(trainer.precision),
            "recipe": f"experiment={args.experiment}", "overrides": list(args.override),
            "sampler": f"{sampler.name}, per-sample seeds", "sampler_name": sampler.name, "nfe": sampler.nfe(T),
            "sampler_options": sampler_options, "guidance_scale": recipe.guidance_scale,
            "process": module.process.name, "prediction": module.prediction, "num_classes": module.num_classes,
            "autoencoder": recipe.autoencoder, "autoencoder_seconds": recipe.autoencoder_seconds,
            "before_train_seconds": quality.before_train_seconds}
    return quality.rows, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=900.0, help="training wall-clock of each side (s)")
    p.add_argument("--eval-at", default="90,180,300,480,720", help="training times (s) to evaluate at; and the end")
    p.add_argument("--n", type=int, default=1000, help="samples per evaluation")
    p.add_argument("--sampler-steps", type=int, default=50, help="sampler steps of both sides (equal NFE)")
    p.add_argument("--eta", type=float, default=1.0,
                   help="DDIM eta of both sides (the default recipe's is 1; diffexp's only if its sampler has one)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="diffexp's classifier-free guidance scale (default: the recipe's guidance_scale, else 1)")
    p.add_argument("--which", choices=("both", "peer", "diffexp"), default="both")
    p.add_argument("--experiment", default="mnist_cpu", help="diffexp's recipe (default: what `make train` runs)")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of diffexp's recipe")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as `make train`)")
    p.add_argument("--cache-dir", default=None, help="classifier / reference-statistics cache")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end run: 20 s each, n=64, 5 sampler steps")
    p.add_argument("--out-dir", default=None, help="where bench_peer.json goes (default bench/results; --smoke: a temp dir)")
    args = p.parse_args()
    if args.smoke:
        args.budget_s, args.eval_at, args.n, args.sampler_steps = 20.0, "10", 64, 5
        args.out_dir = args.out_dir or tempfile.mkdtemp(prefix="diffexp-bench-peer-smoke-")
    args.eval_at = [float(s) for s in str(args.eval_at).split(",") if s.strip()]
    try:
        import denoising_diffusion_pytorch  # noqa: F401
    except ImportError:
        if args.which != "diffexp":
            raise SystemExit('the peer is an optional dependency: PIP_CONSTRAINT=constraints.txt .venv/bin/pip install '
                             '-e ".[peer]" (or --which diffexp)') from None

    threads = set_threads(args.threads)
    m = machine()
    root = mnist_root()
    if root is None:
        raise SystemExit("MNIST not found (run `make data`)")
    cfg = compose([f"experiment={args.experiment}", f"data.root={root}"], output_dir=tempfile.mkdtemp())
    dm = instantiate(cfg.data)
    dm.setup("fit")
    cache_dir = args.cache_dir or str(default_cache_dir())
    print(f"[bench_peer] classifier and reference statistics (trained/computed once, cached in {cache_dir})",
          file=sys.stderr, flush=True)
    extractor = ClassifierExtractor.from_datamodule(dm, cache_dir=cache_dir)
    real = reference_stats(dm, "test", extractor, cache_dir=cache_dir)
    x_train = dm.tensors("train")[0]
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    floor = score(lambda seeds: x_train[idx[torch.tensor(seeds)]].float(), args.n, extractor, real, args.batch_size)

    print(f"[bench_peer] FID floor at n={args.n}: {floor['fid']:.3g}; training {args.which} for {args.budget_s:.0f} s each",
          file=sys.stderr, flush=True)
    # One-time costs (the first optimizer step imports torch's compiler stack) outside either training clock.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]).step()
    rows, sides = [], {}
    if args.which in ("both", "peer"):
        r, sides["peer"] = train_peer(args, dm, extractor, real)
        rows += r
    if args.which in ("both", "diffexp"):
        r, sides["diffexp"] = train_ours(args, root, extractor, real)
        rows += r
    record = {
        "machine": m,
        "settings": {"budget_s": args.budget_s, "eval_at_s": args.eval_at, "n": args.n, "sampler_steps": args.sampler_steps,
                     "eta": args.eta, "threads": threads, "seed": args.seed, "smoke": args.smoke,
                     "extractor": f"{extractor.name}-{extractor.weights_hash}",
                     "classifier_test_accuracy": extractor.info.get("test_accuracy"),
                     "reference": {"split": "test", "n": real.n},
                     "command": "python bench/bench_peer.py " + " ".join(sys.argv[1:])},
        "sides": sides, "evaluations": rows, "floor_real_train_images": floor,
    }
    name = "bench_peer" if args.which == "both" else f"bench_peer_{args.which}"  # one side: its own file
    out = write_result(name, record, Path(args.out_dir) if args.out_dir else None)
    print(f"\n## bench_peer: denoising-diffusion-pytorch vs diffexp ({args.experiment}) on MNIST, {args.budget_s:.0f} s "
          f"of training each, n={args.n}, {args.sampler_steps} sampler steps (eta {args.eta}), classifier "
          f"{extractor.name}-{extractor.weights_hash}")
    print(machine_line(record["machine"]))
    body = [[r["who"], r["step"], r["train_seconds"] / 60, r["fid"], r["kid"], r["confident"], r["class_entropy"]]
            for r in rows]
    print(table(["who", "step", "training (min)", "FID", "KID", f"share p>={CONFIDENT}", "class entropy"], body))
    print(f"floor (n real training images): FID {floor['fid']:.3g}, confident {floor['confident']:.3f}")
    for who, s in sides.items():
        print(f"{who}: {s['params'] / 1e6:.2f}M parameters, {s['steps']} steps, precision {s['precision']}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
