"""A Gaussian diffusion process is a pair (α(t), σ(t)): x_t = α(t) x_0 + σ(t) ε, ε ~ N(0, I).

This file holds what every family shares (Kingma et al. 2021, 'Variational diffusion models', §2; Karras
et al. 2022, 'EDM', §2 and Table 1, whose s(t), σ(t) are our α(t), σ(t)/α(t)): the forward sample, the true
value of every prediction target, and the one set of conversions between targets. In code α(t), σ(t) are
``signal_scale``/``noise_scale``; ``sigma`` alone always means the Karras/VE noise level σ/α.

Targets (all functions of (x_0, ε) at fixed x_t = α x_0 + σ ε, so any one determines the others):

    eps      ε
    x0       x_0
    v        α ε − σ x_0                                   (Salimans & Ho 2022)
    score    ∇ log q(x_t | x_0) = −ε/σ                     (Song & Ermon 2019)
    velocity u = dx_t/dt = α' x_0 + σ' ε                   (flow matching: Lipman et al. 2023; for α = 1−t,
                                                            σ = t it is ε − x_0, Liu et al. 2023)

and, inverting (write n = α² + σ², δ = α σ' − σ α'):

    from ε:        x_0 = (x_t − σ ε)/α
    from x_0:      ε = (x_t − α x_0)/σ
    from v:        x_0 = (α x_t − σ v)/n,        ε = (σ x_t + α v)/n          (n = 1 on VP processes)
    from score:    ε = −σ · score
    from velocity: x_0 = (σ' x_t − σ u)/δ,       ε = (α u − α' x_t)/δ

The discrete DDPM chain (:class:`diffexp.processes.ddpm.DiffusionProcess`) keeps its own, bit-identical
formulas; the continuous families implement only their coefficients (``_scales``, ``_scale_derivatives``,
``sigma``, ``t_of_sigma``) and inherit the rest from :class:`Process`. Coefficients are computed in float64
and cast to the dtype and device of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PREDICTION_TARGETS = ("eps", "x0", "v", "score", "velocity")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTION_TARGETS:
        raise ValueError(f"unknown prediction target {prediction!r}; valid targets: {list(PREDICTION_TARGETS)}")
    return prediction


def broadcast(coef: Tensor, like: Tensor) -> Tensor:
    """A per-sample (B,) coefficient as (B, 1, ...) in ``like``'s dtype and device."""
    return coef.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class Prediction:
    """A denoiser output read in every parameterisation: x̂_0 and ε̂ are stored, the rest derived.
    ``d_signal_scale``/``d_noise_scale`` (α', σ') are None on the discrete DDPM chain, where the velocity
    target is undefined."""

    x0: Tensor
    eps: Tensor
    x_t: Tensor
    signal_scale: Tensor  # α(t) of x_t = α x_0 + σ ε (ddpm: √ᾱ_t), broadcastable
    noise_scale: Tensor  # σ(t) (ddpm: √(1-ᾱ_t)), broadcastable
    d_signal_scale: Tensor | None = None  # dα/dt
    d_noise_scale: Tensor | None = None  # dσ/dt
    # Learned-variance fraction v of Σ_θ = exp(v log β_t + (1-v) log β̃_t) (Nichol & Dhariwal eq. 15), from a
    # network with +model.learn_sigma=true; None for fixed reverse variances (diffexp.models.learned_variance).
    var_frac: Tensor | None = None

    @property
    def v(self) -> Tensor:
        return self.signal_scale * self.eps - self.noise_scale * self.x0

    @property
    def score(self) -> Tensor:
        return -self.eps / self.noise_scale

    @property
    def velocity(self) -> Tensor:
        if self.d_signal_scale is None or self.d_noise_scale is None:
            raise ValueError(
                "the velocity target u = α'(t) x0 + σ'(t) ε needs the time derivatives of a continuous-time "
                "process; the discrete ddpm process has none (its valid targets: eps, x0, v, score). "
                "Use a continuous family (process=flow|vp_sde|subvp_sde|ve|edm) or another prediction target"
            )
        return self.d_signal_scale * self.x0 + self.d_noise_scale * self.eps

    def target(self, name: str) -> Tensor:
        check_prediction(name)
        return getattr(self, name)


def in_time_dtype(out: Tensor, t) -> Tensor:
    """``out`` (float64) as float64 when t is float64, else as float32."""
    return out if torch.is_tensor(t) and t.dtype == torch.float64 else out.float()


