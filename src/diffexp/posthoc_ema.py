"""Post-hoc EMA: snapshot files of the power-function profiles, and reconstruction of any σ_rel from them.

During training (``module.posthoc_ema.sigma_rel``, :class:`diffexp.ema.PowerEMA`) the snapshot callback
(:class:`diffexp.callbacks.posthoc_ema.PostHocEMASnapshots`) writes ``<run>/phema/phema-step<step>.pt`` every
few steps and at the end; each holds the profiles' averages after ``num_updates`` updates. After training,
:func:`reconstruct` solves the least-squares coefficients of :func:`diffexp.phema.solve_posthoc` over all
snapshots up to the wanted step and sums the snapshots with them, and :func:`write_checkpoint` stores the
result as the EMA weights of a copy of a run checkpoint, so sample.py / evaluate.py use it unchanged
(``python ema.py ckpt_dir=<run> sigma_rel=0.05,0.1,0.2``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffexp.atomic import atomic_torch_save
from diffexp.checkpoint import CHECKPOINT_KEY, CheckpointError, read_checkpoint
from diffexp.phema import sigma_rel_to_gamma, solve_posthoc

__all__ = ["SNAPSHOT_FORMAT", "Snapshot", "list_snapshots", "save_snapshot", "reconstruct", "write_checkpoint"]

SNAPSHOT_FORMAT = "diffexp-phema-1"
SNAPSHOT_NAME = re.compile(r"phema-step(\d+)\.pt$")


def snapshot_name(global_step: int) -> str:
    return f"phema-step{int(global_step):07d}.pt"


def save_snapshot(snapshot: dict, folder: str | os.PathLike, global_step: int) -> Path:
    """Write one :meth:`PowerEMA.snapshot` atomically as ``folder/phema-step<step>.pt``."""
    path = Path(folder) / snapshot_name(global_step)
    atomic_torch_save({"format": SNAPSHOT_FORMAT, "global_step": int(global_step), **snapshot}, path)
    return path


@dataclass(frozen=True)
class Snapshot:
    path: Path
    global_step: int
    num_updates: int
    sigma_rel: tuple[float, ...]
    gamma: tuple[float, ...]


def _load(path: Path) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"post-hoc EMA snapshot {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                              "delete it (the others still reconstruct)") from e
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{path} is not a diffexp post-hoc EMA snapshot (format {SNAPSHOT_FORMAT})")
    return data


def list_snapshots(folder: str | os.PathLike) -> list[Snapshot]:
    """The snapshots in ``folder`` (a run directory or its ``phema/``), by step; one σ_rel set for all."""
    folder = Path(folder)
    if (folder / "phema").is_dir():
        folder = folder / "phema"
    paths = sorted(p for p in folder.glob("phema-step*.pt") if SNAPSHOT_NAME.search(p.name)) if folder.is_dir() else []
    if not paths:
        raise CheckpointError(f"no post-hoc EMA snapshots (phema-step*.pt) in {folder}; train with "
                              "module.posthoc_ema.sigma_rel=[0.05,0.10] and the posthoc_ema callback (callbacks=default)")
    out = []
    for p in paths:
        d = _load(p)
        out.append(Snapshot(p, int(d["global_step"]), int(d["num_updates"]), tuple(d["sigma_rel"]), tuple(d["gamma"])))
    kinds = {s.sigma_rel for s in out}
    if len(kinds) > 1:
        raise CheckpointError(f"snapshots in {folder} track different sigma_rel sets {sorted(kinds)}: one run per folder")
    return out


def reconstruct(snapshots: list[Snapshot], sigma_rels: list[float], num_updates: int | None = None,
                ) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """State dicts of the EMA profiles ``sigma_rels`` at ``num_updates`` (default: the last snapshot's),
    as least-squares combinations of the snapshots taken up to then (later ones cannot contribute).

    Returns (state_dicts, info); info has the coefficients, the relative residual of each profile fit (an
    error bound, see :mod:`diffexp.phema`) and the snapshots used. Buffers come from the latest snapshot used.
    """
    t = int(num_updates if num_updates is not None else max(s.num_updates for s in snapshots))
    used = [s for s in snapshots if 1 <= s.num_updates <= t]
    if not used:
        raise ValueError(f"no snapshot at or before update {t}; snapshots are at updates "
                         f"{[s.num_updates for s in snapshots]}")
    basis = [(g, s.num_updates) for s in used for g in s.gamma]
    targets = [(sigma_rel_to_gamma(s), t) for s in sigma_rels]
    X, residual = solve_posthoc(basis, targets)
    acc: list[dict[str, torch.Tensor]] = [{} for _ in sigma_rels]
    last = max(used, key=lambda s: s.num_updates)
    row = 0
    for snap in used:
        data = _load(snap.path)
        buffers = set(data.get("buffers", ()))
        for profile in data["profiles"]:
            for key, value in profile.items():
                if key in buffers or not value.is_floating_point():  # buffers: those of the latest snapshot
                    if snap is last:
                        for out in acc:
                            out[key] = value.clone()
                    continue
                for j, out in enumerate(acc):
                    term = value.double() * float(X[row, j])
                    out[key] = out[key] + term if key in out else term
            row += 1
    dtypes = {k: v.dtype for k, v in _load(last.path)["profiles"][0].items()}
    states = [{k: v.to(dtypes[k]) for k, v in out.items()} for out in acc]
    info = {"num_updates": t, "global_step": last.global_step, "tracked_sigma_rel": list(last.sigma_rel),
            "snapshots": [str(s.path.name) for s in used], "sigma_rel": [float(s) for s in sigma_rels],
            "relative_residual": [float(r) for r in residual],
            "coefficients": np.asarray(X).T.round(8).tolist()}
    return states, info


def write_checkpoint(base: str | os.PathLike, state: dict[str, torch.Tensor], info: dict, path: str | os.PathLike,
                     ) -> Path:
    """A copy of checkpoint ``base`` whose EMA weights are ``state`` (its raw weights when it has no EMA),
    for sampling and evaluation (no optimizer state: not for resuming)."""
    ckpt = read_checkpoint(base)
    sd = ckpt["state_dict"]
    prefix = "ema.net." if any(k.startswith("ema.net.") for k in sd) else "net."
    missing = sorted(set(state) - {k[len(prefix):] for k in sd if k.startswith(prefix)})
    if missing:
        raise CheckpointError(f"the snapshots do not match the network of {base} (keys {missing[:5]}...)")
    for key, value in state.items():
        sd[prefix + key] = value.to(sd[prefix + key].dtype)
    if prefix == "ema.net.":
        sd["ema.num_updates"] = torch.tensor(max(1, int(info["num_updates"])), dtype=torch.long)
    meta = dict(ckpt[CHECKPOINT_KEY])
    meta["posthoc_ema"] = {**info, "written_into": prefix.rstrip("."), "base_checkpoint": str(base)}
    out = {"state_dict": sd, CHECKPOINT_KEY: meta, "global_step": int(ckpt.get("global_step", 0)),
           "epoch": int(ckpt.get("epoch", 0))}
    for key in ("pytorch-lightning_version", "hyper_parameters"):
        if key in ckpt:
            out[key] = ckpt[key]
    atomic_torch_save(out, path)
    return Path(path)


def snapshot_folder(ckpt_path: str | os.PathLike) -> Path:
    """``<run>/phema`` of a checkpoint ``<run>/checkpoints/<name>.ckpt``."""
    return Path(ckpt_path).resolve().parent.parent / "phema"


def apply_posthoc_ema(module, ckpt_path: str | os.PathLike, sigma_rel: float) -> dict:
    """Replace the EMA weights of a loaded ``module`` (its raw weights when it has no EMA) by the post-hoc EMA
    of length ``sigma_rel`` at the checkpoint's step, from its run's snapshots (``evaluate.py ema_sigma_rel=``).
    Returns the reconstruction's info, also put into ``module.checkpoint_info['posthoc_ema']``."""
    from diffexp.phema import check_sigma_rel

    check_sigma_rel(sigma_rel, "ema_sigma_rel")
    info = getattr(module, "checkpoint_info", None) or {}
    step = int(info.get("global_step", -1))
    snaps = list_snapshots(snapshot_folder(ckpt_path))
    at = [s for s in snaps if s.global_step == step]
    if not at:
        raise CheckpointError(f"ema_sigma_rel: no post-hoc EMA snapshot at the checkpoint's step {step} in "
                              f"{snaps[0].path.parent} (snapshots at steps {[s.global_step for s in snaps]}); "
                              "use the checkpoint of a snapshot step (e.g. last.ckpt)")
    states, rec = reconstruct(snaps, [float(sigma_rel)], at[0].num_updates)
    target = module.ema.net if getattr(module, "ema", None) is not None else module.net
    target.load_state_dict({k: v.to(p.dtype) for (k, v), p in zip(states[0].items(), target.state_dict().values())})
    if getattr(module, "ema", None) is not None:
        module.ema.num_updates.fill_(max(1, rec["num_updates"]))
    rec = {**rec, "sigma_rel": float(sigma_rel), "written_into": "ema.net" if target is not module.net else "net"}
    module.checkpoint_info = {**info, "posthoc_ema": rec}
    return rec


def weights_label(module, ema: bool) -> str:
    """``ema``, ``raw`` (or what a pretrained folder says it holds), or ``phema-sigma0.100`` for weights that are
    a post-hoc EMA reconstruction (metric keys must tell them apart from the classic EMA)."""
    posthoc = (getattr(module, "checkpoint_info", None) or {}).get("posthoc_ema")
    uses_ema = bool(ema and module.uses_ema)
    if posthoc and (posthoc.get("written_into") == "ema.net") == uses_ema:
        return f"phema-sigma{float(posthoc['sigma_rel']):.3f}"
    return "ema" if uses_ema else (getattr(module, "checkpoint_info", None) or {}).get("weights", "raw")
