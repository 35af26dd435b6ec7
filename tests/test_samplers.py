"""Samplers driven by the analytic oracle must reproduce the data distribution.

Tolerances come from the sample size n (k = 4 standard errors):
* mean: the sample mean of coordinate i has std √(Σ_ii/n);
* covariance: the unbiased sample covariance S of n Gaussian draws is Wishart/(n-1), so
  Var(S_ij) = (Σ_ij² + Σ_ii Σ_jj)/(n-1);
* mixture weights: a frequency has the binomial std √(w(1-w)/n); component means as above with n_k.
The samplers' own discretisation bias is not in these bounds, so step counts are chosen such that the
bias (measured once with n = 40000) is below a third of the tolerance.
"""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffexp import schedules
from diffexp.denoiser import Denoiser
from diffexp.oracles import GaussianMixtureOracle, GaussianOracle
from diffexp.process import DDPM_TARGETS, DiffusionProcess
from diffexp.samplers import (
    SAMPLERS,
    AdaptiveODESampler,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    HeunSampler,
    LangevinSampler,
    PCSampler,
    StepInfo,
    timesteps,
)
from diffexp.samplers.base import sigma_range

torch.set_num_threads(1)
K_STD = 4.0
SCHED = schedules.linear(200)
PROC = DiffusionProcess(SCHED)
MU = torch.tensor([0.5, -0.5])
COV = torch.tensor([[1.0, 0.5], [0.5, 0.8]])  # non-diagonal, eigenvalues 0.4 and 1.4
EPS_L = float(SCHED.sigmas[0]) ** 2  # Langevin ε with ε/σ_L² = 1


def gaussian_model(prediction="eps", mu=MU, cov=COV, proc=PROC, data_range=None):
    return Denoiser(GaussianOracle(mu, cov, proc, prediction), proc, prediction, data_range=data_range)


def assert_gaussian(x, mu, cov, k=K_STD):
    x, mu, cov = x.double(), mu.double(), cov.double()
    n = x.shape[0]
    assert torch.isfinite(x).all()
    mean_tol = k * (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mu).abs() <= mean_tol).all(), f"mean {x.mean(0)} vs {mu} (tol {mean_tol})"
    var = torch.diag(cov)
    cov_tol = k * ((cov**2 + var[:, None] * var[None, :]) / (n - 1)).sqrt()
    S = torch.cov(x.T)
    assert ((S - cov).abs() <= cov_tol).all(), f"cov {S} vs {cov} (tol {cov_tol})"


def sample(sampler, model, n, seed=0, **kw):
    return sampler(
        model, shape=model.net.means.shape[1:], num_samples=n, generator=torch.Generator().manual_seed(seed), **kw
    )


# ---- process additions (fractional t) ------------------------------------------------------------------


def test_fractional_timesteps_in_the_process():
    for sched in [schedules.linear(100), schedules.cosine(50, zero_terminal_snr=True)]:
        proc, T = DiffusionProcess(sched), sched.num_timesteps
        ti = torch.arange(T)
        torch.testing.assert_close(proc.sigma(ti.double()), sched.sigmas, rtol=1e-12, atol=0)
        like = torch.zeros(T, 3)
        a_long, s_long = proc.scales(ti, like)
        a_f, s_f = proc.scales(ti.float(), like)  # integer-valued float t: exactly the table
        assert torch.equal(a_long, a_f) and torch.equal(s_long, s_f)
        tf = torch.linspace(0, T - 3, 37, dtype=torch.float64) + 0.37  # (T-2, T-1) has σ = ∞ with zero terminal SNR
        sig = proc.sigma(tf)
        assert (sig.diff() > 0).all()
        torch.testing.assert_close(proc.t_of_sigma(sig), tf, rtol=0, atol=1e-9)
        a, s = proc.scales(tf, torch.zeros(37, 2, dtype=torch.float64))
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))
        torch.testing.assert_close(s / a, sig[:, None])
        with pytest.raises(ValueError, match="integer timesteps"):
            proc.q_posterior(torch.zeros(37, 2), torch.zeros(37, 2), tf)
    assert float(PROC.t_of_sigma(1e-9)) == 0 and float(PROC.t_of_sigma(1e9)) == SCHED.num_timesteps - 1


