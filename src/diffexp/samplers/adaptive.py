"""Adaptive probability-flow ODE sampling (Song et al. 2021, §4.3 and App. D.2: RK45 with rtol = atol = 1e-5)."""

from __future__ import annotations

import math

import torch

from diffexp.samplers.base import OptionError, Sampler, check_choice, check_positive, report
from diffexp.samplers.grids import sigma_range

METHODS = ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8")


class AdaptiveODESampler(Sampler):
    """The probability-flow ODE solved by an adaptive embedded Runge-Kutta method (torchdiffeq; default
    ``dopri5``, the Dormand-Prince RK45 that score_sde uses), on any process through its VE view
    x̃ = x_t/α(t), σ = σ(t)/α(t) (Karras et al. 2022, eq. 4 with s = α):

        dx̃/d log σ = σ dx̃/dσ = x̃ - D(x̃; σ),      D(x̃; σ) = x̂_0 at t = t_of_sigma(σ)

    integrated in s = log σ from σ_max down to σ_min of the process (the log-σ variable keeps the right-hand
    side O(|x̃|) over five decades of σ), then x̂_0 = D(x̃; σ_min) is returned (one more evaluation).
    ``rtol``/``atol``: the solver's error tolerances per element. The number of network evaluations is
    decided by the solver; ``last_nfe`` holds it after a call, and :meth:`nfe` returns the mean over the
    calls so far (0 before the first call). The step-size control uses the error norm of the whole batch, so (as in score_sde) a
    sample depends on the other samples of its batch through the chosen steps, within the tolerance.
    The per-step ``callback`` sees only the final evaluation: the solver's stages are internal to it."""

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", clip_denoised: bool = True):
        super().__init__(clip_denoised)
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        check_choice("method", method, METHODS)
        self.rtol, self.atol, self.method = float(rtol), float(atol), method
        self.last_nfe, self._nfe_sum, self._calls = 0, 0, 0

    def nfe(self, num_timesteps) -> int:
        """Evaluations per sample, averaged over the calls so far (adaptive: not known in advance; 0 before
        the first call)."""
        return round(self._nfe_sum / self._calls) if self._calls else 0

    @property
    def name(self) -> str:
        return f"ode-{self.method}-tol{max(self.rtol, self.atol):g}"

    def sample(self, model, x_T, noise, callback):
        try:
            from torchdiffeq import odeint
        except ImportError as e:  # pragma: no cover - the extra is part of .[all]
            raise OptionError("method", "the adaptive ODE sampler needs torchdiffeq: pip install 'diffexp[ode]'") from e
        sigma_min, sigma_max = sigma_range(model.process)
        calls = [0]

        def rhs(s, x):
            calls[0] += 1
            pred, _, _ = model.denoise_ve(x, math.exp(float(s)))
            return x - pred.x0.to(x.dtype)

        span = torch.tensor([math.log(sigma_max), math.log(sigma_min)], dtype=torch.float64)
        x = model.ve_prior(x_T, sigma_max)
        x = odeint(rhs, x, span.to(x.device), rtol=self.rtol, atol=self.atol, method=self.method)[-1]
        pred, x_t, t = model.denoise_ve(x, sigma_min)
        self.last_nfe = calls[0] + 1
        self._nfe_sum, self._calls = self._nfe_sum + self.last_nfe, self._calls + 1
        report(callback, 0, t, sigma_min, x_t, pred.x0, 1)
        return pred.x0
