"""A trained network together with the process and the target it predicts.

This is what samplers, metrics and the likelihood evaluator receive: calling it with (x_t, t) returns a
:class:`~diffexp.process.Prediction`, i.e. x̂_0, ε̂, v̂ and ŝ whatever the network was trained to output,
so no sampler ever depends on the prediction target. Classifier-free guidance (Ho & Salimans 2022)
also lives here, once, so every sampler can guide: the conditional and unconditional passes run as
one batch and are combined as ε̃ = ε_u + w (ε_c - ε_u), with x̂_0 combined by the same weights.
A learned-variance network (``+model.learn_sigma=true``) has its variance channels split off here
(:func:`split`) and passed on as ``Prediction.var_frac``; the guided prediction keeps the conditional v.
Classifier guidance (Dhariwal & Nichol 2021, :mod:`diffexp.guidance`) lives here too, composed after the
classifier-free combination: ε̃ = ε̂ − s σ_t ∇_x log p_φ(y|x_t) (``denoiser.classifier_guidance``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from diffexp.models.learned_variance import learns_sigma, split_output
from diffexp.process import Prediction, Process


class Denoiser:
    def __init__(
        self,
        net: nn.Module,
        process: Process,
        prediction: str = "eps",
        num_classes: int | None = None,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
    ):
        self.net = net
        self.process = process
        self.prediction = process.check_prediction(prediction)
        self.num_classes = num_classes
        # Range x̂_0 is clipped to by samplers with clip_denoised on; None for unbounded data (toy2d).
        self.data_range = data_range
        # diffexp.guidance.ClassifierGuidance or None: ε̃ = ε̂ − s σ_t ∇ log p_φ(y|x_t) whenever labels are given.
        self.classifier_guidance = None

    @property
    def learn_sigma(self) -> bool:
        return learns_sigma(self.net)

    def split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the prediction-target output, the learned-variance fraction v or None)."""
        return split_output(out) if self.learn_sigma else (out, None)

    def _predict(self, out: Tensor, x_t: Tensor, t: Tensor, clip=None) -> Prediction:
        out, frac = self.split(out)
        pred = self.process.predict(out, x_t, t, self.prediction, clip=clip)
        return pred if frac is None else dataclasses.replace(pred, var_frac=frac)

    @property
    def num_timesteps(self) -> int | None:
        return self.process.num_timesteps

    def raw(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The bare network output (one function evaluation) at process time t; the network receives
        ``process.net_time(t)`` (the index itself on ddpm)."""
        net_t = self.process.net_time(t)
        if y is None:
            return self.net(x_t, net_t)
        return self.net(x_t, net_t, y=y)

    @torch.no_grad()
    def __call__(
        self,
        x_t: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        guidance_scale: float = 1.0,
        clip: tuple[float, float] | None = None,
    ) -> Prediction:
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        classifier = self.classifier_guidance if y is not None else None
        if y is not None and self.num_classes is None and classifier is None:
            raise ValueError("class labels were given but the model is unconditional (model.num_classes is unset)")
        y_net = y if self.num_classes is not None else None  # an unconditional net sees no labels
        if classifier is None:
            return self._free_guided(x_t, t, y_net, guidance_scale, clip)
        # Classifier guidance acts on the (classifier-free guided) ε̂, then x̂_0 is clipped.
        return classifier.guide(self._free_guided(x_t, t, y_net, guidance_scale, None), self.process, t, y, clip)

    def _free_guided(self, x_t: Tensor, t: Tensor, y: Tensor | None, guidance_scale: float, clip) -> Prediction:
        if y is None or guidance_scale == 1.0:
            return self._predict(self.raw(x_t, t, y), x_t, t, clip=clip)
        # Guided: one batch holding the conditional and the unconditional (null label) passes.
        null = torch.full_like(y, self.num_classes)
        out = self.raw(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        p_c = self._predict(cond, x_t, t)
        p_u = self._predict(uncond, x_t, t)
        # ε̃ = ε_u + w (ε_c - ε_u) is an affine combination (weights 1-w, w), and x̂_0 is affine in ε̂ at fixed
        # x_t, so x̂_0 combines with the same weights: x̃_0 = x̂_0u + w (x̂_0c - x̂_0u). Combining both
        # directly never divides by α, which is 0 at the last step of a zero-terminal-SNR schedule (where
        # v- and x0-predictions still give a finite x̂_0).
        x0 = p_u.x0 + guidance_scale * (p_c.x0 - p_u.x0)
        if clip is not None:  # clamp x̃_0 and recompute ε̃ from it through the process algebra
            return dataclasses.replace(self.process.predict(x0, x_t, t, "x0", clip=clip), var_frac=p_c.var_frac)
        eps = p_u.eps + guidance_scale * (p_c.eps - p_u.eps)
        return dataclasses.replace(p_c, x0=x0, eps=eps)  # x_t and the process coefficients as p_c
