"""diffusers interop, the process: noise tables against diffusers' own, and the scheduler config mapping
in both directions (diffexp.interop.schedulers). Offline: diffusers schedulers are built from configs."""

from __future__ import annotations

import pytest
import torch

from diffexp.interop.schedulers import from_scheduler_config, to_scheduler_config
from diffexp.schedules import cosine, linear, make_schedule, rescale_zero_terminal_snr, sigmoid
from diffexp.validation import ConfigError

diffusers = pytest.importorskip("diffusers")

EPS32 = 2.0**-23


def float32_cumprod_bound(betas: torch.Tensor) -> torch.Tensor:
    """Relative round-off of diffusers' float32 ᾱ_t: β_t is rounded once (relative EPS32), so α_t = 1 - β_t
    is off by EPS32·β_t/(1-β_t) relatively, and the product adds one rounding per factor: the relative error
    of ᾱ_t is at most EPS32·Σ_{s≤t} (1 + β_s/(1-β_s)) = EPS32·Σ_{s≤t} 1/(1-β_s) (β_T = 1 of a zero-SNR end
    excluded: ᾱ_T = 0 exactly on both sides)."""
    return EPS32 * (1.0 / (1.0 - betas.clamp(max=1 - 1e-6))).cumsum(0) * 2


# ---- noise tables ------------------------------------------------------------------------------------------
DIFFUSERS_CONFIGS = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "linear+ztsnr": dict(beta_schedule="linear", rescale_betas_zero_snr=True),
    "cosine+ztsnr": dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True),
    "sigmoid": dict(beta_schedule="sigmoid"),
}


@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_noise_tables_match_diffusers(name):
    """ᾱ of the imported process vs diffusers' own table. diffusers computes β in float32 (one rounding of
    the same float64 formula: agreement to 2 float32 ulps) and ᾱ by a float32 cumulative product of T
    factors (:func:`float32_cumprod_bound`). The float64 algorithms are compared in the next test."""
    T = 1000
    cfg = dict(num_train_timesteps=T, **DIFFUSERS_CONFIGS[name])
    theirs = diffusers.DDPMScheduler(**cfg)
    ours = from_scheduler_config(cfg).schedule
    assert ours.betas.dtype == torch.float64
    if "ztsnr" not in name:  # (rescaled β = 1 - ᾱ_t/ᾱ_{t-1} cancels catastrophically in float32: compare ᾱ)
        assert torch.allclose(ours.betas, theirs.betas.double(), rtol=2 * EPS32, atol=0)
    ab_t = theirs.alphas_cumprod.double()
    assert bool(((ours.alphas_cumprod - ab_t).abs() <= float32_cumprod_bound(ours.betas) * ab_t + 1e-12).all())
    if "ztsnr" in name:
        assert float(ours.alphas_cumprod[-1]) == 0.0 == float(ab_t[-1])


@pytest.mark.parametrize("family", ["linear", "cosine"])
def test_zero_snr_rescale_matches_diffusers_in_float64(family):
    """Lin et al.'s Algorithm 1: diffusers' implementation, given float64 betas, equals diffexp's to
    float64 round-off; diffexp's cosine equals diffusers' squaredcos_cap_v2 formula (computed in float64
    before its float32 cast) to one float32 rounding."""
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as theirs

    betas = make_schedule(family, 1000).betas
    assert torch.allclose(rescale_zero_terminal_snr(betas), theirs(betas.clone()), rtol=1e-13, atol=1e-15)
    if family == "cosine":
        assert torch.allclose(betas, betas_for_alpha_bar(1000).double(), rtol=EPS32, atol=0)


@pytest.mark.parametrize("schedule", [linear(1000), cosine(1000), linear(1000, True), cosine(200, True), linear(50),
                                      sigmoid(100)], ids=str)
def test_exported_scheduler_config_describes_the_same_process(schedule):
    """diffexp -> DDPMScheduler config -> diffexp is exact (float64); diffusers reading the config builds
    the same ᾱ to its float32 precision. Families diffusers lacks (diffexp's sigmoid) go as trained_betas."""
    cfg = to_scheduler_config(schedule, "v")
    assert cfg["prediction_type"] == "v_prediction" and cfg["num_train_timesteps"] == schedule.num_timesteps
    assert (cfg["trained_betas"] is not None) == schedule.name.startswith("sigmoid")
    assert torch.equal(from_scheduler_config(cfg).schedule.alphas_cumprod, schedule.alphas_cumprod)
    theirs = diffusers.DDPMScheduler.from_config(cfg).alphas_cumprod.double()
    ab = schedule.alphas_cumprod
    assert bool(((theirs - ab).abs() <= float32_cumprod_bound(schedule.betas) * ab + 1e-12).all())


@pytest.mark.parametrize("field,value", [("beta_schedule", "exp"), ("prediction_type", "flow_prediction"),
                                         ("variance_type", "learned_range"), ("timestep_spacing", "uniform"),
                                         ("timestep_type", "continuous"), ("clip_sample_range", 2.0),
                                         ("num_train_timesteps", 0), ("_class_name", "FlowMatchEulerDiscreteScheduler")])
def test_unsupported_scheduler_settings_name_the_field(field, value):
    cfg = {"num_train_timesteps": 100, "clip_sample": True, field: value}
    with pytest.raises(ConfigError, match=field):
        from_scheduler_config(cfg)


def test_scheduler_mapping_of_prediction_spacing_and_variance():
    imp = from_scheduler_config({"prediction_type": "sample", "timestep_spacing": "trailing", "variance_type": "fixed_small"})
    assert (imp.prediction, imp.spacing, imp.variance) == ("x0", "trailing", "beta_tilde")
    assert any("sampler.spacing=trailing" in n for n in imp.notes)
    imp = from_scheduler_config({"timestep_spacing": "leading", "thresholding": True})
    assert imp.spacing is None and imp.prediction == "eps" and len(imp.notes) == 2  # said, not silently dropped
    with pytest.raises(ConfigError, match="prediction=.score"):
        to_scheduler_config(linear(100), "score")
