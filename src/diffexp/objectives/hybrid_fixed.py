"""``objective=hybrid_fixed``: L_simple + λ L_vlb (the form of Nichol & Dhariwal 2021 eq. 16, λ = 0.001) with a
FIXED reverse variance — not the paper's L_hybrid, which learns Σ (that is ``objective=hybrid`` with
``+model.learn_sigma=true``, :mod:`diffexp.objectives.hybrid`). Before learned variances this was ``hybrid``.

As in improved-diffusion, L_vlb for one sampled t is the term T · L_{t-1} in bits/dim (L_T is constant
in θ and left out), so per_sample = w_simple · MSE(target) + λ · T · L_{t-1}/(D ln 2). improved-diffusion
learns Σ and stops the gradient of L_vlb into the mean; here Σ is fixed, so λ L_vlb is a small extra
(ELBO-shaped) weighting of the mean's error.
"""

from __future__ import annotations

from diffexp.likelihood import bits_per_dim_scale
from diffexp.objectives.elbo import ELBOObjective
from diffexp.objectives.simple import SimpleObjective


class FixedSigmaHybridObjective(ELBOObjective):
    objective_name = "hybrid_fixed"

    def __init__(
        self,
        vlb_weight: float = 0.001,
        weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        reverse_variance: str = "beta_tilde",
        decoder: str = "auto",
        cdf: str = "exact",
        timestep_sampler: str = "uniform",
        history_per_term: int = 10,
        uniform_prob: float = 0.001,
    ):
        super().__init__(reverse_variance, decoder, cdf, timestep_sampler, history_per_term, uniform_prob)
        self.vlb_weight = float(vlb_weight)
        self.simple = SimpleObjective(weighting=weighting, min_snr_gamma=min_snr_gamma)

    def compute(self, net_fn, x0, process, prediction, t, noise, y=None):
        outputs = []  # one network evaluation shared by both terms

        def cached_net(x_t, t_, y_):
            if not outputs:
                outputs.append(net_fn(x_t, t_, y_))
            return outputs[0]

        mse_w, _, simple_terms = self.simple.compute(cached_net, x0, process, prediction, t, noise, y)
        term, _ = self.bound_terms(cached_net, x0, process, prediction, t, noise, y)
        vlb = process.num_timesteps * term * bits_per_dim_scale(x0)
        per_sample = mse_w + self.vlb_weight * vlb
        return per_sample, per_sample.detach(), {**simple_terms, "vlb_bpd": vlb.mean()}
