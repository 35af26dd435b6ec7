"""Analytic denoisers: the exact ε*(x_t, t) for Gaussian and Gaussian-mixture data, on every process family.

For data x_0 ~ Σ_k w_k N(μ_k, Σ_k) and x_t = a x_0 + s ε (a = α(t), s = σ(t) of any process of
:mod:`diffexp.processes`; on ddpm a = √ᾱ_t, s = √(1-ᾱ_t)), the marginal is

    p_t(x_t) = Σ_k w_k N(x_t; a μ_k, C_k),   C_k = a² Σ_k + s² I,

so with responsibilities r_k(x_t) ∝ w_k N(x_t; a μ_k, C_k) (computed by logsumexp in float64):

    ε*(x_t, t)  = -s ∇ log p_t(x_t) = s Σ_k r_k C_k⁻¹ (x_t - a μ_k)
    x̂_0*(x_t,t) = E[x_0 | x_t]      = Σ_k r_k (μ_k + a Σ_k C_k⁻¹ (x_t - a μ_k))

(Tweedie's formula; both computed directly, so neither divides by a or s). The oracles are ``nn.Module``s
obeying the network contract — ``forward(x, t)`` or ``forward(x, t, y=labels)`` where t is what a network
receives, ``process.net_time(t)`` (the index itself on ddpm, float t interpolated as in
:meth:`DiffusionProcess.scales`) — and return the output for the chosen ``prediction`` target through
:meth:`Process.eps_to_output` (every target, velocity included on continuous families), so
``Denoiser(oracle, process, prediction=...)`` is a perfect model. The methods ``eps_and_x0`` and
``marginal_log_prob`` take the process time t itself.
Labels: component k conditions on that component, label K (the null label) is unconditional.

Covariances: a scalar or (K,) tensor of variances (isotropic σ_k² I), a (K, D) tensor (diagonal), or a
(K, D, D) tensor (full; (D, D) for a single Gaussian). Inputs of any shape (B, *data_shape) are flattened
to D = prod(data_shape).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffexp.process import DiffusionProcess, Process
from diffexp.schedules import NoiseSchedule


class GaussianMixtureOracle(nn.Module):
    def __init__(self, weights, means, covs, process: Process | NoiseSchedule, prediction: str = "eps"):
        super().__init__()
        self.process = process if isinstance(process, Process) else DiffusionProcess(process)
        self.prediction = self.process.check_prediction(prediction)
        means = torch.as_tensor(means, dtype=torch.float64)
        means = means[None] if means.ndim == 1 else means.flatten(1)
        K, D = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.numel() != K or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"need {K} non-negative mixture weights, got {weights.tolist()}")
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 2 and covs.shape == (D, D) and K == 1 and D > 1:
            covs = covs[None]
        if covs.ndim <= 1:  # isotropic σ_k² I
            eigvals, eigvecs = covs.reshape(-1).expand(K)[:, None].expand(K, D).clone(), None
        elif covs.shape == (K, D):  # diagonal
            eigvals, eigvecs = covs.clone(), None
        elif covs.shape == (K, D, D):  # full: Σ_k = U_k diag(λ_k) U_kᵀ
            if not torch.allclose(covs, covs.transpose(1, 2)):
                raise ValueError("covariance matrices must be symmetric")
            eigvals, eigvecs = torch.linalg.eigh(covs)
        else:
            raise ValueError(f"covs of shape {tuple(covs.shape)} do not fit {K} components in {D} dimensions")
        if bool((eigvals < -1e-12).any()):
            raise ValueError("covariance matrices must be positive semi-definite")
        self.num_components, self.dim = K, D
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("eigvals", eigvals.clamp_min(0))
        self.register_buffer("eigvecs", eigvecs)

    # ---- the closed forms ------------------------------------------------------------------------
    def _rotate(self, x: Tensor) -> Tensor:
        """Coordinates in each component's eigenbasis: (B, K, D) from (B, K, D)."""
        return x if self.eigvecs is None else torch.einsum("bkd,kde->bke", x, self.eigvecs)

    def _unrotate(self, x: Tensor) -> Tensor:
        return x if self.eigvecs is None else torch.einsum("bke,kde->bkd", x, self.eigvecs)

    def _terms(self, x: Tensor, t: Tensor, y: Tensor | None):
        """float64 (B,D) x → a, s (B,1,1), rotated residual z = Uᵀ(x - aμ_k), C's eigenvalues c, and
        log r_k (log responsibilities, (B, K))."""
        a, s = self.process.scales(t, torch.empty(x.shape[0], 1, 1, dtype=torch.float64, device=x.device))
        z = self._rotate(x[:, None, :] - a * self.means[None])
        c = a**2 * self.eigvals[None] + s**2  # eigenvalues of C_k, (B, K, D)
        log_n = -0.5 * ((z**2 / c).sum(-1) + torch.log(c).sum(-1) + self.dim * math.log(2 * math.pi))
        log_joint = torch.log(self.weights)[None] + log_n
        if y is not None:  # condition on component y (label K = null = unconditional)
            y = y.to(x.device).long()
            mask = (torch.arange(self.num_components, device=x.device)[None] == y[:, None]) | (
                y[:, None] == self.num_components
            )
            log_joint = log_joint.masked_fill(~mask, -math.inf)
        return a, s, z, c, log_joint

    def marginal_log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """log p_t(x_t) (float64, per sample)."""
        x64 = x.to(torch.float64).flatten(1)
        return torch.logsumexp(self._terms(x64, _as_t(t, x), None)[-1], dim=1)

    def log_responsibilities(self, x: Tensor, t: Tensor) -> Tensor:
        """log r_k(x_t) = log p(component k | x_t) at process time t (float64, (B, K))."""
        x64 = x.to(torch.float64).flatten(1)
        return torch.log_softmax(self._terms(x64, _as_t(t, x), None)[-1], dim=1)

    def eps_and_x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(ε*, E[x_0|x_t]) in float64, shaped like x."""
        x64 = x.to(torch.float64).flatten(1)
        a, s, z, c, log_joint = self._terms(x64, _as_t(t, x), y)
        r = torch.softmax(log_joint, dim=1)[..., None]  # (B, K, 1)
        cz = self._unrotate(z / c)  # C_k⁻¹ (x - aμ_k)
        eps = s[:, 0] * (r * cz).sum(1)
        x0 = (r * (self.means[None] + a * self._unrotate(self.eigvals[None] * z / c))).sum(1)
        return eps.reshape(x.shape), x0.reshape(x.shape)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = self.process.t_of_net_time(_as_t(t, x))
        eps, x0 = self.eps_and_x0(x, t, y)
        out = self.process.eps_to_output(eps, x0, x.to(torch.float64), t, self.prediction)
        return out.to(x.dtype)

    # ---- the data distribution ------------------------------------------------------------------
    def covariances(self) -> Tensor:
        """Σ_k as (K, D, D) float64."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws of x_0 (float32, (n, D)) and their component labels."""
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = z * self.eigvals.cpu()[k].sqrt()
        if self.eigvecs is not None:
            scaled = torch.einsum("nde,ne->nd", self.eigvecs.cpu()[k], scaled)
        return (self.means.cpu()[k] + scaled).float(), k


