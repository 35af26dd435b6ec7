"""Training objectives (config group ``objective``). See :mod:`diffexp.objectives.base` for the protocol."""

from diffexp.objectives.base import LossOutput, Objective, mean_flat
from diffexp.objectives.elbo import ELBOObjective
from diffexp.objectives.hybrid import HybridObjective
from diffexp.objectives.score import ScoreMatchingObjective
from diffexp.objectives.simple import SimpleObjective
from diffexp.objectives.timesteps import LossSecondMomentTimesteps, UniformTimesteps, make_timestep_sampler
from diffexp.objectives.weighting import WEIGHTINGS, snr_weight

__all__ = [
    "LossOutput",
    "Objective",
    "SimpleObjective",
    "ELBOObjective",
    "HybridObjective",
    "ScoreMatchingObjective",
    "UniformTimesteps",
    "LossSecondMomentTimesteps",
    "make_timestep_sampler",
    "snr_weight",
    "WEIGHTINGS",
    "mean_flat",
]
