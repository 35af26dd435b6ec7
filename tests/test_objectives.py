"""Objectives against closed forms: the Bayes-optimal output of Gaussian data minimises every objective
for every target, the ELBO weights equal a generic Gaussian KL, weights stay finite under zero
terminal SNR, the score has the right sign, the importance sampler is unbiased."""

import itertools
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffexp import schedules as S
from diffexp.likelihood import eps_kl_weights
from diffexp.objectives import (
    ELBOObjective,
    FixedSigmaHybridObjective,
    HybridObjective,
    LossSecondMomentTimesteps,
    ScoreMatchingObjective,
    SimpleObjective,
    snr_weight,
)
from diffexp.process import DDPM_TARGETS, DiffusionProcess, Prediction

MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
CONF = "conf/objective"


def gaussian_data(n, g):
    return MU + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T


def solve2x2(A, r):
    """A⁻¹ r for a batch of 2×2 matrices (Cramer's rule; much cheaper than batched LAPACK)."""
    a, b, c, d = A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1]
    det = a * d - b * c
    return torch.stack([d * r[:, 0] - b * r[:, 1], a * r[:, 1] - c * r[:, 0]], 1) / det[:, None]


def oracle(process, prediction):
    """Bayes-optimal network for x_0 ~ N(μ, Σ): with Σ_t = a²Σ + s²I, E[ε|x_t] = s Σ_t⁻¹(x_t - aμ) and
    E[x_0|x_t] = μ + aΣ Σ_t⁻¹(x_t - aμ), returned as the output for ``prediction``."""

    def net(x_t, t, y=None):
        a, s = process.scales(t, x_t.double())
        St = a[..., None] ** 2 * SIGMA + s[..., None] ** 2 * torch.eye(2, dtype=torch.float64)
        sol = solve2x2(St, x_t.double() - a * MU)
        x0, eps = MU + a * sol @ SIGMA, s * sol
        return Prediction(x0=x0, eps=eps, x_t=x_t.double(), signal_scale=a, noise_scale=s).target(prediction).to(x_t.dtype)

    return net


def direction(x_t):
    return x_t @ torch.tensor([[0.7, -0.4], [0.2, 0.5]], dtype=x_t.dtype) + torch.tensor([0.3, -0.1], dtype=x_t.dtype)


def per_sample_grad(objective, process, prediction, base_net, n=6000, seed=0):
    """d per_sample_i / dδ_i at δ = 0 for the output base_net + δ_i · direction(x_t): mean and SE."""
    g = torch.Generator().manual_seed(seed)
    x0 = gaussian_data(n, g).float()
    t = torch.randint(0, process.num_timesteps, (n,), generator=g)
    noise = torch.randn(n, 2, generator=g)
    delta = torch.zeros(n, requires_grad=True)
    net = lambda x_t, t_, y=None: base_net(x_t, t_) + delta[:, None] * direction(x_t)
    out = objective.validation_loss(net, x0, process, prediction, t, noise)
    (gr,) = torch.autograd.grad(out.per_sample.sum(), delta)
    gr = gr.double()
    return gr.mean().item(), gr.std().item() / math.sqrt(n)


OBJECTIVES = {
    "simple-uniform": lambda: SimpleObjective("uniform"),
    "simple-min_snr": lambda: SimpleObjective("min_snr"),
    "simple-p2": lambda: SimpleObjective("p2"),
    "elbo": lambda: ELBOObjective(decoder="gaussian", timestep_sampler="uniform"),
    "hybrid": lambda: FixedSigmaHybridObjective(decoder="gaussian", vlb_weight=0.01),
    "score": lambda: ScoreMatchingObjective(),
}


