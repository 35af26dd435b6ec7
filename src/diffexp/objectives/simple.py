"""L_simple: a weighted MSE on one prediction target, on any family (Ho et al. 2020 eq. 14 for ε; Salimans
& Ho 2022 for v; the weightings of :mod:`diffexp.objectives.weighting`; the time samplers of
:mod:`diffexp.objectives.time_samplers`):

    per_sample = λ(t) · mean_d (ŷ_θ(x_t, t) - y)²,   x_t = α(t) x_0 + σ(t) ε,  t ~ p(t),

with y ∈ {ε, x_0, v, score = -ε/σ, velocity u = α'x_0 + σ'ε} the true value of ``target`` from
:meth:`Process.targets`. When ``target`` is None (the default) the loss is taken on the target the network
predicts and its output is compared with it directly (no conversion: finite for every target under
zero-terminal-SNR schedules). Otherwise the output is read as ``target`` through :meth:`Process.predict`
(this is how ``edm``, ``flow_matching`` and ``ncsn`` take their loss on x_0, u and the score whatever the
network predicts).
"""

from __future__ import annotations

from diffexp.objectives.base import Objective, mean_flat, warn_eps_under_ztsnr
from diffexp.objectives.weighting import check_weighting, loss_weight
from diffexp.process import check_prediction


class SimpleObjective(Objective):
    def __init__(
        self,
        weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        p2_k: float = 1.0,
        p2_gamma: float = 1.0,
        sigma_data: float = 0.5,
        target: str | None = None,
        timestep_sampler: str = "uniform",
        history_per_term: int = 10,
        uniform_prob: float = 0.001,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        num_levels: int = 10,
    ):
        super().__init__(timestep_sampler, history_per_term, uniform_prob, p_mean=p_mean, p_std=p_std,
                         logit_mean=logit_mean, logit_std=logit_std, num_levels=num_levels)
        self.weighting = check_weighting(weighting)
        if weighting == "min_snr" and min_snr_gamma <= 0 or weighting == "p2" and p2_k <= 0:
            raise ValueError(
                "min_snr_gamma and p2_k must be positive (p2_k = 0 divides by SNR = 0 under zero terminal SNR)"
            )
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.min_snr_gamma, self.p2_k, self.p2_gamma = float(min_snr_gamma), float(p2_k), float(p2_gamma)
        self.sigma_data = float(sigma_data)
        self.target = None if target is None else check_prediction(target)

    def validate(self, prediction, process, data_range=None) -> None:
        super().validate(prediction, process, data_range)
        warn_eps_under_ztsnr(prediction, process)

    def loss_target(self, prediction: str) -> str:
        return self.target or prediction

    def weight(self, process, t, target):
        return loss_weight(process, t, target, self.weighting, self.min_snr_gamma, self.p2_k, self.p2_gamma, self.sigma_data)

    def compute(self, net_fn, x0, process, prediction, t, noise, y=None):
        x_t = process.q_sample(x0, t, noise)
        out = net_fn(x_t, t, y).to(x0.dtype)
        target = self.loss_target(prediction)
        if target != prediction:
            out = process.predict(out, x_t, t, prediction).target(target)
        true = process.targets(x0, noise, x_t, t).target(target)
        mse = mean_flat((out - true) ** 2)
        per_sample = self.weight(process, t, target) * mse
        return per_sample, per_sample.detach(), {"mse": mse.mean()}

    def extra_repr(self) -> str:
        return f"weighting={self.weighting}" + (f", target={self.target}" if self.target else "")
