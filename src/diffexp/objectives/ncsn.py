"""NCSN's denoising score matching over a geometric ladder of noise levels (Song & Ermon 2019, eq. 5-6):

    per_sample = λ(σ_i) · mean_d (ŝ_θ(x_t, t_i) - ∇_{x_t} log q(x_t | x_0))²,   λ(σ) = σ²,
    ∇_{x_t} log q(x_t | x_0) = -ε/σ,   i ~ U{1..L},   σ_i geometric from σ_max to σ_min,

with ŝ_θ the network output read as a score through :meth:`Process.predict` (an NCSN predicts the score;
any target works). λ = σ² makes each level's loss ‖ε̂ - ε‖², of order one at every level (Song & Ermon
2019, Sec. 4.2). The ladder (:mod:`diffexp.objectives.time_samplers.ladder`) spans the family's noise
levels; ``timestep_sampler=uniform`` gives continuous DSM (the VE SDE's loss, Song et al. 2021 eq. 7).
Fits every family; on ``ve`` it is NCSN itself.
"""

from __future__ import annotations

from diffexp.objectives.simple import SimpleObjective


class NCSNObjective(SimpleObjective):
    def __init__(self, num_levels: int = 10, timestep_sampler: str = "ladder"):
        super().__init__(weighting="sigma2", target="score", timestep_sampler=timestep_sampler, num_levels=num_levels)
