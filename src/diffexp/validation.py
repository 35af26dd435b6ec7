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

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffexp.config_values import accepts, guidance_scale_problem, is_int, is_number, select
from diffexp.errors import ConfigError, UserError
from diffexp.validation_diffusion import (
    check_objective,
    check_objective_on_process,
    check_process,
    check_sampler_configs,
    check_samplers,
    check_schedule_overrides,
)

__all__ = ["ConfigError", "check_samplers", "validate_config", "instantiate_checked", "instantiate_group",
           "check_training", "apply_global_batch",
           "planned_world_size", "resolved_num_classes", "runs_on_cpu", "PRECISIONS"]

PRECISIONS = {"32": "32", "32-true": "32", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
              "16-mixed": "16-mixed", "16": "16-mixed"}


def runs_on_cpu(cfg: DictConfig) -> bool:
    accelerator = str(select(cfg, "trainer.accelerator", "auto"))
    if accelerator == "cpu":
        return True
    if accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return False


def resolved_num_classes(cfg: DictConfig, datamodule=None) -> int | None:
    explicit = select(cfg, "model.num_classes")
    if explicit is not None:
        return int(explicit)
    if not cfg.get("conditional", False):
        return None
    return getattr(datamodule, "num_classes", None) if datamodule is not None else None


def _check_steps(cfg: DictConfig, errors: list[str]) -> None:
    max_steps, max_epochs = select(cfg, "trainer.max_steps", -1), select(cfg, "trainer.max_epochs", -1)
    if max_steps is not None and (not is_int(max_steps) or (max_steps != -1 and max_steps <= 0)):
        errors.append(f"trainer.max_steps={max_steps}: must be a positive number of optimizer steps (or -1 to train by epochs)")
    if max_epochs is not None and (not is_int(max_epochs) or (max_epochs != -1 and max_epochs <= 0)):
        errors.append(f"trainer.max_epochs={max_epochs}: must be a positive number of epochs (or -1)")
    if max_steps in (None, -1) and max_epochs in (None, -1):
        errors.append("trainer.max_steps=-1 and trainer.max_epochs=-1: training would never stop; set one of them")
    acc = select(cfg, "trainer.accumulate_grad_batches", 1)
    if not is_int(acc) or acc < 1:
        errors.append(f"trainer.accumulate_grad_batches={acc}: must be an integer >= 1")
    vci = select(cfg, "trainer.val_check_interval")
    if vci is not None and (not is_number(vci) or (is_int(vci) and vci <= 0)
                            or (isinstance(vci, float) and not 0 < vci <= 1)):
        errors.append(f"trainer.val_check_interval={vci}: must be a positive number of steps or a fraction in (0, 1]")
    for key in ("trainer.log_every_n_steps", "data.batch_size", "data.eval_batch_size", "schedule.num_timesteps"):
        v = select(cfg, key)
        if v is not None and (not is_int(v) or v < 1):
            errors.append(f"{key}={v}: must be a positive integer")
    for key in ("data.num_workers", "data.subset", "data.val_subset"):
        v = select(cfg, key)
        if v is not None and (not is_int(v) or v < 0):
            errors.append(f"{key}={v}: must be an integer >= 0" + ("" if key == "data.num_workers" else " (or null)"))
    if not is_int(cfg.get("seed", 0)):
        errors.append(f"seed={cfg.get('seed')}: must be an integer")
    clip = select(cfg, "trainer.gradient_clip_val")
    if clip is not None and (not is_number(clip) or clip < 0):
        errors.append(f"trainer.gradient_clip_val={clip}: must be >= 0 (or null for no clipping)")
    warmup, total = select(cfg, "lr_scheduler.warmup_steps"), select(cfg, "lr_scheduler.total_steps")
    if warmup is not None and (not is_int(warmup) or warmup < 0):
        errors.append(f"lr_scheduler.warmup_steps={warmup}: must be an integer >= 0")
    if select(cfg, "lr_scheduler.decay") == "cosine" and (total is None or not is_int(total) or total <= 0):
        errors.append(f"lr_scheduler.total_steps={total}: cosine decay needs a positive number of steps "
                      "(it defaults to trainer.max_steps, which must then be set)")
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig):
            continue
        for key in ("every_n_steps", "every_n_train_steps"):
            v = node.get(key)
            if v is not None and (not is_int(v) or v < 0):
                errors.append(f"callbacks.{name}.{key}={v}: must be a positive integer (0 or null: never)")
        v = node.get("num_samples")
        if v is not None and (not is_int(v) or v < 1):
            errors.append(f"callbacks.{name}.num_samples={v}: must be a positive integer")


