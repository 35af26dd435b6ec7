"""Training step time of the speed options on the default recipe (UNet on 1x28x28, batch 64, AdamW, EMA).

Variants (each also tested for equal results in tests/test_speed_options.py):

* ``baseline``       fp32, contiguous (NCHW), AdamW default implementation
* ``channels_last``  ``model.channels_last=true`` (oneDNN convolutions in NHWC)
* ``fused_adamw``    ``optimizer.fused=true`` (one fused kernel for the AdamW update)
* ``bf16``           bf16 autocast of the network (as ``trainer.precision=bf16-mixed``); weights, EMA and loss fp32
* ``bf16+cl``        bf16 and channels_last
* ``all``            bf16, channels_last and fused AdamW
* ``posthoc_ema``    fp32 with ``module.posthoc_ema.sigma_rel=[0.05,0.10]``: the cost of tracking two post-hoc EMA
  profiles besides the classic EMA (a "speed-up" below 1)
* ``compile``        ``module.compile=true`` (torch.compile, inductor) — only with ``--compile``: compiling
  takes minutes on a small CPU

Each variant runs the hand-written loop of ``bench_train.py`` (the same step as ``DiffusionModule``
without Lightning's constant overhead); the variants are interleaved round-robin (``--rounds`` rounds of
``--block`` steps each, after ``--warmup`` steps each), and the speed-up is taken per round against the
baseline of the same round.

    .venv/bin/python bench/bench_speed_options.py
    .venv/bin/python bench/bench_speed_options.py --compile --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import diffexp  # noqa: F401  (first: the torchvision shim must precede lightning)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
from bench_train import HandLoop, make_config  # noqa: E402
from common import machine, machine_line, rel, set_threads, summary, table, write_result  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from diffexp.build import build_module, data_info  # noqa: E402

VARIANTS = {  # name -> (Hydra overrides, bf16 autocast, compile)
    "baseline": ([], False, False),
    "channels_last": (["model.channels_last=true"], False, False),
    "fused_adamw": (["optimizer.fused=true"], False, False),
    "bf16": ([], True, False),
    "bf16+cl": (["model.channels_last=true"], True, False),
    "all": (["model.channels_last=true", "optimizer.fused=true"], True, False),
    "posthoc_ema": (["module.posthoc_ema.sigma_rel=[0.05,0.10]"], False, False),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (slow to compile)")
    p.add_argument("--only", nargs="*", help="run only these variants (baseline is always included)")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()
    args.random_data, args.override = False, []

    threads = set_threads(args.threads)
    m = machine()
    variants = dict(VARIANTS)
    if args.compile:
        variants["compile"] = ([], False, True)
        variants["compile+bf16+cl"] = (["model.channels_last=true"], True, True)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only or k == "baseline"}
    tmp = tempfile.mkdtemp(prefix="diffexp-bench-opts-")
    loops = {}
    x_train = None
    for name, (over, bf16, comp) in variants.items():
        args.override = over
        cfg, data = make_config(args, tmp)
        L.seed_everything(args.seed, verbose=False)
        dm = instantiate(cfg.data)
        module = build_module(cfg, data_info(dm))
        if x_train is None:
            dm.setup("fit")
            x_train = dm.tensors("train")[0].float().contiguous()
        loops[name] = HandLoop(cfg, module, x_train, args.batch_size, args.seed, bf16=bf16, compile=comp)
    for name, loop in loops.items():
        loop.run(args.warmup, record=False)
        print(f"[bench_speed_options] warmed up {name}", file=sys.stderr, flush=True)
    for r in range(args.rounds):
        for loop in loops.values():
            loop.run(args.block, record=True)
        print(f"[bench_speed_options] round {r + 1}/{args.rounds}: "
              + ", ".join(f"{k} {v.times[-1][0] * 1e3:.0f} ms" for k, v in loops.items()), file=sys.stderr, flush=True)

    base = [w for w, _ in loops["baseline"].times]
    res, rows = {}, []
    for name, loop in loops.items():
        w = [x for x, _ in loop.times]
        c = [x for _, x in loop.times]
        speedup = [b / x for b, x in zip(base, w)]
        res[name] = {"overrides": variants[name][0], "bf16": variants[name][1], "compile": variants[name][2],
                     "s_per_step_wall": summary(w), "s_per_step_cpu": summary(c),
                     "images_per_s_wall": summary([args.batch_size / x for x in w]),
                     "speedup_vs_baseline_per_round": summary(speedup)}
        rows.append([name, statistics.median(w) * 1e3, args.batch_size / statistics.median(w),
                     statistics.median(speedup), min(speedup), max(speedup)])
    record = {"machine": m, "settings": {"data": data, "batch_size": args.batch_size, "threads": threads,
                                         "rounds": args.rounds, "block": args.block, "warmup": args.warmup,
                                         "command": "python bench/bench_speed_options.py " + " ".join(sys.argv[1:])},
              "variants": res}
    out = write_result("bench_speed_options", record, Path(args.out_dir) if args.out_dir else None)
    print(f"\n## bench_speed_options: training step of the default recipe ({data}, batch {args.batch_size}, "
          f"{threads} thread(s))")
    print(machine_line(record["machine"]))
    print(table(["variant", "ms/step (median)", "img/s", "speed-up (median)", "min", "max"], rows, floatfmt=".2f"))
    print(f"results: {rel(out)}")


if __name__ == "__main__":
    main()
