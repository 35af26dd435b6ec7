"""Training-time distributions against their definitions: Kolmogorov-Smirnov distances of n = 20000 draws
below 1.95/√n (the 0.1% critical value; draws are seeded, so the test is deterministic), the discrete
uniform sampler unchanged, the ladder's levels geometric with the family's ends, and the importance
sampler refused on continuous families."""

import math

import pytest
import torch

from diffexp import schedules as S
from diffexp.objectives import (
    GeometricLadder,
    LogitNormalTimes,
    LogNormalSigmas,
    LossSecondMomentTimesteps,
    UniformTimesteps,
    make_timestep_sampler,
)
from diffexp.process import DiffusionProcess
from diffexp.processes import EDMProcess, FlowProcess, SubVPSDEProcess, VEProcess, VPSDEProcess

N = 20_000
KS = 1.95 / math.sqrt(N)
CONTINUOUS = [VPSDEProcess(), SubVPSDEProcess(), VEProcess(), EDMProcess(), FlowProcess()]
IDS = ["vp_sde", "subvp_sde", "ve", "edm", "flow"]


def ks_distance(x: torch.Tensor, cdf, lo=-math.inf, hi=math.inf) -> float:
    """sup |F_n - F| over the sample points strictly inside (lo, hi) (F_n counts every draw), so that draws
    clamped onto the ends do not enter the comparison of the interior, where F must hold exactly."""
    x, _ = torch.sort(x.double().cpu())
    n = x.numel()
    inside = (x > lo) & (x < hi)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    f = cdf(x)
    d = torch.maximum(i / n - f, f - (i - 1) / n)
    return float(d[inside].max())


def normal_cdf(mean, std):
    return lambda x: 0.5 * (1 + torch.erf((x - mean) / (std * math.sqrt(2))))


def draw(sampler, process, n=N, seed=0):
    t, w = sampler.sample(n, process, "cpu", torch.Generator().manual_seed(seed))
    assert torch.equal(w, torch.ones(n)), "these samplers define p(t): weights are 1"
    return t


def test_discrete_uniform_is_unchanged():
    process = DiffusionProcess(S.linear(100))
    t = draw(UniformTimesteps(), process, 64, seed=3)
    assert torch.equal(t, torch.randint(0, 100, (64,), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(UniformTimesteps().sample(64, 100, "cpu", torch.Generator().manual_seed(3))[0], t)


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_continuous_uniform(process):
    t = draw(UniformTimesteps(), process)
    lo, hi = process.t_min, process.t_max
    assert t.dtype == torch.float64 and float(t.min()) >= lo and float(t.max()) <= hi
    assert ks_distance(t, lambda x: (x - lo) / (hi - lo)) < KS


@pytest.mark.parametrize("process", CONTINUOUS + [DiffusionProcess(S.linear(1000))], ids=IDS + ["ddpm"])
def test_lognormal_noise_levels(process):
    """ln σ(t) ~ N(P_mean, P_std²) wherever σ lies inside the family's range (draws beyond it are clamped)."""
    t = draw(LogNormalSigmas(-1.2, 1.2), process)
    assert float(t.min()) >= process.t_min - 1e-12 and float(t.max()) <= process.t_max + 1e-12
    log_sigma = process.sigma(t).log()
    ends = process.sigma(torch.tensor([float(process.t_min), float(process.t_max)], dtype=torch.float64)).log()
    lo, hi = float(ends[0]) + 1e-9, float(ends[1]) - 1e-9
    assert ks_distance(log_sigma, normal_cdf(-1.2, 1.2), lo, hi) < KS


def test_lognormal_on_edm_is_edms_sigma():
    """On edm t = σ: the draws are EDM's exp(N(-1.2, 1.2²)) clamped to [0.002, 80]."""
    process = EDMProcess()
    t = draw(LogNormalSigmas(), process)
    z = torch.randn(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(t, (-1.2 + 1.2 * z).exp().clamp(process.t_min, process.t_max))


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_logit_normal_times(process):
    t = draw(LogitNormalTimes(0.5, 0.8), process)
    u = (t - process.t_min) / (process.t_max - process.t_min)
    assert ks_distance(torch.logit(u), normal_cdf(0.5, 0.8)) < KS


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_geometric_ladder(process):
    L = 7
    ladder = GeometricLadder(L)
    levels = ladder.levels(process)
    sigmas = process.sigma(levels)
    lo, hi = process.sigma_range()
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([hi, lo], dtype=torch.float64), rtol=1e-9, atol=0)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(L - 1), rtol=1e-9, atol=0)
    t = draw(ladder, process)
    counts = torch.stack([(t == lv).sum() for lv in levels]).double()
    assert int(counts.sum()) == N  # every draw is one of the levels
    # multinomial counts: sd √(n p (1-p)); 5 sd
    assert float((counts - N / L).abs().max()) < 5 * math.sqrt(N / L * (1 - 1 / L))


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_importance_sampler_is_discrete_only(process):
    with pytest.raises(ValueError, match="process=ddpm"):
        LossSecondMomentTimesteps().setup(process)


def test_bad_options():
    with pytest.raises(ValueError, match="valid: \\['uniform', 'importance', 'lognormal', 'logit_normal', 'ladder'\\]"):
        make_timestep_sampler("sobol")
    for bad in (lambda: LogNormalSigmas(p_std=0), lambda: LogitNormalTimes(std=-1), lambda: GeometricLadder(1)):
        with pytest.raises(ValueError):
            bad()
