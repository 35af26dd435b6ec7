"""Training objectives (config group ``objective``). See :mod:`diffexp.objectives.base` for the protocol."""

from diffexp.objectives.base import LossOutput, Objective, mean_flat
from diffexp.objectives.edm import EDMObjective
from diffexp.objectives.elbo import ELBOObjective
from diffexp.objectives.flow_matching import FlowMatchingObjective
from diffexp.objectives.hybrid import HybridObjective
from diffexp.objectives.hybrid_fixed import FixedSigmaHybridObjective
from diffexp.objectives.ncsn import NCSNObjective
from diffexp.objectives.score import ScoreMatchingObjective
from diffexp.objectives.simple import SimpleObjective
from diffexp.objectives.time_samplers import (
    TIME_SAMPLERS,
    GeometricLadder,
    LogitNormalTimes,
    LogNormalSigmas,
    LossSecondMomentTimesteps,
    UniformTimesteps,
    make_timestep_sampler,
)
from diffexp.objectives.weighting import WEIGHTINGS, loss_weight, snr_weight

__all__ = [
    "LossOutput",
    "Objective",
    "SimpleObjective",
    "ELBOObjective",
    "HybridObjective",
    "FixedSigmaHybridObjective",
    "ScoreMatchingObjective",
    "FlowMatchingObjective",
    "EDMObjective",
    "NCSNObjective",
    "TIME_SAMPLERS",
    "UniformTimesteps",
    "LossSecondMomentTimesteps",
    "LogNormalSigmas",
    "LogitNormalTimes",
    "GeometricLadder",
    "make_timestep_sampler",
    "snr_weight",
    "loss_weight",
    "WEIGHTINGS",
    "mean_flat",
]
