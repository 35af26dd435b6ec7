"""Conditional flow matching / rectified flow (Lipman et al. 2023, eq. 23; Liu et al. 2023, eq. 1):

    per_sample = λ(t) · mean_d (û_θ(x_t, t) - u)²,   u = dx_t/dt = α'(t) x_0 + σ'(t) ε,   t ~ p(t),

the regression of the probability-flow velocity of the conditional path x_t = α x_0 + σ ε. On ``flow``
(α = 1 - t, σ = t) u = ε - x_0 and x_t moves on straight lines (rectified flow); t ~ U[0, 1] (uniform,
Lipman et al.) or logit-normal (SD3, Esser et al. 2024). The network's output is read as u through
:meth:`Process.predict` unless it predicts ``velocity`` itself (the usual choice). Its minimiser is the
marginal velocity E[u | x_t] (Lipman et al. Thm. 2), the exact PF-ODE drift of the family. The velocity
needs dα/dt and dσ/dt, so ``ddpm`` (a discrete chain) is rejected.
"""

from __future__ import annotations

from diffexp.objectives.base import OBJECTIVES_EVERY_FAMILY, family_name, is_discrete
from diffexp.objectives.simple import SimpleObjective


class FlowMatchingObjective(SimpleObjective):
    def __init__(self, weighting: str = "uniform", timestep_sampler: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, min_snr_gamma: float = 5.0, p2_k: float = 1.0, p2_gamma: float = 1.0):
        super().__init__(weighting=weighting, min_snr_gamma=min_snr_gamma, p2_k=p2_k, p2_gamma=p2_gamma,
                         target="velocity", timestep_sampler=timestep_sampler, logit_mean=logit_mean,
                         logit_std=logit_std)

    def check(self, process) -> None:
        if is_discrete(process):
            raise ValueError(
                f"objective=flow_matching regresses the velocity u = α'x_0 + σ'ε of a continuous family "
                f"(process=flow, vp_sde, subvp_sde, ve, edm), not {family_name(process)}; on process=ddpm use "
                f"one of {list(OBJECTIVES_EVERY_FAMILY)}"
            )
        super().check(process)
