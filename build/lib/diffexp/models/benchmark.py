"""Training-step timing of a denoiser network (forward + backward + AdamW step).

    python -m diffexp.models.benchmark unet --shape 1 28 28 --batch 64 --threads 2 [--bf16] \
        [--set base_channels=48 num_res_blocks=2]

Reports the median and min wall time and the process CPU time per step over ``--steps`` steps after
``--warmup`` steps; on a shared machine the CPU time (with --threads 1) is the more stable number.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

CONF = Path(__file__).resolve().parents[3] / "conf"


def build_preset(name: str, shape: tuple[int, ...], num_classes: int | None, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}"] + [f"model.{o}" for o in overrides])
    image_size = shape[1] if len(shape) == 3 else None
    return instantiate(cfg.model)(in_channels=shape[0], image_size=image_size, num_classes=num_classes)


def train_step_times(
    net: torch.nn.Module,
    shape: tuple[int, ...],
    batch: int = 64,
    steps: int = 10,
    warmup: int = 2,
    bf16: bool = False,
    num_classes: int | None = None,
) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each timed step."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, *shape)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, num_classes + 1, (batch,)) if num_classes else None

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x, t, y) if y is not None else net(x, t)
        loss = (out.float() - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", help="conf/model preset name (unet, unet_large, dit, dit_small, mlp, ...)")
    p.add_argument("--shape", type=int, nargs="+", default=[1, 28, 28])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--bf16", action="store_true", help="torch.autocast('cpu', bfloat16)")
    p.add_argument("--set", nargs="*", default=[], help="preset overrides, e.g. base_channels=48")
    a = p.parse_args(argv)
    import diffexp  # noqa: F401

    torch.set_num_threads(a.threads)
    shape = tuple(a.shape)
    net = build_preset(a.preset, shape, a.num_classes or None, a.set)
    n = sum(q.numel() for q in net.parameters())
    wall, cpu = train_step_times(net, shape, a.batch, a.steps, a.warmup, a.bf16, a.num_classes or None)
    print(
        f"{a.preset} {' '.join(a.set)} params={n / 1e6:.3f}M batch={a.batch} shape={shape} threads={a.threads} "
        f"bf16={a.bf16}: wall median {1e3 * statistics.median(wall):.0f} ms (min {1e3 * min(wall):.0f}), "
        f"cpu median {1e3 * statistics.median(cpu):.0f} ms"
    )


if __name__ == "__main__":
    main()
