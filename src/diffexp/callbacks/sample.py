"""Sample grids during training: a fixed set of seeds, the EMA weights, every logger and a PNG."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from diffexp.callbacks.periodic import PeriodicCallback
from diffexp.images import image_grid, log_image, samples_to_image, save_png
from diffexp.latent import image_range, is_latent, to_images
from diffexp.metrics.provenance import sampler_label


class SampleCallback(PeriodicCallback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training), sample ``num_samples`` fixed
    seeds with ``sampler`` and log the grid under ``samples/<sampler name>`` (the name carries the NFE).

    Conditional models get one row per class. ``trajectory`` > 0 adds a strip of x_t and x̂_0 for the
    first ``trajectory`` samples at evenly spaced steps. Only rank 0 samples: the grid is small and
    no collective runs inside, so other ranks do not wait on it.
    """

    def __init__(
        self,
        sampler,
        every_n_steps: int | None = 1000,
        num_samples: int = 64,
        seed: int = 0,
        ema: bool = True,
        at_end: bool = True,
        trajectory: int = 0,
        trajectory_points: int = 8,
        guidance_scale: float = 1.0,
        out_dir: str | None = None,
        name: str | None = None,
    ):
        super().__init__(every_n_steps, at_end)
        self.sampler = sampler
        self.num_samples = num_samples
        self.seed = seed
        self.ema = ema
        self.trajectory = trajectory
        self.trajectory_points = trajectory_points
        self.guidance_scale = guidance_scale
        self.out_dir = out_dir
        self.name = name
        self.last_paths: list[Path] = []

    def key(self, pl_module) -> str:
        return self.name or f"samples/{sampler_label(self.sampler, pl_module.process.num_timesteps)}"

    def _out_dir(self, trainer) -> Path:
        return Path(self.out_dir or Path(trainer.default_root_dir) / "samples")

    def evaluate(self, trainer, pl_module) -> None:
        self.sample_and_log(trainer, pl_module)

    @rank_zero_only
    def sample_and_log(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self._last_step = step
        denoiser = pl_module.denoiser(ema=self.ema)
        shape = tuple(pl_module.data_shape)
        y, nrow = None, None
        if pl_module.num_classes is not None:
            k = pl_module.num_classes
            per_class = max(1, self.num_samples // k)
            y = torch.arange(k, device=pl_module.device).repeat_interleave(per_class)
            nrow = per_class
        n = len(y) if y is not None else self.num_samples
        seeds = list(range(self.seed, self.seed + n))
        frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        callback = self._trajectory_recorder(frames) \
            if self.trajectory and len(shape) == 3 and not is_latent(pl_module) else None
        was_training = pl_module.training
        pl_module.eval()
        try:
            x = self.sampler(denoiser, shape=shape, seeds=seeds, y=y, guidance_scale=self.guidance_scale, callback=callback)
        finally:
            pl_module.train(was_training)
        x = to_images(pl_module, x)  # latent diffusion: decoded by the first stage
        key = self.key(pl_module)
        image = samples_to_image(x, image_range(pl_module), nrow=nrow, title=f"{key} step {step}")
        stem = key.replace("/", "_")
        path = save_png(image, self._out_dir(trainer) / f"{stem}_step{step:07d}.png")
        self.last_paths = [path]
        log_image(trainer, key, image, step)
        if frames:
            strip = self._strip(frames, pl_module.data_range)
            self.last_paths.append(save_png(strip, self._out_dir(trainer) / f"{stem}_trajectory_step{step:07d}.png"))
            log_image(trainer, f"{key}/trajectory", strip, step)

    def _trajectory_recorder(self, frames):
        """Keep about ``trajectory_points`` frames at evenly spaced sampler steps. The stride comes from the
        number of steps the sampler reports (``StepInfo.num_steps``), not from its NFE: Heun's second
        evaluation is not a step, so an NFE stride would give it half the frames."""

        def record(info):
            stride = max(1, info.num_steps // self.trajectory_points)
            if info.step % stride == 0:
                frames.append((info.x_t[: self.trajectory].detach().cpu(), info.x0_hat[: self.trajectory].detach().cpu()))

        return record

    def _strip(self, frames, data_range):
        """Rows: for each sample, x_t then x̂_0; columns: sampling steps, left to right."""
        xs = torch.stack([f[0] for f in frames], 1)  # (n, steps, C, H, W)
        x0s = torch.stack([f[1] for f in frames], 1)
        rows = torch.stack([xs, x0s], 1).flatten(0, 2)  # (n*2*steps, C, H, W)
        return image_grid(rows.clamp(*(data_range or (-1, 1))), nrow=len(frames), data_range=data_range or (-1, 1))
