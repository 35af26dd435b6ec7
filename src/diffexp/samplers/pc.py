"""Predictor-corrector sampling (Song et al. 2021, 'Score-based generative modeling through SDEs')."""

from __future__ import annotations

import torch

from diffexp.process import DiffusionProcess
from diffexp.samplers.base import (
    OptionError,
    Sampler,
    check_choice,
    check_discrete_steps,
    check_positive,
    report,
    timesteps,
)
from diffexp.samplers.ddim import INDEX_SPACINGS, ddim_step, ddim_step_scales
from diffexp.samplers.ddpm import CONTINUOUS_STEPS, ancestral_step, ddpm_step
from diffexp.samplers.grids import SPACINGS, is_discrete, sampling_times, scales_at

NORMS = ("batch", "sample", "expected")


class PCSampler(Sampler):
    """Predictor-corrector over S timesteps (Algorithm 1 of Song et al. 2021; VP corrector, Algorithm 5).

    ``steps``: S ≤ T uniformly/quadratically/trailing spaced timesteps (None: all T).
    Predictor: one ancestral step (DDPM on the respaced schedule, σ² = β or β̃) or one DDIM step (η) from
    t_k to t_{k-1}. Corrector: then ``n_corrector`` Langevin steps at t_{k-1}, in the process's own
    (VP) scaling with the score ŝ = ∇ log p_t(x_t) from the process algebra:

        x ← x + ε ŝ + √(2ε) z,    ε = 2 α_{t_{k-1}} (r ‖z‖ / ‖ŝ‖)²,

    r the target signal-to-noise ratio ``snr`` and α = 1 - β' of the sampled (respaced) schedule.
    ``norms`` says which ‖z‖, ‖ŝ‖ enter ε:

    * ``batch`` (default): each norm averaged over the batch, one ε per step for the whole batch, as the
      reference implementation does (score_sde ``LangevinCorrector``). A sample then depends on the other
      samples of its batch (through ε only), unlike every other sampler here.
    * ``sample``: the norms of each sample (Algorithm 5 read literally). The step then depends on the
      sample's own z and x, and the corrector's stationary law is not p_t: where ‖ŝ‖ ≈ 0 (between the modes
      of a mixture) the step is huge, and for Gaussian data the variance is inflated by about (1 + 2/D)² in
      dimension D (measured: 1.6 in 8-D) — negligible for images, several-fold in 2-D (measured on a 2-D
      0.2/0.8 mixture: weights 0.37/0.63, spreads 5-17x too wide).
    * ``expected``: ‖z‖² and ‖ŝ‖² replaced by their values under pure noise, D and D/s_t², so
      ε = 2α r² s_t² is fixed per level and the corrector is plain Langevin dynamics targeting p_t; samples
      depend on their seed only.

    No corrector follows the last predictor step, which returns x̂_0.

    On a continuous family (VP, sub-VP, VE as in Song et al.; also edm and flow) the predictor is the
    ancestral or DDIM step in (α, σ) over ``steps`` times (null: 1000) of the grid ``spacing`` (uniform =
    time), from x = prior_std · x_T, and the corrector's α is the grid step's (α_{t_{k-1}}/α_{t_{k-2}})²
    (1 - β' on VP, 1 on VE: score_sde's VP and VE correctors)."""


    def __init__(
        self,
        steps: int | None = None,
        predictor: str = "ancestral",
        n_corrector: int = 1,
        snr: float = 0.16,
        norms: str = "batch",
        eta: float = 0.0,
        variance: str = "beta_tilde",
        spacing: str = "uniform",
        clip_denoised: bool = True,
    ):
        super().__init__(clip_denoised)
        check_choice("predictor", predictor, ("ancestral", "ddim"))
        check_choice("norms", norms, NORMS)
        check_choice("variance", variance, ("beta", "beta_tilde"))
        check_choice("spacing", spacing, INDEX_SPACINGS + SPACINGS)
        if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
            raise OptionError("n_corrector", f"n_corrector must be an integer >= 0, got {n_corrector!r}")
        if not 0.0 <= eta <= 1.0:
            raise OptionError("eta", f"eta must lie in [0, 1], got {eta}")
        check_positive("snr", snr)
        self.norms = norms
        self.steps, self.predictor, self.n_corrector, self.snr = steps, predictor, n_corrector, snr
        self.eta, self.variance, self.spacing = eta, variance, spacing

    def check(self, process) -> None:
        if self.spacing not in INDEX_SPACINGS[:1] + SPACINGS and not is_discrete(process):
            raise OptionError("spacing", f"spacing {self.spacing!r} picks timesteps of the discrete ddpm schedule; "
                              f"on the {process.name} process use one of {['uniform', *SPACINGS]}")
        if is_discrete(process) and self.spacing not in INDEX_SPACINGS:
            raise OptionError("spacing", f"on the ddpm process pc steps along the schedule's timesteps; "
                              f"use one of {list(INDEX_SPACINGS)}")
        if is_discrete(process):
            check_discrete_steps(process, self.steps, self.spacing)

    def nfe(self, num_timesteps: int | None) -> int:
        steps = self.steps or num_timesteps or CONTINUOUS_STEPS
        return steps + self.n_corrector * (steps - 1)

    @property
    def name(self) -> str:
        return f"pc-{self.predictor}-{self.steps or 'T'}x{self.n_corrector}"

    def corrector_step_size(self, z, score, alpha: float, noise_scale):
        """ε of the corrector step for noise z and score ŝ (see ``norms`` in the class docstring)."""
        if self.norms == "expected":
            return 2 * alpha * (self.snr * noise_scale) ** 2
        z_norm, g_norm = _norm(z), _norm(score)
        if self.norms == "batch":
            z_norm, g_norm = z_norm.mean(), g_norm.mean()
        ratio = z_norm / g_norm.clamp_min(torch.finfo(score.dtype).tiny)
        return 2 * alpha * (self.snr * ratio) ** 2

    def sample(self, model, x_T, noise, callback):
        if not is_discrete(model.process):
            return self._sample_continuous(model, x_T, noise, callback)
        ts = timesteps(model.schedule.num_timesteps, self.steps or model.schedule.num_timesteps, self.spacing)
        sched = model.schedule.respaced(ts)
        process, sigmas, ab = DiffusionProcess(sched), model.schedule.sigmas, model.schedule.alphas_cumprod
        total, step, x = self.nfe(model.schedule.num_timesteps), 0, x_T
        for k in reversed(range(len(ts))):
            pred = model(x, ts[k])
            report(callback, step, ts[k], sigmas[ts[k]], x, pred.x0, total)
            step += 1
            if self.predictor == "ancestral":
                x = ddpm_step(process, k, x, pred.x0, noise, self.variance, pred.var_frac)
            else:
                ab_prev = float(ab[ts[k - 1]]) if k > 0 else 1.0
                x = ddim_step(pred.x0, pred.eps, ab_prev, float(ab[ts[k]]), self.eta, noise, x)
            if k == 0:
                break
            alpha = float(sched.alphas[k - 1])
            for _ in range(self.n_corrector):
                pred = model(x, ts[k - 1])
                report(callback, step, ts[k - 1], sigmas[ts[k - 1]], x, pred.x0, total)
                step += 1
                z, g = noise.randn_like(x), pred.score
                step_size = self.corrector_step_size(z, g, alpha, pred.noise_scale)
                x = x + step_size * g + (2 * step_size) ** 0.5 * z
        return x

    def _sample_continuous(self, model, x_T, noise, callback):
        process = model.process
        times = sampling_times(process, self.steps or CONTINUOUS_STEPS, self.spacing)
        scales = [scales_at(process, t) for t in times] + [(1.0, 0.0)]
        sigma = [float(process.sigma(torch.tensor(t, dtype=torch.float64))) for t in times]
        total, step, x = len(times) + self.n_corrector * (len(times) - 1), 0, x_T * float(process.prior_std)
        for i, t in enumerate(times):
            pred = model(x, t)
            report(callback, step, t, sigma[i], x, pred.x0, total)
            step += 1
            if self.predictor == "ancestral":
                x = ancestral_step(pred.x0, *scales[i + 1], *scales[i], self.variance, noise, x)
            else:
                x = ddim_step_scales(pred.x0, pred.eps, *scales[i + 1], *scales[i], self.eta, noise, x)
            if i + 1 == len(times):
                break
            alpha = (scales[i + 1][0] / scales[i + 2][0]) ** 2
            for _ in range(self.n_corrector):
                pred = model(x, times[i + 1])
                report(callback, step, times[i + 1], sigma[i + 1], x, pred.x0, total)
                step += 1
                z, g = noise.randn_like(x), pred.score
                step_size = self.corrector_step_size(z, g, alpha, pred.noise_scale)
                x = x + step_size * g + (2 * step_size) ** 0.5 * z
        return x


def _norm(x):
    """Per-sample Euclidean norm, shaped to broadcast against x."""
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