def test_timestep_spacings():
    T = 200
    for S in [1, 2, 7, 50, 199, 200]:
        for spacing in ["uniform", "quadratic", "trailing"]:
            ts = timesteps(T, S, spacing)
            assert len(ts) == S and len(set(ts)) == S and ts == sorted(ts) and ts[-1] == T - 1
            if spacing != "trailing" and S > 1:
                assert ts[0] == 0
    assert timesteps(T, 4, "trailing") == [49, 99, 149, 199]
    assert timesteps(T, 200, "quadratic") == list(range(200))
    with pytest.raises(ValueError, match="steps <= T"):
        timesteps(T, 201)
    with pytest.raises(ValueError, match="spacing"):
        timesteps(T, 10, "leading")
    with pytest.raises(ValueError, match="steps <= T"):
        DDIMSampler(steps=201)(gaussian_model(), shape=(2,), num_samples=2)


# ---- the data distribution ------------------------------------------------------------------------


GAUSSIAN_SAMPLERS = [
    DDPMSampler(),
    DDPMSampler(steps=50),
    DDIMSampler(steps=200),
    DDIMSampler(steps=100, spacing="quadratic"),
    DDIMSampler(steps=100, spacing="trailing"),
    HeunSampler(steps=40),
    DPMSolverPP2MSampler(steps=40),
    DPMSolverPP2MSampler(steps=40, spacing="logsnr"),
]


@pytest.mark.parametrize("sampler", GAUSSIAN_SAMPLERS, ids=lambda s: f"{s.name}-{getattr(s, 'spacing', '')}")
def test_samplers_reproduce_a_gaussian(sampler):
    assert_gaussian(sample(sampler, gaussian_model(), 4000), MU, COV)


@pytest.mark.parametrize("prediction", DDPM_TARGETS)
@pytest.mark.parametrize(
    "sampler", [DDPMSampler(), DDIMSampler(steps=200), HeunSampler(steps=40)], ids=lambda s: s.name
)
def test_every_prediction_target(sampler, prediction):
    assert_gaussian(sample(sampler, gaussian_model(prediction), 2000, seed=1), MU, COV)


def test_annealed_langevin_reproduces_a_gaussian():
    # 10 levels x 100 steps at ε/σ_L² = 1: bias ≈ 3% of Σ (ULA stationary variance and annealing lag),
    # below a quarter of the tolerance at n = 1000 (4·√(2/1000) ≈ 18%).
    x = sample(LangevinSampler(num_levels=10, steps_per_level=100, step_size=EPS_L), gaussian_model(), 1000)
    assert_gaussian(x, MU, COV)


@pytest.mark.parametrize(
    "sampler",
    [PCSampler(norms="expected"), PCSampler(predictor="ddim", steps=100, norms="expected")],
    ids=lambda s: s.name,
)
def test_predictor_corrector_reproduces_a_gaussian(sampler):
    assert_gaussian(sample(sampler, gaussian_model(), 4000, seed=2), MU, COV)


def test_corrector_step_sizes_follow_their_formulas():
    """ε = 2α (r ‖z‖/‖ŝ‖)² with the norms of each sample ('sample'), their batch means ('batch', one ε for
    the batch, as score_sde's LangevinCorrector) or their pure-noise values √D and √D/s ('expected')."""
    g = torch.Generator().manual_seed(0)
    z, score, alpha, s = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 2, 0.99, torch.tensor(0.3)
    zn, gn = z.norm(dim=1, keepdim=True), score.norm(dim=1, keepdim=True)
    r = 0.16
    torch.testing.assert_close(PCSampler(norms="sample").corrector_step_size(z, score, alpha, s), 2 * alpha * (r * zn / gn) ** 2)
    batch = PCSampler(norms="batch").corrector_step_size(z, score, alpha, s)
    torch.testing.assert_close(batch, 2 * alpha * (r * zn.mean() / gn.mean()) ** 2)
    assert batch.numel() == 1
    torch.testing.assert_close(PCSampler(norms="expected").corrector_step_size(z, score, alpha, s), 2 * alpha * (r * s) ** 2)


