"""Training-time distributions p(t), one per file (protocol in :mod:`.base`; config ``objective.timestep_sampler``):

* ``uniform`` — U{0..T-1} on ``ddpm``, U[t_min, t_max] on continuous families;
* ``importance`` — p_t ∝ √E[L_t²] (Nichol & Dhariwal 2021), ``ddpm`` only;
* ``lognormal`` — EDM's ln σ ~ N(-1.2, 1.2²) (Karras et al. 2022);
* ``logit_normal`` — SD3's sigmoid(N(m, s²)) on the normalised time (Esser et al. 2024);
* ``ladder`` — NCSN's geometric ladder of L noise levels (Song & Ermon 2019).
"""

from __future__ import annotations

from diffexp.objectives.time_samplers.base import TimeSampler
from diffexp.objectives.time_samplers.importance import LossSecondMomentTimesteps
from diffexp.objectives.time_samplers.ladder import GeometricLadder
from diffexp.objectives.time_samplers.logit_normal import LogitNormalTimes
from diffexp.objectives.time_samplers.lognormal import LogNormalSigmas
from diffexp.objectives.time_samplers.uniform import UniformTimesteps

TIME_SAMPLERS = ("uniform", "importance", "lognormal", "logit_normal", "ladder")

__all__ = ["TIME_SAMPLERS", "TimeSampler", "UniformTimesteps", "LossSecondMomentTimesteps", "LogNormalSigmas",
           "LogitNormalTimes", "GeometricLadder", "make_timestep_sampler"]


def make_timestep_sampler(
    kind: str = "uniform",
    history_per_term: int = 10,
    uniform_prob: float = 0.001,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    num_levels: int = 10,
) -> TimeSampler:
    """The sampler named ``kind`` with its options (the others are ignored)."""
    if kind == "uniform":
        return UniformTimesteps()
    if kind == "importance":
        return LossSecondMomentTimesteps(history_per_term, uniform_prob)
    if kind == "lognormal":
        return LogNormalSigmas(p_mean, p_std)
    if kind == "logit_normal":
        return LogitNormalTimes(logit_mean, logit_std)
    if kind == "ladder":
        return GeometricLadder(num_levels)
    raise ValueError(f"unknown timestep_sampler {kind!r}; valid: {list(TIME_SAMPLERS)}")