class GaussianOracle(GaussianMixtureOracle):
    """Exact denoiser for x_0 ~ N(μ, Σ): ε* = s C⁻¹(x_t - aμ), C = a²Σ + s²I. ``cov``: a variance, a
    (D,) diagonal or a (D, D) matrix."""

    def __init__(self, mean, cov, process: Process | NoiseSchedule, prediction: str = "eps"):
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        cov = cov.reshape(1, -1) if cov.ndim == 1 else cov
        super().__init__([1.0], mean, cov, process, prediction)


def _as_t(t, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class MixtureClassifierOracle(nn.Module):
    """The exact noisy classifier of a labelled Gaussian mixture: component k carries label c with probability
    ``label_probs[c, k]`` (columns sum to 1), so

        p(y = c | x_t) = Σ_k r_k(x_t) π_{ck}      and      p(x_0 | y = c) = Σ_k w̃_k N(μ_k, Σ_k),  w̃_k ∝ w_k π_{ck}

    (the "tilted" weights). ``forward(x, net_time)`` returns log p(y | x_t) for every class (B, C) — logits
    in the classifier contract of :mod:`diffexp.guidance` (its log_softmax is itself)."""

    def __init__(self, oracle: GaussianMixtureOracle, label_probs):
        super().__init__()
        pi = torch.as_tensor(label_probs, dtype=torch.float64)
        if pi.ndim != 2 or pi.shape[1] != oracle.num_components or not torch.allclose(pi.sum(0), torch.ones(pi.shape[1], dtype=torch.float64)):
            raise ValueError(f"label_probs must be (num_classes, {oracle.num_components}) with columns summing to 1")
        self.oracle = oracle
        self.register_buffer("log_pi", torch.log(pi))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = self.oracle.process.t_of_net_time(_as_t(t, x))
        log_r = self.oracle.log_responsibilities(x, t)  # (B, K)
        return torch.logsumexp(log_r[:, None, :] + self.log_pi[None], dim=-1).to(x.dtype)

    def tilted_weights(self, label: int) -> Tensor:
        """The component weights of p(x_0 | y = label): w_k π_{label,k} / Σ_j w_j π_{label,j}."""
        w = self.oracle.weights.cpu() * torch.exp(self.log_pi[label].cpu())
        return w / w.sum()
