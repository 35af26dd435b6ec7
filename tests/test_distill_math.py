"""Exact properties of the few-step methods (diffexp.distill, samplers/consistency.py): the consistency
function's boundary condition, the one-step consistency sampler, progressive distillation's target against
two teacher DDIM steps, the ODE step against the Gaussian closed form, and iCT's curriculum."""

import math

import pytest
import torch

from diffexp.denoiser import Denoiser
from diffexp.distill import (
    ConsistencyParameterization,
    consistency_coefficients,
    ict_level_probabilities,
    ict_num_levels,
    karras_levels,
    pd_grid,
    pd_target,
)
from diffexp.distill.consistency import consistency_fn, distance, teacher_step, time_fn
from diffexp.distill.progressive import DATA, nested_grids
from diffexp.models import MLP
from diffexp.oracles import GaussianMixtureOracle, GaussianOracle
from diffexp.process import DiffusionProcess
from diffexp.processes.edm import EDMProcess
from diffexp.processes.vp import VPSDEProcess
from diffexp.samplers import DDIMSampler
from diffexp.samplers.base import OptionError
from diffexp.samplers.consistency import ConsistencySampler
from diffexp.schedules import linear

MEANS = torch.tensor([[-2.0, -2.0], [2.0, 2.0]], dtype=torch.float64)
W = torch.tensor([0.3, 0.7], dtype=torch.float64)
PROCESSES = {"edm": EDMProcess(), "ddpm": DiffusionProcess(linear(64)), "vp_sde": VPSDEProcess()}


def consistency_net(process, seed=0):
    torch.manual_seed(seed)
    return ConsistencyParameterization(MLP(in_channels=2, hidden_dim=32, num_blocks=1, time_embed_dim=16), process, sigma_data=1.5)


@pytest.mark.parametrize("family", sorted(PROCESSES))
def test_boundary_condition_is_exact(family):
    """f(x̃, σ_min) = x̃ bit for bit, whatever F outputs (c_skip = 1, c_out = 0 at σ_min)."""
    process = PROCESSES[family]
    net = consistency_net(process)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))  # F far from zero: only the coefficients can make f the identity
    x = torch.randn(64, 2, dtype=torch.float64).float() * 3
    sigma_min = torch.full((64,), process.sigma_range()[0], dtype=torch.float64)
    f = consistency_fn(time_fn(net, process), process, x, sigma_min)
    assert torch.equal(f, x)
    c_skip, c_out, _ = consistency_coefficients(sigma_min, net.sigma_min, net.sigma_data)
    assert torch.equal(c_skip, torch.ones_like(c_skip)) and torch.equal(c_out, torch.zeros_like(c_out))
    # and away from σ_min the network does matter
    assert not torch.allclose(consistency_fn(time_fn(net, process), process, x, sigma_min * 10), x, atol=1e-3)


def test_one_step_consistency_sampler_is_f_at_sigma_max():
    process = PROCESSES["edm"]
    net = consistency_net(process)
    model = Denoiser(net, process, "x0", data_range=None)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    got = ConsistencySampler(steps=1)(model, x_T=x_T)
    sigma_max = process.sigma_range()[1]
    want = consistency_fn(time_fn(net, process), process, x_T * process.ve_prior_scale(sigma_max), torch.full((32,), sigma_max, dtype=torch.float64))
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)


def test_multistep_sampler_renoises_between_steps():
    """Two steps on the exact x0 denoiser: x = f(x̃_T, τ_1), then f(x + √(τ_2² − σ_min²) z, τ_2) with z the
    second draw of each sample's generator."""
    process = PROCESSES["edm"]
    oracle = GaussianMixtureOracle(W, MEANS, 0.04, process, "x0")
    model = Denoiser(oracle, process, "x0", data_range=None)
    lo, hi = process.sigma_range()
    sampler = ConsistencySampler(steps=2, sigmas=[hi, 1.0])
    got = sampler(model, shape=(2,), seeds=[7, 8])
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    x_T = torch.stack([torch.randn(2, generator=g) for g in gens])
    z = torch.stack([torch.randn(2, generator=g) for g in gens])
    x0 = oracle.eps_and_x0(x_T * hi, torch.full((2,), hi))[1].float()
    want = oracle.eps_and_x0(x0 + math.sqrt(1 - lo**2) * z, torch.full((2,), 1.0))[1].float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert sampler.nfe(0) == 2 and sampler.name == "consistency-2"
    assert ConsistencySampler(steps=4).grid(process)[0] == hi and len(ConsistencySampler(steps=4).grid(process)) == 4


