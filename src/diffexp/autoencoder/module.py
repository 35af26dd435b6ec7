"""Training the first stage: reconstruction + β·KL (the KL-regularised autoencoder of LDM, Rombach et al. 2022,
§3 / App. G, without the perceptual and adversarial terms, which need downloaded networks).

Per example, with q(z|x) = N(μ(x), diag σ²(x)) and x̂ = D(z), z ~ q(z|x):

    L(x) = Σ_pixels ρ(x − x̂) + β · KL(q(z|x) ‖ N(0, I)),   ρ = |·| (``rec_loss=l1``) or (·)² (``mse``)

averaged over the batch (LDM sums over pixels and latents, then averages over examples; its β is 1e-6).
Validation reconstructs from the posterior mean and logs ``val/rec_mse`` (per pixel, data in [−1, 1]),
``val/kl`` (nats per example) and ``val/loss``. Whenever a checkpoint is written, the latent scale factor
1/std(z) (LDM §4.3.2; z = posterior means, all elements pooled) is re-estimated on the first
``scale_examples`` validation images and stored in the network's ``scale_factor`` buffer and in the
checkpoint, so every checkpoint carries the value that matches its own weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from diffexp._internals import attached_trainer
from diffexp.autoencoder.networks import KLAutoencoder
from diffexp.rng import make_generator

AUTOENCODER_KEY = "diffexp_autoencoder"  # checkpoint entry with the config and the scale factor
AUTOENCODER_FORMAT = 1


def reconstruction_loss(x: Tensor, x_hat: Tensor, kind: str) -> Tensor:
    """Per-example Σ_pixels |x − x̂| (l1) or (x − x̂)² (mse), shape (B,)."""
    diff = x_hat.float() - x.float()
    if kind == "l1":
        return diff.abs().flatten(1).sum(1)
    if kind == "mse":
        return diff.square().flatten(1).sum(1)
    raise ValueError(f"autoencoder.rec_loss must be 'l1' or 'mse', got {kind!r}")


class LatentMoments:
    """Running count, Σz and Σz² in float64: std(z) over every latent element (LDM: z.flatten().std())."""

    def __init__(self) -> None:
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def update(self, z: Tensor) -> None:
        z = z.detach().double()
        self.n += z.numel()
        self.s1 += float(z.sum())
        self.s2 += float(z.square().sum())

    def std(self) -> float:
        if self.n < 2:
            raise ValueError("at least two latent values are needed to estimate their standard deviation")
        mean = self.s1 / self.n
        return max(self.s2 / self.n - mean * mean, 0.0) ** 0.5 * (self.n / (self.n - 1)) ** 0.5


@torch.no_grad()
def estimate_scale_factor(autoencoder: KLAutoencoder, x: Tensor, batch_size: int = 256) -> float:
    """1 / std of the posterior means of ``x`` (all latent elements pooled), so that z·scale has unit variance."""
    moments = LatentMoments()
    device = next(autoencoder.parameters()).device
    for i in range(0, len(x), batch_size):
        moments.update(autoencoder.encode(x[i:i + batch_size].to(device)).mode())
    std = moments.std()
    if not std > 0:
        raise ValueError(f"the latents have zero spread (std {std}): cannot estimate a scale factor")
    return 1.0 / std


class AutoencoderModule(L.LightningModule):
    def __init__(self, autoencoder: KLAutoencoder, kl_weight: float = 1e-6, rec_loss: str = "l1",
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 lr_scheduler: Callable[..., Any] | None = None, data_range: tuple[float, float] = (-1.0, 1.0),
                 seed: int = 0, config: dict | None = None, scale_examples: int = 2048):
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"autoencoder.kl_weight must be >= 0, got {kl_weight}")
        reconstruction_loss(torch.zeros(1, 1), torch.zeros(1, 1), rec_loss)  # validates the name early
        self.autoencoder = autoencoder
        self.kl_weight, self.rec_loss = float(kl_weight), rec_loss
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.data_range = tuple(data_range)
        self.seed = int(seed)
        self.config = config or {}
        self.num_scale_examples = int(scale_examples)
        self._scale_x: Tensor | None = None

    def loss_terms(self, x: Tensor, generator: torch.Generator | None, sample: bool = True) -> dict[str, Tensor]:
        posterior = self.autoencoder.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        x_hat = self.autoencoder.decode(z)
        rec = reconstruction_loss(x, x_hat, self.rec_loss)
        kl = posterior.kl()
        return {"loss": (rec + self.kl_weight * kl).mean(), "rec": rec.mean(), "kl": kl.mean(),
                "rec_mse": (x_hat.float() - x.float()).square().mean(), "z": posterior.mode(), "x_hat": x_hat}

    def training_step(self, batch, batch_idx):
        x, _ = batch
        g = make_generator(x.device, self.seed, "ae-train", self.global_rank, self.global_step, batch_idx)
        out = self.loss_terms(x, g)
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True)
        for k in ("rec", "kl", "rec_mse"):
            self.log(f"train/{k}", out[k], on_step=True)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        out = self.loss_terms(x, None, sample=False)
        for k in ("loss", "rec", "kl", "rec_mse"):
            self.log(f"val/{k}", out[k], prog_bar=k == "rec_mse", batch_size=len(x), sync_dist=True)
        return out["loss"]

    def scale_examples(self) -> Tensor | None:
        """The first ``scale_examples`` images of the val split (else train): the data the scale is estimated on."""
        dm = getattr(attached_trainer(self), "datamodule", None)
        if dm is None or not hasattr(dm, "tensors"):
            return None
        if self._scale_x is None:
            split = "val" if "val" in getattr(dm, "splits", ("val",)) else "train"
            self._scale_x = dm.tensors(split)[0][: self.num_scale_examples]
        return self._scale_x

    def update_scale_factor(self) -> float | None:
        """Re-estimate 1/std(z) on :meth:`scale_examples` with the current weights (same on every rank)."""
        x = self.scale_examples()
        if x is None:
            return None
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            value = estimate_scale_factor(self.autoencoder, x)
        finally:
            self.autoencoder.train(was_training)
        self.autoencoder.scale_factor.fill_(value)
        return value

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        optimizer = factory(params=self.autoencoder.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.lr_scheduler_factory(optimizer=optimizer), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every checkpoint carries the scale factor of its own weights (the state dict was taken before this
        hook, so the fresh value is written into it as well)."""
        if self.update_scale_factor() is not None and "state_dict" in checkpoint:
            checkpoint["state_dict"]["autoencoder.scale_factor"] = self.autoencoder.scale_factor.detach().clone()
        checkpoint[AUTOENCODER_KEY] = {
            "format": AUTOENCODER_FORMAT,
            "config": self.config,
            "architecture": dict(self.autoencoder.architecture),
            "scale_factor": float(self.autoencoder.scale_factor),
            "data_range": list(self.data_range),
            "latent_shape": list(self.autoencoder.latent_shape),
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.autoencoder.parameters())
