"""The objective protocol the DiffusionModule calls.

``objective.loss(net_fn, x0, process, prediction, generator=None, y=None) -> LossOutput`` draws t (from
the objective's timestep sampler) and ε from ``generator`` (global RNG when None), in that order, and
``objective.validation_loss(net_fn, x0, process, prediction, t, noise, y=None)`` evaluates the same
per-sample loss at given t and ε (pinned validation; uniform weights, no sampler update).
``net_fn(x_t, t, y)`` calls the network. ``objective.validate(prediction, schedule)`` raises ValueError
for combinations that cannot work; call it before training.

Objectives are ``nn.Module`` s so that state (the importance sampler's loss history) is saved in
checkpoints and follows ``.to(device)``; stateless objectives have an empty state_dict. The loss math
runs in float32 whatever the autocast dtype of the network.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffexp.objectives.timesteps import make_timestep_sampler
from diffexp.process import DiffusionProcess, check_prediction
from diffexp.schedules import NoiseSchedule


@dataclass
class LossOutput:
    """``loss = mean(weights * per_sample)`` is what to backpropagate. ``per_sample`` (B,) is each
    sample's loss at its own timestep ``t`` (B,) *before* the importance weights ``weights`` (B,) (ones
    for uniform t), so averaging ``per_sample`` over a range of t gives the loss in that range.
    ``terms`` holds detached scalars to log."""

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    weights: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def mean_flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(1)


class Objective(nn.Module):
    """Base class: subclasses implement :meth:`compute` for given (t, ε)."""

    def __init__(self, timestep_sampler: str = "uniform", history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__()
        self.timestep_sampler = make_timestep_sampler(timestep_sampler, history_per_term, uniform_prob)

    # ---- to implement --------------------------------------------------------------------------
    def compute(self, net_fn, x0, process, prediction, t, noise, y=None) -> tuple[Tensor, Tensor, dict]:
        """Return (per_sample (B,), history values for the importance sampler (B,), terms dict)."""
        raise NotImplementedError

    # ---- protocol ----------------------------------------------------------------------------------
    def validate(self, prediction: str, schedule: NoiseSchedule, data_range=None) -> None:
        check_prediction(prediction)
        self.timestep_sampler.setup(schedule.num_timesteps)

    def loss(
        self, net_fn, x0: Tensor, process: DiffusionProcess, prediction: str, generator=None, y=None
    ) -> LossOutput:
        x0, T = x0.float(), process.num_timesteps
        t, weights = self.timestep_sampler.sample(x0.shape[0], T, x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        per_sample, history, terms = self.compute(net_fn, x0, process, prediction, t, noise, y)
        self.timestep_sampler.update(t, history)
        return self._output(per_sample, t, weights, terms)

    def validation_loss(
        self, net_fn, x0: Tensor, process: DiffusionProcess, prediction: str, t: Tensor, noise: Tensor, y=None
    ) -> LossOutput:
        per_sample, _, terms = self.compute(net_fn, x0.float(), process, prediction, t, noise.float(), y)
        return self._output(per_sample, t, torch.ones_like(per_sample), terms)

    @staticmethod
    def _output(per_sample, t, weights, terms) -> LossOutput:
        loss = (weights * per_sample).mean()
        terms = {k: v.detach() for k, v in terms.items()}
        return LossOutput(loss=loss, per_sample=per_sample, t=t, weights=weights, terms=terms)


def warn_eps_under_ztsnr(prediction: str, schedule: NoiseSchedule) -> None:
    """ε (or score) prediction trains finitely under zero terminal SNR, but at t=T the ε target is x_T
    itself and x̂_0 = (x_T - ε̂)/a_T is undefined, so a sampler cannot start there (Lin et al. 2024, 3.2)."""
    if schedule.has_zero_terminal_snr and prediction in ("eps", "score"):
        warnings.warn(
            f"prediction={prediction!r} with a zero-terminal-SNR schedule: the loss is finite but x̂_0 is "
            "undefined at t=T (a_T = 0); Lin et al. 2024 recommend prediction=v",
            stacklevel=3,
        )
