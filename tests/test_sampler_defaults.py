"""Every sampler exactly as a user gets it — composed from ``conf/sampler/<name>.yaml`` with the shipped
schedule, no option changed — reproduces a Gaussian mixture when driven by its exact denoiser.

The mixture is Song & Ermon's (2019, Fig. 3) two modes 14 std apart with weights 0.2/0.8, shifted to
mean zero: p = 0.2 N((-8,-8), I) + 0.8 N((2,2), I). Its weights are what a bad corrector step (pc with
per-sample norms: 0.37/0.63, spreads 5-17x) or a coarse Langevin ladder (10 levels: 0.26/0.74) gets wrong.
Mean zero because every sampler starts from the prior N(0, prior_std² I), neglecting the data's mean as
the papers' samplers do: with Song & Ermon's uncentred modes at ±5 (mean 3) a variance-exploding start at
σ_max = 50 is 0.06 std off and the PF-ODE carries that into a 0.1 shift of the large mode, whatever the
solver's step count. Samples are assigned to the nearest mean (the components are 14
std apart, so misassignment is negligible) and, with k = 4 standard errors at n samples:

* weights: binomial std √(w(1-w)/n);
* component means: std √(Σ_ii/n_k) of a mean of n_k draws;
* component covariances (spreads): the unbiased sample covariance of n_k Gaussian draws has
  Var(S_ij) = (Σ_ij² + Σ_ii Σ_jj)/(n_k - 1) (Wishart).

The samplers' own discretisation bias is not in these bounds. Measured once with n = 20000 at the shipped
settings, it stays below half of each tolerance at n = 2000: heun-18 puts the small component's mean
≈ 0.1 too far out with variance ≈ +10% (tolerances 0.2 and 0.28 for n_k ≈ 400), dpmpp_2m-30 its variance
along the modes' axis +9% (at 20 steps it failed 10-26% of independent n = 2000 draws; docs/samplers.md),
ddim-50 its means ≈ 0.05 too far in, annealed Langevin (20 levels x 150) weights 0.214/0.786 (tolerance 0.036; 0.217 at NCSN's 100 steps a level)
and variances ≈ +6%; ddpm and pc show no bias beyond the sampling noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF, compose
from diffexp.denoiser import Denoiser
from diffexp.oracles import GaussianMixtureOracle
from diffexp.process import DiffusionProcess
from diffexp.samplers import SAMPLERS, LangevinSampler, PCSampler

K_STD = 4.0
N = 2000
WEIGHTS = torch.tensor([0.2, 0.8], dtype=torch.float64)
MEANS = torch.tensor([[-8.0, -8.0], [2.0, 2.0]], dtype=torch.float64)
COVS = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
# sampler=recipe is no sampler: a placeholder for the one a checkpoint stores (tests/test_sampler_recipe.py)
SHIPPED = sorted(p.stem for p in (CONF / "sampler").glob("*.yaml") if p.stem != "recipe")


def shipped(name: str, tmp_path):
    """(sampler, process, data_range) as ``train.py data=toy2d sampler=<name>`` builds them."""
    cfg = compose("train", ["data=toy2d", f"sampler={name}"], tmp_path)
    process = DiffusionProcess(instantiate(cfg.schedule))
    return instantiate(cfg.sampler), process, instantiate(cfg.data).data_range


def mixture_model(process, data_range=None, prediction="eps"):
    oracle = GaussianMixtureOracle(WEIGHTS, MEANS, COVS, process, prediction)
    return Denoiser(oracle, process, prediction, data_range=data_range)


def mixture_errors(x, weights=WEIGHTS, means=MEANS, covs=COVS, k=K_STD) -> list[str]:
    """What in x disagrees with the mixture beyond k standard errors (empty: it agrees)."""
    x = x.double()
    n, errors = x.shape[0], []
    if not torch.isfinite(x).all():
        return ["non-finite samples"]
    label = torch.cdist(x, means).argmin(1)
    freq = torch.bincount(label, minlength=len(weights)).double() / n
    tol = k * (weights * (1 - weights) / n).sqrt()
    if ((freq - weights).abs() > tol).any():
        errors.append(f"weights {freq.tolist()} vs {weights.tolist()} (tol {tol.tolist()})")
    for j in range(len(weights)):
        xs = x[label == j]
        m = xs.shape[0]
        if m < 2:
            errors.append(f"component {j}: {m} samples")
            continue
        var = covs[j].diagonal()
        mean_tol = k * (var / m).sqrt()
        if ((xs.mean(0) - means[j]).abs() > mean_tol).any():
            errors.append(f"component {j} mean {xs.mean(0).tolist()} vs {means[j].tolist()} (tol {mean_tol.tolist()})")
        cov_tol = k * ((covs[j] ** 2 + var[:, None] * var[None, :]) / (m - 1)).sqrt()
        S = torch.cov(xs.T)
        if ((S - covs[j]).abs() > cov_tol).any():
            errors.append(f"component {j} covariance {S.tolist()} vs {covs[j].tolist()} (tol {cov_tol.tolist()})")
    return errors


def draw(sampler, model, n=N, seed=0):
    return sampler(model, shape=(2,), num_samples=n, generator=torch.Generator().manual_seed(seed))


def test_every_shipped_sampler_is_tested():
    assert SHIPPED == sorted(SAMPLERS), "a sampler yaml without a registry entry (or the reverse)"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sampler_reproduces_the_mixture(name, tmp_path):
    sampler, process, data_range = shipped(name, tmp_path)
    assert data_range is None  # toy2d: no clipping, whatever clip_denoised says
    if name == "euler_maruyama":  # continuous families only (tests/test_samplers_families.py); here it says so
        with pytest.raises(ValueError, match="sampler=ddpm"):
            sampler.check(process)
        return
    if name == "consistency":  # made for consistency models (tests/test_distill*.py): on an exact denoiser its
        # one step is E[x0 | x_T] at sigma_max, near the mixture's mean, which is not a sample of it
        assert sampler.nfe(0) == 1 and mixture_errors(draw(sampler, mixture_model(process, data_range)))
        return
    errors = mixture_errors(draw(sampler, mixture_model(process, data_range)))
    assert not errors, f"{name} at its shipped defaults ({sampler.name}): " + "; ".join(errors)


def test_the_check_catches_per_sample_corrector_norms(tmp_path):
    """The previous pc default fails the same check: per-sample norms make huge corrector steps where
    ‖ŝ‖ ≈ 0 between the modes and blow the spreads up; batch-averaged norms pass."""
    _, process, _ = shipped("pc", tmp_path)
    model = mixture_model(process)
    assert any("covariance" in e for e in mixture_errors(draw(PCSampler(steps=100, norms="sample"), model)))
    assert not mixture_errors(draw(PCSampler(steps=100), model))


@pytest.mark.slow
def test_the_check_catches_a_coarse_langevin_ladder(tmp_path):
    """An earlier langevin default (10 levels x 100, ratio 2.9 on this schedule) freezes the weights."""
    _, process, _ = shipped("langevin", tmp_path)
    assert math.isclose(float(process.schedule.sigmas[0]), 0.01, rel_tol=1e-3)  # NCSN's σ_L, as documented
    coarse = draw(LangevinSampler(num_levels=10, steps_per_level=100), mixture_model(process))
    assert any("weights" in e for e in mixture_errors(coarse))
