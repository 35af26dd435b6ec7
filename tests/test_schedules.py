"""Noise schedules against their defining formulas (Ho et al. 2020, Nichol & Dhariwal 2021, Lin et al. 2024)."""

import math

import numpy as np
import pytest
import torch

from diffexp import schedules as S
from diffexp.process import DiffusionProcess


def test_linear_endpoints_and_rescaling():
    s = S.linear(1000)
    assert s.T == 1000 and s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    # T = 500: betas scaled by 1000/T, so log ᾱ_T ≈ -Σβ stays close to the T=1000 value.
    s5 = S.linear(500)
    assert s5.betas[0].item() == pytest.approx(2e-4) and s5.betas[-1].item() == pytest.approx(0.04)
    la, la5 = math.log(s.alphas_cumprod[-1]), math.log(s5.alphas_cumprod[-1])
    assert la == pytest.approx(-10.1, abs=0.15) and abs(la - la5) < 0.15


@pytest.mark.parametrize("T", [1, 2, 5, 10, 19, 20, 25])
def test_linear_short_schedules_stay_valid(T):
    """T < 20 rescales β_T = 0.02·1000/T above 1; the rule clips at 0.999 (as cosine does), so every short
    schedule is a valid process that ends near pure noise, and T ≥ 20 is the plain rescaled line."""
    s = S.linear(T)
    b = s.betas
    assert s.T == T and bool(((b > 0) & (b <= 0.999)).all())
    assert float(s.alphas_cumprod[-1]) <= 1e-3 + 1e-12  # ends (near) pure noise, as T = 1000 (ᾱ_T = 4e-5) does
    if T > 1:
        ref = torch.linspace(0.1 / T, 20.0 / T, T, dtype=torch.float64)
        assert torch.equal(b, ref.clamp(max=0.999)) and (b.diff() >= 0).all()
        assert torch.equal(b[ref <= 0.999], ref[ref <= 0.999])  # only the entries above 0.999 change
    assert torch.isfinite(s.log_snr).all() and torch.isfinite(DiffusionProcess(s).reverse_log_variance(
        torch.arange(T), b, "beta")).all()


def test_cosine_matches_formula_and_clipping():
    T, sft = 1000, 0.008
    s = S.cosine(T)
    f = lambda t: np.cos((t / T + sft) / (1 + sft) * np.pi / 2) ** 2
    ref = f(np.arange(1, T + 1)) / f(0)
    ab = s.alphas_cumprod.numpy()
    unclipped = s.betas.numpy() < 0.999
    first_clipped = int(np.argmin(unclipped)) if not unclipped.all() else T
    assert first_clipped >= T - 2  # only the last step(s) hit the 0.999 cap
    np.testing.assert_allclose(ab[:first_clipped], ref[:first_clipped], rtol=1e-10)
    assert float(s.betas.max()) <= 0.999 and float(s.betas[-1]) == pytest.approx(0.999)


def test_sigmoid_monotone_and_formula():
    T = 200
    s = S.sigmoid(T)
    ab = s.alphas_cumprod
    assert bool((ab[1:] < ab[:-1]).all()) and bool((s.betas > 0).all()) and float(s.betas.max()) <= 0.999
    sig = lambda z: 1 / (1 + np.exp(-z))
    g = lambda t: (sig(3.0) - sig(t / T * 6 - 3)) / (sig(3.0) - sig(-3.0))
    # float64 end to end: ᾱ matches the formula to ~1e-12 wherever β was not clipped
    np.testing.assert_allclose(ab[:-1].numpy(), g(np.arange(1, T)) / g(0), rtol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
def test_zero_terminal_snr(kind):
    base, z = S.make_schedule(kind, 100), S.make_schedule(kind, 100, zero_terminal_snr=True)
    assert z.alphas_cumprod[-1].item() == 0.0 and z.has_zero_terminal_snr and not base.has_zero_terminal_snr
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-10)
    assert z.snr[-1].item() == 0.0 and bool(torch.isfinite(z.snr).all())
    # √ᾱ is an affine map of the original √ᾱ (Lin et al. Algorithm 1)
    x, y = base.alphas_cumprod.sqrt(), z.alphas_cumprod.sqrt()
    A = torch.stack([x, torch.ones_like(x)], 1)
    coef = torch.linalg.lstsq(A, y[:, None]).solution
    assert torch.allclose(A @ coef, y[:, None], atol=1e-12)
    assert bool((z.alphas_cumprod[1:] < z.alphas_cumprod[:-1]).all())
    for v in (
        z.posterior_variance,
        z.posterior_log_variance_clipped,
        z.posterior_mean_coef_x0,
        z.posterior_mean_coef_xt,
    ):
        assert bool(torch.isfinite(v).all())


@pytest.mark.parametrize("ztsnr", [False, True])
def test_respaced_keeps_alphas_cumprod(ztsnr):
    s = S.cosine(1000, zero_terminal_snr=ztsnr)
    ts = torch.tensor([0, 9, 99, 250, 500, 998, 999])
    r = s.respaced(ts)
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[ts], rtol=1e-10, atol=0)
    # β' = 1 - ᾱ_k/ᾱ_{k-1}: the posterior variance of the respaced chain uses the skipped-step β
    k = 3
    b = 1 - s.alphas_cumprod[ts[k]] / s.alphas_cumprod[ts[k - 1]]
    expect = (1 - s.alphas_cumprod[ts[k - 1]]) / (1 - s.alphas_cumprod[ts[k]]) * b
    assert r.posterior_variance[k].item() == pytest.approx(expect.item(), rel=1e-12)


def test_posterior_variance_and_clipped_log_variance_as_in_ddpm():
    s = S.linear(1000)
    b, ab = s.betas.numpy(), s.alphas_cumprod.numpy()
    ab_prev = np.append(1.0, ab[:-1])
    pv = b * (1 - ab_prev) / (1 - ab)
    assert pv[0] == 0.0
    np.testing.assert_allclose(s.posterior_variance.numpy(), pv, rtol=1e-12)
    np.testing.assert_allclose(s.posterior_log_variance_clipped.numpy(), np.log(np.append(pv[1], pv[1:])), rtol=1e-12)
    p = DiffusionProcess(s)
    t = torch.arange(1000)
    large = p.reverse_log_variance(t, s.betas, "beta").numpy()
    np.testing.assert_allclose(large, np.log(b), rtol=1e-12)  # σ_t² = β_t for every t, σ_1² = β_1 (Ho et al.)
    small = p.reverse_log_variance(t, s.betas, "beta_tilde").numpy()
    assert np.isfinite(large).all() and np.isfinite(small).all() and (small <= large + 1e-12).all()
    with pytest.raises(ValueError, match="reverse variance"):
        p.reverse_log_variance(t, s.betas, "learned")


def test_snr_consistency_and_validation():
    s = S.sigmoid(50)
    assert torch.allclose(torch.log(s.snr), s.log_snr)
    assert torch.allclose(s.sigmas**2, 1 / s.snr)
    with pytest.raises(ValueError, match="betas"):
        S.NoiseSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="unknown schedule"):
        S.make_schedule("quadratic", 10)
