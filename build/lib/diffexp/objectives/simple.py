"""L_simple: MSE on the chosen prediction target, t uniform, optionally SNR-weighted (Ho et al. 2020 eq. 14
for ε; Salimans & Ho 2022 for v; weightings in :mod:`diffexp.objectives.weighting`).

    per_sample = w(SNR_t) · mean_d (f_θ(x_t, t) - target)²,   x_t = a_t x_0 + s_t ε,

target ∈ {ε, x_0, v, ∇log q(x_t|x_0) = -ε/s_t} from :meth:`DiffusionProcess.targets`. The network output
is compared with its own target directly (no conversion), so the loss is finite for every target
under zero-terminal-SNR schedules.
"""

from __future__ import annotations

from diffexp.objectives.base import Objective, mean_flat, warn_eps_under_ztsnr
from diffexp.objectives.weighting import check_weighting, snr_weight


class SimpleObjective(Objective):
    def __init__(
        self,
        weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        p2_k: float = 1.0,
        p2_gamma: float = 1.0,
        timestep_sampler: str = "uniform",
        history_per_term: int = 10,
        uniform_prob: float = 0.001,
    ):
        super().__init__(timestep_sampler, history_per_term, uniform_prob)
        self.weighting = check_weighting(weighting)
        if weighting == "min_snr" and min_snr_gamma <= 0 or weighting == "p2" and p2_k <= 0:
            raise ValueError(
                "min_snr_gamma and p2_k must be positive (p2_k = 0 divides by SNR = 0 under zero terminal SNR)"
            )
        self.min_snr_gamma, self.p2_k, self.p2_gamma = float(min_snr_gamma), float(p2_k), float(p2_gamma)

    def validate(self, prediction, schedule, data_range=None) -> None:
        super().validate(prediction, schedule, data_range)
        warn_eps_under_ztsnr(prediction, schedule)

    def weight(self, process, t, prediction):
        snr = process.schedule.snr.to(t.device)[t.long()].float()
        return snr_weight(snr, prediction, self.weighting, self.min_snr_gamma, self.p2_k, self.p2_gamma)

    def compute(self, net_fn, x0, process, prediction, t, noise, y=None):
        x_t = process.q_sample(x0, t, noise)
        out = net_fn(x_t, t, y).to(x0.dtype)
        target = process.targets(x0, noise, x_t, t).target(prediction)
        mse = mean_flat((out - target) ** 2)
        per_sample = self.weight(process, t, prediction) * mse
        return per_sample, per_sample.detach(), {"mse": mse.mean()}

    def extra_repr(self) -> str:
        return f"weighting={self.weighting}"
