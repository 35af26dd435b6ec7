"""The LightningModule: a denoiser, a schedule, an objective, an optimizer and an EMA.

Training draws timesteps and noise from a generator seeded by (seed, rank, global step, micro-batch),
so ranks never share noise and a resumed run re-derives the same streams; validation uses pinned
noise and timesteps (seeded by batch index only), so the validation loss is comparable across epochs.

Non-finite losses and gradients (``nonfinite``): ``raise`` stops training with a
:class:`~diffexp.errors.NonFiniteError` (a FloatingPointError; the CLI prints its message alone) that names
the step, the loss terms and the last good checkpoint (nothing is saved after the bad step), and says
"bad data" when the batch itself holds NaN/inf (then the learning rate is not the cause);
``skip`` turns the optimizer step into a no-op for the weights, the optimizer state and the EMA (the
step counter and the LR schedule still advance, as with fp16 loss scaling). The decision is taken after
the backward pass, from the loss of every micro-batch and the gradient norm; under DDP it is reduced
over ranks (any rank bad → all skip or all raise), so no rank is left waiting in a collective.
With ``16-mixed`` precision, non-finite *gradients* with a finite loss are loss-scale overflows: the
GradScaler skips those steps and lowers its scale, so they are neither raised nor counted; the EMA is
not updated on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffexp._internals import attached_trainer, logs_this_step
from diffexp.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY, CheckpointError, config_mismatches
from diffexp.denoiser import Denoiser
from diffexp.ema import EMA, PowerEMA
from diffexp.errors import NonFiniteError
from diffexp.preconditioning import precondition as precondition_net
from diffexp.process import DiffusionProcess, Process
from diffexp.rng import derive_seed, make_generator
from diffexp.schedules import NoiseSchedule

__all__ = ["DiffusionModule", "CHECKPOINT_KEY", "CHECKPOINT_FORMAT"]


class DiffusionModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule | None,
        objective: Any,
        prediction: str = "eps",
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        data_shape: tuple[int, ...] = (1, 28, 28),
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        seed: int = 0,
        config: dict | None = None,
        nonfinite: str = "raise",
        compile: bool | dict = False,
        posthoc_ema: dict | None = None,
        process: Process | None = None,
        precondition: str = "none",
        sigma_data: float = 0.5,
    ):
        super().__init__()
        self.net = net
        # ``process``: any family of diffexp.processes; None builds the ddpm chain over ``schedule`` (as
        # before the families existed). ``schedule`` is the ddpm schedule, None on continuous families.
        if process is None:
            if schedule is None:
                raise ValueError("give a process or a ddpm schedule")
            process = DiffusionProcess(schedule)
        self.process = process
        self.schedule = process.schedule
        # EDM preconditioning (diffexp/preconditioning.py): the module trains and samples the wrapped network
        # D = c_skip x_t + c_out F(c_in x_t, ·), which predicts x0; F's weights live under net.net.*.
        if precondition != "none" and prediction != "x0":
            raise ValueError(f"module.precondition={precondition} makes the network predict x0; set prediction=x0")
        self.net = net = precondition_net(net, process, precondition, sigma_data)
        self.objective = objective
        if hasattr(objective, "bind"):  # distillation objectives keep a target copy of the network (diffexp.distill)
            objective.bind(net)
        self.prediction = process.check_prediction(prediction)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.ema = EMA(net, decay=ema_decay, warmup=ema_warmup) if ema_decay > 0 else None
        # Power-function EMA profiles for post-hoc EMA (EDM2): {sigma_rel: [0.05, 0.10]}; off when sigma_rel is null.
        self.phema = PowerEMA(net, **posthoc_ema) if posthoc_ema and posthoc_ema.get("sigma_rel") else None
        # torch.compile of the training network, in place (nn.Module.compile): parameter names, state_dict
        # and checkpoint keys stay those of the eager network (no `_orig_mod.` prefix); the EMA copy stays
        # eager. ``compile``: False, True, or a dict of torch.compile kwargs (e.g. {backend: eager}).
        self.compile_options = dict(compile) if isinstance(compile, dict) else ({} if compile else None)
        if self.compile_options is not None:
            self.net.compile(**self.compile_options)
        self.num_classes = num_classes
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        self.label_dropout = label_dropout
        self.data_shape = tuple(data_shape)
        self.data_range = tuple(data_range) if data_range is not None else None
        self.seed = int(seed)
        self.config = config or {}
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.nonfinite = nonfinite
        if hasattr(objective, "validate"):
            objective.validate(prediction, process, data_range=self.data_range)
        self.skipped_steps = 0  # optimizer steps skipped for non-finite values (nonfinite=skip)
        self._bad_loss: str | None = None  # description of a non-finite micro-batch loss since the last step
        self._bad_data: str | None = None  # set when that micro-batch's input itself held NaN/inf
        self._skip_ema = False

    # ---- the model as samplers see it ------------------------------------------------------------
    def sampling_net(self, ema: bool = True) -> nn.Module:
        """EMA weights once they have been updated at least once, else the raw weights."""
        if ema and self.ema is not None and self.ema.ready:
            return self.ema.net
        return self.net

    def denoiser(self, ema: bool = True) -> Denoiser:
        return Denoiser(
            self.sampling_net(ema), self.process, self.prediction, num_classes=self.num_classes, data_range=self.data_range
        )

    @property
    def uses_ema(self) -> bool:
        return self.ema is not None and self.ema.ready

    # ---- helpers --------------------------------------------------------------------------------
    def _net_fn(self, net: nn.Module):
        """``fn(x_t, t, y)`` at process time t: the network receives ``process.net_time(t)`` (ddpm: t itself)."""
        net_time = self.process.net_time
        if self.num_classes is None:
            return lambda x_t, t, y=None: net(x_t, net_time(t))
        return lambda x_t, t, y=None: net(x_t, net_time(t), y=y)

    def _labels(self, y: Tensor, generator: torch.Generator | None) -> Tensor | None:
        if self.num_classes is None:
            return None
        y = y.long()
        if self.training and self.label_dropout > 0:
            drop = torch.rand(y.shape, generator=generator, device=y.device) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return y

    def _log_terms(self, prefix: str, out, batch_size: int, on_step: bool) -> None:
        self.log(f"{prefix}/loss", out.loss, prog_bar=True, batch_size=batch_size, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        if on_step and not self._logging_step():
            return  # step values reach the loggers every log_every_n_steps; the rest would cost ~10 self.log calls
        for name, value in out.terms.items():
            self.log(f"{prefix}/{name}", value, batch_size=batch_size, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        # Loss per quarter of the t range: where in the process the model is still bad.
        quarter = self._quarter(out.t)
        for q in range(4):
            mask = quarter == q
            if bool(mask.any()):
                self.log(
                    f"{prefix}/loss_t{q}", out.per_sample[mask].mean(), batch_size=int(mask.sum()),
                    on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                )

    def _quarter(self, t: Tensor) -> Tensor:
        """Which quarter of the process's range each t lies in (ddpm: index·4 // T). Continuous families are
        cut in network time (0..1000): quarters of t on [0, 1] families, of log σ on ``edm`` (whose t = σ
        spans 0.002..80, so quarters of t itself would put nearly every log-normal draw in the first)."""
        p = self.process
        if p.is_discrete:
            return (t.long() * 4) // p.num_timesteps
        return (p.net_time(t.double()) / 250.0).long().clamp(0, 3)

    def _logging_step(self) -> bool:
        """Whether this training step's logged values are written to the loggers (Lightning writes on-step
        values every ``log_every_n_steps``)."""
        return logs_this_step(attached_trainer(self))

    # ---- Lightning hooks ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        # One stream per (rank, optimizer step, micro-batch): resume re-derives it from the counters.
        g = make_generator(x.device, self.seed, "train", self.global_rank, self.global_step, batch_idx)
        # Layers that draw from the global RNG (dropout) get a stream re-derived from the same counters,
        # so a resumed run continues bit-identically without saving RNG states. Only the generators this step
        # uses are seeded: torch.manual_seed would also queue lazy seeding of every absent device type
        # (CUDA, XPU, MTIA), formatting a stack trace for each — ~1-4 ms per step on a CPU-only machine.
        seed = derive_seed(self.seed, "global", self.global_rank, self.global_step, batch_idx)
        torch.default_generator.manual_seed(seed)
        if x.device.type != "cpu":
            torch.get_device_module(x.device).manual_seed(seed)
        saved = self._objective_state() if self.nonfinite == "skip" else None
        out = self.objective.loss(self._net_fn(self.net), x, self.process, self.prediction, generator=g, y=self._labels(y, g))
        if not torch.isfinite(out.loss):
            terms = {k: float(v) for k, v in out.terms.items()}
            self._bad_loss = f"loss {float(out.loss)} (terms: {terms})"
            finite = torch.isfinite(x.flatten(1)).all(1)
            if not bool(finite.all()):  # the data, not the optimisation: say so instead of "lower the lr"
                self._bad_data = f"{int((~finite).sum())} of {len(finite)} examples of the training batch hold NaN/inf values"
            if saved:  # e.g. the importance sampler's loss history must not take the non-finite values
                self.objective.load_state_dict(saved)
            if self.nonfinite == "raise" and self._world_size() == 1:
                raise NonFiniteError(self._nonfinite_message(f"non-finite {self._bad_loss}"))
            # Keep going to the backward pass: the gradients become non-finite on every rank (DDP averages
            # them), and the step is skipped (or raised) in on_before_optimizer_step on all ranks together.
            return out.loss
        self._log_terms("train", out, x.shape[0], on_step=True)
        return out.loss

    def _world_size(self) -> int:
        trainer = attached_trainer(self)
        return int(trainer.world_size) if trainer is not None else 1

    def _objective_state(self) -> dict | None:
        state = self.objective.state_dict()
        return {k: v.clone() for k, v in state.items()} if state else None

    def _nonfinite_message(self, what: str) -> str:
        last = None
        cb = getattr(attached_trainer(self), "checkpoint_callback", None)
        if cb is not None:
            last = getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None)
        kept = f"the last good checkpoint is kept: {last}" if last else "no checkpoint was written after it"
        if self._bad_data is not None:  # the input itself: lowering the learning rate would not help
            return (f"{what} at step {self.global_step}: bad data, {self._bad_data}. This is not a learning-rate "
                    f"problem: fix the data (data.*). Training stopped and {kept} (module.nonfinite=skip would skip "
                    "such steps).")
        return (f"{what} at step {self.global_step}; training stopped and {kept}. "
                "Lower the learning rate, clip gradients (trainer.gradient_clip_val), or set "
                "module.nonfinite=skip to skip such steps.")

    def _loss_scaler(self):
        trainer = attached_trainer(self)
        return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) if trainer is not None else None

    def on_before_optimizer_step(self, optimizer) -> None:
        """After backward (and fp16 unscaling), before clipping and the step: decide about non-finite values."""
        grads = [p.grad.detach() for p in self.net.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, 2.0).float() if grads else None
        grad_ok = total is None or bool(torch.isfinite(total))
        bad_loss, self._bad_loss = self._bad_loss, None
        if bad_loss is None:
            self._bad_data = None
        bad = bad_loss is not None or not grad_ok
        if self._world_size() > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        self._skip_ema = False
        if not bad:
            if total is not None and self._logging_step():
                self.log("train/grad_norm", total, on_step=True, on_epoch=False)
            return
        if bad_loss is None and self._loss_scaler() is not None:
            self._skip_ema = True  # fp16 overflow: the GradScaler skips this step and lowers its scale
            return
        what = f"non-finite {bad_loss}" if bad_loss else (
            f"non-finite gradient norm {float(total)}" if not grad_ok else "non-finite loss or gradient on another rank")
        if self.nonfinite == "raise":
            raise NonFiniteError(self._nonfinite_message(what))
        if self._bad_data is not None:
            what += f"; bad data: {self._bad_data}"
        self._bad_data = None
        # Skip: without gradients the optimizer leaves the weights and its moments untouched.
        for p in self.net.parameters():
            p.grad = None
        self._skip_ema = True
        self.skipped_steps += 1
        self.print(f"skipping step {self.global_step}: {what} (module.nonfinite=skip; {self.skipped_steps} skipped so far)")
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs):
        self._skip_ema = False
        super().optimizer_step(*args, **kwargs)  # runs the closure (forward, backward, the hook above), then the step
        # Exactly once per optimizer step, whatever the gradient accumulation; not on skipped steps.
        if self.ema is not None and not self._skip_ema:
            self.ema.update(self.net)
        if self.phema is not None and not self._skip_ema:
            self.phema.update(self.net)
        if hasattr(self.objective, "after_optimizer_step") and not self._skip_ema:
            self.objective.after_optimizer_step(self.net)  # e.g. the consistency target network θ⁻
        self._skip_ema = False

    def _eval_step(self, batch, batch_idx, prefix: str):
        x, y = batch
        g = make_generator(x.device, self.seed, prefix, self.global_rank, batch_idx)
        p = self.process
        if p.is_discrete:
            t = torch.randint(0, p.num_timesteps, (x.shape[0],), generator=g, device=x.device)
        else:  # uniform in network time over [t_min, t_max] (edm: in log σ, not in σ, whose top decade would
            # hold 97% of the draws); pinned and independent of the objective's own time sampler
            u = torch.rand(x.shape[0], generator=g, device=x.device, dtype=torch.float64)
            lo, hi = (float(p.net_time(torch.tensor(v, dtype=torch.float64))) for v in (p.t_min, p.t_max))
            t = p.t_of_net_time(lo + (hi - lo) * u).clamp(p.t_min, p.t_max)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        net = self.sampling_net(ema=True)
        labels = y.long() if self.num_classes is not None else None
        out = self.objective.validation_loss(self._net_fn(net), x, self.process, self.prediction, t, noise, y=labels)
        self._log_terms(prefix, out, x.shape[0], on_step=False)
        return out.loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, batch_idx, "test")

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=2e-4))
        optimizer = factory(params=self.net.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        if hasattr(scheduler, "bind_trainer") and attached_trainer(self) is not None:
            scheduler.bind_trainer(attached_trainer(self))  # time-keyed schedules read the Trainer's clock (diffexp.lr_schedules)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "data_shape": list(self.data_shape),
            "data_range": list(self.data_range) if self.data_range is not None else None,
            "num_classes": self.num_classes,
            "prediction": self.prediction,
            "num_timesteps": self.process.num_timesteps,
            "process": self.process.name,
            "ema_updates": int(self.ema.num_updates) if self.ema is not None else 0,
            "posthoc_ema_sigma_rel": list(self.phema.sigma_rels) if self.phema is not None else None,
            "skipped_steps": int(self.skipped_steps),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before the weights are loaded (resume): refuse a checkpoint of another model/process/target."""
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise CheckpointError("not a diffexp checkpoint (no 'diffexp' entry): cannot resume from it")
        stored = meta.get("config") or {}
        diffs = config_mismatches(stored, self.config)
        if "process" in stored:  # the family's parameters (checkpoints from before the families have none: ddpm)
            diffs += config_mismatches(stored, self.config, keys=("process",))
        ours = {"data_shape": list(self.data_shape), "num_classes": self.num_classes, "prediction": self.prediction,
                "num_timesteps": self.process.num_timesteps, "process": self.process.name,
                "posthoc_ema_sigma_rel": list(self.phema.sigma_rels) if self.phema is not None else None}
        for key, value in ours.items():
            if key in meta and meta[key] != value and not any(key in d.split(":")[0] for d in diffs):
                diffs.append(f"{key}: checkpoint {meta[key]!r}, config {value!r}")
        theirs = set(checkpoint.get("state_dict", {}))
        mine = set(self.state_dict())
        if not diffs and theirs != mine:
            missing = sorted({k.split(".")[0] for k in mine - theirs})
            extra = sorted({k.split(".")[0] for k in theirs - mine})
            diffs.append(f"state_dict: parts missing from the checkpoint {missing}, parts not in this model {extra} "
                         "(module.ema_decay=0 vs >0, module.posthoc_ema on vs off or with another number of sigma_rel, "
                         "or another objective.timestep_sampler?)")
        if diffs:
            raise CheckpointError(
                "cannot resume: the checkpoint was trained with another config; differing keys:\n  "
                + "\n  ".join(diffs)
                + "\nresume with the checkpoint's config (its run directory holds config.yaml) or start a new run"
            )
        self.skipped_steps = int(meta.get("skipped_steps", 0))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def extra_repr(self) -> str:
        return f"process={self.process!r}, prediction={self.prediction}, params={self.num_parameters() / 1e6:.2f}M"

