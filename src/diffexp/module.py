"""The LightningModule: a denoiser, a schedule, an objective, an optimizer and an EMA.

Training draws timesteps and noise from a generator seeded by (seed, rank, global step, micro-batch),
so ranks never share noise and a resumed run re-derives the same streams; validation uses pinned
noise and timesteps (seeded by batch index only), so the validation loss is comparable across epochs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn

from diffexp.denoiser import Denoiser
from diffexp.ema import EMA
from diffexp.process import DiffusionProcess, check_prediction
from diffexp.rng import derive_seed, make_generator
from diffexp.schedules import NoiseSchedule

CHECKPOINT_KEY = "diffexp"
CHECKPOINT_FORMAT = 1


class DiffusionModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
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
    ):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.process = DiffusionProcess(schedule)
        self.objective = objective
        self.prediction = check_prediction(prediction)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.ema = EMA(net, decay=ema_decay, warmup=ema_warmup) if ema_decay > 0 else None
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
            objective.validate(prediction, schedule)
        self._micro_step = 0

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
        if self.num_classes is None:
            return lambda x_t, t, y=None: net(x_t, t)
        return lambda x_t, t, y=None: net(x_t, t, y=y)

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
        for name, value in out.terms.items():
            self.log(f"{prefix}/{name}", value, batch_size=batch_size, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        # Loss per quarter of the t range: where in the process the model is still bad.
        T = self.schedule.num_timesteps
        quarter = (out.t.long() * 4) // T
        for q in range(4):
            mask = quarter == q
            if bool(mask.any()):
                self.log(
                    f"{prefix}/loss_t{q}", out.per_sample[mask].mean(), batch_size=int(mask.sum()),
                    on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                )

    # ---- Lightning hooks ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        # One stream per (rank, optimizer step, micro-batch): resume re-derives it from the counters.
        g = make_generator(x.device, self.seed, "train", self.global_rank, self.global_step, batch_idx)
        # Layers that draw from the global RNG (dropout) get a stream re-derived from the same counters,
        # so a resumed run continues bit-identically without saving RNG states.
        torch.manual_seed(derive_seed(self.seed, "global", self.global_rank, self.global_step, batch_idx))
        out = self.objective.loss(self._net_fn(self.net), x, self.process, self.prediction, generator=g, y=self._labels(y, g))
        if not torch.isfinite(out.loss):
            terms = {k: float(v) for k, v in out.terms.items()}
            msg = f"non-finite loss {float(out.loss)} at step {self.global_step} (terms: {terms})"
            if self.nonfinite == "raise":
                raise FloatingPointError(msg + "; the last good checkpoint is kept. Set module.nonfinite=skip to skip such steps.")
            self.print("skipping step: " + msg)
            return None
        self._log_terms("train", out, x.shape[0], on_step=True)
        return out.loss

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = [p.grad.detach().norm(2) for p in self.net.parameters() if p.grad is not None]
        if not norms:
            return
        total = torch.linalg.vector_norm(torch.stack(norms), 2)
        if not torch.isfinite(total):
            msg = f"non-finite gradient norm at step {self.global_step}"
            if self.nonfinite == "raise":
                raise FloatingPointError(msg + "; the last good checkpoint is kept. Set module.nonfinite=skip to skip such steps.")
            self.print("skipping step: " + msg)
            optimizer.zero_grad(set_to_none=True)
            return
        self.log("train/grad_norm", total, on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # Exactly once per optimizer step, whatever the gradient accumulation.
        if self.ema is not None:
            self.ema.update(self.net)

    def _eval_step(self, batch, batch_idx, prefix: str):
        x, y = batch
        g = make_generator(x.device, self.seed, prefix, self.global_rank, batch_idx)
        T = self.schedule.num_timesteps
        t = torch.randint(0, T, (x.shape[0],), generator=g, device=x.device)
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
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "data_shape": list(self.data_shape),
            "data_range": list(self.data_range) if self.data_range is not None else None,
            "num_classes": self.num_classes,
            "prediction": self.prediction,
            "num_timesteps": self.schedule.num_timesteps,
            "ema_updates": int(self.ema.num_updates) if self.ema is not None else 0,
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def extra_repr(self) -> str:
        return f"prediction={self.prediction}, T={self.schedule.num_timesteps}, params={self.num_parameters() / 1e6:.2f}M"


def bits_per_dim(nats: Tensor, dims: int) -> Tensor:
    return nats / (dims * math.log(2.0))
