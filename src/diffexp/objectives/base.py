"""The objective protocol the DiffusionModule calls.

``objective.loss(net_fn, x0, process, prediction, generator=None, y=None) -> LossOutput`` draws t (from
the objective's timestep sampler) and ε from ``generator`` (global RNG when None), in that order, and
``objective.validation_loss(net_fn, x0, process, prediction, t, noise, y=None)`` evaluates the same
per-sample loss at given t and ε (pinned validation; uniform weights, no sampler update).
``net_fn(x_t, t, y)`` calls the network with the process time t. ``objective.check(process)`` raises
ValueError when the objective (or its time sampler) is undefined on that family, naming what fits;
``objective.validate(prediction, process)`` (a process, or a NoiseSchedule for ``ddpm``) runs it and
the target checks; call it before training.

Which objectives fit which families: ``simple``, ``score``, ``edm`` and ``ncsn`` fit every family;
``flow_matching`` needs the velocity u = α'x_0 + σ'ε of a continuous family; ``elbo`` and ``hybrid`` are
the bound of the discrete chain and need ``process=ddpm`` (as does ``timestep_sampler=importance``).

Objectives are ``nn.Module`` s so that state (the importance sampler's loss history) is saved in
checkpoints and follows ``.to(device)``; stateless objectives have an empty state_dict. The loss math
runs in float32 whatever the autocast dtype of the network.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffexp.objectives.time_samplers import make_timestep_sampler
from diffexp.process import DiffusionProcess, check_prediction
from diffexp.schedules import NoiseSchedule

OBJECTIVES_EVERY_FAMILY = ("simple", "score", "edm", "ncsn")


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

    def __init__(self, timestep_sampler: str = "uniform", history_per_term: int = 10, uniform_prob: float = 0.001,
                 **time_options):
        super().__init__()
        self.timestep_sampler = make_timestep_sampler(timestep_sampler, history_per_term, uniform_prob, **time_options)

    # ---- to implement --------------------------------------------------------------------------
    def compute(self, net_fn, x0, process, prediction, t, noise, y=None) -> tuple[Tensor, Tensor, dict]:
        """Return (per_sample (B,), history values for the importance sampler (B,), terms dict)."""
        raise NotImplementedError

    # ---- protocol ----------------------------------------------------------------------------------
    def check(self, process) -> None:
        """Raise ValueError if this objective cannot train on ``process`` (see the module docstring)."""
        self.timestep_sampler.check(process)

    def validate(self, prediction: str, process, data_range=None) -> None:
        check_prediction(prediction)
        process = as_process(process)
        self.check(process)
        self.timestep_sampler.setup(process)

    def loss(self, net_fn, x0: Tensor, process, prediction: str, generator=None, y=None) -> LossOutput:
        x0 = x0.float()
        t, weights = self.timestep_sampler.sample(x0.shape[0], process, x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        per_sample, history, terms = self.compute(net_fn, x0, process, prediction, t, noise, y)
        self.timestep_sampler.update(t, history)
        return self._output(per_sample, t, weights, terms)

    def validation_loss(self, net_fn, x0: Tensor, process, prediction: str, t: Tensor, noise: Tensor, y=None) -> LossOutput:
        per_sample, _, terms = self.compute(net_fn, x0.float(), process, prediction, t, noise.float(), y)
        return self._output(per_sample, t, torch.ones_like(per_sample), terms)

    @staticmethod
    def _output(per_sample, t, weights, terms) -> LossOutput:
        loss = (weights * per_sample).mean()
        terms = {k: v.detach() for k, v in terms.items()}
        return LossOutput(loss=loss, per_sample=per_sample, t=t, weights=weights, terms=terms)


def as_process(process_or_schedule):
    """A process from a process or (``ddpm``, backward compatible) a NoiseSchedule."""
    if isinstance(process_or_schedule, NoiseSchedule):
        return DiffusionProcess(process_or_schedule)
    return process_or_schedule


def family_name(process) -> str:
    return str(getattr(process, "name", None) or type(process).__name__)


def is_discrete(process) -> bool:
    return bool(getattr(process, "is_discrete", hasattr(process, "schedule")))


def require_discrete(objective: str, process) -> None:
    if not is_discrete(process):
        raise ValueError(
            f"objective={objective} is the variational bound of the discrete ddpm chain and needs process=ddpm, "
            f"not {family_name(process)}; objectives that fit every family: {list(OBJECTIVES_EVERY_FAMILY)} "
            "(and flow_matching on the continuous families)"
        )


def warn_eps_under_ztsnr(prediction: str, schedule) -> None:
    """ε (or score) prediction trains finitely under zero terminal SNR, but at t=T the ε target is x_T
    itself and x̂_0 = (x_T - ε̂)/a_T is undefined, so a sampler cannot start there (Lin et al. 2024, 3.2)."""
    schedule = getattr(schedule, "schedule", schedule)  # a process or its schedule
    if getattr(schedule, "has_zero_terminal_snr", False) and prediction in ("eps", "score"):
        warnings.warn(
            f"prediction={prediction!r} with a zero-terminal-SNR schedule: the loss is finite but x̂_0 is "
            "undefined at t=T (a_T = 0); Lin et al. 2024 recommend prediction=v",
            stacklevel=3,
        )
