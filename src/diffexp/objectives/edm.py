"""The EDM training objective (Karras et al. 2022, eq. 8 and Table 1 "Training"):

    per_sample = λ(σ̃) · mean_d (D_θ(x_t, t) - x_0)²,   λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)²,   ln σ̃ ~ N(P_mean, P_std²),

with σ̃ = σ/α the Karras noise level, t = t_of_sigma(σ̃), and D_θ the network's output read as x_0 —
with ``module.precondition=edm`` and ``prediction=x0``, D_θ = c_skip x_t + c_out F_θ(c_in x_t, c_noise)
(:mod:`diffexp.preconditioning`) and λ = 1/c_out² makes the loss on F_θ uniformly weighted (EDM eq. 8-9).
It fits every family (the log-normal σ̃ is mapped onto each family's time); without preconditioning it is
still the λ-weighted x_0-MSE. Defaults P_mean = -1.2, P_std = 1.2, σ_d = 0.5 (EDM's, for data in [-1, 1]).
"""

from __future__ import annotations

from diffexp.objectives.simple import SimpleObjective


class EDMObjective(SimpleObjective):
    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 timestep_sampler: str = "lognormal"):
        super().__init__(weighting="edm", sigma_data=sigma_data, target="x0", timestep_sampler=timestep_sampler,
                         p_mean=p_mean, p_std=p_std)
