"""`python evaluate.py ckpt_path=... sampler=ddim sampler.steps=50 metrics=[fid,kid,nll]` / `diffexp-evaluate`.

Offline evaluation of one checkpoint with one sampler; a Hydra multirun sweeps samplers and step counts::

    python evaluate.py -m ckpt_path=CKPT sampler=ddim,dpmpp_2m,heun sampler.steps=10,20,50 metrics=[fid,kid,nll]

Each job writes ``evaluation.json`` into its job directory: every value with its provenance (checkpoint
path and step, EMA or raw weights, sampler with config and NFE, extractor with weights hash, n generated,
n real and the reference statistics' split/cache key/file, seeds, timings, metric keys) and, with
``nll``, ``nll_per_t.csv``. The sweep directory gets ``summary.md``, ``summary.csv`` and
``fid_vs_nfe.png`` (rewritten after every job and once more at the end by :class:`SummaryCallback`,
registered in ``conf/evaluate.yaml`` under ``hydra.callbacks``). Results are grouped by
(extractor + weights hash, n generated, n real, reference data): each group gets its own table and
plot panel, so numbers that are not comparable never share a curve (a warning says so).

Metrics: ``fid``, ``kid``, ``is`` (images; IS needs an extractor with logits), ``swd`` (2-D data; FID and
KID there are on the raw coordinates, see :mod:`diffexp.callbacks.metrics`) and ``nll`` (the variational
bound in bits/dim on ``nll.split``, independent of the sampler).

Samplers without a ``steps`` option (``langevin``: ``num_levels`` x ``steps_per_level``) cannot take
``sampler.steps=...`` (Hydra stops the sweep before it starts). Sweep them on their own, into the same
sweep directory so that one summary covers both::

    python evaluate.py -m ckpt_path=CKPT sampler=ddim,dpmpp_2m sampler.steps=10,20 hydra.sweep.dir=evals/ck1 \
        hydra.sweep.subdir='${hydra:job.override_dirname}'
    python evaluate.py -m ckpt_path=CKPT sampler=langevin sampler.steps_per_level=5,20 hydra.sweep.dir=evals/ck1 \
        hydra.sweep.subdir='${hydra:job.override_dirname}'

(the summary scans every ``evaluation.json`` below the sweep directory; distinct sub-directories keep
the jobs of both sweeps apart). ``python -m diffexp.cli.evaluate --summarize DIR`` rewrites a summary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import diffexp  # noqa: F401
from diffexp.config import CONFIG_DIR, setup_environment

setup_environment()

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.build import load_module  # noqa: E402
from diffexp.callbacks.likelihood import evaluate_nll, nll_examples, nll_keys, write_per_t_csv  # noqa: E402
from diffexp.callbacks.metrics import (  # noqa: E402
    SAMPLE_METRICS,
    _jsonable,
    cached_reference_stats,
    class_labels,
    extractor_info,
    is_points,
    keyed_values,
    make_metrics_extractor,
    reference_split,
    resolve_metrics,
    sampler_config,
    sampler_family,
    write_json,
)
from diffexp.callbacks.sample import sampler_label  # noqa: E402
from diffexp.metrics import compute_metrics  # noqa: E402

ALL_METRICS = (*SAMPLE_METRICS, "nll")
RECORD = "evaluation.json"
SUMMARY_COLUMNS = ("group", "sampler", "family", "nfe", "weights", "guidance_scale", "fid", "kid", "kid_std", "is",
                   "swd", "nll_bpd", "nll_convention", "n_gen", "n_real", "extractor", "extractor_hash",
                   "reference", "step", "checkpoint", "seconds", "job_dir")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _hydra_info() -> dict[str, Any]:
    """Job number, overrides and sweep directory of the running Hydra job ({} outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001
        return {}
    multirun = str(hc.mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    return {"multirun": multirun, "job_num": hc.job.get("num"), "overrides": list(hc.overrides.task),
            "sweep_dir": str(hc.sweep.dir) if multirun else None,
            "sampler_choice": hc.runtime.choices.get("sampler"), "extractor_choice": hc.runtime.choices.get("extractor")}


def _datamodule(cfg: DictConfig, module) -> Any:
    """``data=...`` when given, else the data config stored in the checkpoint."""
    node = cfg.get("data")
    if not node:
        stored = (module.config or {}).get("data")
        if not stored:
            raise ValueError("the checkpoint stores no data config; pass data=<name> (e.g. data=mnist)")
        node = OmegaConf.create(stored)
    dm = instantiate(node)
    if tuple(dm.data_shape) != tuple(module.data_shape):
        raise ValueError(f"data {dm.name!r} has shape {tuple(dm.data_shape)} but the checkpoint was trained on "
                         f"{tuple(module.data_shape)}")
    return dm


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with ``cfg.sampler`` on ``cfg.metrics``; write ``evaluation.json``."""
    started = time.time()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = [str(m) for m in (cfg.metrics if not isinstance(cfg.metrics, str) else [cfg.metrics])]
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics={metrics}: unknown {unknown}; choose from {list(ALL_METRICS)}")
    device = pick_device(cfg.device)
    torch.manual_seed(int(cfg.seed))
    module = load_module(cfg.ckpt_path, map_location=device).to(device)
    info = module.checkpoint_info
    weights = "ema" if (cfg.ema and module.uses_ema) else "raw"
    dm = _datamodule(cfg, module)
    T = module.schedule.num_timesteps
    hinfo = _hydra_info()
    record: dict[str, Any] = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()), "global_step": info["global_step"], "epoch": info["epoch"],
        "weights": weights, "ema": weights == "ema", "data": dm.name, "data_shape": list(dm.data_shape),
        "num_timesteps": T, "prediction": module.prediction, "metrics_requested": metrics, "device": str(device),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "hydra": hinfo, "values": {}, "keys": {},
    }
    sample_metrics = [m for m in metrics if m in SAMPLE_METRICS]
    if sample_metrics or "nll" not in metrics:
        sampler = instantiate(cfg.sampler)
        record.update(sampler=sampler_label(sampler, T), sampler_class=type(sampler).__name__,
                      sampler_config=OmegaConf.to_container(cfg.sampler, resolve=True), nfe=sampler.nfe(T),
                      guidance_scale=float(cfg.guidance_scale))
        record["sampler_name"] = sampler.name
        record["family"] = sampler_family(sampler.name)  # heun-18 (35 NFE) -> heun: one curve per family
    if sample_metrics:
        record["samples"] = _sample_metrics(cfg, module, dm, sampler, sample_metrics, weights, device)
        record["values"].update({m: record["samples"].get(m) for m in ("fid", "kid", "kid_std", "is", "is_std", "swd")
                                 if record["samples"].get(m) is not None})
        record["keys"].update(record["samples"]["keys"])
        for k in ("n_gen", "n_real", "extractor", "extractor_hash", "real_split"):
            record[k] = record["samples"][k]
        record["reference"] = {"split": record["samples"]["real_split"], **(record["samples"].get("real") or {})}
        record["seeds"] = record["samples"]["seeds"]
    if "nll" in metrics:
        record["nll"] = _nll(cfg, module, dm, weights, device, out_dir)
        record["values"]["nll_bpd"] = record["nll"]["bpd"]
        record["keys"].update(record["nll"]["keys"])
    record["seconds"] = time.time() - started
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(out_dir / RECORD, record)
    shown = ", ".join(f"{k}={v:.5g}" for k, v in record["values"].items())
    print(f"[evaluate] {record.get('sampler', 'nll')} ({record.get('nfe', '-')} NFE, {weights}) step "
          f"{info['global_step']}: {shown}  ({record['seconds']:.1f} s) -> {out_dir / RECORD}")
    # Keep the sweep's summary current after every job (SummaryCallback rewrites it once more at the end,
    # and jobs of a failed sweep still get one); a single run summarises its own directory.
    summary_root = hinfo["sweep_dir"] if hinfo.get("multirun") and hinfo.get("sweep_dir") else out_dir
    try:
        write_summary(summary_root)
    except Exception as e:  # noqa: BLE001 - a summary problem must not fail the job
        warnings.warn(f"could not update the summary in {summary_root}: {e}", stacklevel=1)
    return record


def _sample_metrics(cfg, module, dm, sampler, metrics, weights, device) -> dict[str, Any]:
    extractor = make_metrics_extractor(instantiate(cfg.extractor), dm).to(device)
    chosen = resolve_metrics(metrics, is_points(dm.data_shape), extractor)
    split = reference_split(dm, cfg.split)
    real = cached_reference_stats(dm, split, extractor, cfg.num_real, cfg.paths.cache_dir,
                                  kid_max_samples=cfg.kid_max_samples, recompute=cfg.recompute_reference)
    denoiser = module.denoiser(ema=cfg.ema)
    shape, seed = tuple(module.data_shape), int(cfg.seed)
    if module.num_classes is None and cfg.guidance_scale != 1.0:
        raise ValueError("guidance_scale needs a class-conditional checkpoint; this one is unconditional")

    def sample_fn(seeds):
        y = class_labels(seeds, seed, module.num_classes, device)
        return sampler(denoiser, shape=shape, seeds=seeds, y=y, guidance_scale=cfg.guidance_scale, device=device)

    res = compute_metrics(sample_fn, int(cfg.num_samples), extractor, real, batch_size=int(cfg.batch_size), metrics=chosen,
                           seed_offset=seed, data_range=module.data_range, kid_subset_size=cfg.kid_subset_size,
                           kid_subsets=cfg.kid_subsets, kid_max_samples=cfg.kid_max_samples,
                           swd_projections=cfg.swd_projections, device=device)
    T = module.schedule.num_timesteps
    res.update(sampler=sampler_label(sampler, T), sampler_class=type(sampler).__name__,
               sampler_config=sampler_config(sampler), nfe=sampler.nfe(T), weights=weights, ema=weights == "ema",
               guidance_scale=float(cfg.guidance_scale), real_split=split, extractor_info=extractor_info(extractor),
               metrics=list(chosen))
    res["keys"] = keyed_values(res)
    return res


def _nll(cfg, module, dm, weights, device, out_dir: Path) -> dict[str, Any]:
    n = cfg.nll
    x, y, split = nll_examples(dm, n.split, n.num_examples, int(n.seed))
    res = evaluate_nll(module.denoiser(ema=cfg.ema), x, y, batch_size=int(n.batch_size), seed=int(n.seed),
                       t_batch=n.t_batch, reverse_variance=n.reverse_variance, clip_denoised=n.clip_denoised,
                       device=device)
    res.update(split=split, weights=weights, seed=int(n.seed), per_t_csv=str(out_dir / "nll_per_t.csv"))
    res["keys"] = nll_keys(res, split, weights)
    write_per_t_csv(out_dir / "nll_per_t.csv", res["per_t"])
    return res


# ------------------------------------------------------------------------------------------ summary
def load_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``evaluation.json`` below ``root`` (sorted by path), each with ``job_dir`` added."""
    out = []
    for path in sorted(Path(root).rglob(RECORD)):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            warnings.warn(f"skipping unreadable {path}: {e}", stacklevel=2)
            continue
        rec["job_dir"] = str(path.parent)
        out.append(rec)
    return out


def group_of(rec: dict[str, Any]) -> str:
    """What makes sample metrics comparable: extractor + weights hash, n generated, n real, reference data."""
    if "samples" not in rec:
        return "nll-only"
    ref = rec.get("reference") or {}
    return (f"{rec['extractor']}-{str(rec['extractor_hash'])[:6]} | n_gen={rec['n_gen']} | n_real={rec['n_real']} | "
            f"ref={ref.get('cache_key', '?')}")


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        v = rec.get("values", {})
        rows.append({
            "group": group_of(rec), "sampler": rec.get("sampler", ""), "family": rec.get("family", ""),
            "nfe": rec.get("nfe", ""), "weights": rec.get("weights", ""), "guidance_scale": rec.get("guidance_scale", ""),
            "fid": v.get("fid", ""), "kid": v.get("kid", ""), "kid_std": v.get("kid_std", ""), "is": v.get("is", ""),
            "swd": v.get("swd", ""), "nll_bpd": v.get("nll_bpd", ""),
            "nll_convention": (rec.get("nll") or {}).get("convention_tag", ""),
            "n_gen": rec.get("n_gen", ""), "n_real": rec.get("n_real", ""), "extractor": rec.get("extractor", ""),
            "extractor_hash": rec.get("extractor_hash", ""), "reference": (rec.get("reference") or {}).get("cache_key", ""),
            "step": rec.get("global_step", ""), "checkpoint": rec.get("checkpoint", ""),
            "seconds": round(float(rec.get("seconds", 0.0)), 2), "job_dir": rec.get("job_dir", ""),
        })
    rows.sort(key=lambda r: (r["group"], str(r["checkpoint"]), str(r["family"]), str(r["weights"]),
                             r["nfe"] if isinstance(r["nfe"], (int, float)) else math.inf))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def _curve_key(row: dict[str, Any], many_ckpts: bool) -> str:
    label = f"{row['family']} ({row['weights']}"
    if row["guidance_scale"] not in ("", 1, 1.0):
        label += f", cfg {row['guidance_scale']:g}"
    if many_ckpts:
        label += f", step {row['step']}"
    return label + ")"


def write_summary(root: str | os.PathLike) -> dict[str, Any]:
    """Rewrite ``summary.csv``, ``summary.md`` and ``fid_vs_nfe.png`` in ``root`` from every job record
    below it. Groups (extractor + hash, n_gen, n_real, reference) get separate tables and plot panels;
    when there is more than one, a warning says that values across groups are not comparable.
    Returns ``{"records", "groups", "files", "warnings"}``."""
    root = Path(root)
    records = load_records(root)
    rows = summary_rows(records)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    notes = []
    sample_groups = [g for g in groups if g != "nll-only"]
    if len(sample_groups) > 1:
        notes.append(f"{len(sample_groups)} groups with different extractor / n_gen / n_real / reference data: their "
                     "FID/KID/IS values are NOT comparable and are shown in separate tables and plot panels")
        warnings.warn(notes[-1], stacklevel=2)
    files = {}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS))
    w.writeheader()
    w.writerows(rows)
    files["csv"] = _write_text(root / "summary.csv", buf.getvalue())
    md = [f"# Evaluation summary: {root}", "", f"{len(records)} job record(s), written "
          f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.", ""]
    md += [f"> **Warning:** {n}" for n in notes] + ([""] if notes else [])
    cols = ("sampler", "nfe", "weights", "fid", "kid", "kid_std", "is", "swd", "nll_bpd", "step", "seconds")
    for g, grows in groups.items():
        md += [f"## {g}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in grows]
        ckpts = sorted({str(r["checkpoint"]) for r in grows})
        conv = sorted({r["nll_convention"] for r in grows if r["nll_convention"]})
        md += ["", f"checkpoint(s): {', '.join(ckpts)}"] + ([f"NLL convention: {', '.join(conv)}"] if conv else []) + [""]
    files["md"] = _write_text(root / "summary.md", "\n".join(md))
    png = plot_fid_vs_nfe(groups, root / "fid_vs_nfe.png")
    if png is not None:
        files["png"] = png
    return {"records": len(records), "groups": list(groups), "files": files, "warnings": notes}


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def plot_fid_vs_nfe(groups: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """One panel per comparable group, one curve per sampler family (and weights, guidance, checkpoint),
    FID against NFE (log x axis). Nothing is written when no record has an FID."""
    panels = {g: [r for r in rows if r["fid"] != "" and r["nfe"] != ""] for g, rows in groups.items()}
    panels = {g: rows for g, rows in panels.items() if rows}
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4 * len(panels)), squeeze=False)
    for ax, (g, rows) in zip(axes[:, 0], panels.items()):
        many = len({r["checkpoint"] for r in rows}) > 1
        curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            curves[_curve_key(r, many)].append((float(r["nfe"]), float(r["fid"])))
        for label, pts in sorted(curves.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks(sorted({float(r["nfe"]) for r in rows}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("NFE (network evaluations per sample)")
        ax.set_ylabel("FID")
        ax.set_title(g, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if len(panels) > 1:
        fig.suptitle("separate panels: values are not comparable across panels", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class SummaryCallback(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/evaluate.yaml): after a multirun, rewrite the sweep's
    summary from all job records (a single run writes its own summary in its run directory)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarize(Path(str(config.hydra.sweep.dir)))

    @staticmethod
    def _summarize(root: Path) -> None:
        if not root.is_dir():
            return
        try:
            res = write_summary(root)
        except Exception as e:  # noqa: BLE001
            print(f"[evaluate] could not write the summary in {root}: {e}", file=sys.stderr)
            return
        if res["records"]:
            print(f"[evaluate] summary of {res['records']} job(s): " + ", ".join(str(p) for p in res["files"].values()))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> float | None:
    record = evaluate(cfg)
    value = record["values"].get(cfg.get("optimized_metric") or "")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def main() -> None:
    """Console entry point; ``--summarize DIR`` rewrites the summary of a directory of job records."""
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        res = write_summary(sys.argv[2])
        print(json.dumps(_jsonable(res), indent=2))
        return
    _hydra_main()


if __name__ == "__main__":
    main()