def test_predictor_corrector_per_sample_norms_inflate_variance_in_low_dimension():
    """Algorithm 5's per-sample ε = 2α(r‖z‖/‖ŝ‖)² couples the step to the sample's own z and x: for
    Gaussian data the variance grows by about (1+2/D)² (1.56 in 8-D), as documented; the fixed
    'expected' step does not (its per-coordinate variances pass the Wishart bound)."""
    D = 8
    g = torch.Generator().manual_seed(7)
    mu, var = torch.randn(D, generator=g) * 0.5, torch.rand(D, generator=g) + 0.5
    model = gaussian_model(mu=mu, cov=var)
    inflated = sample(PCSampler(predictor="ddim", steps=100, norms="sample"), model, 4000, seed=2)
    assert 1.3 < float((inflated.var(0) / var).mean()) < 1.9
    assert_gaussian(
        sample(PCSampler(predictor="ddim", steps=100, norms="expected"), model, 4000, seed=2), mu, torch.diag(var)
    )


W = torch.tensor([0.2, 0.3, 0.5])
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
COVS = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.3]], [[0.25, 0.0], [0.0, 0.25]]])


def assert_mixture(x, weights, means, covs, k=K_STD):
    """Components are ≥ 10 std apart, so nearest-mean assignment misclassifies a negligible fraction."""
    n = x.shape[0]
    label = torch.cdist(x.float(), means).argmin(1)
    freq = torch.bincount(label, minlength=len(weights)).double() / n
    w = weights.double()
    assert ((freq - w).abs() <= k * (w * (1 - w) / n).sqrt()).all(), f"weights {freq} vs {w}"
    for j in range(len(weights)):
        xs = x[label == j].double()
        tol = k * (covs[j].diagonal().double() / len(xs)).sqrt()
        assert ((xs.mean(0) - means[j]).abs() <= tol).all(), f"component {j} mean {xs.mean(0)} vs {means[j]}"


@pytest.mark.parametrize(
    "sampler",
    [
        DDPMSampler(steps=100),
        DDIMSampler(steps=100),
        HeunSampler(steps=40),
        DPMSolverPP2MSampler(steps=40),
        PCSampler(predictor="ddim", steps=100, norms="expected"),
    ],
    ids=lambda s: s.name,
)
def test_samplers_reproduce_a_mixture(sampler):
    # (annealed Langevin: see the Song & Ermon mixture below)
    model = Denoiser(GaussianMixtureOracle(W, MEANS, COVS, PROC), PROC, "eps", data_range=None)
    assert_mixture(sample(sampler, model, 4000), W, MEANS, COVS)


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_fails():
    """Song & Ermon 2019, Fig. 3: p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I)."""
    weights, means = torch.tensor([0.2, 0.8]), torch.tensor([[-5.0, -5.0], [5.0, 5.0]])
    covs = torch.eye(2).expand(2, 2, 2)
    model = Denoiser(GaussianMixtureOracle(weights, means, covs, PROC), PROC, "eps", data_range=None)
    # Annealing is only approximately exact: the weights freeze where the blurred modes separate
    # (σ ≈ 4 here), leaving the small mode ~0.02 too heavy (measured with n = 4000 for 10x100 ... 20x100
    # levels x steps). n = 1000 gives a 4-std tolerance of 0.05, which that bias fits and which still
    # separates annealed (0.2) from plain Langevin (≈ 0.5) by 6 tolerances.
    n = 1000
    annealed = sample(LangevinSampler(num_levels=10, steps_per_level=100, step_size=EPS_L), model, n)
    assert_mixture(annealed, weights, means, covs)
    # Plain Langevin at σ_min only, with a step big enough to mix inside a mode: each chain stays in the
    # basin it starts in (x_T ~ N(0, I) splits about evenly), so the weights come out near 1/2.
    plain = sample(LangevinSampler(num_levels=1, steps_per_level=100, step_size=0.05), model, n)
    w_plain = float((torch.cdist(plain, means).argmin(1) == 0).double().mean())
    assert abs(w_plain - 0.2) > 10 * math.sqrt(0.2 * 0.8 / n), w_plain
    assert 0.35 < w_plain < 0.65