def test_consistency_sampler_options_are_checked():
    with pytest.raises(OptionError, match="sigmas"):
        ConsistencySampler(steps=2, sigmas=[1.0, 2.0])
    with pytest.raises(OptionError, match="steps"):
        ConsistencySampler(steps=0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_teacher_step_matches_the_gaussian_ode(solver):
    """For x_0 ~ N(0, s²) the PF-ODE in the VE view is x̃(σ) = x̃(σ_0) √((s² + σ²)/(s² + σ_0²)); Euler is
    first-order accurate (local error O(h²)), Heun second-order (O(h³)): halving h shrinks the error ×4, ×8."""
    process = PROCESSES["edm"]
    teacher = Denoiser(GaussianOracle([0.0, 0.0], 0.25, process, "x0"), process, "x0", data_range=None)
    x = torch.randn(16, 2, dtype=torch.float64)
    errs = []
    for h in (0.2, 0.1):
        s0, s1 = torch.full((16,), 1.0, dtype=torch.float64), torch.full((16,), 1.0 - h, dtype=torch.float64)
        got = teacher_step(teacher, x, s0, s1, solver)
        want = x * math.sqrt((0.25 + (1 - h) ** 2) / (0.25 + 1.0))
        errs.append(float((got - want).abs().max()))
    order = math.log2(errs[0] / errs[1])
    assert order == pytest.approx(2.0 if solver == "euler" else 3.0, abs=0.3), errs


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_pd_target_takes_the_student_where_two_teacher_steps_go(prediction):
    """Salimans & Ho Alg. 2: one DDIM step t → t'' with x̂_0 = x̃ equals the teacher's two DDIM steps
    t → t' → t'' (here through the DDIM sampler's own step), on every student interval incl. the last."""
    process = DiffusionProcess(linear(64))
    oracle = GaussianMixtureOracle(W, MEANS, 0.04, process, prediction)
    teacher = Denoiser(oracle, process, prediction, data_range=None)
    student_grid, teacher_grid = nested_grids(process, 4)
    assert student_grid == [63.0, 47.0, 31.0, 15.0, DATA] and teacher_grid[1::2] == [55.0, 39.0, 23.0, 7.0]
    z = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for k in range(4):
        t, mid, nxt = (torch.full((8,), v, dtype=torch.float64) for v in (student_grid[k], teacher_grid[2 * k + 1], student_grid[k + 1]))
        x_tilde = pd_target(teacher, z, t, mid, nxt)
        # one student step from t with x̂_0 = x̃ (ε̂ through the process algebra)
        pred = process.predict(x_tilde, z, t.long(), "x0")
        ab = process.schedule.alphas_cumprod
        a_n, s_n = (1.0, 0.0) if nxt[0] < 0 else (float(ab[int(nxt[0])]) ** 0.5, float(1 - ab[int(nxt[0])]) ** 0.5)
        one = a_n * pred.x0 + s_n * pred.eps
        # two teacher steps, by the DDIM sampler itself (8 trailing steps run exactly this pair from t)
        steps = {0: 63, 1: 47, 2: 31, 3: 15}[k]
        sub = [tt for tt in teacher_grid if tt <= steps]
        two = z
        for a, b in zip(sub[:2], sub[1:3]):
            p = teacher(two, torch.full((8,), int(a)))
            ab_b = 1.0 if b < 0 else float(ab[int(b)])
            two = ab_b**0.5 * p.x0 + (1 - ab_b) ** 0.5 * p.eps
        torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-9)


def test_pd_with_one_student_step_is_the_teachers_two_step_ddim():
    process = DiffusionProcess(linear(64))
    teacher = Denoiser(GaussianMixtureOracle(W, MEANS, 0.04, process, "eps"), process, "eps", data_range=None)
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    two = DDIMSampler(steps=2, spacing="trailing", clip_denoised=False)(teacher, x_T=x_T)
    x_tilde = pd_target(teacher, x_T, *(torch.full((16,), v, dtype=torch.float64) for v in (63.0, 31.0, DATA)))
    torch.testing.assert_close(x_tilde, two, rtol=1e-9, atol=1e-9)


def test_pd_grids_must_nest():
    assert pd_grid(DiffusionProcess(linear(64)), 2) == [63.0, 31.0, DATA]
    with pytest.raises(ValueError, match="trailing"):
        nested_grids(DiffusionProcess(linear(64)), 4, "uniform")


def test_ict_curriculum_and_level_probabilities():
    # iCT: s0=10, s1=1280, K=400k → 8 stages of K'=50k steps: N = 11, 21, …, 1281
    assert [ict_num_levels(k, 400_000) for k in (0, 49_999, 50_000, 349_999, 350_000, 399_999)] == [11, 11, 21, 641, 1281, 1281]
    levels = karras_levels(11, 0.002, 80.0)
    assert levels[0] == 0.002 and levels[-1] == 80.0 and bool((levels.diff() > 0).all())
    p = ict_level_probabilities(levels)
    assert p.shape == (10,) and float(p.sum()) == pytest.approx(1.0)
    # the mass between adjacent levels of the log-normal N(-1.1, 2²)
    cdf = lambda s: 0.5 * (1 + math.erf((math.log(s) - -1.1) / (2.0 * math.sqrt(2))))  # noqa: E731
    total = cdf(80.0) - cdf(0.002)
    assert float(p[3]) == pytest.approx((cdf(float(levels[4])) - cdf(float(levels[3]))) / total, rel=1e-9)


def test_distances():
    a, b = torch.zeros(2, 4), torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert distance(a, b, "l2").tolist() == [1.0, 0.0]
    c = 0.00054 * 2
    assert distance(a, b, "pseudo_huber").tolist() == pytest.approx([math.sqrt(4 + c * c) - c, 0.0])
    with pytest.raises(ValueError, match="pseudo_huber"):
        distance(a, b, "lpips")
