"""EDM preconditioning against EDM Table 1 and closed forms: the coefficients on α = 1, their derivation
(unit-variance input, best linear skip, unit-variance residual) on any (α, σ), and the exact denoiser of
Gaussian data given by the skip connection alone."""

import math

import pytest
import torch

from diffexp import schedules as S
from diffexp.oracles import GaussianOracle
from diffexp.preconditioning import EDMPreconditioned, edm_coefficients, precondition
from diffexp.process import DiffusionProcess
from diffexp.processes import EDMProcess, FlowProcess, SubVPSDEProcess, VEProcess, VPSDEProcess

SD = 0.5


def test_coefficients_equal_edm_table_1_when_alpha_is_one():
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = edm_coefficients(torch.ones_like(sigma), sigma, SD)
    torch.testing.assert_close(c_skip, SD**2 / (sigma**2 + SD**2), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_out, sigma * SD / (sigma**2 + SD**2).sqrt(), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_in, 1 / (sigma**2 + SD**2).sqrt(), rtol=1e-15, atol=0)
    # the boundary condition of consistency-style parametrisations: D(x, σ→0) = x
    c_skip0, c_out0, _ = edm_coefficients(torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), SD)
    assert c_skip0.item() == 1.0 and c_out0.item() == 0.0


@pytest.mark.parametrize("a,s", [(1.0, 0.3), (0.8, 0.6), (0.3, 2.0), (0.05, 0.999)])
def test_coefficients_are_the_edm_derivation_on_any_process(a, s):
    """For x_0 ~ N(0, σ_d²): Var(c_in x_t) = 1, c_skip = Cov(x_0, x_t)/Var(x_t) (so the residual is
    uncorrelated with x_t) and Var((x_0 - c_skip x_t)/c_out) = 1; Monte Carlo at n = 200000, tolerances
    5 standard errors (the variance of a unit-variance Gaussian's sample variance is 2/n)."""
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0 = SD * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = a * x0 + s * torch.randn(n, generator=g, dtype=torch.float64)
    c_skip, c_out, c_in = edm_coefficients(torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64), SD)
    tol = 5 * math.sqrt(2 / n)
    assert abs((c_in * x_t).var().item() - 1) < tol
    residual = (x0 - c_skip * x_t) / c_out
    assert abs(residual.var().item() - 1) < tol
    assert abs(torch.corrcoef(torch.stack([residual, x_t]))[0, 1].item()) < 5 / math.sqrt(n)
    # and it equals the VE view: Table 1 at σ̃ = σ/α on the input x_t/α
    v_skip, v_out, v_in = edm_coefficients(torch.tensor(1.0, dtype=torch.float64), torch.tensor(s / a, dtype=torch.float64), SD)
    torch.testing.assert_close(c_skip, v_skip / a)
    torch.testing.assert_close(c_out, v_out)
    torch.testing.assert_close(c_in, v_in / a)


class Zero(torch.nn.Module):
    """F ≡ 0, recording the times it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(t)
        return torch.zeros_like(x)


def processes():
    return [DiffusionProcess(S.linear(100)), DiffusionProcess(S.cosine(50)), VPSDEProcess(), SubVPSDEProcess(),
            VEProcess(), EDMProcess(), FlowProcess()]


@pytest.mark.parametrize("process", processes(), ids=lambda p: p.name)
def test_skip_alone_is_the_exact_denoiser_of_gaussian_data(process):
    """With F ≡ 0, D = c_skip x_t = E[x_0 | x_t] for x_0 ~ N(0, σ_d² I): the exact denoiser."""
    net = Zero()
    wrapped = precondition(net, process, "edm", SD)
    assert isinstance(wrapped, EDMPreconditioned) and precondition(net, process, "none") is net
    oracle = GaussianOracle(torch.zeros(3), SD**2, process, prediction="x0")
    g = torch.Generator().manual_seed(1)
    lo, hi = float(process.t_min), float(process.t_max)
    t = torch.tensor([lo, hi, 0.5 * (lo + hi)], dtype=torch.float64)
    if process.is_discrete:
        t = t.round().long()
    x_t = torch.randn(3, 3, generator=g, dtype=torch.float64)
    net_t = process.net_time(t)  # what the module and the Denoiser hand to the network
    torch.testing.assert_close(wrapped(x_t, net_t), oracle(x_t, net_t), rtol=1e-10, atol=1e-12)
    assert torch.equal(net.seen[-1], net_t)  # F gets the same network time


def test_unknown_preconditioning_and_bad_sigma_data():
    with pytest.raises(ValueError, match="valid: \\['none', 'edm', 'consistency'\\]"):
        precondition(Zero(), None, "karras")
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPreconditioned(Zero(), None, sigma_data=0.0)