def positive_or_none(*values):
    """The sample_sigma_min/max options: each None or a positive number, min < max."""
    for name, v in zip(("sample_sigma_min", "sample_sigma_max"), values):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"{name} must be a positive number or null, got {v!r}")
    if None not in values and not values[0] < values[1]:
        raise ValueError(f"need sample_sigma_min < sample_sigma_max, got {values[0]} and {values[1]}")
    return tuple(None if v is None else float(v) for v in values)


class Process:
    """Base class of the continuous-time families. Subclasses set ``t_min``, ``t_max`` (range of t for
    training), ``sample_t_min``/``sample_t_max`` (range the samplers integrate over; default the same),
    ``prior_std`` (std of x at ``t_max``, the samplers' start) and implement ``_scales(t)``,
    ``_scale_derivatives(t)`` on float64 t, ``sigma(t)`` and ``t_of_sigma(sigma)``."""

    name = "process"
    is_discrete = False
    num_timesteps: int | None = None
    schedule = None
    prediction_targets = PREDICTION_TARGETS
    t_min: float
    t_max: float
    prior_std: float
    # Floor of α and σ where a conversion divides by them (0: no floor; see FlowProcess).
    conversion_floor = 0.0
    # The sampling range in VE terms σ = σ(t)/α(t), where a family sets one (None: its sample_t range as
    # is): the samplers' grids span [sample_sigma_min, sample_sigma_max] (see :meth:`_narrowed`).
    sample_sigma_min: float | None = None
    sample_sigma_max: float | None = None
    # The grid a first-order x_t sampler's ``spacing: uniform`` means here (diffexp.samplers.grids
    # .sampling_times): ``time`` (uniform t), or ``karras`` on the α = 1 families (edm, ve), where
    # Karras et al. 2022 (§3, Fig. 2; Table 2) replaced uniform t (on ve: geometric σ) by their ρ = 7 grid.
    uniform_spacing = "time"

    @property
    def sample_t_min(self) -> float:
        return self.t_min

    @property
    def sample_t_max(self) -> float:
        return self.t_max

    def _narrowed(self, t_lo: float, t_hi: float) -> tuple[float, float]:
        """[t_lo, t_hi] narrowed to σ ∈ [sample_sigma_min, sample_sigma_max]. Why: a grid over a family's
        whole σ range (flow: 1e-3 to 999, 6 decades; sub-VP: 1e-4 to 152) spends its steps where nothing
        happens: below σ ≈ 0.002 the data are resolved, above σ ≈ 80 the prior is the data's blur already
        (EDM's range for data of unit scale, Karras et al. 2022, Table 1), so the same step count puts
        fewer steps where the modes split. Tested on every sampler in tests/test_samplers_families.py."""
        if self.sample_sigma_min is not None:
            t_lo = max(t_lo, float(self.t_of_sigma(float(self.sample_sigma_min))))
        if self.sample_sigma_max is not None:
            t_hi = min(t_hi, float(self.t_of_sigma(float(self.sample_sigma_max))))
        if not t_lo < t_hi:
            raise ValueError(f"sample_sigma_min={self.sample_sigma_min}, sample_sigma_max={self.sample_sigma_max} "
                             f"leave no sampling range on {self.name}")
        return t_lo, t_hi

    # ---- to implement --------------------------------------------------------------------------
    def _scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α(t), σ(t)) for float64 t."""
        raise NotImplementedError

    def _scale_derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/dt, dσ/dt) for float64 t."""
        raise NotImplementedError

    def t_of_sigma(self, sigma) -> Tensor:
        """Inverse of :meth:`sigma` (float64)."""
        raise NotImplementedError

    # ---- coefficients --------------------------------------------------------------------------
    @staticmethod
    def _t64(t, device=None) -> Tensor:
        if not torch.is_tensor(t):  # a Python float must not pass through float32
            return torch.as_tensor(t, dtype=torch.float64, device=device)
        return t.to(device=device, dtype=torch.float64)

    def scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(α(t), σ(t)) computed in float64, broadcastable against ``like`` and in its dtype."""
        a, s = self._scales(self._t64(t, like.device))
        return broadcast(a, like), broadcast(s, like)

    def scale_derivatives(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/dt, dσ/dt), broadcastable against ``like``."""
        da, ds = self._scale_derivatives(self._t64(t, like.device))
        return broadcast(da, like), broadcast(ds, like)

    def sigma(self, t) -> Tensor:
        """Karras/VE noise level σ(t)/α(t) (float64): x_t/α(t) = x_0 + (σ/α) ε."""
        a, s = self._scales(self._t64(t))
        return s / a

    def log_snr(self, t) -> Tensor:
        """λ(t) = log(α²/σ²) (float64)."""
        a, s = self._scales(self._t64(t))
        return 2.0 * (torch.log(a) - torch.log(s))

    def sigma_range(self) -> tuple[float, float]:
        """(σ_min, σ_max) in VE terms over the sampling range: the ends of the samplers' noise grids."""
        return float(self.sigma(self.sample_t_min)), float(self.sigma(self.sample_t_max))

    def ve_prior_scale(self, sigma_max: float) -> float:
        """Multiplier taking a standard normal draw to the samplers' start x̃ = x_T/α at VE level σ_max:
        x_T ~ N(0, prior_std² I) (the data's share of x_T neglected, as every sampler of these papers does)."""
        t = self.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64))
        return self.prior_std / float(self._scales(t.reshape(1))[0])

    def net_time(self, t: Tensor) -> Tensor:
        """What the network receives as its time input: 1000 t for the families with t ∈ [0, 1], so that
        the sinusoidal embeddings made for DDPM's indices 0..999 see the same range (score_sde feeds 999 t
        to its DDPM-style networks). Float64 t stays float64, anything else becomes float32 (half
        precision would resolve 1000 t only to steps of 4)."""
        return in_time_dtype(1000.0 * self._t64(t), t)

    def t_of_net_time(self, net_t: Tensor) -> Tensor:
        """Inverse of :meth:`net_time` (float64); oracles posing as networks use it."""
        return self._t64(net_t) / 1000.0

    def check_prediction(self, prediction: str) -> str:
        check_prediction(prediction)
        if prediction not in self.prediction_targets:
            raise ValueError(f"prediction={prediction!r} is undefined on the {self.name} process; "
                             f"valid targets there: {list(self.prediction_targets)}")
        return prediction

    # ---- forward process -------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = α(t) x_0 + σ(t) ε."""
        a, s = self.scales(t, x0)
        return a * x0 + s * noise

    def _prediction(self, x0, eps, x_t, t) -> Prediction:
        a, s = self.scales(t, x_t)
        da, ds = self.scale_derivatives(t, x_t)
        return Prediction(x0=x0, eps=eps, x_t=x_t, signal_scale=a, noise_scale=s, d_signal_scale=da, d_noise_scale=ds)

    def targets(self, x0: Tensor, noise: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        """The true values of every target for a forward sample x_t = α x_0 + σ ε."""
        return self._prediction(x0, noise, x_t, t)

    # ---- conversions between prediction targets --------------------------------------------------
    def predict(self, output: Tensor, x_t: Tensor, t: Tensor, prediction: str,
                clip: tuple[float, float] | None = None) -> Prediction:
        """Read a network output as ``prediction`` (formulas in the module docstring) and return x̂_0, ε̂.

        ``clip``: clamp x̂_0 to the data range and recompute ε̂ = (x_t − α x̂_0)/σ from it."""
        a, s = self.scales(t, x_t)
        da, ds = self.scale_derivatives(t, x_t)
        fa, fs = a.clamp_min(self.conversion_floor), s.clamp_min(self.conversion_floor)
        if prediction == "eps":
            eps = output
            x0 = (x_t - s * eps) / fa
        elif prediction == "x0":
            x0 = output
            eps = (x_t - a * x0) / fs
        elif prediction == "v":
            n = a**2 + s**2
            x0 = (a * x_t - s * output) / n
            eps = (s * x_t + a * output) / n
        elif prediction == "score":
            eps = -s * output
            x0 = (x_t - s * eps) / fa
        elif prediction == "velocity":
            det = a * ds - s * da
            x0 = (ds * x_t - s * output) / det
            eps = (a * output - da * x_t) / det
        else:
            self.check_prediction(prediction)
        if clip is not None:
            x0 = x0.clamp(*clip)
            eps = (x_t - a * x0) / fs
        return Prediction(x0=x0, eps=eps, x_t=x_t, signal_scale=a, noise_scale=s, d_signal_scale=da, d_noise_scale=ds)

    def output_of(self, prediction: Prediction, target: str) -> Tensor:
        """The network output a perfect ``target``-predicting model gives (inverse of :meth:`predict`)."""
        return prediction.target(self.check_prediction(target))

    def eps_to_output(self, eps: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Tensor:
        """Express a (ε, x_0) pair as the network output for ``prediction`` (used by analytic oracles)."""
        return self.output_of(self._prediction(x0, eps, x_t, t), prediction)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t ∈ [{self.t_min:g}, {self.t_max:g}])"
