"""Denoising score matching (Vincent 2011; Song & Ermon 2019 eq. 2 with λ(σ) = σ²):

    per_sample = λ(t) · mean_d (ŝ_θ(x_t, t) - ∇_{x_t} log q(x_t|x_0))²,
    ∇_{x_t} log q(x_t|x_0) = -(x_t - a_t x_0)/s_t² = -ε/s_t,   λ(t) = s_t² = 1 - ᾱ_t,

where ŝ_θ is the network output read as a score through :meth:`DiffusionProcess.predict` (for
ε-prediction ŝ = -ε̂/s_t, for x0 ŝ = -(x_t - a_t x̂_0)/s_t², ...). With this λ the loss equals the
ε-MSE ‖ε̂ - ε‖², the equivalence Song & Ermon point out. No division by a_t: finite under zero terminal SNR.
"""

from __future__ import annotations

from diffexp.objectives.base import Objective, mean_flat, warn_eps_under_ztsnr


class ScoreMatchingObjective(Objective):
    def __init__(self, timestep_sampler: str = "uniform", history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(timestep_sampler, history_per_term, uniform_prob)

    def validate(self, prediction, process, data_range=None) -> None:
        super().validate(prediction, process, data_range)
        warn_eps_under_ztsnr(prediction, process)

    def compute(self, net_fn, x0, process, prediction, t, noise, y=None):
        x_t = process.q_sample(x0, t, noise)
        out = net_fn(x_t, t, y).to(x0.dtype)
        a, s = process.scales(t, x_t)
        score_hat = process.predict(out, x_t, t, prediction).score
        score_true = -(x_t - a * x0) / s**2  # ∇_{x_t} log N(x_t; a x_0, s² I)
        per_sample = mean_flat(s**2 * (score_hat - score_true) ** 2)
        return per_sample, per_sample.detach(), {"dsm": per_sample.mean()}
