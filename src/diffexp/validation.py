"""Reject nonsense configs before any work starts, naming the keys and what would be valid.

:func:`validate_config` runs on the composed config (and the data module, for its labels) before the
network is built; it collects every problem and raises one :class:`ConfigError` listing them all.
Problems that only the model itself can detect (an image size a UNet cannot halve often enough, a DiT
patch size that does not divide it) surface while the module is built, still before training, as a
:class:`ConfigError` naming the model option and the data shape (see :func:`diffexp.build.build_net`).

Min-SNR (and P2) weighting versus the target, decided here: both are defined on the ε-loss and carried to
the other targets exactly (:mod:`diffexp.objectives.weighting`), w_x0 = w_ε·SNR and w_v = w_ε·SNR/(1+SNR).
These vanish at SNR = 0. Under a zero-terminal-SNR schedule, x0 and v are the only targets a sampler can
start from at t = T (ε and score leave x̂_0 undefined there, a_T = 0), and exactly there their weight is
0, with weights ~SNR ≈ 0 at the neighbouring steps: the prediction the first sampling step relies on gets
no training signal. So ``weighting: min_snr|p2`` with ``prediction: x0|v`` and ``zero_terminal_snr: true``
is rejected (use ``weighting: uniform``, or a schedule without zero terminal SNR, where Hang et al. 2023
use min-SNR with every target). ``weighting`` on an objective that has no such option (elbo, score) is
rejected as well. Every other combination is well defined (weights finite, see weighting.py).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffexp.errors import UserError

PRECISIONS = {"32": "32", "32-true": "32", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
              "16-mixed": "16-mixed", "16": "16-mixed"}


class ConfigError(UserError, ValueError):
    """A config that cannot train; the message names the offending keys."""


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # (NaN is not a usable number)


def _accepts(target: str, name: str) -> bool:
    """Whether the class or function at ``target`` takes a keyword ``name`` (True when it cannot be told).
    (Imported directly: Hydra's get_class/get_method log an error for the kind they do not expect.)"""
    import importlib

    module, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
        params = inspect.signature(obj).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def runs_on_cpu(cfg: DictConfig) -> bool:
    accelerator = str(_get(cfg, "trainer.accelerator", "auto"))
    if accelerator == "cpu":
        return True
    if accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return False


def resolved_num_classes(cfg: DictConfig, datamodule=None) -> int | None:
    explicit = _get(cfg, "model.num_classes")
    if explicit is not None:
        return int(explicit)
    if not cfg.get("conditional", False):
        return None
    return getattr(datamodule, "num_classes", None) if datamodule is not None else None


def _check_steps(cfg: DictConfig, errors: list[str]) -> None:
    max_steps, max_epochs = _get(cfg, "trainer.max_steps", -1), _get(cfg, "trainer.max_epochs", -1)
    if max_steps is not None and (not _is_int(max_steps) or (max_steps != -1 and max_steps <= 0)):
        errors.append(f"trainer.max_steps={max_steps}: must be a positive number of optimizer steps (or -1 to train by epochs)")
    if max_epochs is not None and (not _is_int(max_epochs) or (max_epochs != -1 and max_epochs <= 0)):
        errors.append(f"trainer.max_epochs={max_epochs}: must be a positive number of epochs (or -1)")
    if max_steps in (None, -1) and max_epochs in (None, -1):
        errors.append("trainer.max_steps=-1 and trainer.max_epochs=-1: training would never stop; set one of them")
    acc = _get(cfg, "trainer.accumulate_grad_batches", 1)
    if not _is_int(acc) or acc < 1:
        errors.append(f"trainer.accumulate_grad_batches={acc}: must be an integer >= 1")
    vci = _get(cfg, "trainer.val_check_interval")
    if vci is not None and (not _is_number(vci) or (_is_int(vci) and vci <= 0)
                            or (isinstance(vci, float) and not 0 < vci <= 1)):
        errors.append(f"trainer.val_check_interval={vci}: must be a positive number of steps or a fraction in (0, 1]")
    for key in ("trainer.log_every_n_steps", "data.batch_size", "data.eval_batch_size", "schedule.num_timesteps"):
        v = _get(cfg, key)
        if v is not None and (not _is_int(v) or v < 1):
            errors.append(f"{key}={v}: must be a positive integer")
    for key in ("data.num_workers", "data.subset", "data.val_subset"):
        v = _get(cfg, key)
        if v is not None and (not _is_int(v) or v < 0):
            errors.append(f"{key}={v}: must be an integer >= 0" + ("" if key == "data.num_workers" else " (or null)"))
    if not _is_int(cfg.get("seed", 0)):
        errors.append(f"seed={cfg.get('seed')}: must be an integer")
    clip = _get(cfg, "trainer.gradient_clip_val")
    if clip is not None and (not _is_number(clip) or clip < 0):
        errors.append(f"trainer.gradient_clip_val={clip}: must be >= 0 (or null for no clipping)")
    warmup, total = _get(cfg, "lr_scheduler.warmup_steps"), _get(cfg, "lr_scheduler.total_steps")
    if warmup is not None and (not _is_int(warmup) or warmup < 0):
        errors.append(f"lr_scheduler.warmup_steps={warmup}: must be an integer >= 0")
    if _get(cfg, "lr_scheduler.decay") == "cosine" and (total is None or not _is_int(total) or total <= 0):
        errors.append(f"lr_scheduler.total_steps={total}: cosine decay needs a positive number of steps "
                      "(it defaults to trainer.max_steps, which must then be set)")
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig):
            continue
        for key in ("every_n_steps", "every_n_train_steps"):
            v = node.get(key)
            if v is not None and (not _is_int(v) or v < 0):
                errors.append(f"callbacks.{name}.{key}={v}: must be a positive integer (0 or null: never)")
        v = node.get("num_samples")
        if v is not None and (not _is_int(v) or v < 1):
            errors.append(f"callbacks.{name}.num_samples={v}: must be a positive integer")


