"""Learned reverse variances (Nichol & Dhariwal 2021): Σ_θ = exp(v log β_t + (1-v) log β̃_t), the paper's
L_hybrid with its stop-gradient, the ancestral sampler and the bound with Σ_θ, against closed forms.

Gaussian data x_0 ~ N(0, s² I) on the ddpm chain has V_t = Var(x_t) = ᾱ_t s² + 1 - ᾱ_t and the exact reverse
conditional q(x_{t-1}|x_t) is Gaussian with variance  Var* = β_t V_{t-1} / V_t  (x_t = √α_t x_{t-1} + √β_t z),
which lies between β̃_t (s = 0) and β_t (s = 1). With the exact mean, E[KL(q(x_{t-1}|x_t,x_0) ‖ N(μ*, Σ))] is
minimised by Σ = β̃_t + E[(μ̃ - μ*)²] = Var* (law of total variance), so the optimal v gives Var*.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffexp import schedules as S
from diffexp.denoiser import Denoiser
from diffexp.likelihood import elbo_bits_per_dim
from diffexp.models.learned_variance import LearnedVarianceNet, learns_sigma, split_output
from diffexp.objectives import HybridObjective
from diffexp.oracles import GaussianOracle
from diffexp.process import DiffusionProcess
from diffexp.samplers import DDPMSampler
from diffexp.samplers.base import NoiseSource
from diffexp.samplers.ddpm import ddpm_step

T, D, S2 = 100, 2, 0.25  # s = 0.5


def gaussian_reverse_var(process: DiffusionProcess, s2: float = S2) -> torch.Tensor:
    """Var(x_{t-1} | x_t) = β_t V_{t-1}/V_t for x_0 ~ N(0, s²), entries t = 1..T (index 0..T-1); V_0 = s²."""
    sch = process.schedule
    V = sch.alphas_cumprod.double() * s2 + 1.0 - sch.alphas_cumprod.double()
    V_prev = torch.cat([torch.tensor([s2], dtype=torch.float64), V[:-1]])
    return sch.betas.double() * V_prev / V


def optimal_frac(process: DiffusionProcess, s2: float = S2) -> torch.Tensor:
    """v with exp(v log β + (1-v) log β̃) = Var* (index ≥ 1)."""
    sch = process.schedule
    lo, hi = sch.posterior_log_variance_clipped.double(), sch.log_betas.double()
    return (torch.log(gaussian_reverse_var(process, s2)) - lo) / (hi - lo)


class OracleWithVariance(nn.Module):
    """The exact ε* of N(0, s² I) data plus a variance output o = 2v - 1 per timestep (a perfect
    learned-variance network when v = optimal_frac)."""

    learn_sigma = True

    def __init__(self, process, frac):
        super().__init__()
        self.oracle = GaussianOracle(torch.zeros(D), S2, process)
        self.register_buffer("frac", frac.double())

    def forward(self, x, t, y=None):
        o = (2.0 * self.frac[t.long()] - 1.0).to(x.dtype)[:, None].expand_as(x)
        return torch.cat([self.oracle(x, t).to(x.dtype), o], dim=1)


def test_interpolation_bounds_and_respacing():
    process = DiffusionProcess(S.cosine(T))
    t = torch.arange(T)
    like = torch.zeros(T, 3)
    lo = process.learned_log_variance(t, torch.zeros(T, 3), like)
    hi = process.learned_log_variance(t, torch.ones(T, 3), like)
    torch.testing.assert_close(lo[:, 0], process.schedule.posterior_log_variance_clipped.to(lo.dtype))
    torch.testing.assert_close(hi[:, 0], process.schedule.log_betas.to(hi.dtype))
    frac = torch.rand(T, 3, generator=torch.Generator().manual_seed(0))
    mid = process.learned_log_variance(t, frac, like)
    assert bool((mid >= lo - 1e-12).all()) and bool((mid <= hi + 1e-12).all())
    # Interpolation is linear in log space (eq. 15): the geometric mean at v = 1/2.
    half = process.learned_log_variance(t, torch.full((T, 3), 0.5), like)
    torch.testing.assert_close(half, 0.5 * (lo + hi))
    # Respaced grid: v interpolates between the respaced β'_k and β̃'_k (iDDPM App. B), not the original β.
    ts = list(range(0, T, 10))
    sub = DiffusionProcess(process.schedule.respaced(ts))
    k = torch.arange(len(ts))
    torch.testing.assert_close(sub.learned_log_variance(k, torch.ones(len(ts), 1), torch.zeros(len(ts), 1))[:, 0],
                               torch.log(sub.schedule.betas).to(lo.dtype))
    assert float(sub.schedule.betas[5]) > 5 * float(process.schedule.betas[ts[5]])


def test_split_output_maps_minus_one_one_to_zero_one():
    out = torch.cat([torch.randn(4, 3, 2, 2), torch.full((4, 3, 2, 2), -1.0)], dim=1)
    mean, frac = split_output(out)
    assert mean.shape == (4, 3, 2, 2) and bool((frac == 0).all())
    assert learns_sigma(LearnedVarianceNet(nn.Identity(), 3)) and not learns_sigma(nn.Identity())
    with pytest.raises(ValueError, match="2\\*3 output channels"):
        LearnedVarianceNet(lambda x, t: x, 3)(torch.zeros(1, 3, 2, 2), torch.zeros(1))


def test_hybrid_stop_gradient():
    """L_vlb reaches only the variance channels; the mean channels get exactly L_simple's gradient."""
    process = DiffusionProcess(S.linear(T))
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(64, D, generator=g), torch.randn(64, D, generator=g)
    t = torch.randint(1, T, (64,), generator=g)
    x_t = process.q_sample(x0, t, noise)
    obj = HybridObjective(decoder="gaussian", vlb_weight=0.5)
    out = torch.randn(64, 2 * D, generator=g, requires_grad=True)
    (grad_vlb,) = torch.autograd.grad(obj.vlb(out, x0, x_t, process, "eps", t).sum(), out)
    assert bool((grad_vlb[:, :D] == 0).all())  # the stop-gradient
    assert float(grad_vlb[:, D:].abs().min()) > 0  # L_vlb trains v
    per_sample, _, terms = obj.compute(lambda *_: out, x0, process, "eps", t, noise)
    (grad_all,) = torch.autograd.grad(per_sample.sum(), out)
    (grad_mse,) = torch.autograd.grad(((out[:, :D] - noise) ** 2).mean(1).sum(), out)
    torch.testing.assert_close(grad_all[:, :D], grad_mse[:, :D])
    torch.testing.assert_close(grad_all[:, D:], 0.5 * grad_vlb[:, D:])
    assert set(terms) == {"mse", "vlb_bpd"}
    with pytest.raises(ValueError, match=r"\+model\.learn_sigma=true"):  # a fixed-variance network
        obj.compute(lambda *_: out[:, :D], x0, process, "eps", t, noise)


