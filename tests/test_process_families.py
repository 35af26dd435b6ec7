"""Every process family against its closed forms (issue 11): coefficients, VE noise level and its inverse,
derivatives, forward marginals, conversions between every pair of targets, the exact Gaussian denoiser
(oracle) on every family and target, the flow-matching minimiser, and sampling with the VE-view samplers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffexp.denoiser import Denoiser
from diffexp.oracles import GaussianOracle
from diffexp.process import (
    DDPM_TARGETS,
    PREDICTION_TARGETS,
    DiffusionProcess,
    EDMProcess,
    FlowProcess,
    SubVPSDEProcess,
    VEProcess,
    VPSDEProcess,
)
from diffexp.schedules import linear

FAMILIES = {
    "vp_sde": VPSDEProcess(),
    "subvp_sde": SubVPSDEProcess(),
    "ve": VEProcess(),
    "edm": EDMProcess(),
    "flow": FlowProcess(),
}
F64 = torch.float64


def closed_form(name: str, t: torch.Tensor):
    """(α, σ, α', σ') written out independently from each paper."""
    if name in ("vp_sde", "subvp_sde"):
        b0, b1 = 0.1, 20.0
        B, beta = b0 * t + 0.5 * (b1 - b0) * t**2, b0 + t * (b1 - b0)
        a = torch.exp(-B / 2)
        if name == "vp_sde":
            s = torch.sqrt(-torch.expm1(-B))  # = √(1 − e^{−B}), accurate at small B
            return a, s, -beta * a / 2, beta * torch.exp(-B) / (2 * s)
        return a, -torch.expm1(-B), -beta * a / 2, beta * torch.exp(-B)
    if name == "ve":
        s = 0.01 * (50 / 0.01) ** t
        return torch.ones_like(t), s, torch.zeros_like(t), s * math.log(5000)
    if name == "edm":
        return torch.ones_like(t), t, torch.zeros_like(t), torch.ones_like(t)
    return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)


def grid(p, n: int = 9) -> torch.Tensor:
    """Both training ends and interior points."""
    return torch.linspace(p.t_min, p.t_max, n, dtype=F64)


@pytest.mark.parametrize("name", FAMILIES)
def test_coefficients_match_the_papers(name):
    p = FAMILIES[name]
    t = grid(p)
    like = torch.empty(t.shape[0], 3, dtype=F64)
    got = (*p.scales(t, like), *p.scale_derivatives(t, like))
    for g, want in zip(got, closed_form(name, t)):
        torch.testing.assert_close(g.reshape(-1), want, rtol=1e-12, atol=1e-14)
    a, s = closed_form(name, t)[:2]
    ok = s > 0  # flow at t = 0: σ = 0, log SNR = +inf
    torch.testing.assert_close(p.log_snr(t)[ok], (2 * torch.log(a / s))[ok], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.sigma(t)[a > 0], (s / a)[a > 0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_derivatives_are_the_derivatives(name):
    """Central differences (error O(h²) ≈ 1e-10 relative for h = 1e-5) against scale_derivatives."""
    p, h = FAMILIES[name], 1e-5
    t = torch.linspace(p.t_min + 0.05 * (p.t_max - p.t_min), p.t_max - 2 * h, 7, dtype=F64)
    like = torch.empty(t.shape[0], dtype=F64)
    (ap, sp), (am, sm) = p.scales(t + h, like), p.scales(t - h, like)
    da, ds = p.scale_derivatives(t, like)
    torch.testing.assert_close(da, (ap - am) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ds, (sp - sm) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", FAMILIES)
def test_t_of_sigma_inverts_sigma_over_the_sampling_range(name):
    p = FAMILIES[name]
    t = torch.linspace(p.sample_t_min, p.sample_t_max, 11, dtype=F64)
    torch.testing.assert_close(p.t_of_sigma(p.sigma(t)), t, rtol=1e-10, atol=1e-12)
    lo, hi = p.sigma_range()
    assert lo == pytest.approx(float(p.sigma(p.sample_t_min)), rel=1e-12) and hi > 10 * lo


@pytest.mark.parametrize("name", FAMILIES)
def test_net_time_maps_the_range_onto_0_1000_and_inverts(name):
    p = FAMILIES[name]
    t = grid(p)
    nt = p.net_time(t)
    assert nt.dtype == F64 and float(nt.min()) >= -1e-9 and float(nt.max()) <= 1000 + 1e-9
    assert bool((nt[1:] > nt[:-1]).all())  # monotone: the network can tell the noise levels apart
    assert float(nt[-1] - nt[0]) > 999
    torch.testing.assert_close(p.t_of_net_time(nt), t, rtol=1e-12, atol=1e-12)
    assert p.net_time(t.float()).dtype == torch.float32 and p.net_time(t.half()).dtype == torch.float32


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_marginal_moments(name):
    """x_0 ~ N(μ, v) → x_t ~ N(α μ, α² v + σ²). n = 200000: 6 standard errors (SE of the mean √(var/n), of
    the variance var √(2/n))."""
    p, n, mu, v = FAMILIES[name], 200_000, 0.7, 0.3**2
    g = torch.Generator().manual_seed(0)
    for t in (p.t_min, 0.5 * (p.t_min + p.t_max), p.t_max):
        x0 = mu + math.sqrt(v) * torch.randn(n, 1, generator=g, dtype=F64)
        tt = torch.full((n,), t, dtype=F64)
        x = p.q_sample(x0, tt, torch.randn(n, 1, generator=g, dtype=F64))
        a, s, _, _ = closed_form(name, torch.tensor(t, dtype=F64))
        var = float(a**2 * v + s**2)
        assert abs(float(x.mean()) - float(a) * mu) < 6 * math.sqrt(var / n)
        assert abs(float(x.var()) - var) < 6 * var * math.sqrt(2 / n)


def _round_trip(p, t, src, dst, targets):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    tt = torch.full((6,), float(t), dtype=F64)
    x_t = p.q_sample(x0, tt, eps)
    truth = p.targets(x0, eps, x_t, tt)
    got = p.predict(truth.target(src), x_t, tt, src)
    scale = 1 + truth.target(dst).abs().max()
    torch.testing.assert_close(got.target(dst), truth.target(dst), rtol=1e-9, atol=1e-9 * float(scale))
    torch.testing.assert_close(p.eps_to_output(eps, x0, x_t, tt, dst), truth.target(dst))


@pytest.mark.parametrize("name,src,dst", [(f, a, b) for f in FAMILIES
                                          for a, b in itertools.product(PREDICTION_TARGETS, PREDICTION_TARGETS)])
def test_conversions_round_trip_interior_and_sampling_ends(name, src, dst):
    p = FAMILIES[name]
    for t in (p.sample_t_min, 0.5 * (p.t_min + p.t_max), p.sample_t_max):
        _round_trip(p, t, src, dst, PREDICTION_TARGETS)


@pytest.mark.parametrize("name", FAMILIES)
def test_conversions_at_the_training_ends(name):
    """At t_min and t_max every target is recovered from v and velocity (they never divide by α or σ);
    the other sources too wherever α, σ > 0 there (all but flow, whose σ(0) = 0 and α(1) = 0)."""
    p = FAMILIES[name]
    for t in (p.t_min, p.t_max):
        a, s = closed_form(name, torch.tensor(t, dtype=F64))[:2]
        sources = PREDICTION_TARGETS if float(a) > 0 and float(s) > 0 else ("v", "velocity")
        for src in sources:
            for dst in ("eps", "x0", "v", "velocity"):
                _round_trip(p, t, src, dst, PREDICTION_TARGETS)


def test_flow_velocity_is_eps_minus_x0_and_v_is_its_rotation():
    p = FAMILIES["flow"]
    g = torch.Generator().manual_seed(2)
    x0, eps, t = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g), torch.rand(5, generator=g)
    truth = p.targets(x0, eps, p.q_sample(x0, t, eps), t)
    torch.testing.assert_close(truth.velocity, eps - x0)
    torch.testing.assert_close(p.q_sample(x0, t, eps), (1 - t[:, None]) * x0 + t[:, None] * eps)


def test_ddpm_rejects_velocity_and_keeps_its_identity():
    p = DiffusionProcess(linear(100))
    assert p.is_discrete and p.num_timesteps == 100 and p.t_max == 99 and p.prior_std == 1.0
    t = torch.tensor([3, 50])
    assert p.net_time(t) is t and p.t_of_net_time(t) is t
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="valid targets there: \\['eps', 'x0', 'v', 'score'\\]"):
        p.predict(x, x, t, "velocity")
    with pytest.raises(ValueError, match="no time derivatives"):
        p.scale_derivatives(t, x)
    pred = p.predict(x, x, t, "eps")
    with pytest.raises(ValueError, match="continuous family"):
        _ = pred.velocity
    torch.testing.assert_close(p.log_snr(t.double()), p.schedule.log_snr[t], rtol=1e-12, atol=0)
    assert set(DDPM_TARGETS) == set(PREDICTION_TARGETS) - {"velocity"}


# ---- the exact denoiser of Gaussian data on every family ------------------------------------------------
MU, STD = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 0.8], dtype=F64)


@pytest.mark.parametrize("name,prediction", [(f, q) for f in FAMILIES for q in PREDICTION_TARGETS])
def test_oracle_is_the_posterior_mean_on_every_family_and_target(name, prediction):
    """x_0 ~ N(μ, diag v): E[x_0|x_t] = μ + α v (x_t − α μ)/(α² v + σ²) per coordinate, through a Denoiser
    over the oracle posing as a network of any target (it receives net_time(t))."""
    p = FAMILIES[name]
    den = Denoiser(GaussianOracle(MU, STD**2, p, prediction=prediction), p, prediction=prediction, data_range=None)
    g = torch.Generator().manual_seed(3)
    t = torch.linspace(p.sample_t_min, p.sample_t_max, 8, dtype=F64)
    x_t = torch.randn(8, 2, generator=g, dtype=F64) * 3
    a, s = (c.reshape(-1, 1) for c in closed_form(name, t)[:2])
    v = STD ** 2
    want = MU + a * v * (x_t - a * MU) / (a**2 * v + s**2)
    torch.testing.assert_close(den(x_t, t).x0, want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_velocity_minimises_flow_matching(name):
    """The minimiser of E‖û(x_t) − u‖² is E[u | x_t] (Lipman et al. Thm. 2): the residual u − u*(x_t) of
    the oracle's velocity is orthogonal to functions of x_t (here 1 and x_t), and a perturbed û has a
    larger loss. n = 100000 per t; tolerance 6 standard errors of the sample means."""
    p, n = FAMILIES[name], 100_000
    oracle = GaussianOracle(MU, STD**2, p, prediction="velocity")
    g = torch.Generator().manual_seed(4)
    for t in (0.3 * p.t_max + 0.7 * p.t_min, 0.5 * (p.t_min + p.t_max), 0.2 * p.t_min + 0.8 * p.t_max):
        x0 = MU + STD * torch.randn(n, 2, generator=g, dtype=F64)
        eps = torch.randn(n, 2, generator=g, dtype=F64)
        tt = torch.full((n,), t, dtype=F64)
        x_t = p.q_sample(x0, tt, eps)
        u = p.targets(x0, eps, x_t, tt).velocity
        u_star = oracle(x_t, p.net_time(tt))
        r = u - u_star
        for f in (torch.ones_like(x_t), (x_t - x_t.mean(0)) / x_t.std(0)):
            m = r * f
            assert bool((m.mean(0).abs() < 6 * m.std(0) / math.sqrt(n)).all()), (name, t, m.mean(0))
        loss = ((u - u_star) ** 2).mean()
        assert float(loss) < float(((u - 1.05 * u_star) ** 2).mean())


# ---- sampling with the generic VE view -------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_ve_view_samplers_reproduce_gaussian_data_on_every_family(name, sampler):
    """With the exact denoiser, Heun-50 / DPM-Solver++(2M)-50 from the family's prior end at N(μ, diag v):
    n = 4000, mean within 0.04 (6 SE of STD/√n plus discretisation and the prior's neglected data share)
    and std within 6% of the truth."""
    from diffexp.samplers import DPMSolverPP2MSampler, HeunSampler

    p = FAMILIES[name]
    den = Denoiser(GaussianOracle(MU, STD**2, p, prediction="eps"), p, prediction="eps", data_range=None)
    s = HeunSampler(steps=50) if sampler == "heun" else DPMSolverPP2MSampler(steps=50)
    x = s(den, shape=(2,), num_samples=4000, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(0), MU, rtol=0, atol=0.04)
    torch.testing.assert_close(x.std(0), STD, rtol=0.06, atol=0)


def test_langevin_runs_on_a_continuous_family():
    from diffexp.samplers import LangevinSampler

    p = FAMILIES["edm"]
    den = Denoiser(GaussianOracle(MU, STD**2, p), p, data_range=None)
    x = LangevinSampler(num_levels=20, steps_per_level=20, step_size=1e-6)(den, shape=(2,), num_samples=500,
                                                                            generator=torch.Generator().manual_seed(6))
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(0).double(), MU, rtol=0, atol=0.15)

def test_flow_starts_from_the_marginal_of_unit_variance_data():
    """x_t = (1 − t) x0 + t ε has std √((1 − t)² + t²) for unit-variance x0: the samplers' start, in x and in VE
    terms (√(1 + σ²), as on VP), not N(0, I) / 1 + σ (1.2 % too wide at EDM's σ_max = 80)."""
    import math

    from diffexp.processes import FlowProcess

    p = FlowProcess(sample_sigma_min=0.002, sample_sigma_max=80.0)
    t = p.sample_t_max
    assert t == pytest.approx(80 / 81)
    assert p.prior_std == pytest.approx(math.sqrt((1 - t) ** 2 + t**2))
    assert p.ve_prior_scale(80.0) == pytest.approx(math.sqrt(1 + 80.0**2))
    assert p.ve_prior_scale(80.0) == pytest.approx(p.prior_std / (1 - t))  # the same start, x-space or VE