def _sampler_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    nodes = []
    if isinstance(cfg.get("sampler"), DictConfig):
        nodes.append(("sampler", cfg.sampler))
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and isinstance(node.get("sampler"), DictConfig):
            nodes.append((f"callbacks.{name}.sampler", node.sampler))
    return nodes


def _check_samplers(cfg: DictConfig, process, errors: list[str]) -> None:
    """Instantiate every configured sampler (its ``__init__`` rejects unknown option values) and ask it
    whether it can run on ``process`` (``Sampler.check``, e.g. steps <= T for the index-based samplers)."""
    T = process.num_timesteps if process is not None else None
    seen = set()
    for key, node in _sampler_nodes(cfg):
        ident = OmegaConf.to_yaml(node)
        if ident in seen:  # callbacks.sample.sampler is usually ${sampler}
            continue
        seen.add(ident)
        steps = node.get("steps")
        if steps is not None and (not _is_int(steps) or steps < 1):
            errors.append(f"{key}.steps={steps}: must be a positive integer")
            continue
        try:
            try:
                sampler = instantiate(node)
            except InstantiationException as wrapped:  # Hydra wraps what the sampler's __init__ raised
                cause = wrapped.__cause__
                raise (cause if isinstance(cause, (ValueError, TypeError)) else wrapped) from None
            if process is not None:
                sampler.check(process)
                sampler.nfe(T)
        except (ValueError, TypeError) as e:
            option = getattr(e, "option", None)
            if option is None and steps is not None and "steps" in str(e):
                option = "steps"
            where = f"{key}.{option}={node.get(option)}" if option else f"{key} ({node.get('_target_', '?')})"
            detail = f" with schedule.num_timesteps={T}" if T is not None and option == "steps" else ""
            errors.append(f"{where}{detail}: {e}")


def check_samplers(cfg: DictConfig, process=None) -> list[str]:
    """The problems of every sampler config in ``cfg`` (``sampler`` and callbacks' samplers), for tools
    that check a sampler against a checkpoint's process (sample.py, evaluate.py); ``process=None``: the
    options alone."""
    errors: list[str] = []
    _check_samplers(cfg, process, errors)
    return errors