@pytest.mark.parametrize("name,prediction", list(itertools.product(OBJECTIVES, DDPM_TARGETS)))
def test_bayes_optimal_output_minimises_objective(name, prediction):
    process = DiffusionProcess(S.cosine(50))
    obj = OBJECTIVES[name]()
    net = oracle(process, prediction)
    m, se = per_sample_grad(obj, process, prediction, net)
    assert abs(m) < 5 * se, f"gradient at the optimum {m:.3g} ± {se:.3g}"
    # a non-optimal output (shifted along the same direction) has a clearly non-zero gradient
    bad = lambda x_t, t_, y=None: net(x_t, t_) + direction(x_t)
    m_bad, se_bad = per_sample_grad(obj, process, prediction, bad)
    assert m_bad > 5 * se_bad  # the test above would have detected this output
    # and the loss at the optimum is below the loss of perturbed outputs (common random numbers)
    g = torch.Generator().manual_seed(3)
    x0, t, noise = (
        gaussian_data(4000, g).float(),
        torch.randint(0, 50, (4000,), generator=g),
        torch.randn(4000, 2, generator=g),
    )
    losses = [
        obj.validation_loss(
            lambda x, tt, y=None, d=d: net(x, tt) + d * direction(x), x0, process, prediction, t, noise
        ).loss
        for d in (-1.0, 0.0, 1.0)
    ]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def generic_kl(m1, S1, m2, S2):
    """KL(N(m1, S1) ‖ N(m2, S2)) for full covariance matrices."""
    k, S2i, d = len(m1), np.linalg.inv(S2), m2 - m1
    return 0.5 * (np.trace(S2i @ S1) + d @ S2i @ d - k + np.log(np.linalg.det(S2) / np.linalg.det(S1)))


@pytest.mark.parametrize("rv", ["beta_tilde", "beta"])
def test_elbo_term_equals_generic_gaussian_kl(rv):
    sched = S.linear(200)
    process = DiffusionProcess(sched)
    obj = ELBOObjective(reverse_variance=rv, decoder="gaussian", timestep_sampler="uniform")
    b, al, ab = (v.numpy() for v in (sched.betas, sched.alphas, sched.alphas_cumprod))
    lam = eps_kl_weights(process, rv).numpy()
    g = torch.Generator().manual_seed(0)
    for i in [1, 2, 20, 100, 199]:
        x0, eps, delta = (torch.randn(1, 3, generator=g, dtype=torch.float64) for _ in range(3))
        delta = 0.1 * delta
        t = torch.tensor([i])
        term, _ = obj.bound_terms(lambda x_t, t_, y=None, e=eps + delta: e, x0, process, "eps", t, eps)
        xt = (np.sqrt(ab[i]) * x0 + np.sqrt(1 - ab[i]) * eps).numpy()[0]
        # true posterior from the joint Gaussian (x_{t-1}, x_t) | x_0, model mean from Ho et al. eq. 11
        v1 = 1 - ab[i - 1]
        m1 = np.sqrt(ab[i - 1]) * x0.numpy()[0] + np.sqrt(al[i]) * v1 / (al[i] * v1 + b[i]) * (
            xt - np.sqrt(ab[i]) * x0.numpy()[0]
        )
        var1 = v1 - al[i] * v1**2 / (al[i] * v1 + b[i])
        m2 = (xt - b[i] / np.sqrt(1 - ab[i]) * (eps + delta).numpy()[0]) / np.sqrt(al[i])
        var2 = var1 if rv == "beta_tilde" else b[i]
        kl = generic_kl(m1, var1 * np.eye(3), m2, var2 * np.eye(3))
        assert term.item() == pytest.approx(kl, rel=1e-6, abs=1e-12)
        # λ_t = β²/(2σ²α(1-ᾱ)): the KL is λ_t ‖δ‖² plus the variance-mismatch constant
        const = 0.5 * 3 * (var1 / var2 - 1 - np.log(var1 / var2))
        lam_ref = b[i] ** 2 / (2 * var2 * al[i] * (1 - ab[i]))
        assert lam[i] == pytest.approx(lam_ref, rel=1e-10)
        assert kl == pytest.approx(lam_ref * float((delta**2).sum()) + const, rel=1e-6)


def test_snr_weights_closed_form_and_zero_terminal_snr():
    snr = torch.tensor([0.0, 0.5, 5.0, 100.0], dtype=torch.float64)
    m = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
    expect = {
        "eps": torch.tensor([1.0, 1.0, 1.0, 0.05], dtype=torch.float64),
        "x0": m,
        "v": m / (snr + 1),
        "score": torch.tensor([1.0, 1.0, 1.0, 0.05], dtype=torch.float64) / (snr + 1),
    }
    for pred, e in expect.items():
        torch.testing.assert_close(snr_weight(snr, pred, "min_snr"), e)
        torch.testing.assert_close(
            snr_weight(snr, pred, "p2"),
            (1 / (1 + snr)) * snr_weight(snr, pred, "min_snr") / snr_weight(snr, "eps", "min_snr"),
        )
        assert bool(torch.isfinite(snr_weight(snr, pred, "p2")).all())
    # w_target ‖target error‖² = w_eps ‖ε error‖² for any output (the weighting is one function of t)
    process = DiffusionProcess(S.cosine(100))
    g = torch.Generator().manual_seed(0)
    x0, eps, t = (
        torch.randn(64, 2, generator=g, dtype=torch.float64),
        torch.randn(64, 2, generator=g, dtype=torch.float64),
        torch.randint(0, 100, (64,), generator=g),
    )
    xt = process.q_sample(x0, t, eps)
    truth, snr_t = process.targets(x0, eps, xt, t), process.schedule.snr[t]
    for pred, wt in itertools.product(DDPM_TARGETS, ["min_snr", "p2"]):
        out = truth.target(pred) + 0.1 * torch.randn(64, 2, generator=g, dtype=torch.float64)
        eps_err = ((process.predict(out, xt, t, pred).eps - eps) ** 2).sum(1)
        tgt_err = ((out - truth.target(pred)) ** 2).sum(1)
        torch.testing.assert_close(snr_weight(snr_t, pred, wt) * tgt_err, snr_weight(snr_t, "eps", wt) * eps_err)


