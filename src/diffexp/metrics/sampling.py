"""The images a trained diffusion module makes for a list of seeds, drawn exactly as ``evaluate.py`` draws them.

One rule for every caller that scores a module's samples (``evaluate.py``, bench/bench_time_to_quality.py and the
diffexp side of bench/bench_peer.py), so that a benchmark scores what ``python evaluate.py ckpt_path=...`` would
for the same weights, sampler, guidance and n:

- sample i has seed ``seed_offset + i`` (the sampler's per-sample seeds: batch-size independent);
- a class-conditional module (or one guided by a classifier) draws sample i for class ``i mod K``
  (:func:`diffexp.metrics.provenance.class_labels`), with the classifier-free guidance scale w,
  ε̂_w = ε̂_u + w (ε̂_c − ε̂_u) (:class:`diffexp.denoiser.Denoiser`);
- a latent module's samples are decoded by its first stage, x = D(z / s) (:func:`diffexp.latent.to_images`);
- images are clamped to the image range (:func:`diffexp.latent.image_range`), as ``compute_metrics`` does.

The sampler is used as configured: whatever it samples with (its steps, its η if it has one) is the caller's
choice; this module never knows what the network predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffexp.guidance.setup import label_classes
from diffexp.latent import image_range, image_shape, is_latent, to_images
from diffexp.metrics.provenance import class_labels, sampler_label

__all__ = ["ModuleSampleSource"]


class ModuleSampleSource:
    """``source(seeds) -> images``: the ``sample_fn`` of :func:`diffexp.metrics.compute_metrics` for ``module``.

    ``ema``: sample the EMA weights when they have been updated (``module.denoiser(ema)``);
    ``classifier_guidance``: a :class:`diffexp.guidance.ClassifierGuidance` acting whenever labels are given
    (its classes label an unconditional module's samples). ``labels(seeds)`` is the matching ``label_fn``
    (None for unlabelled samples) and ``data_range`` the range to clamp to. The denoiser is built once, at
    construction: build a new source after the weights change (e.g. at each evaluation during training).
    """

    def __init__(self, module, sampler, guidance_scale: float = 1.0, *, ema: bool = True, seed_offset: int = 0,
                 device: torch.device | str | None = None, classifier_guidance=None):
        guidance_scale = float(guidance_scale)
        if module.num_classes is None and guidance_scale != 1.0:
            raise ValueError("guidance_scale needs a class-conditional checkpoint; this one is unconditional")
        self.module, self.sampler, self.guidance_scale = module, sampler, guidance_scale
        self.seed_offset, self.device = int(seed_offset), device
        self.num_classes = label_classes(module, classifier_guidance)
        self.denoiser = module.denoiser(ema=ema)
        self.denoiser.classifier_guidance = classifier_guidance  # acts whenever labels are given (diffexp.guidance)
        self.shape = tuple(module.data_shape)  # what the sampler draws: latents for a latent module

    @property
    def data_range(self) -> tuple[float, float] | None:
        """The range of the images (not of the latents): what samples are clamped to."""
        return image_range(self.module)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return image_shape(self.module)

    def labels(self, seeds: Sequence[int]) -> Tensor | None:
        """The classes samples ``seeds`` are drawn for: (seed − seed_offset) mod K; None when unlabelled."""
        return class_labels(seeds, self.seed_offset, self.num_classes, self.device)

    def __call__(self, seeds: Sequence[int]) -> Tensor:
        seeds = list(seeds)
        x = self.sampler(self.denoiser, shape=self.shape, seeds=seeds, y=self.labels(seeds),
                         guidance_scale=self.guidance_scale, device=self.device)
        x = to_images(self.module, x)  # latent diffusion: decoded by the first stage
        rng = self.data_range
        return x.clamp(*rng) if rng is not None else x

    def record(self) -> dict[str, Any]:
        """What produced the samples: sampler label/name/NFE, guidance scale, label rule, latent or pixel.
        (An adaptive sampler's NFE is its mean over the calls so far: read it after sampling.)"""
        T = self.module.process.num_timesteps
        return {"sampler": sampler_label(self.sampler, T), "sampler_name": self.sampler.name,
                "sampler_class": type(self.sampler).__name__, "nfe": self.sampler.nfe(T),
                "guidance_scale": self.guidance_scale, "num_classes": self.num_classes,
                "labels": None if self.num_classes is None else "sample i: class i mod K",
                "latent": is_latent(self.module), "image_shape": list(self.image_shape)}
