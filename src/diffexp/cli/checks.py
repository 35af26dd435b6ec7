"""Checks of the sample.py and evaluate.py configs, before any checkpoint is loaded or file written.

Each function collects every problem and raises one :class:`~diffexp.validation.ConfigError` naming the
keys and what is valid (train.py's config is checked by :func:`diffexp.validation.validate_config`). The
checks that need the checkpoint (sampler steps against its schedule, class labels against its classes)
run right after it is loaded, still before any sample is drawn.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffexp.config_values import guidance_scale_problem
from diffexp.validation import ConfigError, check_samplers

SPLITS = ("train", "val", "test")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_ints(cfg: DictConfig, keys: tuple[str, ...], errors: list[str], allow_null: bool = False) -> None:
    for key in keys:
        v = OmegaConf.select(cfg, key, default=None)
        if v is None and allow_null:
            continue
        if not _is_int(v) or v < 1:
            errors.append(f"{key}={v}: must be a positive integer" + (" (or null)" if allow_null else ""))


def _check_common(cfg: DictConfig, errors: list[str]) -> None:
    """seed an int, guidance_scale null or a number >= 0, ema a bool, device one this machine has. (ckpt_path / pretrained:
    exactly one, checked by diffexp.interop.pretrained.load_model.)"""
    if not _is_int(cfg.get("seed")):
        errors.append(f"seed={cfg.get('seed')}: must be an integer")
    g = cfg.get("guidance_scale")  # null: the checkpoint's recipe value (diffexp.guidance.setup.resolve_guidance_scale)
    problem = None if g is None else guidance_scale_problem("guidance_scale", g)
    if problem:
        errors.append(problem)
    if not isinstance(cfg.get("ema", True), bool):
        errors.append(f"ema={cfg.get('ema')}: must be true or false")
    problem = device_problem(cfg.get("device", "auto"))
    if problem:
        errors.append(problem)


def device_problem(name: Any) -> str | None:
    """Why ``device=<name>`` cannot be used here (None when it can)."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        return f"device={name}: not a device; use auto, cpu, cuda or cuda:<index>"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"device={name}: CUDA is not available on this machine; use device=cpu (or auto)"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type not in ("cpu", "cuda", "mps"):
        return f"device={name}: use auto, cpu, cuda or cuda:<index>"
    return None


def _raise(errors: list[str]) -> None:
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def check_sample_config(cfg: DictConfig) -> None:
    """sample.py: num_samples, batch_size, grid_size positive, class_label null or >= 0, and the above."""
    errors: list[str] = []
    _check_common(cfg, errors)
    _positive_ints(cfg, ("num_samples", "batch_size", "grid_size"), errors)
    label = cfg.get("class_label")
    if label is not None and (not _is_int(label) or label < 0):
        errors.append(f"class_label={label}: must be a class index >= 0 (or null: cycle through the classes)")
    errors += check_samplers(cfg)
    _raise(errors)


def check_against_checkpoint(cfg: DictConfig, module) -> None:
    """After loading: the sampler fits the checkpoint's schedule, labels and guidance fit its classes.
    (``guidance_scale`` is the resolved number here: null was replaced by the checkpoint's recipe value.)"""
    errors = check_samplers(cfg, module.process)
    k = module.num_classes
    label = cfg.get("class_label")
    classifier = OmegaConf.select(cfg, "guidance.name", default="none") == "classifier"  # labels for the classifier
    if k is None and (label is not None and not classifier or cfg.get("guidance_scale") not in (None, 1, 1.0)):
        key = f"class_label={label}" if label is not None else f"guidance_scale={cfg.guidance_scale}"
        source = cfg.get("ckpt_path") or cfg.get("pretrained")
        errors.append(f"{key}: needs a class-conditional checkpoint, but {source} is unconditional")
    elif k is not None and label is not None and label >= k:
        errors.append(f"class_label={label}: the checkpoint has {k} classes (0..{k - 1})")
    _raise(errors)


def check_nll_against_checkpoint(cfg: DictConfig, module) -> None:
    """nll.reverse_variance names a decoder variance the checkpoint's process knows."""
    import torch

    rv = OmegaConf.select(cfg, "nll.reverse_variance")
    try:
        module.process.reverse_log_variance(torch.zeros(1, dtype=torch.long), torch.zeros(1, 1), rv)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"nll.reverse_variance={rv}: {e}") from None


def check_evaluate_config(cfg: DictConfig, known_metrics: tuple[str, ...]) -> list[str]:
    """evaluate.py: the metric names, sample and reference counts, splits and NLL options; returns the metrics."""
    errors: list[str] = []
    _check_common(cfg, errors)
    raw = cfg.get("metrics")
    metrics = [str(m) for m in (raw if OmegaConf.is_list(raw) else [raw] if raw else [])]
    unknown = [m for m in metrics if m not in known_metrics]
    if unknown or not metrics:
        errors.append(f"metrics={metrics}: {'unknown ' + str(unknown) if unknown else 'none given'}; "
                      f"choose from {list(known_metrics)}")
    sample_metrics = [m for m in metrics if m not in ("nll", "nll_ode")]
    if sample_metrics or not metrics:
        _positive_ints(cfg, ("num_samples", "batch_size", "kid_subset_size", "kid_subsets", "swd_projections"), errors)
        _positive_ints(cfg, ("num_real",), errors, allow_null=True)
        kmax = cfg.get("kid_max_samples")
        if kmax is not None and (not _is_int(kmax) or kmax < 0):
            errors.append(f"kid_max_samples={kmax}: must be an integer >= 0")
        if cfg.get("split") not in SPLITS:
            errors.append(f"split={cfg.get('split')}: must be one of {list(SPLITS)}")
        errors += check_samplers(cfg)
    if "nll" in metrics:
        _positive_ints(cfg, ("nll.num_examples", "nll.batch_size"), errors)
        _positive_ints(cfg, ("nll.t_batch",), errors, allow_null=True)
        if OmegaConf.select(cfg, "nll.split") not in SPLITS:
            errors.append(f"nll.split={OmegaConf.select(cfg, 'nll.split')}: must be one of {list(SPLITS)}")
    if "nll_ode" in metrics:
        errors += _nll_ode_errors(cfg)
    _raise(errors)
    return metrics


def _nll_ode_errors(cfg: DictConfig) -> list[str]:
    """nll_ode.*: counts, split and the estimator/solver options (diffexp.likelihood_ode.check_options)."""
    from diffexp.likelihood_ode import check_options

    errors: list[str] = []
    _positive_ints(cfg, ("nll_ode.num_examples", "nll_ode.batch_size", "nll_ode.num_probes"), errors)
    if OmegaConf.select(cfg, "nll_ode.split") not in SPLITS:
        errors.append(f"nll_ode.split={OmegaConf.select(cfg, 'nll_ode.split')}: must be one of {list(SPLITS)}")
    opts = {k: OmegaConf.select(cfg, f"nll_ode.{k}") for k in ("divergence", "probe", "method", "rtol", "atol")}
    for k, v in opts.items():
        probe = {"divergence": "auto", "probe": "gaussian", "method": "dopri5", "rtol": 1e-5, "atol": 1e-5} | {k: v}
        try:
            check_options(probe["divergence"], probe["probe"], 1, probe["method"], probe["rtol"], probe["atol"])
        except ValueError as e:
            errors.append(f"nll_ode.{k}={v}: {e}")
    return errors
