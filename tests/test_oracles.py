"""The analytic oracles against independent closed forms: ε* = -s ∇ log p_t by autograd through
torch.distributions' densities of the marginal p_t = Σ w_k N(a μ_k, a² Σ_k + s² I)."""

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from diffexp import schedules
from diffexp.denoiser import Denoiser
from diffexp.oracles import GaussianMixtureOracle, GaussianOracle
from diffexp.process import DDPM_TARGETS, DiffusionProcess

F64 = torch.float64
W = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.5], [0.0, 4.0]], dtype=F64)
FULL = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.3]], [[1.0, 0.4], [0.4, 0.5]]], dtype=F64)
DIAG = torch.tensor([[0.3, 0.2], [0.5, 0.1], [1.0, 2.0]], dtype=F64)
ISO = torch.tensor([0.3, 0.5, 2.0], dtype=F64)


def reference_eps(weights, means, covs, x, a, s):
    """ε* = -s ∇_x log p_t(x), by autograd of torch.distributions' mixture density (float64)."""
    C = a**2 * covs + s**2 * torch.eye(means.shape[1], dtype=F64)
    p = MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(a * means, covariance_matrix=C))
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(p.log_prob(x).sum(), x)
    return -s * g, p.log_prob(x).detach()


def interp_scales(schedule, t: float):
    """a, s at fractional t by interpolating log σ by hand (independent of process.py's code)."""
    lo = math.floor(t)
    ls = torch.log(schedule.sigmas)
    log_sigma = ls[lo] + (t - lo) * (ls[lo + 1] - ls[lo])
    sigma = math.exp(float(log_sigma))
    return 1 / math.sqrt(1 + sigma**2), sigma / math.sqrt(1 + sigma**2)


@pytest.mark.parametrize("sched", [schedules.linear(100), schedules.cosine(50), schedules.sigmoid(30)], ids=str)
@pytest.mark.parametrize("covs", [FULL, DIAG, ISO], ids=["full", "diag", "iso"])
def test_mixture_eps_matches_autograd_score(sched, covs):
    proc = DiffusionProcess(sched)
    oracle = GaussianMixtureOracle(W, MEANS, covs, proc)
    full = covs if covs.ndim == 3 else torch.diag_embed(covs if covs.ndim == 2 else covs[:, None].expand(3, 2))
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 3
    T = sched.num_timesteps
    for t in [0, 1, T // 2, T - 1, 0.5, T / 3 + 0.25, T - 1.5]:
        if isinstance(t, int):
            a, s = float(sched.alphas_cumprod[t].sqrt()), float((1 - sched.alphas_cumprod[t]).sqrt())
            tt = torch.full((64,), t)
        else:
            a, s = interp_scales(sched, t)
            tt = torch.full((64,), t, dtype=F64)
        ref, ref_logp = reference_eps(W, MEANS, full, x, a, s)
        eps, x0 = oracle.eps_and_x0(x, tt)
        torch.testing.assert_close(eps, ref, rtol=1e-9, atol=1e-9)
        # Tweedie: E[x_0|x_t] = (x_t + s² ∇ log p_t)/a = (x_t - s ε*)/a
        torch.testing.assert_close(x0, (x - s * ref) / a, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(oracle.marginal_log_prob(x, tt), ref_logp, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(oracle(x, tt), ref)  # forward() = ε* for prediction="eps"


def test_gaussian_oracle_is_one_component_mixture_and_zero_terminal_snr():
    sched = schedules.cosine(40, zero_terminal_snr=True)
    proc = DiffusionProcess(sched)
    mu, cov = torch.tensor([1.0, -2.0], dtype=F64), FULL[2]
    oracle = GaussianOracle(mu, cov, proc)
    x = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    for t in [0, 17, 38]:
        a, s = float(sched.alphas_cumprod[t].sqrt()), float((1 - sched.alphas_cumprod[t]).sqrt())
        ref, _ = reference_eps(torch.ones(1, dtype=F64), mu[None], cov[None], x, a, s)
        torch.testing.assert_close(oracle.eps_and_x0(x, torch.full((32,), t))[0], ref)
    # at ᾱ_T = 0: p_T = N(0, I), so ε* = x_T and E[x_0|x_T] = μ — computed without dividing by a = 0
    eps, x0 = oracle.eps_and_x0(x, torch.full((32,), 39))
    torch.testing.assert_close(eps, x)
    torch.testing.assert_close(x0, mu.expand(32, 2))


@pytest.mark.parametrize("prediction", DDPM_TARGETS)
def test_every_prediction_target_acts_as_the_same_perfect_model(prediction):
    """Denoiser(oracle(prediction), prediction) reads back the same x̂_0 and ε̂ as the ε oracle, for
    integer and fractional t, and 4-D image-shaped inputs (flattened to D)."""
    proc = DiffusionProcess(schedules.linear(100))
    shape = (1, 2, 2)
    means = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    eps_model = Denoiser(GaussianMixtureOracle([0.4, 0.6], means, [0.5, 0.2], proc), proc, "eps", data_range=None)
    model = Denoiser(
        GaussianMixtureOracle([0.4, 0.6], means, [0.5, 0.2], proc, prediction), proc, prediction, data_range=None
    )
    x = torch.randn(16, *shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    for t in [torch.full((16,), 0), torch.arange(16) * 6, torch.linspace(0.3, 98.7, 16, dtype=F64)]:
        p, q = model(x, t), eps_model(x, t)
        torch.testing.assert_close(p.eps, q.eps, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(p.x0, q.x0, rtol=1e-6, atol=1e-6)
        assert p.eps.shape == x.shape


def test_labels_condition_on_a_component_and_null_label_is_unconditional():
    proc = DiffusionProcess(schedules.linear(100))
    mix = GaussianMixtureOracle(W, MEANS, FULL, proc)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(4)) * 2
    t = torch.full((8,), 40)
    for k in range(3):
        single = GaussianOracle(MEANS[k], FULL[k], proc)
        torch.testing.assert_close(mix(x, t, y=torch.full((8,), k)), single(x, t))
    torch.testing.assert_close(mix(x, t, y=torch.full((8,), 3)), mix(x, t))


def test_float32_inputs_and_data_sampling():
    proc = DiffusionProcess(schedules.linear(100))
    mix = GaussianMixtureOracle(W, MEANS, FULL, proc)
    x = torch.randn(8, 2)
    assert mix(x, torch.full((8,), 3)).dtype == torch.float32
    n = 20000
    x0, k = mix.sample(n, torch.Generator().manual_seed(5))
    # component frequencies: binomial std √(w(1-w)/n); 4 std
    freq = torch.bincount(k, minlength=3).double() / n
    assert ((freq - W).abs() <= 4 * (W * (1 - W) / n).sqrt()).all()
    for j in range(3):  # component means: 4 std of a mean of n_j draws
        xs = x0[k == j].double()
        assert ((xs.mean(0) - MEANS[j]).abs() <= 4 * (FULL[j].diagonal() / len(xs)).sqrt()).all()
    torch.testing.assert_close(mix.covariances(), FULL)


def test_bad_arguments_raise():
    proc = DiffusionProcess(schedules.linear(100))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureOracle([0.5], MEANS, ISO, proc)
    with pytest.raises(ValueError, match="covs"):
        GaussianMixtureOracle(W, MEANS, torch.ones(3, 3, 3), proc)
    with pytest.raises(ValueError, match="prediction"):
        GaussianOracle([0.0], 1.0, proc, prediction="noise")
