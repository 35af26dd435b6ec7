"""Sample quality of a diffexp recipe during its training, shared by bench_time_to_quality.py and bench_peer.py.

Any recipe (``experiment=...`` plus overrides) is built as ``python train.py`` builds it — pixel or latent
(``latent=<autoencoder checkpoint>``, or ``latent: auto`` where train.py trains the first stage), conditional or
not — and its EMA weights are scored during training by :class:`diffexp.metrics.sampling.ModuleSampleSource`,
the sampling rule of ``python evaluate.py`` (seeds 0..n-1, sample i for class i mod K, the recipe's
classifier-free guidance scale, latents decoded, images clamped): a benchmark's number for some weights,
sampler and n is what ``evaluate.py`` gives for a checkpoint of those weights.

Time. The training clock excludes the evaluations, and the recipe's ``trainer.max_time`` is extended by each
(:func:`diffexp._internals.extend_time_budget`), so the recipe trains for its whole budget. A latent recipe also
costs its autoencoder's training: ``autoencoder_seconds`` is the ``train_seconds`` recorded beside the autoencoder
checkpoint (``metrics.json`` of its run; ``latent: auto`` caches it there too) and every row's ``total_seconds`` is
``autoencoder_seconds + train_seconds``: the time axis of what ``make train`` costs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffexp._internals import extend_time_budget
from diffexp.build import build_module, data_info
from diffexp.metrics import compute_metrics
from diffexp.metrics.sampling import ModuleSampleSource

SCORED = ("fid", "kid", "confident")  # FID, KID, and the share classified with max softmax >= 0.9
ROW_KEYS = ("fid", "kid", "confident", "confident_threshold", "class_entropy", "class_counts")


def max_time(seconds: float) -> str:
    """A ``trainer.max_time`` override of ``seconds`` (DD:HH:MM:SS)."""
    s = int(round(seconds))
    return f"trainer.max_time='00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}'"


def set_sampler_options(cfg: DictConfig, steps: int | None = None, eta: float | None = None) -> dict[str, Any]:
    """Override the recipe's sampler options it has: ``steps`` always (a sampler without one is an error), ``eta``
    only when the sampler has one (flow / DPM-Solver / Heun samplers have none). Returns what was set/skipped."""
    node, name = cfg.sampler, str(cfg.sampler.get("_target_", "?")).rsplit(".", 1)[-1]
    done: dict[str, Any] = {"set": {}, "skipped": {}}
    if steps is not None:
        if "steps" not in node:
            raise SystemExit(f"--sampler-steps: the recipe's sampler ({name}) has no `steps` option; options: {sorted(node)}")
        node.steps = int(steps)
        done["set"]["steps"] = int(steps)
    if eta is not None:
        if "eta" in node:
            node.eta = float(eta)
            done["set"]["eta"] = float(eta)
        else:
            done["skipped"]["eta"] = f"{name} has no eta"
    return done


def autoencoder_record(cfg: DictConfig) -> dict[str, Any] | None:
    """The first stage of a latent recipe: its checkpoint, hash and training time (``metrics.json`` of its run)."""
    rec = cfg.get("latent_autoencoder")
    if not rec:
        return None
    rec = OmegaConf.to_container(rec, resolve=True)
    path = Path(rec["path"])
    metrics_file = path.parent.parent / "metrics.json"  # <run>/checkpoints/last.ckpt -> <run>/metrics.json
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {"path": str(path), "hash": rec.get("hash"), "latent_shape": rec.get("latent_shape"),
            "train_seconds": metrics.get("train_seconds"), "global_step": metrics.get("global_step"),
            "metrics_file": str(metrics_file) if metrics_file.is_file() else None,
            "auto": rec.get("auto")}  # latent=auto: its config hash, cache folder, reused or trained now


@dataclass
class Recipe:
    """A recipe built as train.py builds it: ``pixels`` (the image data: classifier, reference statistics),
    ``datamodule`` (what the model trains on: the cached latents for a latent recipe), ``module``."""

    cfg: DictConfig
    pixels: Any
    datamodule: Any
    module: Any
    autoencoder: dict[str, Any] | None
    prepare_seconds: float

    @property
    def autoencoder_seconds(self) -> float:
        """Training time of the first stage, as recorded when it was trained (the same whether this run trained it or
        reused it: a fresh ``make train`` trains it); 0 for a pixel recipe; unknown: this run's preparation time."""
        if self.autoencoder is None:
            return 0.0
        recorded = self.autoencoder.get("train_seconds")
        return float(recorded) if recorded is not None else self.prepare_seconds

    @property
    def guidance_scale(self) -> float:
        return float(self.cfg.get("guidance_scale", 1.0) or 1.0)


def build_recipe(cfg: DictConfig) -> Recipe:
    """Data and module of ``cfg`` exactly as ``train.py`` builds them (latent recipes: the first stage is loaded,
    or trained/reused for ``latent=auto``, and the latents encoded/cached), checked as train.py checks them."""
    from diffexp.latent import latent_datamodule, wants_latent
    from diffexp.validation import validate_config

    t = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    pixels = instantiate(cfg.data)
    datamodule, latent_s = pixels, None
    if wants_latent(cfg):
        if cfg.get("latent") == "auto":  # as train.py: the diffusion config is checked before the autoencoder trains
            validate_config(cfg, pixels)
        t_latent = time.perf_counter()
        datamodule = latent_datamodule(cfg, pixels)  # latent=auto: trains (or reuses) the autoencoder here
        latent_s = time.perf_counter() - t_latent
    validate_config(cfg, datamodule)
    module = build_module(cfg, data_info(datamodule))
    autoencoder = autoencoder_record(cfg)
    if autoencoder is not None:
        autoencoder["stage_seconds"] = latent_s  # this run's wall-clock for it: training it (latent=auto, not cached), encoding
    return Recipe(cfg, pixels, datamodule, module, autoencoder, time.perf_counter() - t)


