"""`python ema.py ckpt_dir=<run dir> sigma_rel=0.05,0.1,0.2`: post-hoc EMA of a finished run (EDM2).

Reconstructs the power-function EMA of each ``sigma_rel`` at the run's last snapshot (or at ``step=N``)
from the snapshots in ``<run>/phema/`` (trained with ``module.posthoc_ema.sigma_rel=[...]``) and writes,
per length, a checkpoint whose EMA weights are the reconstruction: ``<out_dir>/ema-sigma0.100-step0006000.ckpt``
(default ``out_dir``: ``<run>/posthoc_ema``), copied from ``base`` (default: the run's ``checkpoints/last.ckpt``)
and loadable by ``sample.py`` and ``evaluate.py``, so the EMA length is chosen by measured FID:

    python ema.py ckpt_dir=outputs/mnist_cpu/runs/<run> sigma_rel=0.03,0.05,0.1,0.2
    python evaluate.py -m ckpt_path=<the printed paths, comma-separated> metrics=[fid] num_samples=1000

Plain ``key=value`` arguments (a comma-separated ``sigma_rel`` is a list, not a Hydra sweep). Also written:
``<out_dir>/posthoc_ema.json`` with the coefficients and each fit's relative residual ‖Σ x_i w_i − w*‖/‖w*‖
(how far the wanted profile is from the span of the snapshots: < 0.01 is a faithful reconstruction).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import diffexp  # noqa: F401  (torchvision shim before lightning)
from diffexp.phema import MAX_SIGMA_REL

USAGE = ("usage: python ema.py ckpt_dir=<run dir or its phema/> sigma_rel=0.05,0.1,0.2 [step=N] "
         "[base=<checkpoint>] [out_dir=<folder>]")
KEYS = ("ckpt_dir", "sigma_rel", "step", "base", "out_dir")


class UsageError(ValueError):
    pass


def parse_args(argv: list[str]) -> dict:
    args: dict = {"step": None, "base": None, "out_dir": None}
    for item in argv:
        key, sep, value = item.partition("=")
        key = key.lstrip("+")
        if not sep or key not in KEYS:
            raise UsageError(f"unknown argument {item!r}; valid keys: {list(KEYS)}\n{USAGE}")
        args[key] = value
    for key in ("ckpt_dir", "sigma_rel"):
        if not args.get(key):
            raise UsageError(f"{key}=... is required\n{USAGE}")
    try:
        sig = [float(s) for s in args["sigma_rel"].strip("[]").split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"sigma_rel={args['sigma_rel']}: give numbers, e.g. sigma_rel=0.05,0.1,0.2") from None
    bad = [s for s in sig if not 0 < s < MAX_SIGMA_REL]
    if not sig or bad:
        raise UsageError(f"sigma_rel={args['sigma_rel']}: each length must lie in (0, {MAX_SIGMA_REL:.4f})")
    args["sigma_rel"] = sig
    if args["step"] is not None:
        try:
            args["step"] = int(args["step"])
        except ValueError:
            raise UsageError(f"step={args['step']}: a global step (an integer)") from None
    return args


def run(args: dict) -> dict:
    from diffexp.posthoc_ema import list_snapshots, reconstruct, write_checkpoint

    ckpt_dir = Path(args["ckpt_dir"])
    snaps = list_snapshots(ckpt_dir)
    run_dir = snaps[0].path.parent.parent
    target = None
    if args["step"] is not None:
        at = [s for s in snaps if s.global_step == args["step"]]
        if not at:
            raise UsageError(f"step={args['step']}: no snapshot at that step; snapshots at steps "
                             f"{[s.global_step for s in snaps]}")
        target = at[0].num_updates
    base = Path(args["base"]) if args["base"] else run_dir / "checkpoints" / "last.ckpt"
    out_dir = Path(args["out_dir"]) if args["out_dir"] else run_dir / "posthoc_ema"
    states, info = reconstruct(snaps, args["sigma_rel"], target)
    paths = []
    for sigma, state in zip(args["sigma_rel"], states):
        path = out_dir / f"ema-sigma{sigma:.3f}-step{info['global_step']:07d}.ckpt"
        paths.append(str(write_checkpoint(base, state, {**info, "sigma_rel": sigma}, path)))
    info = {**info, "checkpoints": paths, "base_checkpoint": str(base)}
    (out_dir / "posthoc_ema.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        info = run(parse_args(argv))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (missing/corrupt files: CheckpointError names them)
        if type(e).__name__ in ("CheckpointError", "ValueError"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    print(f"post-hoc EMA at step {info['global_step']} ({info['num_updates']} updates) from "
          f"{len(info['snapshots'])} snapshots of sigma_rel {info['tracked_sigma_rel']}:")
    for sigma, res, path in zip(info["sigma_rel"], info["relative_residual"], info["checkpoints"]):
        print(f"  sigma_rel {sigma:.3f}: profile fit residual {res:.2e}  ->  {path}")
    print("evaluate them: python evaluate.py -m ckpt_path=" + ",".join(info["checkpoints"]) + " metrics=[fid]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
