"""Training throughput of ``DiffusionModule`` under Lightning vs. a hand-written PyTorch loop.

Both sides train the default denoiser (``conf/model/unet.yaml``: the small DDPM UNet on 1x28x28) with the
default recipe of ``conf/train.yaml``: ``L_simple`` with ε-prediction on the linear T=1000 schedule,
AdamW (lr 2e-4) with the linear warm-up LR schedule, gradient clipping at 1.0, an EMA update (0.999,
warm-up) after every optimizer step, batch 64 of in-memory MNIST (sklearn digits if MNIST is absent).
``--override experiment=mnist_cpu`` measures the ``make train`` recipe instead (bf16 autocast on CPUs with
native bf16; the hand-written side then runs under the same autocast).

* **diffexp**: ``DiffusionModule`` built from the composed config by ``diffexp.build.build_module`` and
  ``Trainer`` from ``conf/trainer/default.yaml`` (CPU, fp32) with the default callbacks (progress bar,
  LR monitor, checkpointing, sample grid; the grid at the end is switched off) and the CSV logger.
  The batches come from the data module (``MNISTDataModule``: uint8 in memory, one fancy index +
  conversion per batch).
* **hand-written**: the same network (a copy of the module's initial weights), the same objective
  object, optimizer, LR schedule, clipping and :class:`diffexp.ema.EMA`, in a plain loop over batches
  indexed from a float32 tensor.

Measurement: one process, one ``trainer.fit``; a callback interleaves the two, A B A B …: after ``warmup``
Lightning steps it runs ``warmup`` hand-written steps (both excluded), then ``rounds`` times a block
of ``block`` Lightning steps followed by a block of ``block`` hand-written steps. A Lightning block is
timed from ``on_train_batch_start`` of its first step to ``on_train_batch_start`` of the step after its
last, so it holds every hook, logging call, progress-bar update and batch fetch of those steps; a
hand-written block is timed the same way (fetch included). Lightning's global step keeps advancing
across the blocks, so per-``log_every_n_steps`` logging happens at its real rate. Recorded per block:
wall-clock and process CPU time per step → images/s; the ratio diffexp / hand-written is the
framework's efficiency (target ≥ 0.95).

On a shared machine a block's time carries several % of noise, more than the overhead itself, so the
fixed per-step cost of the framework is also measured directly: the same A/B with a tiny network
(``TINY``: a 16-wide MLP), where the step takes milliseconds and the difference of the two sides (paired
per round, CPU time) is the framework's own cost in ms; divided by the default UNet's step time it is
the overhead share. The one cost that grows with the network — the extra pass over the gradients of
the non-finite check (``grad_norm_ms``) — is timed separately on the UNet's parameters.
``meets_target``: ratio ≥ 0.95 and overhead share ≤ 5 %.

Also measured: the data module's batch time (``next(iter(train_dataloader))``) vs. the step time, and
(``--profile``) a cProfile of Lightning steps of the tiny network, to find Python-side hot paths.

    .venv/bin/python bench/bench_train.py                 # quick: 4 rounds x 5 steps, 1 thread
    .venv/bin/python bench/bench_train.py --rounds 8 --block 10 --profile 30
    .venv/bin/python bench/bench_train.py --override experiment=mnist_cpu
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import diffexp  # noqa: F401  (first: the torchvision shim must precede lightning)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from common import compose, machine, machine_line, mnist_root, rel, set_threads, summary, table, write_result  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from diffexp.build import build_module, data_info  # noqa: E402
from diffexp.ema import EMA, PowerEMA  # noqa: E402
from diffexp.process import DiffusionProcess  # noqa: E402


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def make_config(args, out_dir: str):
    root = mnist_root()
    over = [
        f"data.batch_size={args.batch_size}",
        "logger=csv",
        "callbacks.sample.at_end=false",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "trainer.max_time=null",
        f"paths.log_dir={out_dir}",
        f"seed={args.seed}",
    ]
    if root is not None and not args.random_data:
        over.append(f"data.root={root}")
        data = "mnist"
    else:
        over += ["data=digits", "data.batch_size=64"]  # offline fallback (8x8); noted in the record
        data = "digits"
    over += list(args.override or [])
    return compose(over, output_dir=out_dir), data


class HandLoop:
    """The hand-written loop: identical network, objective, optimizer, LR schedule, clipping and EMA."""

    def __init__(self, cfg, module, x_train: torch.Tensor, batch_size: int, seed: int, bf16: bool = False,
                 compile: bool | dict = False):
        self.net = copy.deepcopy(module.net).train()
        if getattr(self.net, "channels_last", False):
            self.net.to(memory_format=torch.channels_last)
        self.bf16 = bf16
        self.objective = instantiate(cfg.objective)
        self.objective.validate(cfg.prediction, module.schedule, data_range=module.data_range)
        self.process = DiffusionProcess(module.schedule)
        self.prediction = module.prediction
        self.opt = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.sched = instantiate(cfg.lr_scheduler)(optimizer=self.opt) if cfg.get("lr_scheduler") else None
        self.ema = EMA(self.net, decay=cfg.module.ema_decay, warmup=cfg.module.ema_warmup)
        posthoc = cfg.module.get("posthoc_ema") or {}  # post-hoc EMA profiles, as DiffusionModule tracks them
        self.phema = PowerEMA(self.net, **posthoc) if posthoc.get("sigma_rel") else None
        if compile:  # after the EMA copy, as DiffusionModule(compile=...) does
            self.net.compile(**(compile if isinstance(compile, dict) else {}))
        self.clip = cfg.trainer.get("gradient_clip_val")
        self.x, self.bs = x_train, batch_size
        self.g_data = torch.Generator().manual_seed(seed)
        self.g = torch.Generator().manual_seed(seed + 1)
        self.perm, self.pos = torch.randperm(len(x_train), generator=self.g_data), 0
        self.times: list[tuple[float, float]] = []  # (wall, cpu) per block, per step

    def batch(self) -> torch.Tensor:
        if self.pos + self.bs > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.x), generator=self.g_data), 0
        idx = self.perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return self.x[idx]

    def step(self, x0: torch.Tensor) -> torch.Tensor:
        net = self.net
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):  # as Lightning's bf16-mixed
            out = self.objective.loss(lambda x_t, t, y=None: net(x_t, t), x0, self.process, self.prediction,
                                      generator=self.g)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.ema.update(net)
        if self.phema is not None:
            self.phema.update(net)
        return out.loss.detach()

    def run(self, n: int, record: bool) -> None:
        with torch.enable_grad():
            w0, c0 = clock()
            for _ in range(n):
                self.step(self.batch())
            w1, c1 = clock()
        if record:
            self.times.append(((w1 - w0) / n, (c1 - c0) / n))


class Interleave(L.Callback):
    """A B A B …: Lightning blocks timed between on_train_batch_start hooks, hand-written blocks in between."""

    def __init__(self, hand: HandLoop, warmup: int, block: int, rounds: int, verbose: bool = True):
        self.hand, self.warmup, self.block, self.rounds, self.verbose = hand, warmup, block, rounds, verbose
        self.times: list[tuple[float, float]] = []
        self._t0: tuple[float, float] | None = None
        self.last_step = warmup + rounds * block

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        s = trainer.global_step
        if s < self.warmup or s > self.last_step:
            return
        if s > self.warmup and (s - self.warmup) % self.block == 0:  # a Lightning block ends here
            w, c = clock()
            self.times.append(((w - self._t0[0]) / self.block, (c - self._t0[1]) / self.block))
            self.hand.run(self.block, record=True)
            if self.verbose:
                (lw, _), (hw, _) = self.times[-1], self.hand.times[-1]
                print(f"[bench_train] round {len(self.times)}/{self.rounds}: diffexp {lw * 1e3:.0f} ms/step, "
                      f"hand-written {hw * 1e3:.0f} ms/step", file=sys.stderr, flush=True)
        elif s == self.warmup:
            self.hand.run(self.warmup, record=False)
        else:
            return  # inside a Lightning block: keep its clock running
        if s < self.last_step:
            self._t0 = clock()  # the next Lightning block starts now


def data_time(dm, n: int) -> dict:
    """Time per batch of the data module's training loader (iteration only, no model)."""
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        next(it)
        ts.append(time.perf_counter() - t)
    return summary(ts)