@pytest.mark.parametrize("prediction", DDPM_TARGETS)
def test_losses_finite_under_zero_terminal_snr(prediction):
    sched = S.linear(20, zero_terminal_snr=True)
    process = DiffusionProcess(sched)
    net = torch.nn.Linear(3, 2)
    net_fn = lambda x, t, y=None: net(torch.cat([x, t[:, None].float() / 20], 1))
    g = torch.Generator().manual_seed(0)
    x0, noise, t = (
        torch.randn(40, 2, generator=g),
        torch.randn(40, 2, generator=g),
        torch.arange(40) % 20,
    )  # includes t = T
    objs = [SimpleObjective(w) for w in ("uniform", "min_snr", "p2")] + [ScoreMatchingObjective()]
    if prediction in ("x0", "v"):
        objs += [ELBOObjective(decoder="gaussian", timestep_sampler="uniform"), FixedSigmaHybridObjective(decoder="gaussian")]
    for obj in objs:
        with pytest.warns(UserWarning) if prediction in ("eps", "score") else _nullcontext():
            obj.validate(prediction, sched)
        out = obj.validation_loss(net_fn, x0, process, prediction, t, noise)
        net.zero_grad()
        out.loss.backward()
        assert torch.isfinite(out.per_sample).all(), (type(obj).__name__, out.per_sample)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        # the t = T samples are trained, except where min-SNR/P2 weights vanish at SNR = 0 (x0, v targets)
        # and for DSM with x0/v-prediction (at a_T = 0 both give ε̂ = x_T exactly, the true ε)
        vanishing = getattr(obj, "weighting", "uniform") != "uniform" and prediction in ("x0", "v")
        vanishing |= isinstance(obj, ScoreMatchingObjective) and prediction in ("x0", "v")
        assert (out.per_sample[t == 19].abs().sum() > 0) != vanishing


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_validate_rejects_undefined_combinations():
    z = S.cosine(50, zero_terminal_snr=True)
    for obj in (ELBOObjective(), FixedSigmaHybridObjective()):
        for pred in ("eps", "score"):
            with pytest.raises(ValueError, match="zero-terminal-SNR"):
                obj.validate(pred, z)
        obj.validate("v", z)
    with pytest.raises(ValueError, match="prediction target"):
        SimpleObjective().validate("mu", S.cosine(50))
    with pytest.raises(ValueError, match="weighting"):
        SimpleObjective("snr")
    with pytest.raises(ValueError, match="reverse_variance"):
        ELBOObjective(reverse_variance="learned")
    with pytest.raises(ValueError, match="timestep_sampler"):
        ELBOObjective(timestep_sampler="sobol")


def test_score_matching_sign():
    """The loss is 0 when the output is ∇_{x_t} log q(x_t|x_0) computed by autograd, and > 0 for its negation."""
    process = DiffusionProcess(S.linear(100))
    obj = ScoreMatchingObjective()
    g = torch.Generator().manual_seed(0)
    x0, noise, t = (
        torch.randn(32, 2, generator=g),
        torch.randn(32, 2, generator=g),
        torch.randint(0, 100, (32,), generator=g),
    )

    def true_score(x_t, t_, y=None):
        x = x_t.detach().requires_grad_(True)
        a, s = process.scales(t_, x)
        logq = (-((x - a * x0) ** 2) / (2 * s**2)).sum()
        return torch.autograd.grad(logq, x)[0]

    assert obj.validation_loss(true_score, x0, process, "score", t, noise).loss.item() < 1e-10
    assert obj.validation_loss(lambda *a: -true_score(*a), x0, process, "score", t, noise).loss.item() > 1.0
    # and it equals the ε-MSE for an ε-predictor (λ = s² makes them identical)
    eps_hat = torch.randn(32, 2, generator=g)
    out = obj.validation_loss(lambda *a: eps_hat, x0, process, "eps", t, noise)
    torch.testing.assert_close(out.per_sample, ((eps_hat - noise) ** 2).mean(1), rtol=1e-4, atol=1e-6)


