"""The samplers' steps written in (α, σ), so that they run on every process, against the ddpm chain's own
formulas (where both exist they must agree) and their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diffexp import schedules
from diffexp.denoiser import Denoiser
from diffexp.oracles import GaussianOracle
from diffexp.process import DiffusionProcess
from diffexp.samplers import DDIMSampler
from diffexp.samplers.base import NoiseSource
from diffexp.samplers.ddim import ddim_step, ddim_step_scales
from diffexp.samplers.ddpm import ancestral_step, ddpm_step

SCHED = schedules.linear(200)
PROC = DiffusionProcess(SCHED)


def model():
    mu, cov = torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.5], [0.5, 0.8]])
    return Denoiser(GaussianOracle(mu, cov, PROC), PROC, "eps", data_range=None)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_in_alpha_sigma_is_the_ddpm_chains_step(eta):
    """On ddpm, α = √ᾱ and σ = √(1-ᾱ): the generic step equals Song et al.'s eqs. 12/16, and a whole DDIM run
    on the uniform time grid equals the index path bit for bit (same seeds, same draws)."""
    g = torch.Generator().manual_seed(0)
    x0, eps, x = torch.randn(3, 16, 2, generator=g, dtype=torch.float64)
    for t, s in [(150, 100), (20, 0), (199, 198)]:
        ab, ab_s = float(SCHED.alphas_cumprod[t]), float(SCHED.alphas_cumprod[s])
        n1, n2 = (NoiseSource(16, "cpu", torch.float64, generator=torch.Generator().manual_seed(1)) for _ in range(2))
        ref = ddim_step(x0, eps, ab_s, ab, eta, n1, x)
        got = ddim_step_scales(x0, eps, math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(ab), math.sqrt(1 - ab), eta, n2, x)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    seeds = range(40)
    index = DDIMSampler(steps=20, eta=eta)(model(), shape=(2,), seeds=seeds)
    generic = DDIMSampler(steps=20, eta=eta, spacing="time")(model(), shape=(2,), seeds=seeds)
    torch.testing.assert_close(generic, index, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_step_in_alpha_sigma_is_ho_et_als_step(variance):
    """On the (respaced) ddpm chain the generic posterior mean and variances are μ̃_t and β'_t / β̃'_t
    (Ho et al. eqs. 6-7; the respaced β' = 1 - ᾱ_t/ᾱ_s), checked through ddpm_step with the same noise."""
    ts = [0, 40, 90, 150, 199]
    proc = DiffusionProcess(SCHED.respaced(ts))
    g = torch.Generator().manual_seed(2)
    x0, x = torch.randn(2, 32, 2, generator=g, dtype=torch.float64)
    for k in range(1, len(ts)):
        ab, ab_s = float(SCHED.alphas_cumprod[ts[k]]), float(SCHED.alphas_cumprod[ts[k - 1]])
        n1, n2 = (NoiseSource(32, "cpu", torch.float64, generator=torch.Generator().manual_seed(k)) for _ in range(2))
        ref = ddpm_step(proc, k, x, x0, n1, variance)
        got = ancestral_step(x0, math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(ab), math.sqrt(1 - ab), variance, n2, x)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(ancestral_step(x0, 1.0, 0.0, 0.5, 0.8, variance, None, x), x0)  # to the data: x̂_0


def test_ancestral_step_on_a_variance_exploding_process():
    """α = 1 (VE): μ̃ = (σ_s²/σ_t²) x_t + (1 - σ_s²/σ_t²) x̂_0 and β̃ = σ_s² (σ_t² - σ_s²)/σ_t², the
    posterior of x_s = x_0 + σ_s z given x_t (score_sde's VE ancestral predictor); 'beta' is exact for
    x_0 ~ N(0, I): Var(x_s | x_t) = (1 + σ_s²)(σ_t² - σ_s²)/(1 + σ_t²)."""
    x0, x = torch.zeros(20000, 1, dtype=torch.float64), torch.full((20000, 1), 2.0, dtype=torch.float64)
    st, ss = 3.0, 1.0
    for variance, var in [("beta_tilde", ss**2 * (st**2 - ss**2) / st**2), ("beta", (1 + ss**2) * (st**2 - ss**2) / (1 + st**2))]:
        noise = NoiseSource(20000, "cpu", torch.float64, generator=torch.Generator().manual_seed(3))
        out = ancestral_step(x0, 1.0, ss, 1.0, st, variance, noise, x)
        n = out.shape[0]
        assert abs(float(out.mean()) - 2.0 * ss**2 / st**2) < 4 * math.sqrt(var / n)
        assert abs(float(out.var()) - var) < 4 * var * math.sqrt(2 / (n - 1))


def test_reverse_sde_coefficients_are_the_papers():
    """f = α'/α and g² = dσ²/dt - 2fσ² give Song et al.'s SDEs: VP f = -β/2, g² = β; sub-VP g² = β(1 - e^{-2B});
    VE f = 0, g² = dσ²/dt = 2σ² log(σ_max/σ_min) (eqs. 9, 11, 17 and 30)."""
    from diffexp.processes import SubVPSDEProcess, VEProcess, VPSDEProcess
    from diffexp.samplers.sde import sde_coefficients

    t = 0.37
    vp, sub, ve = VPSDEProcess(), SubVPSDEProcess(), VEProcess()
    beta = float(vp.beta(torch.tensor(t, dtype=torch.float64)))
    big_b = float(vp.integral_beta(torch.tensor(t, dtype=torch.float64)))
    f, g2 = sde_coefficients(vp, t)
    assert math.isclose(f, -beta / 2, rel_tol=1e-10) and math.isclose(g2, beta, rel_tol=1e-10)
    f, g2 = sde_coefficients(sub, t)
    assert math.isclose(f, -beta / 2, rel_tol=1e-10) and math.isclose(g2, beta * (1 - math.exp(-2 * big_b)), rel_tol=1e-10)
    f, g2 = sde_coefficients(ve, t)
    sigma = float(ve.sigma(torch.tensor(t, dtype=torch.float64)))
    assert f == 0.0 and math.isclose(g2, 2 * sigma**2 * math.log(ve.sigma_max / ve.sigma_min), rel_tol=1e-10)