def profile_lightning(cfg, steps: int, top: int = 25) -> str:
    """cProfile of a Lightning run of ``steps`` steps (setup included): the Python-side hot paths."""
    from omegaconf import open_dict

    dm = instantiate(cfg.data)
    module = build_module(cfg, data_info(dm))
    with open_dict(cfg):
        cfg.trainer.max_steps = steps
    trainer = instantiate(cfg.trainer, callbacks=_callbacks(cfg), logger=_loggers(cfg))
    prof = cProfile.Profile()
    prof.enable()
    trainer.fit(module, datamodule=dm)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def _callbacks(cfg):
    from diffexp.cli.train import instantiate_group

    return instantiate_group(cfg.get("callbacks"))


def _loggers(cfg):
    from diffexp.cli.train import instantiate_group

    return instantiate_group(cfg.get("logger")) or False


# A network of negligible cost (a 16-wide MLP on the flattened 28x28 image, ~27k parameters): the A/B
# difference per step is then the framework's own per-step cost, measured with little noise.
TINY = ["model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16"]


def grad_norm_ms(module, repeats: int = 20) -> float:
    """Time of one extra pass over the gradients (the non-finite check's total norm), for ``module``'s net."""
    grads = [torch.randn_like(p) for p in module.net.parameters()]
    torch.nn.utils.get_total_norm(grads, 2.0)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.nn.utils.get_total_norm(grads, 2.0)
    return 1e3 * (time.perf_counter() - t) / repeats


