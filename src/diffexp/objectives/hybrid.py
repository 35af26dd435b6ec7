"""L_hybrid = L_simple + λ L_vlb with learned variances (Nichol & Dhariwal 2021 eq. 16, λ = 0.001).

Needs ``+model.learn_sigma=true`` (:mod:`diffexp.models.learned_variance`): the network outputs the mean
output and the fraction v of Σ_θ = exp(v log β_t + (1 - v) log β̃_t). As in improved-diffusion
(``training_losses`` with ``LossType.RESCALED_MSE``/``MSE`` and learned range):

* L_simple is the (weighted) MSE of the mean output only — it does not see v;
* L_vlb for one sampled t is T · L_{t-1} in bits/dim (L_T is constant in θ and left out), with μ_θ formed
  from the DETACHED mean output, so L_vlb trains Σ_θ only: "we apply a stop-gradient to the μ_θ(x_t, t)
  output for the L_vlb term. This way, L_vlb can guide Σ_θ(x_t, t) while L_simple is still the main source
  of influence over μ_θ(x_t, t)" (§3.1).

The per-sample loss is w · MSE + λ T L_{t-1}/(D ln 2). The earlier fixed-variance version is
``objective=hybrid_fixed`` (:class:`~diffexp.objectives.hybrid_fixed.FixedSigmaHybridObjective`).
"""

from __future__ import annotations

from diffexp.likelihood import bits_per_dim_scale, vb_terms
from diffexp.models.learned_variance import split_output
from diffexp.objectives.elbo import ELBOObjective
from diffexp.objectives.simple import SimpleObjective

NEEDS_LEARN_SIGMA = (
    "objective=hybrid is Nichol & Dhariwal's L_hybrid, which trains learned variances: set +model.learn_sigma=true, "
    "or use objective=hybrid_fixed for L_simple + 0.001 L_vlb with a fixed reverse variance"
)


class HybridObjective(ELBOObjective):
    objective_name = "hybrid"
    needs_learn_sigma = True  # read by diffexp.build: a config without +model.learn_sigma=true is rejected

    def __init__(
        self,
        vlb_weight: float = 0.001,
        weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        decoder: str = "auto",
        cdf: str = "exact",
        timestep_sampler: str = "uniform",
        history_per_term: int = 10,
        uniform_prob: float = 0.001,
    ):
        super().__init__("beta_tilde", decoder, cdf, timestep_sampler, history_per_term, uniform_prob)
        self.vlb_weight = float(vlb_weight)
        self.simple = SimpleObjective(weighting=weighting, min_snr_gamma=min_snr_gamma)

    def vlb(self, out, x0, x_t, process, prediction, t):
        """T · L_{t-1} in bits/dim per sample, from the full output (mean | v) with μ_θ stop-gradiented."""
        mean_out, frac = split_output(out.to(x0.dtype))
        pred = process.predict(mean_out.detach(), x_t, t, prediction)
        pred.var_frac = frac
        term = vb_terms(process, x0, x_t, t, pred, self.reverse_variance, self._discrete(x0), self.cdf)
        return process.num_timesteps * term * bits_per_dim_scale(x0)

    def compute(self, net_fn, x0, process, prediction, t, noise, y=None):
        x_t = process.q_sample(x0, t, noise)
        out = net_fn(x_t, t, y)  # one network evaluation shared by both terms
        if out.shape[1] != 2 * x0.shape[1]:
            raise ValueError(NEEDS_LEARN_SIGMA)
        mean_out, _ = split_output(out)
        mse_w, _, simple_terms = self.simple.compute(lambda *_: mean_out, x0, process, prediction, t, noise, y)
        vlb = self.vlb(out, x0, x_t, process, prediction, t)
        per_sample = mse_w + self.vlb_weight * vlb
        return per_sample, per_sample.detach(), {**simple_terms, "vlb_bpd": vlb.mean()}

    def extra_repr(self) -> str:
        return f"vlb_weight={self.vlb_weight}, learned variance, decoder={self.decoder}, cdf={self.cdf}"