def _check_objective(cfg: DictConfig, schedule, errors: list[str]) -> None:
    obj = cfg.get("objective")
    if not isinstance(obj, DictConfig):
        return
    target = str(obj.get("_target_", ""))
    weighting = obj.get("weighting")
    if weighting is not None and target and not _accepts(target, "weighting"):
        errors.append(f"objective.weighting={weighting}: {target.rsplit('.', 1)[-1]} has no loss weighting "
                      "(weightings apply to objective=simple, hybrid and flow_matching)")
        return
    prediction = cfg.get("prediction")
    if weighting in ("min_snr", "p2") and prediction in ("x0", "v") and schedule is not None \
            and getattr(schedule, "has_zero_terminal_snr", False):
        errors.append(
            f"objective.weighting={weighting} with prediction={prediction} and schedule.zero_terminal_snr=true: "
            f"the {weighting} weight of the {prediction}-loss is w_eps*SNR{'/(1+SNR)' if prediction == 'v' else ''} = 0 "
            "at t=T, the step every sampler starts from, so that prediction is never trained; use "
            "objective.weighting=uniform, or a schedule without zero terminal SNR"
        )


def _check_objective_on_process(cfg: DictConfig, process, errors: list[str]) -> None:
    """The objective (and its time sampler) is defined on the process (``objective.check``: e.g. the discrete
    ELBO needs ddpm, flow matching a continuous family), and EDM preconditioning comes with prediction=x0."""
    from diffexp.preconditioning import PRECONDITIONINGS

    precondition = _get(cfg, "module.precondition", "none")
    if precondition not in PRECONDITIONINGS:
        errors.append(f"module.precondition={precondition}: valid: {list(PRECONDITIONINGS)}")
    elif precondition != "none" and cfg.get("prediction") != "x0":
        errors.append(f"module.precondition={precondition} wraps the network so that it predicts x0; set prediction=x0 "
                      f"(got prediction={cfg.get('prediction')})")
    obj = cfg.get("objective")
    if process is None or not isinstance(obj, DictConfig) or any(e.startswith("objective.") for e in errors):
        return
    try:
        objective = instantiate(obj)
    except Exception as e:  # noqa: BLE001  (Hydra wraps the objective's ValueError)
        errors.append(f"objective ({obj.get('_target_', '?')}): {e.__cause__ or e}")
        return
    if hasattr(objective, "check"):
        try:
            objective.check(process)
        except ValueError as e:
            errors.append(f"objective ({str(obj.get('_target_', '?')).rsplit('.', 1)[-1]}) with process={process.name}: {e}")


def _check_conditioning(cfg: DictConfig, datamodule, errors: list[str]) -> None:
    if cfg.get("conditional", False) and _get(cfg, "model.num_classes") is None and datamodule is not None \
            and getattr(datamodule, "num_classes", None) is None:
        name = getattr(datamodule, "name", type(datamodule).__name__)
        errors.append(f"conditional=true needs labelled data, but data ({name}) has no class labels; "
                      "set conditional=false or use a labelled dataset (e.g. toy2d gaussian_mixture or moons)")
        return
    num_classes = resolved_num_classes(cfg, datamodule)
    dropout = _get(cfg, "module.label_dropout", 0.1)
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig):
            continue
        scale = node.get("guidance_scale", 1.0)
        if scale in (None, 1.0, 1):
            continue
        if num_classes is None:
            errors.append(f"callbacks.{name}.guidance_scale={scale} needs a class-conditional model; "
                          "set conditional=true (on labelled data) or guidance_scale=1.0")
        elif not dropout:
            errors.append(f"callbacks.{name}.guidance_scale={scale} needs the unconditional model, but "
                          "module.label_dropout=0 never trains it (null label); set module.label_dropout > 0 (e.g. 0.1)")


