"""Sampler cost per function evaluation vs. the bare denoiser forward (batch 64, default UNet, 1x28x28).

For every sampler (a few steps each) two numbers are measured:

1. **direct**: wall time of ``sampler(denoiser, shape=(1,28,28), seeds=range(64))`` divided by its NFE,
   against the median time of one bare forward ``net(x, t)`` (no grad, eval mode) measured interleaved
   (forward block, then each sampler, repeated ``--rounds`` times). On a loaded machine this ratio
   carries the load's noise (several %), so also:
2. **decomposed**: the same call with the UNet replaced by a stub network that returns a fixed tensor
   (cost ≈ 0) measures the sampler's own work per NFE (coefficient gathers, the x̂_0/ε̂ algebra,
   clipping, noise draws, Python) directly and precisely; overhead = stub time per NFE / forward time.

Both with per-sample seeded generators (``seeds=``, one CPU ``torch.Generator`` per sample, the
default of the framework) and with one shared ``generator=``; the difference is the cost of
per-sample noise. ``noise_draw_ms`` times one ``NoiseSource.randn`` of a (64, 1, 28, 28) batch.
Target: overhead ≤ 5 % of a forward.

    .venv/bin/python bench/bench_samplers.py              # quick
    .venv/bin/python bench/bench_samplers.py --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import diffexp  # noqa: F401  (first: the torchvision shim must precede lightning)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import compose, machine, machine_line, rel, set_threads, summary, table, write_result  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch import nn  # noqa: E402

from diffexp.denoiser import Denoiser  # noqa: E402
from diffexp.process import DiffusionProcess  # noqa: E402
from diffexp.samplers import (  # noqa: E402
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    HeunSampler,
    LangevinSampler,
    NoiseSource,
    PCSampler,
)


def samplers(steps: int) -> dict:
    """A few steps of each sampler (NFE ≈ steps)."""
    return {
        "ddpm": DDPMSampler(steps=steps),
        "ddim": DDIMSampler(steps=steps),
        "ddim-eta1": DDIMSampler(steps=steps, eta=1.0),
        "heun": HeunSampler(steps=(steps + 1) // 2 + 1),
        "dpmpp_2m": DPMSolverPP2MSampler(steps=steps),
        "langevin": LangevinSampler(num_levels=1, steps_per_level=steps - 1),
        "pc": PCSampler(steps=(steps + 1) // 2, n_corrector=1),
    }


class Stub(nn.Module):
    """A network of (almost) zero cost: returns a copy of a fixed random tensor shaped like x."""

    def __init__(self, like: torch.Tensor):
        super().__init__()
        self.register_buffer("out", torch.randn_like(like))

    def forward(self, x, t, y=None):
        return self.out[: x.shape[0]].clone()


def time_call(fn, n: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="sampler steps (NFE ≈ steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stub-repeats", type=int, default=20, help="repeats of each stub measurement")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()

    threads = set_threads(args.threads)
    m = machine()
    torch.manual_seed(0)
    cfg = compose(["model=unet"])
    shape = (1, 28, 28)
    net = instantiate(cfg.model)(in_channels=1, image_size=28, num_classes=None).eval()
    with torch.no_grad():  # the output conv is zero-initialised: give it weights so x̂_0 is not trivial
        net.conv_out.weight.normal_(0, 0.02)
    process = DiffusionProcess(instantiate(cfg.schedule))
    T = process.num_timesteps
    B = args.batch_size
    seeds = list(range(B))
    den = Denoiser(net, process, "eps")
    x = torch.randn(B, *shape)
    t = torch.full((B,), T // 2, dtype=torch.long)
    stub_den = Denoiser(Stub(x), process, "eps")
    smp = samplers(args.steps)

    def forward():
        with torch.no_grad():
            net(x, t)

    for _ in range(2):  # warm-up
        forward()
    fwd, direct = [], {k: [] for k in smp}
    for r in range(args.rounds):
        fwd.append(time_call(forward, args.steps))
        for name, s in smp.items():
            direct[name].append(time_call(lambda s=s: s(den, shape=shape, seeds=seeds)) / s.nfe(T))
        print(f"[bench_samplers] round {r + 1}/{args.rounds}: forward {fwd[-1] * 1e3:.0f} ms", file=sys.stderr, flush=True)
    f_med = statistics.median(fwd)

    stub_seeds, stub_gen = {}, {}
    for name, s in smp.items():
        s(stub_den, shape=shape, seeds=seeds)  # warm-up
        stub_seeds[name] = [time_call(lambda s=s: s(stub_den, shape=shape, seeds=seeds)) / s.nfe(T)
                            for _ in range(args.stub_repeats)]
        stub_gen[name] = [time_call(lambda s=s: s(stub_den, shape=shape, num_samples=B, generator=torch.Generator().manual_seed(0)))
                          / s.nfe(T) for _ in range(args.stub_repeats)]
    stub_fwd = summary([time_call(lambda: stub_den.net(x, t), 50) for _ in range(args.stub_repeats)])
    src_seeds = NoiseSource(B, "cpu", seeds=seeds)
    src_gen = NoiseSource(B, "cpu", generator=torch.Generator().manual_seed(0))
    draw_seeds = summary([time_call(lambda: src_seeds.randn(shape), 20) for _ in range(args.stub_repeats)])
    draw_gen = summary([time_call(lambda: src_gen.randn(shape), 20) for _ in range(args.stub_repeats)])

    rows, per = [], {}
    for name, s in smp.items():
        d = statistics.median(direct[name])
        o_s = statistics.median(stub_seeds[name]) - stub_fwd["median"]
        o_g = statistics.median(stub_gen[name]) - stub_fwd["median"]
        per[name] = {
            "sampler": s.name, "nfe": s.nfe(T),
            "direct_s_per_nfe": summary(direct[name]), "direct_ratio": d / f_med,
            "stub_s_per_nfe_seeds": summary(stub_seeds[name]), "stub_s_per_nfe_generator": summary(stub_gen[name]),
            "overhead_ms_per_nfe_seeds": 1e3 * o_s, "overhead_ms_per_nfe_generator": 1e3 * o_g,
            "overhead_pct_seeds": 100 * o_s / f_med, "overhead_pct_generator": 100 * o_g / f_med,
        }
        rows.append([s.name, s.nfe(T), d * 1e3, 100 * (d / f_med - 1), 1e3 * o_s, 100 * o_s / f_med,
                     1e3 * o_g, 100 * o_g / f_med])
    worst = max(v["overhead_pct_seeds"] for v in per.values())
    record = {
        "machine": m,
        "settings": {"batch_size": B, "shape": list(shape), "threads": threads, "rounds": args.rounds,
                     "steps": args.steps, "model": "conf/model/unet.yaml", "schedule": cfg.schedule._target_,
                     "num_timesteps": T, "command": "python bench/bench_samplers.py " + " ".join(sys.argv[1:])},
        "forward_s": summary(fwd), "stub_forward_s": stub_fwd,
        "noise_draw_s_seeds": draw_seeds, "noise_draw_s_generator": draw_gen,
        "samplers": per, "max_overhead_pct_seeds": worst, "target_pct": 5.0, "meets_target": worst <= 5.0,
    }
    out = write_result("bench_samplers", record, Path(args.out_dir) if args.out_dir else None)

    print(f"\n## bench_samplers: cost per NFE vs bare forward (UNet, batch {B}, {threads} thread(s))")
    print(machine_line(record["machine"]))
    print(f"bare forward: {f_med * 1e3:.1f} ms (median; {min(fwd) * 1e3:.1f}..{max(fwd) * 1e3:.1f})")
    print(table(["sampler", "NFE", "ms/NFE direct", "direct vs fwd %", "own ms/NFE (seeds)", "% of fwd (seeds)",
                 "own ms/NFE (generator)", "% of fwd (generator)"], rows, floatfmt=".2f"))
    print(f"noise draw (64x1x28x28): per-sample generators {draw_seeds['median'] * 1e3:.3f} ms, "
          f"one generator {draw_gen['median'] * 1e3:.3f} ms")
    print(f"max sampler overhead (seeds): {worst:.2f}% of a forward; target <= 5%: {'met' if worst <= 5 else 'MISSED'}")
    print(f"results: {rel(out)}")


if __name__ == "__main__":
    main()
