"""Classifier guidance (diffexp.guidance) with the exact noisy classifier of a labelled Gaussian mixture.

At s = 1 the guided ε̃ = ε* − σ_t ∇ log p(y|x_t) is exactly −σ_t ∇ log p_t(x_t | y), the score of the
mixture with the tilted weights w̃_k ∝ w_k π_{yk} (diffexp.oracles.MixtureClassifierOracle), so the sampled
component frequencies must move from w to w̃; s = 0 leaves them at w.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffexp import schedules as S
from diffexp.denoiser import Denoiser
from diffexp.guidance import ClassifierGuidance
from diffexp.oracles import GaussianMixtureOracle, MixtureClassifierOracle
from diffexp.process import DiffusionProcess
from diffexp.samplers import DDIMSampler, DDPMSampler

MEANS = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
PI = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]])  # p(label | component), columns sum to 1
N = 3000


def setup(T=200):
    process = DiffusionProcess(S.linear(T))
    oracle = GaussianMixtureOracle(WEIGHTS, MEANS, 0.25, process)
    classifier = MixtureClassifierOracle(oracle, PI)
    den = Denoiser(oracle, process, data_range=None)
    return process, oracle, classifier, den


def component_freqs(x):
    k = torch.cdist(x.double(), MEANS.double()).argmin(1)
    return torch.bincount(k, minlength=3).double() / x.shape[0]


def test_tilted_weights_closed_form():
    _, _, classifier, _ = setup()
    w = classifier.tilted_weights(1)
    torch.testing.assert_close(w, torch.tensor([0.05, 0.15, 0.18], dtype=torch.float64) / 0.38)
    # p(y|x_t) is a distribution over labels at every x_t and t; at the data end it is π of the nearest component.
    x = MEANS.clone()
    logp = classifier(x, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(3))
    torch.testing.assert_close(logp.exp(), PI.T, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", [DDPMSampler(clip_denoised=False), DDIMSampler(steps=50, clip_denoised=False)],
                         ids=["ddpm", "ddim50"])
def test_guidance_moves_component_weights_to_tilted_weights(sampler):
    _, _, classifier, den = setup()
    y = torch.ones(N, dtype=torch.long)
    se = torch.sqrt(torch.tensor(0.25 / N))  # ≥ the binomial standard error of every frequency
    freqs = {}
    for s in (0.0, 1.0):
        den.classifier_guidance = ClassifierGuidance(classifier, scale=s)
        x = sampler(den, (2,), N, y=y, generator=torch.Generator().manual_seed(0))
        freqs[s] = component_freqs(x)
    assert (freqs[0.0] - WEIGHTS.double()).abs().max() < 5 * se, freqs[0.0]
    target = classifier.tilted_weights(1)
    assert (freqs[1.0] - target).abs().max() < 5 * se, (freqs[1.0], target)
    assert (freqs[1.0] - WEIGHTS.double()).abs().max() > 10 * se  # the test can tell guided from unguided


def test_guidance_in_eps_form_and_composes_with_clipping():
    """ε̃ = ε − s σ_t ∇ log p(y|x_t) with the gradient checked by finite differences; x̂_0 follows ε̃."""
    process, oracle, classifier, den = setup()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64) * 3
    t = torch.full((5,), 60)
    y = torch.tensor([0, 1, 0, 1, 1])
    guidance = ClassifierGuidance(classifier.double(), scale=2.5)
    grad = guidance.grad_log_prob(x, t, y, process)
    h = 1e-6
    for d in range(2):
        e = torch.zeros_like(x)
        e[:, d] = h
        lp = lambda z: classifier(z, t).gather(1, y[:, None])[:, 0]  # noqa: E731
        torch.testing.assert_close(grad[:, d], (lp(x + e) - lp(x - e)) / (2 * h), atol=1e-6, rtol=1e-6)
    den.classifier_guidance = guidance
    plain, guided = Denoiser(oracle, process, data_range=None)(x, t), den(x, t, y=y)
    sigma = float(process.schedule.sigmas[60]) / math.sqrt(1 + float(process.schedule.sigmas[60]) ** 2)
    torch.testing.assert_close(guided.eps, plain.eps - 2.5 * sigma * grad)
    torch.testing.assert_close(guided.x0, (x - sigma * guided.eps) / math.sqrt(1 - sigma**2))
    clipped = den(x, t, y=y, clip=(-1.0, 1.0))
    assert float(clipped.x0.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="non-negative"):
        ClassifierGuidance(classifier, scale=-1)


def test_guidance_is_finite_where_alpha_is_zero():
    """At the last step of a zero-terminal-SNR schedule (α = 0) x_t carries no information about y: x̃_0 stays
    x̂_0 (no division by α), ε̃ is still shifted, everything finite — with v and x0 targets (issue 17 §1 for CFG)."""
    process = DiffusionProcess(S.linear(200, zero_terminal_snr=True))
    assert float(process.schedule.alphas_cumprod[-1]) == 0.0
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.full((6,), 199)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    for prediction in ("v", "x0"):
        oracle = GaussianMixtureOracle(WEIGHTS, MEANS, 0.25, process, prediction=prediction)
        classifier = MixtureClassifierOracle(GaussianMixtureOracle(WEIGHTS, MEANS, 0.25, process), PI).double()
        den = Denoiser(oracle, process, prediction=prediction, data_range=None)
        plain = den(x, t)
        den.classifier_guidance = ClassifierGuidance(classifier, scale=3.0)
        guided = den(x, t, y=y)
        assert torch.isfinite(guided.x0).all() and torch.isfinite(guided.eps).all(), prediction
        torch.testing.assert_close(guided.x0, plain.x0)
        clipped = den(x, t, y=y, clip=(-1.0, 1.0))
        assert torch.isfinite(clipped.eps).all() and float(clipped.x0.abs().max()) <= 1.0