def score_module(module, sampler, guidance_scale: float, n: int, extractor, real, batch_size: int) -> dict[str, Any]:
    """FID/KID/confidence of ``n`` samples of ``module``'s EMA weights, drawn as ``evaluate.py`` draws them."""
    was_training = module.training
    module.eval()
    try:
        source = ModuleSampleSource(module, sampler, guidance_scale, ema=True, device=module.device)
        res = compute_metrics(source, n, extractor, real, batch_size=batch_size, metrics=SCORED,
                              seed_offset=source.seed_offset, data_range=source.data_range, label_fn=source.labels,
                              kid_subset_size=min(1000, n))
    finally:
        module.train(was_training)
    rec = source.record()
    return {**{k: res[k] for k in ROW_KEYS}, "sampler": rec["sampler"], "nfe": rec["nfe"],
            "guidance_scale": rec["guidance_scale"], "ema": module.uses_ema}


def recipe_evaluator(recipe: Recipe, sampler, clock: TrainClock, n: int, extractor, real, batch_size: int,
                     label: str = "diffexp") -> Callable[[Any, Any], dict[str, Any]]:
    """``evaluate(trainer, module) -> row`` for :class:`QualityCallback`: step, training and total time (the
    autoencoder's included), FID/KID/confidence, sampler, NFE, guidance scale, training loss."""
    ae_s = recipe.autoencoder_seconds

    def evaluate(trainer, pl_module) -> dict[str, Any]:
        res = score_module(pl_module, sampler, recipe.guidance_scale, n, extractor, real, batch_size)
        loss = trainer.callback_metrics.get("train/loss")
        row = {"who": label, "step": trainer.global_step, "train_seconds": clock.train_s, "autoencoder_seconds": ae_s,
               "total_seconds": ae_s + clock.train_s, **res, "train_loss": float(loss) if loss is not None else None}
        print(f"[{label}] step {row['step']}: {clock.train_s:.0f} s of training (+{ae_s:.0f} s autoencoder): "
              f"FID {row['fid']:.2f}, KID {row['kid']:.4f}, confident {row['confident']:.3f}, class entropy "
              f"{row['class_entropy']:.3f} ({row['sampler']}, w={row['guidance_scale']:g})", file=sys.stderr, flush=True)
        return row

    return evaluate


def recipe_trainer(cfg: DictConfig, *extra_callbacks: L.Callback):
    """The recipe's Trainer as train.py makes it (its callbacks and loggers; without a logger no LR monitor),
    plus ``extra_callbacks``."""
    from diffexp.cli.train import instantiate_group  # a bench may use the CLI's helpers; the library may not

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # logger=none: Lightning's LearningRateMonitor refuses to start without a logger
        callbacks = [cb for cb in callbacks if type(cb).__name__ != "LearningRateMonitor"]
    return instantiate(cfg.trainer, callbacks=callbacks + list(extra_callbacks), logger=loggers or False)


class TrainClock:
    """Training wall-clock with evaluations excluded: ``due()`` when the next of ``eval_at`` (s) is reached."""

    def __init__(self, budget_s: float | None, eval_at: list[float]):
        self.budget_s = budget_s
        self.pending = sorted(t for t in eval_at if 0 < t and (budget_s is None or t < budget_s))
        self.train_s, self._t0 = 0.0, None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return self.train_s + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def pause(self) -> float:
        self.train_s, self._t0 = self.now(), None
        return self.train_s

    def due(self) -> bool:
        if self.pending and self.now() >= self.pending[0]:
            while self.pending and self.now() >= self.pending[0]:
                self.pending.pop(0)
            return True
        return False

    def over(self) -> bool:
        return self.budget_s is not None and self.now() >= self.budget_s


class QualityCallback(L.Callback):
    """Scores the module whenever ``clock`` is due and at the end of training; ``evaluate(trainer, module)``
    returns a row (its ``eval_seconds`` are excluded from the clock and added to the Timer's budget).
    Set ``fit_started`` (``time.perf_counter()``) just before ``trainer.fit`` to record ``before_train_seconds``:
    data set-up and latent encoding, which happen before the first step."""

    def __init__(self, clock: TrainClock, evaluate: Callable[[Any, Any], dict[str, Any]]):
        self.clock, self.evaluate = clock, evaluate
        self.rows: list[dict[str, Any]] = []
        self.eval_seconds = 0.0
        self.fit_started: float | None = None
        self.before_train_seconds: float | None = None

    def on_train_start(self, trainer, pl_module):
        if self.fit_started is not None:
            self.before_train_seconds = time.perf_counter() - self.fit_started
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.clock.due():
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.clock.pause()
        if not self.rows or self.rows[-1]["step"] != trainer.global_step:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer, pl_module):
        self.clock.pause()
        t = time.perf_counter()
        row = self.evaluate(trainer, pl_module)
        row["eval_seconds"] = seconds = time.perf_counter() - t
        self.rows.append(row)
        self.eval_seconds += seconds
        extend_time_budget(trainer, seconds)  # the recipe's budget counts training only
        self.clock.start()