def _check_extractor_files(cfg: DictConfig, datamodule, errors: list[str]) -> None:
    """A metrics callback on images with the Inception extractor needs its weights file (never downloaded);
    without this check the run would fail at its first metrics evaluation, inside training."""
    shape = getattr(datamodule, "data_shape", None)
    if shape is None or len(tuple(shape)) != 3:
        return  # 2-D points are scored on their coordinates, whatever the extractor
    for name, node in (cfg.get("callbacks") or {}).items():
        ext = node.get("extractor") if isinstance(node, DictConfig) else None
        if isinstance(ext, DictConfig) and ext.get("name") == "inception":
            from diffexp.metrics.extractors import inception_weights_path

            path = inception_weights_path(ext.get("weights_path"))
            if not path.is_file():
                errors.append(f"callbacks.{name}.extractor (inception): weights not found at {path}; place the file "
                              "there, set extractor.weights_path=<file>, or use extractor=classifier (offline)")


def _check_precision(cfg: DictConfig, errors: list[str]) -> None:
    raw = _get(cfg, "trainer.precision", "32")
    precision = PRECISIONS.get(str(raw))
    if precision is None:
        errors.append(f"trainer.precision={raw}: diffexp trains with float32 weights and EMA; use 32, bf16-mixed, "
                      "or 16-mixed (GPU only)")
    elif precision == "16-mixed" and runs_on_cpu(cfg):
        errors.append(f"trainer.precision={raw} needs a GPU (fp16 autocast with loss scaling); on CPU use "
                      "trainer.precision=bf16-mixed or 32 (Lightning would silently switch to bf16-mixed)")