@pytest.mark.parametrize("t_index", [10, 20, 30])
def test_optimal_v_gives_true_posterior_variance(t_index):
    """Minimising the hybrid's L_vlb over v (exact mean from the oracle) recovers Var* = β_t V_{t-1}/V_t."""
    process = DiffusionProcess(S.linear(T))
    oracle = GaussianOracle(torch.zeros(D), S2, process)
    n = 20000
    g = torch.Generator().manual_seed(t_index)
    x0 = math.sqrt(S2) * torch.randn(n, D, generator=g, dtype=torch.float64)
    t = torch.full((n,), t_index)
    x_t = process.q_sample(x0, t, torch.randn(n, D, generator=g, dtype=torch.float64))
    eps = oracle(x_t, t).double()
    o = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    obj = HybridObjective(decoder="gaussian")
    opt = torch.optim.LBFGS([o], lr=1.0, max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        out = torch.cat([eps, o.expand(n, D)], dim=1)
        loss = obj.vlb(out, x0, x_t, process, "eps", t).mean()
        loss.backward()
        return loss

    opt.step(closure)
    log_var = process.learned_log_variance(t[:1], (o.detach() + 1) / 2, x_t[:1])
    learned, exact = float(torch.exp(log_var).flatten()[0]), float(gaussian_reverse_var(process)[t_index])
    beta, beta_tilde = float(process.schedule.betas[t_index]), float(process.schedule.posterior_variance[t_index])
    # Σ̂ = β̃ + mean of n·D squared N(0, Var* - β̃) deviations: relative sd √(2/(nD)) of (Var* - β̃).
    tol = 5 * math.sqrt(2 / (n * D)) * (exact - beta_tilde) + 1e-6 * exact  # + the float32 schedule tables
    assert abs(learned - exact) < tol, (learned, exact, tol)
    assert beta_tilde + 5 * tol < exact < beta - 5 * tol  # the oracle separates Var* from both fixed choices


def test_ancestral_sampler_uses_learned_variance():
    """With the exact mean and v = the optimal fraction, DDPM sampling of N(0, s² I) data is exact: the sample
    variance is s² (while the fixed β and β̃ are biased on this data); the bound uses Σ_θ too."""
    process = DiffusionProcess(S.linear(T))
    frac = optimal_frac(process)
    frac[0] = 0.0  # t = 1: the sampler draws no noise; the decoder term is not tested here
    den = Denoiser(OracleWithVariance(process, frac), process, data_range=None)
    assert den.learn_sigma
    n = 20000
    var = {}
    for name, variance in (("learned", "beta"), ("beta", "beta"), ("beta_tilde", "beta_tilde")):
        d = den if name == "learned" else Denoiser(GaussianOracle(torch.zeros(D), S2, process), process, data_range=None)
        x = DDPMSampler(variance=variance, clip_denoised=False)(d, (D,), n, generator=torch.Generator().manual_seed(3))
        var[name] = float(x.double().var())
    tol = 5 * S2 * math.sqrt(2 / (n * D))
    assert abs(var["learned"] - S2) < tol, var
    assert var["beta"] > S2 + tol and var["beta_tilde"] < S2 - tol, var
    # The bound with Σ_θ = Var*: each KL term is at its minimum over Σ, below the fixed-β̃ bound's terms.
    x0 = math.sqrt(S2) * torch.randn(256, D, generator=torch.Generator().manual_seed(4))
    learned = elbo_bits_per_dim(den, x0, generator=torch.Generator().manual_seed(5), discrete=False)
    fixed = elbo_bits_per_dim(Denoiser(den.net.oracle, process, data_range=None), x0,
                              generator=torch.Generator().manual_seed(5), discrete=False)
    assert learned["reverse_variance"] == "learned"
    assert float(learned["vb_bpd"].mean()) < float(fixed["vb_bpd"].mean())


def test_ddpm_step_respaced_noise_scale():
    """On a respaced grid the step's noise has variance exp(v log β'_k + (1-v) log β̃'_k)."""
    process = DiffusionProcess(S.linear(T))
    sub = DiffusionProcess(process.schedule.respaced(list(range(0, T, 10))))
    n, k = 40000, 4
    x = torch.zeros(n, 1)
    noise = NoiseSource(n, "cpu", generator=torch.Generator().manual_seed(0))
    for v, want in ((1.0, sub.schedule.betas[k]), (0.0, sub.schedule.posterior_variance[k])):
        out = ddpm_step(sub, k, x, x, noise, "beta_tilde", var_frac=torch.full((n, 1), v))
        assert abs(float(out.var()) / float(want) - 1) < 5 * math.sqrt(2 / n)