def measure(args, overrides: list[str], rounds: int, block: int, warmup: int, verbose: bool = True) -> dict:
    """One interleaved A/B run (one trainer.fit) of the recipe with ``overrides``; per-step times per block."""
    tmp = tempfile.mkdtemp(prefix="diffexp-bench-train-")
    args.override = list(args.extra or []) + list(overrides)
    cfg, data = make_config(args, tmp)
    L.seed_everything(args.seed, verbose=False)
    dm = instantiate(cfg.data)
    module = build_module(cfg, data_info(dm))
    dm.setup("fit")
    x_train = dm.tensors("train")[0].float().contiguous()
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    hand = HandLoop(cfg, module, x_train, args.batch_size, args.seed, bf16=bf16,
                    compile=(cfg.module.get("compile") or False))
    inter = Interleave(hand, warmup, block, rounds, verbose=verbose)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.trainer.max_steps = inter.last_step + 1
    trainer = instantiate(cfg.trainer, callbacks=_callbacks(cfg) + [inter], logger=_loggers(cfg))
    trainer.fit(module, datamodule=dm)
    assert len(inter.times) == rounds == len(hand.times), (len(inter.times), len(hand.times))
    lw, lc = [w for w, _ in inter.times], [c for _, c in inter.times]
    hw, hc = [w for w, _ in hand.times], [c for _, c in hand.times]
    bs = args.batch_size
    return {
        "data": data, "overrides": args.override, "precision": str(trainer.precision), "params": module.num_parameters(),
        "rounds": rounds, "block": block, "warmup": warmup,
        "diffexp_s_per_step_wall": summary(lw), "diffexp_s_per_step_cpu": summary(lc),
        "hand_s_per_step_wall": summary(hw), "hand_s_per_step_cpu": summary(hc),
        "diffexp_images_per_s_wall": summary([bs / x for x in lw]), "hand_images_per_s_wall": summary([bs / x for x in hw]),
        "diffexp_images_per_s_cpu": summary([bs / x for x in lc]), "hand_images_per_s_cpu": summary([bs / x for x in hc]),
        # images/s ratio diffexp / hand = t_hand / t_diffexp, per round and over all rounds
        "ratio_wall_per_round": summary([h / x for h, x in zip(hw, lw)]),
        "ratio_cpu_per_round": summary([h / x for h, x in zip(hc, lc)]),
        "ratio_wall_overall": sum(hw) / sum(lw), "ratio_cpu_overall": sum(hc) / sum(lc),
        "overhead_ms_per_step_wall": 1e3 * (statistics.median(lw) - statistics.median(hw)),
        "overhead_ms_per_step_cpu": 1e3 * (statistics.median(lc) - statistics.median(hc)),
        "overhead_ms_per_step_cpu_paired": summary([1e3 * (x - h) for h, x in zip(hc, lc)]),
        "raw": {"diffexp": inter.times, "hand": hand.times},
        "_dm": dm, "_cfg": cfg, "_module": module,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4, help="A/B rounds with the default UNet (default 4)")
    p.add_argument("--block", type=int, default=5, help="steps per block (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per side, excluded (default 3)")
    p.add_argument("--tiny-rounds", type=int, default=6, help="A/B rounds with the tiny network (overhead in ms)")
    p.add_argument("--tiny-block", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time is then load-insensitive)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-batches", type=int, default=100, help="batches for the data-loading measurement")
    p.add_argument("--random-data", action="store_true", help="ignore MNIST (use the digits fallback)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also cProfile a Lightning run of STEPS steps of the tiny network (Python hot paths)")
    p.add_argument("--override", dest="extra", nargs="*", default=[],
                   help="extra Hydra overrides for both sides (e.g. experiment=mnist_cpu, model.channels_last=true)")
    p.add_argument("--out-dir", default=None, help="results folder (default bench/results)")
    args = p.parse_args()

    threads = set_threads(args.threads)
    m = machine()
    t0 = time.perf_counter()
    unet = measure(args, [], args.rounds, args.block, args.warmup)
    dm, cfg, unet_module = unet.pop("_dm"), unet.pop("_cfg"), unet.pop("_module")
    gnorm_ms = grad_norm_ms(unet_module)
    tiny = measure(args, TINY, args.tiny_rounds, args.tiny_block, 5, verbose=False)
    tiny.pop("_dm"), tiny.pop("_cfg"), tiny.pop("_module")
    dtime = data_time(dm, args.data_batches)
    bs = args.batch_size
    step_med = unet["diffexp_s_per_step_wall"]["median"]
    step_cpu = unet["diffexp_s_per_step_cpu"]["median"]
    fixed_ms = tiny["overhead_ms_per_step_cpu_paired"]["median"] + gnorm_ms
    record = {
        "machine": m,
        "settings": {
            "data": unet["data"], "batch_size": bs, "threads": threads, "model": "conf/model/unet.yaml",
            "params": unet["params"], "precision": unet["precision"],
            "trainer": {k: cfg.trainer.get(k) for k in ("gradient_clip_val", "log_every_n_steps", "val_check_interval",
                                                         "accelerator")},
            "optimizer": dict(cfg.optimizer), "ema_decay": cfg.module.ema_decay, "extra_overrides": args.extra,
            "tiny_overrides": TINY,
            "command": "python bench/bench_train.py " + " ".join(sys.argv[1:]),
        },
        "unet": unet, "tiny": tiny,
        "ratio_cpu_overall": unet["ratio_cpu_overall"], "ratio_wall_overall": unet["ratio_wall_overall"],
        "fixed_overhead_ms_per_step_cpu": fixed_ms, "grad_norm_ms_unet": gnorm_ms,
        "fixed_overhead_share_of_unet_step": fixed_ms / 1e3 / step_cpu,
        "target_ratio": 0.95,
        "meets_target": bool(unet["ratio_cpu_overall"] >= 0.95 and fixed_ms / 1e3 / step_cpu <= 0.05),
        "data_loading_s_per_batch": dtime, "data_share_of_step": dtime["median"] / step_med,
        "seconds": time.perf_counter() - t0,
    }
    if args.profile:
        tiny_args = argparse.Namespace(**vars(args))
        tiny_args.override = list(args.extra) + TINY
        cfg_tiny, _ = make_config(tiny_args, tempfile.mkdtemp(prefix="diffexp-bench-prof-"))
        record["profile_top"] = profile_lightning(cfg_tiny, args.profile)
    out = write_result("bench_train", record, Path(args.out_dir) if args.out_dir else None)

    u = unet
    print(f"\n## bench_train: Lightning DiffusionModule vs hand-written loop ({u['data']}, batch {bs}, "
          f"precision {u['precision']}, {threads} thread(s))")
    print(machine_line(record["machine"]))
    rows = []
    for name, key in (("diffexp (Lightning)", "diffexp"), ("hand-written loop", "hand")):
        w, c = u[f"{key}_images_per_s_wall"], u[f"{key}_images_per_s_cpu"]
        rows.append([name, w["median"], w["min"], w["max"], c["median"], c["min"], c["max"]])
    print(table(["default UNet", "img/s wall (median)", "min", "max", "img/s per CPU-s (median)", "min", "max"], rows))
    rc, rw = u["ratio_cpu_per_round"], u["ratio_wall_per_round"]
    print(f"ratio diffexp/hand (images/s): CPU time {u['ratio_cpu_overall']:.3f} (rounds {rc['min']:.3f}..{rc['max']:.3f}), "
          f"wall {u['ratio_wall_overall']:.3f} (rounds {rw['min']:.3f}..{rw['max']:.3f}); "
          f"{u['rounds']} rounds x {u['block']} steps")
    t = tiny
    po = t["overhead_ms_per_step_cpu_paired"]
    print(f"framework cost per step: {po['median']:.2f} ms CPU (tiny network, {t['rounds']} rounds x {t['block']} steps, "
          f"paired median; rounds {po['min']:.2f}..{po['max']:.2f}; step {t['diffexp_s_per_step_cpu']['median'] * 1e3:.2f} "
          f"vs {t['hand_s_per_step_cpu']['median'] * 1e3:.2f} ms) + {gnorm_ms:.2f} ms extra gradient-norm pass (UNet) = "
          f"{fixed_ms:.2f} ms = {100 * record['fixed_overhead_share_of_unet_step']:.2f}% of a default-UNet step")
    print(f"target diffexp >= 0.95 x hand-written: {'met' if record['meets_target'] else 'MISSED'}")
    print(f"data loading: {dtime['median'] * 1e3:.2f} ms/batch (median; max {dtime['max'] * 1e3:.2f}) = "
          f"{100 * record['data_share_of_step']:.3f}% of a step")
    if args.profile:
        print(record["profile_top"])
    print(f"results: {rel(out)}")


if __name__ == "__main__":
    main()
