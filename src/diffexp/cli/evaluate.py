"""`python evaluate.py ckpt_path=... sampler=ddim sampler.steps=50 metrics=[fid,kid,nll]` / `diffexp-evaluate`.

Offline evaluation of one checkpoint with one sampler; a Hydra multirun sweeps samplers and step counts::

    python evaluate.py -m ckpt_path=CKPT sampler=ddim,dpmpp_2m,heun sampler.steps=10,20,50 metrics=[fid,kid,nll]

Each job writes ``evaluation.json`` into its job directory: every value with its provenance (checkpoint
path and step, EMA or raw weights, sampler with config and NFE, extractor with weights hash, n generated,
n real and the reference statistics' split/cache key/file, seeds, timings, metric keys) and, with
``nll``, ``nll_per_t.csv``. The sweep directory gets ``summary.md``, ``summary.csv`` and
``fid_vs_nfe.png`` (:mod:`diffexp.metrics.summary`; rewritten after every job and once more at the end by
:class:`SummaryCallback`, registered in ``conf/evaluate.yaml`` under ``hydra.callbacks``), grouped so
that numbers that are not comparable never share a curve.

Metrics: ``fid``, ``kid``, ``is`` (images; IS needs an extractor with logits), ``swd`` (2-D data; FID and
KID there are on the raw coordinates, see :mod:`diffexp.metrics.selection`), ``nll`` (the variational
bound in bits/dim on ``nll.split``, independent of the sampler; ddpm family) and ``nll_ode`` (the exact
likelihood by the probability-flow ODE on any family, :mod:`diffexp.metrics.nll_ode`; options under
``nll_ode.``). The process family is part of every record (``process``) and of the summary, so
``-m process=... sampler=... sampler.steps=...`` sweeps over checkpoints of several families give one
FID-vs-NFE and NLL table.

Samplers without a ``steps`` option (``langevin``: ``num_levels`` x ``steps_per_level``) cannot take
``sampler.steps=...`` (Hydra stops the sweep before it starts). Sweep them on their own, into the same
sweep directory so that one summary covers both::

    python evaluate.py -m ckpt_path=CKPT sampler=ddim,dpmpp_2m sampler.steps=10,20 hydra.sweep.dir=evals/ck1 \
        hydra.sweep.subdir='${hydra:job.override_dirname}'
    python evaluate.py -m ckpt_path=CKPT sampler=langevin sampler.steps_per_level=5,20 hydra.sweep.dir=evals/ck1 \
        hydra.sweep.subdir='${hydra:job.override_dirname}'

(the summary scans every ``evaluation.json`` below the sweep directory; distinct sub-directories keep
the jobs of both sweeps apart). ``python -m diffexp.cli.evaluate --summarize DIR`` rewrites a summary.

Classifier-free guidance: ``guidance_scale: null`` (the default) is the scale of the checkpoint's recipe (train.py's
top-level ``guidance_scale``; 1.0 for checkpoints without one), an explicit number overrides it; the record holds
the number used and ``guidance_scale_source`` (explicit | checkpoint | default).
Classifier guidance (:mod:`diffexp.guidance`) as in ``sample.py``, composable with classifier-free guidance
(``guidance_scale``); ``class_accuracy`` is the share of samples the project classifier (``extractor=classifier``)
assigns to the class they were drawn for (sample i: class i mod K). The accuracy-vs-scale table::

    python evaluate.py -m ckpt_path=CKPT guidance=classifier classifier_ckpt=CLF guidance.scale=0,1,2,4 \
        metrics=[fid,class_accuracy,confident]
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import diffexp  # noqa: F401
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, setup_environment

setup_environment()
enable_debug_tracebacks()

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.atomic import atomic_write_json  # noqa: E402
from diffexp.cli.checks import check_against_checkpoint, check_evaluate_config, check_nll_against_checkpoint  # noqa: E402
from diffexp.guidance.noisy_classifier import classifier_guidance_from_config  # noqa: E402
from diffexp.guidance.setup import (  # noqa: E402
    check_classifier_fits,
    guidance_record,
    label_classes,
    use_recipe_guidance_scale,
)
from diffexp.interop.pretrained import load_model  # noqa: E402
from diffexp.latent import image_shape, label_latent_nll, nll_datamodule  # noqa: E402
from diffexp.logs import route_to_run_log, say  # noqa: E402
from diffexp.metrics import compute_metrics  # noqa: E402
from diffexp.metrics.nll import evaluate_nll, nll_examples, nll_keys, write_per_t_csv  # noqa: E402
from diffexp.metrics.nll_ode import evaluate_nll_ode, nll_ode_keys  # noqa: E402
from diffexp.metrics.provenance import (  # noqa: E402
    extractor_info,
    jsonable,
    keyed_metrics,
    sampler_config,
    sampler_family,
    sampler_label,
)
from diffexp.metrics.sampling import ModuleSampleSource  # noqa: E402
from diffexp.metrics.selection import (  # noqa: E402
    SAMPLE_METRICS,
    cached_reference_stats,
    is_points,
    make_metrics_extractor,
    reference_split,
    resolve_metrics,
)
from diffexp.metrics.summary import RECORD, write_summary  # noqa: E402
from diffexp.posthoc_ema import apply_posthoc_ema, weights_label  # noqa: E402
from diffexp.samplers.recipe import use_recipe_sampler  # noqa: E402
from diffexp.validation import ConfigError  # noqa: E402

ALL_METRICS = (*SAMPLE_METRICS, "nll", "nll_ode")
LIKELIHOOD_METRICS = ("nll", "nll_ode")


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
            "sampler_choice": hc.runtime.choices.get("sampler"), "extractor_choice": hc.runtime.choices.get("extractor"),
            "guidance_choice": hc.runtime.choices.get("guidance")}


def _datamodule(cfg: DictConfig, module) -> Any:
    """``data=...`` when given, else the data config stored in the checkpoint."""
    node = cfg.get("data")
    if not node:
        stored = (module.config or {}).get("data")
        if not stored:
            raise ConfigError("the checkpoint stores no data config; pass data=<name> (e.g. data=mnist)")
        node = OmegaConf.create(stored)
    dm = instantiate(node)
    if tuple(dm.data_shape) != image_shape(module):  # latent diffusion: the images its latents decode to
        raise ConfigError(f"data={dm.name}: its examples have shape {tuple(dm.data_shape)}, but the checkpoint was "
                          f"trained on {image_shape(module)}; pass the data it was trained on (or omit data=)")
    return dm


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with ``cfg.sampler`` on ``cfg.metrics``; write ``evaluation.json``."""
    started = time.time()
    metrics = check_evaluate_config(cfg, ALL_METRICS)  # every mistake named by its key, before any work
    out_dir = Path(cfg.paths.output_dir)
    device = pick_device(cfg.device)
    torch.manual_seed(int(cfg.seed))
    guidance = classifier_guidance_from_config(cfg, device)  # guidance=classifier: classifier_ckpt and scale checked now
    module = load_model(cfg.ckpt_path, cfg.get("pretrained"), map_location=device).to(device)  # or pretrained=DIR
    scale, scale_source = use_recipe_guidance_scale(cfg, module)  # null: the checkpoint's recipe value
    sampler_source = use_recipe_sampler(cfg, module)  # sampler=recipe (the default): the checkpoint's sampler
    check_against_checkpoint(cfg, module)
    check_classifier_fits(module, guidance, cfg.get("classifier_ckpt"))
    if "class_accuracy" in metrics and label_classes(module, guidance) is None:
        raise ConfigError(f"metrics={metrics}: class_accuracy needs samples drawn for labels: a class-conditional "
                          f"checkpoint or guidance=classifier classifier_ckpt=...; {cfg.get('ckpt_path') or cfg.get('pretrained')} "
                          "is unconditional")
    if "nll" in metrics:
        check_nll_against_checkpoint(cfg, module)
    if cfg.get("ema_sigma_rel") is not None:  # post-hoc EMA of this length from the run's snapshots
        apply_posthoc_ema(module, cfg.ckpt_path, float(cfg.ema_sigma_rel))
    info = module.checkpoint_info
    weights = weights_label(module, cfg.ema)  # ema | raw | phema-sigma0.100 | as stored (pretrained=DIR)
    dm = _datamodule(cfg, module)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = module.process.num_timesteps
    hinfo = _hydra_info()
    record: dict[str, Any] = {
        "checkpoint": str(Path(info["path"]).resolve()), "pretrained": bool(info.get("pretrained", False)),
        "global_step": info["global_step"], "epoch": info["epoch"],
        "weights": weights, "ema": weights == "ema", "data": dm.name, "data_shape": list(dm.data_shape),
        "num_timesteps": T, "process": module.process.name, "prediction": module.prediction, "metrics_requested": metrics, "device": str(device),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "hydra": hinfo, "values": {}, "keys": {},
    }
    sample_metrics = [m for m in metrics if m in SAMPLE_METRICS]
    if sample_metrics or not any(m in metrics for m in LIKELIHOOD_METRICS):
        sampler = instantiate(cfg.sampler)
        record.update(sampler=sampler_label(sampler, T), sampler_class=type(sampler).__name__,
                      sampler_config=OmegaConf.to_container(cfg.sampler, resolve=True), nfe=sampler.nfe(T),
                      sampler_source=sampler_source, guidance_scale=scale, guidance_scale_source=scale_source,
                      guidance=guidance_record(module, guidance, scale, cfg.get("classifier_ckpt")))
        record["sampler_name"] = sampler.name
        record["family"] = sampler_family(sampler.name)  # heun-18 (35 NFE) -> heun: one curve per family
    if sample_metrics:
        record["samples"] = _sample_metrics(cfg, module, dm, sampler, sample_metrics, weights, device, guidance)
        # an adaptive sampler knows its NFE (and so its label) only after sampling
        record.update(nfe=record["samples"]["nfe"], sampler=record["samples"]["sampler"])
        record["values"].update({m: record["samples"].get(m) for m in ("fid", "kid", "kid_std", "is", "is_std", "confident",
                                                                       "class_entropy", "class_accuracy",
                                                                       "class_accuracy_stderr", "swd")
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
    if "nll_ode" in metrics:
        record["nll_ode"] = _nll_ode(cfg, module, dm, weights, device)
        record["values"]["nll_ode_bpd"] = record["nll_ode"]["bpd"]
        record["values"]["nll_ode_nfe"] = record["nll_ode"]["nfe"]
        record["keys"].update(record["nll_ode"]["keys"])
    record["seconds"] = time.time() - started
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(out_dir / RECORD, jsonable(record))
    shown = ", ".join(f"{k}={v:.5g}" for k, v in record["values"].items())
    say(f"[evaluate] {record.get('sampler', 'nll')} ({record.get('nfe', '-')} NFE, {weights}) step "
          f"{info['global_step']}: {shown}  ({record['seconds']:.1f} s) -> {out_dir / RECORD}")
    # Keep the sweep's summary current after every job (SummaryCallback rewrites it once more at the end,
    # and jobs of a failed sweep still get one); a single run summarises its own directory.
    summary_root = hinfo["sweep_dir"] if hinfo.get("multirun") and hinfo.get("sweep_dir") else out_dir
    try:
        write_summary(summary_root)
    except Exception as e:  # noqa: BLE001 - a summary problem must not fail the job
        warnings.warn(f"could not update the summary in {summary_root}: {e}", stacklevel=1)
    return record


def _sample_metrics(cfg, module, dm, sampler, metrics, weights, device, guidance=None) -> dict[str, Any]:
    extractor = make_metrics_extractor(instantiate(cfg.extractor), dm).to(device)
    chosen = resolve_metrics(metrics, is_points(dm.data_shape), extractor)
    num_classes = label_classes(module, guidance)  # labels: the model's classes, else the guidance classifier's
    if "class_accuracy" in chosen and extractor.num_classes != num_classes:
        raise ConfigError(f"metrics=[...class_accuracy]: extractor={extractor.name} has {extractor.num_classes} classes, "
                          f"the samples' labels {num_classes}; use extractor=classifier (the project classifier)")
    split = reference_split(dm, cfg.split)
    real = cached_reference_stats(dm, split, extractor, cfg.num_real, cfg.paths.cache_dir,
                                  kid_max_samples=cfg.kid_max_samples, recompute=cfg.recompute_reference)
    # Seeds, labels (sample i: class i mod K), CFG, decoding and clamping: one rule shared with the benchmarks.
    source = ModuleSampleSource(module, sampler, cfg.guidance_scale, ema=cfg.ema, seed_offset=int(cfg.seed),
                                device=device, classifier_guidance=guidance)
    res = compute_metrics(source, int(cfg.num_samples), extractor, real, batch_size=int(cfg.batch_size), metrics=chosen,
                           seed_offset=source.seed_offset, data_range=source.data_range, kid_subset_size=cfg.kid_subset_size,
                           kid_subsets=cfg.kid_subsets, kid_max_samples=cfg.kid_max_samples,
                           swd_projections=cfg.swd_projections, device=device, label_fn=source.labels)
    T = module.process.num_timesteps
    res.update(process=module.process.name, sampler=sampler_label(sampler, T), sampler_class=type(sampler).__name__,
               sampler_config=sampler_config(sampler), nfe=sampler.nfe(T), weights=weights, ema=weights == "ema",
               guidance_scale=float(cfg.guidance_scale), guidance=guidance_record(module, guidance, float(cfg.guidance_scale),
                                                                                   cfg.get("classifier_ckpt")),
               classifier_guidance_scale=None if guidance is None else guidance.scale, real_split=split, extractor_info=extractor_info(extractor),
               metrics=list(chosen))
    res["keys"] = keyed_metrics(res)
    return res


def _nll(cfg, module, dm, weights, device, out_dir: Path) -> dict[str, Any]:
    n = cfg.nll
    data = nll_datamodule(module, dm, cfg.paths.cache_dir)  # latent diffusion: the cached latents of dm
    x, y, split = nll_examples(data, n.split, n.num_examples, int(n.seed))
    res = evaluate_nll(module.denoiser(ema=cfg.ema), x, y, batch_size=int(n.batch_size), seed=int(n.seed),
                       t_batch=n.t_batch, reverse_variance=n.reverse_variance, clip_denoised=n.clip_denoised,
                       device=device)
    label_latent_nll(res, module)
    res.update(split=split, weights=weights, seed=int(n.seed), per_t_csv=str(out_dir / "nll_per_t.csv"))
    res["keys"] = nll_keys(res, split, weights)
    write_per_t_csv(out_dir / "nll_per_t.csv", res["per_t"])
    return res


def _nll_ode(cfg, module, dm, weights, device) -> dict[str, Any]:
    n = cfg.nll_ode
    data = nll_datamodule(module, dm, cfg.paths.cache_dir)  # latent diffusion: the cached latents of dm
    x, y, split = nll_examples(data, n.split, n.num_examples, int(n.seed))
    res = evaluate_nll_ode(module.denoiser(ema=cfg.ema), x, y, batch_size=int(n.batch_size), seed=int(n.seed),
                           divergence=n.divergence, probe=n.probe, num_probes=int(n.num_probes), method=n.method,
                           rtol=float(n.rtol), atol=float(n.atol), device=device)
    label_latent_nll(res, module)
    res.update(split=split, weights=weights, seed=int(n.seed), process=module.process.name)
    res["keys"] = nll_ode_keys(res, split, weights)
    return res


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
    route_to_run_log()  # messages also go to the job's evaluate.log
    with user_errors("evaluate"):  # a mistake in the config, checkpoint or data: one message, exit status 2
        record = evaluate(cfg)
    value = record["values"].get(cfg.get("optimized_metric") or "")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def main() -> None:
    """Console entry point; ``--summarize DIR`` rewrites the summary of a directory of job records."""
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        res = write_summary(sys.argv[2])
        print(json.dumps(jsonable(res), indent=2))
        return
    _hydra_main()


if __name__ == "__main__":
    main()
