"""The variational bound as a training objective (Ho et al. 2020 eq. 5; Nichol & Dhariwal 2021 Sec. 3.3).

One t per sample gives an unbiased Monte-Carlo estimate of the whole bound (in bits/dim):

    L ≈ w_t · (T · L_{t-1}(x_0, x_t) + L_T(x_0)) / (D ln 2),   w_t = 1/(T p_t),

with L_{t-1} the closed-form Gaussian KL for t ≥ 2 and the decoder NLL at t = 1, computed by
:func:`diffexp.likelihood.vb_terms` from x̂_0 of any prediction target, and the reverse variance fixed
(``beta`` or ``beta_tilde``; no learned Σ). For ε-prediction and β̃ this is λ_t ‖ε - ε̂‖² with
λ_t = β_t²/(2σ_t² α_t (1-ᾱ_t)). t is uniform or importance-sampled (``timestep_sampler="importance"``:
p_t ∝ √E[L_t²], history of 10 per t, 0.001 uniform; the weights keep the estimate unbiased).

Decoder: ``discretized`` (8-bit images in [-1, 1], bins 2/255: a bound on -log P of the discrete data),
``gaussian`` (continuous data such as toy2d: a density) or ``auto`` (chosen in ``validate`` from
``data_range`` — (-1, 1) → discretized, None → gaussian — or, if ``validate`` got no data range, from the
first batch: discretized iff it lies on the 8-bit grid of [-1, 1]).
"""

from __future__ import annotations

from diffexp.likelihood import bits_per_dim_scale, check_bound_defined, prior_kl, vb_terms
from diffexp.objectives.base import Objective, as_process, require_discrete

DECODERS = ("auto", "discretized", "gaussian")
REVERSE_VARIANCES = ("beta", "beta_tilde")


def on_8bit_grid(x0) -> bool:
    k = (x0.detach().double() + 1.0) * 127.5
    return bool((x0.abs() <= 1.0 + 1e-6).all()) and bool(((k - k.round()).abs() < 1e-3).all())


class ELBOObjective(Objective):
    objective_name = "elbo"

    def __init__(
        self,
        reverse_variance: str = "beta_tilde",
        decoder: str = "auto",
        cdf: str = "exact",
        timestep_sampler: str = "importance",
        history_per_term: int = 10,
        uniform_prob: float = 0.001,
    ):
        super().__init__(timestep_sampler, history_per_term, uniform_prob)
        if reverse_variance not in REVERSE_VARIANCES:
            raise ValueError(f"unknown reverse_variance {reverse_variance!r}; valid: {list(REVERSE_VARIANCES)}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; valid: {list(DECODERS)}")
        if cdf not in ("exact", "approx"):
            raise ValueError(f"unknown cdf {cdf!r}; valid: ['exact', 'approx']")
        self.reverse_variance, self.decoder, self.cdf = reverse_variance, decoder, cdf
        self._range_checked = False

    def check(self, process) -> None:
        require_discrete(type(self).objective_name, process)
        super().check(process)

    def validate(self, prediction, process, data_range=None) -> None:
        super().validate(prediction, process, data_range)
        check_bound_defined(as_process(process), prediction)
        if self.decoder == "auto" and data_range is not None:
            self.decoder = "discretized" if tuple(data_range) == (-1.0, 1.0) else "gaussian"

    def _discrete(self, x0) -> bool:
        if self.decoder == "auto":
            self.decoder = "discretized" if on_8bit_grid(x0) else "gaussian"
        if self.decoder == "discretized" and not self._range_checked:  # once: the check costs a device sync
            if bool((x0.abs() > 1.0 + 1e-6).any()):
                raise ValueError(
                    "decoder='discretized' needs 8-bit data in [-1, 1]; set objective.decoder=gaussian for continuous data"
                )
            self._range_checked = True
        return self.decoder == "discretized"

    def bound_terms(self, net_fn, x0, process, prediction, t, noise, y=None):
        """(term at t in nats (B,), L_T in nats (B,))."""
        x_t = process.q_sample(x0, t, noise)
        pred = process.predict(net_fn(x_t, t, y).to(x0.dtype), x_t, t, prediction)
        term = vb_terms(process, x0, x_t, t, pred, self.reverse_variance, self._discrete(x0), self.cdf)
        return term, prior_kl(process, x0)

    def compute(self, net_fn, x0, process, prediction, t, noise, y=None):
        term, prior = self.bound_terms(net_fn, x0, process, prediction, t, noise, y)
        scale, T = bits_per_dim_scale(x0), process.num_timesteps
        per_sample = (T * term + prior) * scale
        terms = {"term_bpd": (term * scale).mean(), "prior_bpd": (prior * scale).mean()}
        return per_sample, (T * term * scale).detach(), terms

    def extra_repr(self) -> str:
        return f"reverse_variance={self.reverse_variance}, decoder={self.decoder}, cdf={self.cdf}"