def reference_update(hist, counts, ts, losses, K):
    """improved-diffusion's LossSecondMomentResampler.update_with_all_losses (shift-out history)."""
    for t, loss in zip(ts, losses):
        if counts[t] == K:
            hist[t, :-1] = hist[t, 1:].copy()
            hist[t, -1] = loss
        else:
            hist[t, counts[t]] = loss
            counts[t] += 1


def test_importance_sampler_history_probs_and_unbiasedness():
    T, K = 6, 3
    smp = LossSecondMomentTimesteps(history_per_term=K, uniform_prob=0.001)
    smp.setup(T)
    hist, counts = np.zeros((T, K)), np.zeros(T, dtype=int)
    rng = np.random.default_rng(0)
    for step in range(8):
        ts = rng.integers(0, T, size=7) if step else np.array([0, 0, 0, 0, 0, 1, 1])  # duplicates beyond K
        losses = rng.uniform(0.1, 3.0, size=len(ts))
        if step < 2:
            torch.testing.assert_close(smp.probs(T), torch.full((T,), 1 / T, dtype=torch.float64))
        smp.update(torch.tensor(ts), torch.tensor(losses))
        reference_update(hist, counts, ts, losses, K)
    assert smp.warmed_up and (counts == K).all()
    np.testing.assert_allclose(np.sort(smp.loss_history.numpy(), 1), np.sort(hist, 1), rtol=1e-6)
    rms = np.sqrt((hist**2).mean(1))
    p_ref = 0.999 * rms / rms.sum() + 0.001 / T
    np.testing.assert_allclose(smp.probs(T).numpy(), p_ref, rtol=1e-5)
    # unbiased: Σ_t p_t w_t f(t) = mean f exactly, and by Monte Carlo through sample()
    f = torch.tensor(rng.normal(size=T) ** 2 + 1)
    t, w = smp.sample(200_000, T, "cpu", torch.Generator().manual_seed(1))
    assert not torch.allclose(w, torch.ones_like(w))
    est = (w.double() * f[t]).numpy()
    assert abs(est.mean() - f.mean().item()) < 5 * est.std() / math.sqrt(len(est))
    p = smp.probs(T)
    assert (p * (1 / (T * p)) * f).sum().item() == pytest.approx(f.mean().item(), rel=1e-12)
    # saved in checkpoints: a fresh objective loads the history and gives the same distribution
    a, b = ELBOObjective(history_per_term=K), ELBOObjective(history_per_term=K)
    a.timestep_sampler.load_state_dict(smp.state_dict())
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.timestep_sampler.probs(T), smp.probs(T))
    with pytest.raises(ValueError, match="T=6"):
        b.validate("eps", S.cosine(10))


def test_training_loss_uses_generator_and_updates_history():
    process = DiffusionProcess(S.cosine(5))
    obj = ELBOObjective(decoder="gaussian", history_per_term=2)
    net = oracle(process, "eps")
    x0 = gaussian_data(64, torch.Generator().manual_seed(0)).float()
    o1 = obj.loss(net, x0, process, "eps", generator=torch.Generator().manual_seed(5))
    o2 = ELBOObjective(decoder="gaussian", history_per_term=2).loss(
        net, x0, process, "eps", generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(o1.per_sample, o2.per_sample)
    assert obj.timestep_sampler.warmed_up  # 64 draws over 5 timesteps fill 2 per t (with overwhelming probability)
    o3 = obj.loss(net, x0, process, "eps", generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(o3.loss, (o3.weights * o3.per_sample).mean())


@pytest.mark.parametrize(
    "name,cls",
    [
        ("simple", SimpleObjective),
        ("elbo", ELBOObjective),
        ("hybrid_fixed", FixedSigmaHybridObjective),
        ("hybrid", HybridObjective),
        ("score", ScoreMatchingObjective),
    ],
)
def test_configs_instantiate(name, cls):
    obj = instantiate(OmegaConf.load(f"{CONF}/{name}.yaml"))
    assert type(obj) is cls
    obj.validate("v", S.cosine(10))