def _check_optimizer(cfg: DictConfig, errors: list[str]) -> None:
    """lr > 0, weight_decay >= 0, eps > 0, betas two numbers in [0, 1): torch.optim checks these only when the
    optimizer is built, inside ``trainer.fit`` (and ``lr=abc`` fails there with a TypeError about '<')."""
    opt = cfg.get("optimizer")
    if not isinstance(opt, DictConfig):
        return
    lr = opt.get("lr")
    if "lr" in opt and (not _is_number(lr) or lr <= 0):
        errors.append(f"optimizer.lr={lr}: must be a positive number (e.g. 2e-4)")
    for key, strict in (("weight_decay", False), ("eps", True)):
        v = opt.get(key)
        if v is not None and (not _is_number(v) or v < 0 or (strict and v == 0)):
            errors.append(f"optimizer.{key}={v}: must be a {'positive' if strict else 'non-negative'} number")
    betas = opt.get("betas")
    if betas is not None and (not OmegaConf.is_list(betas) or len(betas) != 2
                              or not all(_is_number(b) and 0 <= b < 1 for b in betas)):
        shown = OmegaConf.to_container(betas) if OmegaConf.is_list(betas) else betas
        errors.append(f"optimizer.betas={shown}: must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    if errors:
        return
    # Everything else torch checks (an unknown option such as +optimizer.lrr=..., fused on an unsupported
    # device): build the optimizer once over a dummy parameter, as configure_optimizers will inside fit.
    target = str(opt.get("_target_", "?")).rsplit(".", 1)[-1]
    try:
        instantiate_checked(opt, "optimizer")(params=[torch.nn.Parameter(torch.zeros(1))])
    except ConfigError as e:
        errors.append(str(e))
    except (ValueError, TypeError, RuntimeError) as e:
        errors.append(f"optimizer ({target}): {e}")
    sched = cfg.get("lr_scheduler")
    if isinstance(sched, DictConfig) and sched.get("_target_"):
        unknown = [k for k in sched if k not in ("_target_", "_partial_") and not _accepts(str(sched._target_), k)]
        if unknown:
            errors.append(f"lr_scheduler.{unknown[0]}: {str(sched._target_).rsplit('.', 1)[-1]} has no such option")


def instantiate_checked(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, where a constructor that rejects its options (ValueError/TypeError or
    Lightning's MisconfigurationException, e.g. an unknown dataset name, an unexpected keyword, a Trainer flag
    that contradicts a callback) becomes a :class:`ConfigError` naming ``key`` and a user error
    raised inside it (a missing dataset) surfaces as itself, not wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            target = str(node.get("_target_", "?")).rsplit(".", 1)[-1] if isinstance(node, DictConfig) else "?"
            raise ConfigError(f"{key} ({target}): {cause}") from None
        raise


def _in_sweep() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.initialized() and str(HydraConfig.get().mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    except Exception:  # noqa: BLE001 - no Hydra context (tests, notebooks)
        return False


def _check_optimized_metric(cfg: DictConfig, errors: list[str]) -> None:
    """In a sweep, a val/* optimized_metric needs validation: the run validates once at the end when training
    stopped before its first validation (diffexp.cli.train), but not with trainer.limit_val_batches=0 —
    the sweeper would get None (Optuna: "No trials are completed yet")."""
    metric, limit = cfg.get("optimized_metric"), _get(cfg, "trainer.limit_val_batches", 1.0)
    if _in_sweep() and metric and str(metric).startswith("val/") and limit is not None and limit == 0:
        errors.append(f"optimized_metric={metric} needs validation, but trainer.limit_val_batches={limit} switches it "
                      "off: set trainer.limit_val_batches > 0 or optimize another metric")


def planned_world_size(cfg: DictConfig) -> int:
    """Processes the trainer will run (trainer.devices x trainer.num_nodes) as far as the config says; 1 when
    it leaves the count to Lightning (``devices: auto``)."""
    devices, nodes = _get(cfg, "trainer.devices", 1), _get(cfg, "trainer.num_nodes", 1)
    if OmegaConf.is_list(devices):
        devices = len(devices)
    devices = devices if _is_int(devices) and devices > 0 else 1
    return devices * (nodes if _is_int(nodes) and nodes > 0 else 1)


def _check_process(cfg: DictConfig, schedule, prediction, errors: list[str]):
    """Build the process (``process`` group; none = ddpm over ``schedule``) and check the prediction target
    is defined on it (velocity needs a continuous family). Returns the process, or None."""
    from diffexp.build import build_process, is_ddpm
    from diffexp.process import PREDICTION_TARGETS

    if is_ddpm(cfg) and schedule is None:
        return None
    try:
        process = build_process(cfg, schedule)
    except (ConfigError, ValueError, TypeError) as e:
        errors.append(str(e))
        return None
    if prediction in PREDICTION_TARGETS:
        try:
            process.check_prediction(prediction)
        except ValueError as e:
            errors.append(f"prediction={prediction}: {e}")
    return process


def _hydra_node(cfg: DictConfig):
    """The Hydra settings of the run that composed ``cfg``: its ``hydra`` key (configs composed with
    ``return_hydra_config``), else those of the running ``@hydra.main`` app, else None (a hand-made config)."""
    node = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
    if node is not None:
        return node
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _check_schedule_overrides(cfg: DictConfig, errors: list[str]) -> None:
    """``schedule`` (the beta_t of ``diffexp.schedules``) only feeds ``process=ddpm``; the continuous families
    (vp_sde, subvp_sde, ve, edm, flow) define their own alpha(t), sigma(t) and never read it. A ``schedule=...`` or
    ``schedule.*`` override given with such a process would be silently ignored: rejected. The ``schedule: linear``
    that train.yaml composes by default is not an override (Hydra's task overrides are what the user typed)."""
    from diffexp.build import is_ddpm

    hydra = _hydra_node(cfg)
    if is_ddpm(cfg) or hydra is None:
        return
    try:
        task = [str(o) for o in hydra.overrides.task]
        process = hydra.runtime.choices.get("process")
    except Exception:  # noqa: BLE001 -- a partial hydra node: nothing to compare against
        return
    keys = {o: o.split("=", 1)[0].lstrip("+") for o in task if not o.startswith("~")}  # ~schedule: not a setting
    found = [o for o, k in keys.items() if k == "schedule" or k.startswith(("schedule.", "schedule@"))]
    if found:
        process = process or str(cfg.process.get("_target_", "?")).rsplit(".", 1)[-1]
        errors.append(f"{', '.join(found)} with process={process}: `schedule` only applies to process=ddpm (the "
                      f"{process} process defines its own alpha(t), sigma(t); its parameters are process.*, see "
                      f"docs/processes.md); drop the schedule override or use process=ddpm")


def validate_config(cfg: DictConfig, datamodule=None) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (see the module docstring)."""
    from diffexp.process import PREDICTION_TARGETS

    errors: list[str] = []
    prediction = cfg.get("prediction")
    if prediction not in PREDICTION_TARGETS:
        errors.append(f"prediction={prediction}: unknown prediction target; valid: {list(PREDICTION_TARGETS)}")
    _check_steps(cfg, errors)
    schedule = None
    if isinstance(cfg.get("schedule"), DictConfig) and not any(e.startswith("schedule.") for e in errors):
        try:
            schedule = instantiate(cfg.schedule)
        except (ValueError, TypeError) as e:
            errors.append(f"schedule ({cfg.schedule.get('_target_', '?')}): {e}")
    process = _check_process(cfg, schedule, prediction, errors)
    _check_schedule_overrides(cfg, errors)
    _check_samplers(cfg, process, errors)
    _check_objective(cfg, schedule, errors)
    _check_objective_on_process(cfg, process, errors)
    _check_conditioning(cfg, datamodule, errors)
    _check_precision(cfg, errors)
    _check_extractor_files(cfg, datamodule, errors)
    _check_optimizer(cfg, errors)
    _check_optimized_metric(cfg, errors)
    for key, lo, hi in (("module.ema_decay", 0.0, 1.0), ("module.label_dropout", 0.0, 1.0)):
        v = _get(cfg, key)
        if v is not None and (not _is_number(v) or not lo <= float(v) < hi):
            errors.append(f"{key}={v}: must lie in [{lo}, {hi})")
    if _get(cfg, "module.nonfinite", "raise") not in ("raise", "skip"):
        errors.append(f"module.nonfinite={_get(cfg, 'module.nonfinite')}: must be 'raise' or 'skip'")
    gbs = cfg.get("global_batch_size")
    if gbs is not None and (not _is_int(gbs) or gbs < 1):
        errors.append(f"global_batch_size={gbs}: must be a positive integer (or null)")
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


# ---- the global batch ---------------------------------------------------------------------------------
def apply_global_batch(cfg: DictConfig, trainer) -> str:
    """Return the line stating the global batch, after deriving gradient accumulation from
    ``global_batch_size`` when that (optional, top-level) key is set.

    global batch = data.batch_size × trainer.accumulate_grad_batches × devices × nodes: each process
    loads ``data.batch_size`` examples per micro-batch, and one optimizer step averages the gradients of
    ``accumulate_grad_batches`` micro-batches on every process."""
    batch = int(_get(cfg, "data.batch_size", 0) or 0)
    devices, nodes = int(getattr(trainer, "num_devices", 1)), int(getattr(trainer, "num_nodes", 1))
    per_step = batch * devices * nodes
    wanted = cfg.get("global_batch_size")
    if wanted is not None and per_step > 0:
        configured = int(_get(cfg, "trainer.accumulate_grad_batches", 1))
        if wanted % per_step:
            raise ConfigError(f"global_batch_size={wanted} is not a multiple of data.batch_size × devices × nodes "
                              f"= {batch} × {devices} × {nodes} = {per_step}")
        accumulate = wanted // per_step
        if configured != 1 and configured != accumulate:
            raise ConfigError(f"global_batch_size={wanted} needs trainer.accumulate_grad_batches={accumulate} with "
                              f"data.batch_size={batch} on {devices}×{nodes} devices, but it is set to {configured}")
        trainer.accumulate_grad_batches = accumulate
    accumulate = int(trainer.accumulate_grad_batches)
    return (f"global batch = {batch * accumulate * devices * nodes} = data.batch_size {batch} × "
            f"trainer.accumulate_grad_batches {accumulate} × devices {devices} × nodes {nodes}")