# ---- sampler-specific properties -----------------------------------------------------------------------


def test_ddim_eta0_is_deterministic_given_x_T():
    model = gaussian_model()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = DDIMSampler(steps=20)(model, x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = DDIMSampler(steps=20)(model, x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = DDIMSampler(steps=20, eta=1.0)(model, x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)


def test_ddim_all_steps_eta1_is_ddpm_with_beta_tilde():
    """With S = T and η = 1, DDIM's σ_t² = β̃_t and its mean is μ̃_t (Song et al. §4.1): the same seeds give
    the same samples path by path, and so the same distribution."""
    model = gaussian_model()
    seeds = list(range(100))
    ddim = DDIMSampler(steps=SCHED.num_timesteps, eta=1.0)(model, shape=(2,), seeds=seeds)
    ddpm = DDPMSampler(variance="beta_tilde")(model, shape=(2,), seeds=seeds)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ddpm, DDPMSampler(variance="beta")(model, shape=(2,), seeds=seeds), atol=1e-3)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_last_step_lands_on_x0_without_leftover_noise(spacing, eta):
    # Nearly a point mass at μ: x̂_0 ≈ μ at every t, so any noise left in the output would show.
    mu = torch.tensor([0.3, -0.7])
    model = gaussian_model(mu=mu, cov=1e-8 * torch.eye(2))
    infos = []
    x = DDIMSampler(steps=10, eta=eta, spacing=spacing)(model, shape=(2,), seeds=range(50), callback=infos.append)
    assert (x - mu).abs().max() < 1e-3  # leftover noise would be ≥ √(1-ᾱ_1) ≈ 0.02
    assert torch.equal(x, infos[-1].x0_hat)
    assert infos[-1].t == (timesteps(200, 10, spacing)[0])
    if spacing != "trailing":
        assert infos[-1].t == 0


def test_ode_samplers_converge_to_the_exact_pf_ode_solution():
    """For N(μ, Σ) data the PF-ODE dx̃/dσ = σ(Σ+σ²I)⁻¹(x̃-μ) is solved along Σ's eigenvectors by
    x̃(σ) - μ = √((λ+σ²)/(λ+σ_0²)) (x̃(σ_0) - μ). Every solver ends with x̂_0 = D(x̃; σ_min)
    = μ + Σ(Σ+σ_min²)⁻¹(x̃ - μ), so the reference is that map applied to the exact x̃(σ_min)."""
    model = gaussian_model()
    smin, smax = sigma_range(SCHED)
    lam, U = torch.linalg.eigh(COV.double())
    mu = MU.double()
    x_T = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    factor = lam / ((lam + smin**2) * (lam + smax**2)).sqrt()
    exact = mu + ((x_T * math.sqrt(1 + smax**2) - mu) @ U * factor) @ U.T
    errors = {}
    for name, make in [
        ("heun", lambda n: HeunSampler(steps=n)),
        ("euler", lambda n: HeunSampler(steps=n, solver="euler")),
        ("dpmpp_2m", lambda n: DPMSolverPP2MSampler(steps=n)),
    ]:
        errors[name] = [float((make(n)(model, x_T=x_T) - exact).norm(dim=1).mean()) for n in (10, 20, 40)]
    for name, err in errors.items():
        assert err[0] > err[1] > err[2], (name, err)
    # halving the step: 2nd-order error falls ~4x, 1st-order ~2x
    assert errors["heun"][1] / errors["heun"][2] > 3.0 and errors["dpmpp_2m"][1] / errors["dpmpp_2m"][2] > 3.0
    assert 1.5 < errors["euler"][1] / errors["euler"][2] < 3.0
    assert all(h < e for h, e in zip(errors["heun"][1:], errors["euler"][1:]))


def test_adaptive_ode_solver_meets_its_tolerance_and_reports_its_nfe():
    """RK45 on the PF-ODE of N(μ, Σ) data against the exact solution (see the test above): the error falls
    with the tolerance, the NFE rises, and the reported NFE is the number of network calls."""
    lam, U = torch.linalg.eigh(COV.double())
    smin, smax = sigma_range(SCHED)
    x_T = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    factor = lam / ((lam + smin**2) * (lam + smax**2)).sqrt()
    exact = MU.double() + ((x_T * math.sqrt(1 + smax**2) - MU.double()) @ U * factor) @ U.T
    errors, nfes = [], []
    for tol in (1e-3, 1e-5):
        net = CountingNet(GaussianOracle(MU, COV, PROC))
        sampler = AdaptiveODESampler(rtol=tol, atol=tol)
        assert sampler.nfe(SCHED.num_timesteps) == 0  # not known before a call
        infos = []
        x = sampler(Denoiser(net, PROC, "eps", data_range=None), x_T=x_T, callback=infos.append)
        assert sampler.last_nfe == net.calls == sampler.nfe(SCHED.num_timesteps) > 10
        assert len(infos) == 1 and torch.equal(infos[0].x0_hat, x) and math.isclose(infos[0].sigma, smin)
        errors.append(float((x - exact).norm(dim=1).max()))
        nfes.append(net.calls)
    assert errors[1] < errors[0] / 30 and errors[1] < 1e-3 and nfes[1] > nfes[0], (errors, nfes)
    sampler(gaussian_model(), x_T=x_T[:10])  # a second call: nfe() is the mean over calls
    assert sampler.nfe(0) == round((nfes[1] + sampler.last_nfe) / 2)
    with pytest.raises(ValueError, match="method"):
        AdaptiveODESampler(method="rk4")
    assert AdaptiveODESampler().name == "ode-dopri5-tol1e-05"


ALL_SMALL = [
    DDPMSampler(steps=10),
    DDIMSampler(steps=10, eta=0.5),
    LangevinSampler(num_levels=3, steps_per_level=3, step_size=EPS_L),
    PCSampler(steps=6),
    PCSampler(steps=6, predictor="ddim", n_corrector=2, norms="expected"),
    PCSampler(steps=6, norms="sample"),
    HeunSampler(steps=6),
    HeunSampler(steps=6, solver="euler"),
    DPMSolverPP2MSampler(steps=6),
    DPMSolverPP2MSampler(steps=6, spacing="time"),
]


@pytest.mark.parametrize("sampler", ALL_SMALL, ids=lambda s: s.name)
def test_samples_depend_on_their_seed_not_on_the_batch(sampler):
    model = Denoiser(GaussianMixtureOracle(W, MEANS, COVS, PROC), PROC, "eps", data_range=None)
    seeds = [3, 14, 15, 92, 65, 35]
    together = sampler(model, shape=(2,), seeds=seeds)
    alone = torch.cat([sampler(model, shape=(2,), seeds=[s]) for s in seeds])
    split = torch.cat([sampler(model, shape=(2,), seeds=seeds[:2]), sampler(model, shape=(2,), seeds=seeds[2:])])
    if isinstance(sampler, PCSampler) and sampler.norms == "batch":  # documented: ε uses batch-mean norms
        assert not torch.allclose(together, alone, rtol=1e-3, atol=1e-3)
        return
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, split, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


class CountingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.ts = net, 0, []

    def forward(self, x, t, y=None):
        self.calls += 1
        self.ts.append(t)
        return self.net(x, t, y=y)


@pytest.mark.parametrize("sampler", ALL_SMALL, ids=lambda s: s.name)
def test_callback_fields_and_nfe(sampler):
    net = CountingNet(GaussianOracle(MU, COV, PROC))
    model = Denoiser(net, PROC, "eps", data_range=None)
    infos = []
    x = sampler(model, shape=(2,), num_samples=5, callback=infos.append)
    assert net.calls == sampler.nfe(SCHED.num_timesteps)
    assert all(isinstance(i, StepInfo) for i in infos) and len(infos) == infos[0].num_steps
    assert [i.step for i in infos] == list(range(len(infos)))
    for i in infos:
        assert isinstance(i.t, float) and isinstance(i.sigma, float) and 0 <= i.t <= SCHED.num_timesteps - 1
        assert i.x_t.shape == x.shape and i.x0_hat.shape == x.shape
        assert math.isclose(i.sigma, float(PROC.sigma(torch.tensor(i.t))), rel_tol=1e-4)
    sig = [i.sigma for i in infos]
    assert all(a >= b for a, b in zip(sig, sig[1:]))
    if not isinstance(sampler, LangevinSampler):
        assert infos[0].t == SCHED.num_timesteps - 1
    if isinstance(sampler, (DDPMSampler, DDIMSampler, DPMSolverPP2MSampler, HeunSampler)):
        torch.testing.assert_close(x, infos[-1].x0_hat)


def test_names_and_nfe():
    assert DDIMSampler(steps=50).name == "ddim-50" and DDIMSampler(steps=50).nfe(1000) == 50
    assert HeunSampler().name == "heun-18" and HeunSampler().nfe(1000) == 35
    assert HeunSampler(solver="euler").nfe(1000) == 18
    assert DPMSolverPP2MSampler().name == "dpmpp_2m-30" and DPMSolverPP2MSampler().nfe(1000) == 30
    assert DDPMSampler().nfe(1000) == 1000 and DDPMSampler(steps=100).name == "ddpm-100"
    assert LangevinSampler(10, 100).nfe(1000) == 1001 and PCSampler().nfe(1000) == 1999
    assert LangevinSampler().nfe(1000) == 3001 and LangevinSampler().name == "langevin-20x150"


def test_default_langevin_step_is_ncsns_ratio_on_any_sigma_min():
    """α_i = ε σ_i²/σ_L² with ε = 0.2 σ_L² by default: NCSN's 2e-5 at σ_L = 0.01, and the same α_i/σ_i² = 0.2
    where σ_min is smaller (a fixed 2e-5 diverged on EDM's 0.002 and sub-VP's 1e-4)."""
    assert math.isclose(LangevinSampler().epsilon(0.01), 2e-5, rel_tol=1e-12)
    assert math.isclose(LangevinSampler().epsilon(0.002), 0.2 * 0.002**2, rel_tol=1e-12)
    assert LangevinSampler(step_size=1e-3).epsilon(0.002) == 1e-3


def test_default_langevin_ladder_has_the_ncsn_ratio():
    """20 levels on the linear T = 1000 schedule: σ_i/σ_{i+1} ≤ 1.668 (Song & Ermon), both ends the
    schedule's σ range; ladder_levels gives the count for any σ range."""
    from diffexp import schedules as S
    from diffexp.samplers.langevin import NCSN_LEVEL_RATIO, ladder_levels

    sched = S.linear(1000)
    levels = torch.tensor(LangevinSampler().levels(sched), dtype=torch.float64)
    lo, hi = sigma_range(sched)
    assert len(levels) == 20 and math.isclose(levels[0], hi) and math.isclose(levels[-1], lo)
    ratios = levels[:-1] / levels[1:]
    assert (ratios <= NCSN_LEVEL_RATIO).all() and (ratios > 1.6).all()
    assert ladder_levels(lo, hi) == 20 and ladder_levels(0.01, 1.0) == 10  # NCSN's CIFAR-10 ladder
    n = ladder_levels(*sigma_range(S.cosine(1000)))
    assert (sigma_range(S.cosine(1000))[1] / sigma_range(S.cosine(1000))[0]) ** (1 / (n - 1)) <= NCSN_LEVEL_RATIO


def test_labels_guidance_and_generator_options():
    """y and guidance_scale reach the Denoiser: sampling component 2 of a label-conditioned mixture."""
    net = GaussianMixtureOracle(W, MEANS, COVS, PROC)
    model = Denoiser(net, PROC, "eps", num_classes=3, data_range=None)
    n = 500
    y = torch.full((n,), 2)
    for w in [1.0, 3.0]:
        x = DDIMSampler(steps=50)(
            model, shape=(2,), num_samples=n, generator=torch.Generator().manual_seed(0), y=y, guidance_scale=w
        )
        assert (torch.cdist(x, MEANS).argmin(1) == 2).all()
        if w == 1.0:
            assert_gaussian(x, MEANS[2], COVS[2])
    with pytest.raises(ValueError, match="2 seeds"):
        DDIMSampler()(model, shape=(2,), seeds=[1, 2], num_samples=3)
    with pytest.raises(ValueError, match="not both"):
        DDIMSampler()(model, shape=(2,), seeds=[1, 2], generator=torch.Generator())
    # the same generator seed reproduces; the global RNG path runs
    a = DDPMSampler(steps=5)(model, shape=(2,), num_samples=4, generator=torch.Generator().manual_seed(9))
    b = DDPMSampler(steps=5)(model, shape=(2,), num_samples=4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and DDPMSampler(steps=5)(model, shape=(2,), num_samples=4).shape == (4, 2)


def test_clip_denoised_uses_the_data_range():
    model = gaussian_model(mu=torch.tensor([3.0, 3.0]), cov=0.01 * torch.eye(2), data_range=(-1.0, 1.0))
    for sampler in [DDIMSampler(steps=10), HeunSampler(steps=5), DDPMSampler(steps=10), LangevinSampler(2, 2, EPS_L)]:
        assert sampler(model, shape=(2,), seeds=range(8)).max() <= 1.0 + 1e-6
        if not isinstance(sampler, LangevinSampler):  # (2x2 Langevin steps are far from converged)
            sampler.clip_denoised = False
            assert sampler(model, shape=(2,), seeds=range(8)).min() > 2.0


@pytest.mark.parametrize("sampler,points,frames", [(HeunSampler(steps=16), 8, 8), (DDIMSampler(steps=10), 4, 5)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_trajectory_strip_stride_counts_steps_not_nfe(sampler, points, frames):
    """The strip keeps every (steps // points)-th step: Heun-16 (31 NFE) gets its 8 frames (an NFE stride
    of 3 gave 6), DDIM-10 with 4 points keeps steps 0, 2, 4, 6, 8."""
    from diffexp.callbacks.sample import SampleCallback

    cb = SampleCallback(sampler, trajectory=2, trajectory_points=points)
    kept, steps = [], []
    record = cb._trajectory_recorder(kept)
    sampler(gaussian_model(), shape=(2,), num_samples=3, callback=lambda info: (steps.append(info.step), record(info)))
    assert len(kept) == frames and all(x.shape == (2, 2) and x0.shape == (2, 2) for x, x0 in kept)
    assert len(steps) == sampler.steps


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_hydra_configs_instantiate(name):
    import pathlib

    cfg = OmegaConf.load(pathlib.Path(__file__).parents[1] / "conf" / "sampler" / f"{name}.yaml")
    sampler = instantiate(cfg)
    assert type(sampler) is SAMPLERS[name]
    assert sampler.nfe(1000) >= (0 if name == "adaptive" else 1) and sampler.name  # adaptive: known after a call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu_with_the_same_seeds():
    for sampler in [DDPMSampler(steps=20), HeunSampler(steps=6), PCSampler(steps=10)]:
        cpu = sampler(gaussian_model(), shape=(2,), seeds=range(16))
        model = gaussian_model()
        model.net.cuda()
        gpu = sampler(model, shape=(2,), seeds=range(16))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