def _check_conditioning(cfg: DictConfig, datamodule, errors: list[str]) -> None:
    if cfg.get("conditional", False) and select(cfg, "model.num_classes") is None and datamodule is not None \
            and getattr(datamodule, "num_classes", None) is None:
        name = getattr(datamodule, "name", type(datamodule).__name__)
        errors.append(f"conditional=true needs labelled data, but data ({name}) has no class labels; "
                      "set conditional=false or use a labelled dataset (e.g. toy2d gaussian_mixture or moons)")
        return
    # class-conditional (conditional=true without the data module to count its classes: assumed labelled)
    conditional = resolved_num_classes(cfg, datamodule) is not None or (datamodule is None and cfg.get("conditional", False))
    dropout = select(cfg, "module.label_dropout", 0.1)
    # The recipe's scale (top-level guidance_scale, stored with the checkpoint) and any callback's own: a callback
    # that interpolates the top-level value (conf/callbacks/sample.yaml, metrics.yaml) is reported under that key.
    top = cfg.get("guidance_scale", 1.0)
    scales = [("guidance_scale", top)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and "guidance_scale" in node:
            scale = node.get("guidance_scale")
            if not (OmegaConf.is_interpolation(node, "guidance_scale") and scale == top):
                scales.append((f"callbacks.{name}.guidance_scale", scale))
    for key, scale in scales:
        problem = guidance_scale_problem(key, scale)
        if problem:
            errors.append(problem)
        elif scale != 1 and not conditional:
            errors.append(f"{key}={scale} needs a class-conditional model; "
                          f"set conditional=true (on labelled data) or {key}=1.0")
        elif scale != 1 and not dropout:
            errors.append(f"{key}={scale} needs the unconditional model, but "
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
    raw = select(cfg, "trainer.precision", "32")
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
    if "lr" in opt and (not is_number(lr) or lr <= 0):
        errors.append(f"optimizer.lr={lr}: must be a positive number (e.g. 2e-4)")
    for key, strict in (("weight_decay", False), ("eps", True)):
        v = opt.get(key)
        if v is not None and (not is_number(v) or v < 0 or (strict and v == 0)):
            errors.append(f"optimizer.{key}={v}: must be a {'positive' if strict else 'non-negative'} number")
    betas = opt.get("betas")
    if betas is not None and (not OmegaConf.is_list(betas) or len(betas) != 2
                              or not all(is_number(b) and 0 <= b < 1 for b in betas)):
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
        unknown = [k for k in sched if k not in ("_target_", "_partial_") and not accepts(str(sched._target_), k)]
        if unknown:
            errors.append(f"lr_scheduler.{unknown[0]}: {str(sched._target_).rsplit('.', 1)[-1]} has no such option")


def instantiate_checked(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, where a constructor that rejects its options (ValueError/TypeError or
    Lightning's MisconfigurationException, e.g. an unknown dataset name, an unexpected keyword, a Trainer flag
    that contradicts a callback) becomes a :class:`ConfigError` naming ``key`` and a user error
    raised inside it (a missing dataset) surfaces as itself, not wrapped in Hydra's InstantiationException."""
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


def instantiate_group(cfg: DictConfig | None, key: str | None = None) -> list[Any]:
    """Instantiate every `_target_` entry of a dict-of-configs group (callbacks, loggers); errors name
    ``<key>.<entry>`` (``key`` defaults to the group's own key in the config)."""
    if not cfg:
        return []
    from diffexp._internals import config_key

    key = key or config_key(cfg)
    return [instantiate_checked(node, f"{key}.{name}") for name, node in cfg.items()
            if isinstance(node, DictConfig) and "_target_" in node]


def check_training(cfg: DictConfig) -> list[str]:
    """The problems of the parts every training run has (trainer steps and precision, data batch sizes,
    callbacks' intervals, optimizer and LR schedule), each naming its key; train_autoencoder uses it too."""
    errors: list[str] = []
    _check_steps(cfg, errors)
    _check_precision(cfg, errors)
    _check_optimizer(cfg, errors)
    return errors


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
    metric, limit = cfg.get("optimized_metric"), select(cfg, "trainer.limit_val_batches", 1.0)
    if _in_sweep() and metric and str(metric).startswith("val/") and limit is not None and limit == 0:
        errors.append(f"optimized_metric={metric} needs validation, but trainer.limit_val_batches={limit} switches it "
                      "off: set trainer.limit_val_batches > 0 or optimize another metric")


def planned_world_size(cfg: DictConfig) -> int:
    """Processes the trainer will run (trainer.devices x trainer.num_nodes) as far as the config says; 1 when
    it leaves the count to Lightning (``devices: auto``)."""
    devices, nodes = select(cfg, "trainer.devices", 1), select(cfg, "trainer.num_nodes", 1)
    if OmegaConf.is_list(devices):
        devices = len(devices)
    devices = devices if is_int(devices) and devices > 0 else 1
    return devices * (nodes if is_int(nodes) and nodes > 0 else 1)


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
    process = check_process(cfg, schedule, prediction, errors)
    check_schedule_overrides(cfg, errors)
    check_sampler_configs(cfg, process, errors)
    check_objective(cfg, schedule, errors)
    check_objective_on_process(cfg, process, errors)
    _check_conditioning(cfg, datamodule, errors)
    _check_precision(cfg, errors)
    _check_extractor_files(cfg, datamodule, errors)
    _check_optimizer(cfg, errors)
    _check_optimized_metric(cfg, errors)
    for key, lo, hi in (("module.ema_decay", 0.0, 1.0), ("module.label_dropout", 0.0, 1.0)):
        v = select(cfg, key)
        if v is not None and (not is_number(v) or not lo <= float(v) < hi):
            errors.append(f"{key}={v}: must lie in [{lo}, {hi})")
    if select(cfg, "module.nonfinite", "raise") not in ("raise", "skip"):
        errors.append(f"module.nonfinite={select(cfg, 'module.nonfinite')}: must be 'raise' or 'skip'")
    gbs = cfg.get("global_batch_size")
    if gbs is not None and (not is_int(gbs) or gbs < 1):
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
    batch = int(select(cfg, "data.batch_size", 0) or 0)
    devices, nodes = int(getattr(trainer, "num_devices", 1)), int(getattr(trainer, "num_nodes", 1))
    per_step = batch * devices * nodes
    wanted = cfg.get("global_batch_size")
    if wanted is not None and per_step > 0:
        configured = int(select(cfg, "trainer.accumulate_grad_batches", 1))
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
