"""The process algebra against Bayes' rule, Monte Carlo and round trips."""

import itertools

import numpy as np
import pytest
import torch

from diffexp import schedules as S
from diffexp.process import DDPM_TARGETS, DiffusionProcess


def joint_conditioning(ab_prev, alpha, x0, xt):
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0 (1-D):
    x_{t-1} = √ᾱ_{t-1} x_0 + √(1-ᾱ_{t-1}) ε_1,  x_t = √α_t x_{t-1} + √(1-α_t) ε_2."""
    m = np.array([np.sqrt(ab_prev) * x0, np.sqrt(alpha * ab_prev) * x0])
    v1 = 1 - ab_prev
    C = np.array([[v1, np.sqrt(alpha) * v1], [np.sqrt(alpha) * v1, alpha * v1 + (1 - alpha)]])
    mean = m[0] + C[0, 1] / C[1, 1] * (xt - m[1])
    var = C[0, 0] - C[0, 1] ** 2 / C[1, 1]
    return mean, var


@pytest.mark.parametrize("sched", [S.linear(1000), S.cosine(100), S.linear(50, zero_terminal_snr=True)])
def test_posterior_matches_bayes(sched):
    p = DiffusionProcess(sched)
    ab, al = sched.alphas_cumprod.numpy(), sched.alphas.numpy()
    rng = np.random.default_rng(0)
    for i in [0, 1, 7, sched.T // 2, sched.T - 1]:
        x0, xt = rng.normal(size=2)
        mean, var, logvar = p.q_posterior(
            torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[xt]], dtype=torch.float64), torch.tensor([i])
        )
        ab_prev = 1.0 if i == 0 else ab[i - 1]
        m_ref, v_ref = joint_conditioning(ab_prev, al[i], x0, xt)
        assert mean.item() == pytest.approx(m_ref, rel=1e-9, abs=1e-12)
        assert var.item() == pytest.approx(v_ref, rel=1e-9, abs=1e-15)
        if i > 0:
            assert logvar.item() == pytest.approx(np.log(v_ref), rel=1e-9)


def test_q_sample_moments_monte_carlo():
    s = S.cosine(100)
    p = DiffusionProcess(s)
    n, x0v = 100_000, 0.7
    g = torch.Generator().manual_seed(0)
    for i in [0, 30, 99]:
        x0 = torch.full((n, 1), x0v, dtype=torch.float64)
        t = torch.full((n,), i)
        xt = p.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
        m_ref, v_ref = np.sqrt(s.alphas_cumprod[i].item()) * x0v, 1 - s.alphas_cumprod[i].item()
        m_q, v_q = p.q_mean_var(x0[:1], t[:1])
        assert m_q.item() == pytest.approx(m_ref) and v_q.item() == pytest.approx(v_ref)
        # 5 standard errors: SE(mean) = √(v/n), SE(var) = v √(2/(n-1))
        assert abs(xt.mean().item() - m_ref) < 5 * np.sqrt(v_ref / n)
        assert abs(xt.var().item() - v_ref) < 5 * v_ref * np.sqrt(2 / (n - 1))


@pytest.mark.parametrize("src,dst", list(itertools.product(DDPM_TARGETS, DDPM_TARGETS)))
def test_conversion_round_trip(src, dst):
    s = S.cosine(100)
    p = DiffusionProcess(s)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, 100, (16,), generator=g)
    xt = p.q_sample(x0, t, eps)
    truth = p.targets(x0, eps, xt, t)
    pred = p.predict(truth.target(src), xt, t, src)
    torch.testing.assert_close(pred.target(dst), truth.target(dst), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(p.eps_to_output(eps, x0, xt, t, dst), truth.target(dst))


def test_target_definitions():
    """v = a ε - s x_0 (Salimans & Ho), score = -ε/s = ∇ log q(x_t|x_0) by autograd."""
    p = DiffusionProcess(S.linear(100))
    x0, eps, t = (
        torch.randn(4, 2, dtype=torch.float64),
        torch.randn(4, 2, dtype=torch.float64),
        torch.tensor([0, 5, 50, 99]),
    )
    xt = p.q_sample(x0, t, eps).requires_grad_(True)
    a, s = p.scales(t, xt)
    logq = (-((xt - a * x0) ** 2) / (2 * s**2)).sum()
    (grad,) = torch.autograd.grad(logq, xt)
    truth = p.targets(x0, eps, xt.detach(), t)
    torch.testing.assert_close(truth.score, grad)
    torch.testing.assert_close(truth.v, a * eps - s * x0)


def test_clip_keeps_x0_and_eps_consistent():
    p = DiffusionProcess(S.linear(100))
    xt, t = torch.randn(8, 2) * 3, torch.full((8,), 60)
    pred = p.predict(torch.randn(8, 2) * 5, xt, t, "x0", clip=(-1.0, 1.0))
    a, s = p.scales(t, xt)
    assert float(pred.x0.abs().max()) <= 1.0
    torch.testing.assert_close(a * pred.x0 + s * pred.eps, xt)
    with pytest.raises(ValueError, match="prediction target"):
        p.predict(xt, xt, t, "mu")
