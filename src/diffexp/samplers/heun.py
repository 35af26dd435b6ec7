"""Deterministic probability-flow ODE sampling (Karras et al. 2022, 'EDM', Algorithm 1)."""

from __future__ import annotations

from diffexp.samplers.base import Sampler, check_choice, check_positive, report
from diffexp.samplers.grids import sigma_grid


class HeunSampler(Sampler):
    """EDM Algorithm 1 on the PF-ODE dx̃/dσ = (x̃ - D(x̃; σ))/σ in the VE parameterisation x̃ = x_t/√ᾱ
    (Karras et al. eqs. 1, 3 with s(t) = 1, σ(t) = t), over Karras's σ_0 > … > σ_{N-1}, σ_N = 0 (eq. 5,
    ρ = 7, σ_min/σ_max from the schedule). D(x̃; σ) is x̂_0 of the network at the fractional timestep
    t = t_of_sigma(σ) on x_t = x̃/√(1+σ²). ``solver``: ``heun`` (2nd order; Euler on the last step to
    σ = 0, NFE = 2N-1) or ``euler`` (NFE = N). The last step returns D(x̃; σ_{N-1})."""

    def __init__(self, steps: int = 18, solver: str = "heun", rho: float = 7.0, clip_denoised: bool = True):
        super().__init__(clip_denoised)
        check_choice("solver", solver, ("heun", "euler"))
        check_positive("rho", rho)
        self.steps, self.solver, self.rho = steps, solver, rho

    def nfe(self, num_timesteps: int) -> int:
        return 2 * self.steps - 1 if self.solver == "heun" else self.steps

    @property
    def name(self) -> str:
        return f"{self.solver}-{self.steps}"

    def sample(self, model, x_T, noise, callback):
        sigmas = sigma_grid(model.process, self.steps, "karras", rho=self.rho)
        x = model.ve_prior(x_T, sigmas[0])
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            pred, x_t, t = model.denoise_ve(x, s)
            report(callback, i, t, s, x_t, pred.x0, self.steps)
            d = (x - pred.x0) / s  # = ε̂
            x_next = x + (s_next - s) * d
            if self.solver == "heun" and s_next > 0:
                d_next = (x_next - model.denoise_ve(x_next, s_next)[0].x0) / s_next
                x_next = x + (s_next - s) * 0.5 * (d + d_next)
            x = x_next
        return x
