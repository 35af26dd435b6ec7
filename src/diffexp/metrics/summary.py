"""The summary of an evaluation sweep: ``summary.md``, ``summary.csv`` and ``fid_vs_nfe.png`` from every
``evaluation.json`` (written by ``evaluate.py``, :mod:`diffexp.cli.evaluate`) below a folder.

Results are grouped by (extractor + weights hash, n generated, n real, reference data): each group gets
its own table and plot panel, so numbers that are not comparable never share a curve (a warning says so).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffexp.atomic import atomic_write, atomic_write_text, clean_partial_files

RECORD = "evaluation.json"
SUMMARY_COLUMNS = ("group", "process", "sampler", "family", "nfe", "weights", "guidance", "guidance_scale", "cfg_scale", "fid",
                   "kid", "kid_std", "is", "confident", "class_entropy", "class_accuracy", "class_accuracy_stderr", "swd", "nll_bpd", "nll_convention", "nll_ode_bpd", "nll_ode_stderr", "nll_ode_nfe",
                   "nll_ode_estimator", "n_gen", "n_real", "extractor", "extractor_hash",
                   "reference", "step", "checkpoint", "seconds", "job_dir")

__all__ = ["RECORD", "SUMMARY_COLUMNS", "group_of", "guidance_of", "load_records", "plot_fid_vs_nfe", "summary_rows", "write_summary"]


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


def guidance_of(rec: dict[str, Any]) -> tuple[str, Any, Any]:
    """(kind, scale, CFG scale) of a record: kind none | cfg | classifier | cfg+classifier; scale is the
    classifier-guidance scale when a classifier guided, else the CFG scale (records before classifier guidance
    in evaluate.py carry only ``guidance_scale``, the CFG scale)."""
    w = rec.get("guidance_scale", "")
    g = rec.get("guidance")
    if isinstance(g, dict):
        return str(g.get("kind", "")), g.get("scale", w), g.get("cfg_scale", w)
    if w == "":
        return "", "", ""
    return ("none" if w in (1, 1.0) else "cfg"), w, w


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        v = rec.get("values", {})
        kind, scale, cfg_scale = guidance_of(rec)
        rows.append({
            "group": group_of(rec), "process": rec.get("process", ""), "sampler": rec.get("sampler", ""), "family": rec.get("family", ""),
            "nfe": rec.get("nfe", ""), "weights": rec.get("weights", ""), "guidance": kind, "guidance_scale": scale, "cfg_scale": cfg_scale,
            "fid": v.get("fid", ""), "kid": v.get("kid", ""), "kid_std": v.get("kid_std", ""), "is": v.get("is", ""),
            "confident": v.get("confident", ""), "class_entropy": v.get("class_entropy", ""),
            "class_accuracy": v.get("class_accuracy", ""), "class_accuracy_stderr": v.get("class_accuracy_stderr", ""), "swd": v.get("swd", ""), "nll_bpd": v.get("nll_bpd", ""),
            "nll_convention": (rec.get("nll") or (rec.get("nll_ode") or {})).get("convention_tag", ""),
            "nll_ode_bpd": v.get("nll_ode_bpd", ""), "nll_ode_stderr": (rec.get("nll_ode") or {}).get("bpd_stderr", ""),
            "nll_ode_nfe": v.get("nll_ode_nfe", ""), "nll_ode_estimator": _ode_estimator(rec.get("nll_ode")),
            "n_gen": rec.get("n_gen", ""), "n_real": rec.get("n_real", ""), "extractor": rec.get("extractor", ""),
            "extractor_hash": rec.get("extractor_hash", ""), "reference": (rec.get("reference") or {}).get("cache_key", ""),
            "step": rec.get("global_step", ""), "checkpoint": rec.get("checkpoint", ""),
            "seconds": round(float(rec.get("seconds", 0.0)), 2), "job_dir": rec.get("job_dir", ""),
        })
    rows.sort(key=lambda r: (r["group"], str(r["process"]), str(r["checkpoint"]), str(r["family"]), str(r["weights"]),
                             r["nfe"] if isinstance(r["nfe"], (int, float)) else math.inf, str(r["guidance"]),
                             r["guidance_scale"] if isinstance(r["guidance_scale"], (int, float)) else math.inf))
    return rows


def _ode_estimator(res: dict[str, Any] | None) -> str:
    if not res:
        return ""
    from diffexp.metrics.nll_ode import estimator_tag

    return estimator_tag(res)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def _curve_key(row: dict[str, Any], many_ckpts: bool) -> str:
    label = f"{row['process']}: {row['family']} ({row['weights']}" if row["process"] else f"{row['family']} ({row['weights']}"
    if row["cfg_scale"] not in ("", 1, 1.0):
        label += f", cfg {row['cfg_scale']:g}"
    if "classifier" in str(row["guidance"]):
        label += f", classifier guidance {row['guidance_scale']:g}"
    if many_ckpts:
        label += f", step {row['step']}"
    return label + ")"


def write_summary(root: str | os.PathLike) -> dict[str, Any]:
    """Rewrite ``summary.csv``, ``summary.md`` and ``fid_vs_nfe.png`` in ``root`` from every job record
    below it. Groups (extractor + hash, n_gen, n_real, reference) get separate tables and plot panels;
    when there is more than one, a warning says that values across groups are not comparable.
    Returns ``{"records", "groups", "files", "warnings"}``."""
    root = Path(root)
    clean_partial_files(root)  # what a job killed while writing the summary left behind
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
    files["csv"] = atomic_write_text(root / "summary.csv", buf.getvalue())
    md = [f"# Evaluation summary: {root}", "", f"{len(records)} job record(s), written "
          f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.", ""]
    md += [f"> **Warning:** {n}" for n in notes] + ([""] if notes else [])
    cols = ("process", "sampler", "nfe", "weights", "guidance", "guidance_scale", "fid", "kid", "kid_std", "is", "confident",
            "class_accuracy", "swd", "nll_bpd", "nll_ode_bpd",
            "nll_ode_nfe", "step", "seconds")
    for g, grows in groups.items():
        md += [f"## {g}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in grows]
        ckpts = sorted({str(r["checkpoint"]) for r in grows})
        conv = sorted({r["nll_convention"] for r in grows if r["nll_convention"]})
        est = sorted({r["nll_ode_estimator"] for r in grows if r["nll_ode_estimator"]})
        md += ["", f"checkpoint(s): {', '.join(ckpts)}"] + ([f"NLL convention: {', '.join(conv)}"] if conv else [])
        md += ([f"PF-ODE NLL estimator/solver: {', '.join(est)}"] if est else []) + [""]
    files["md"] = atomic_write_text(root / "summary.md", "\n".join(md))
    png = plot_fid_vs_nfe(groups, root / "fid_vs_nfe.png")
    if png is not None:
        files["png"] = png
    return {"records": len(records), "groups": list(groups), "files": files, "warnings": notes}


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
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path
