"""diffexp's samplers against diffusers' schedulers on the same model and the same noise.

The model is an analytic one (the exact denoiser of a 2-component Gaussian mixture, float64,
:mod:`diffexp.oracles`), so both sides evaluate the same function of (x_t, t) and every difference comes
from the samplers. Where the algorithms coincide the trajectories agree to float64 round-off (DDPM, DDIM
trailing, Heun) or to float32 round-off where diffusers computes the step in float32 (Euler and
DPM-Solver++ cast the sample to float32 inside ``step``). Where they do not, the test pins the documented
difference down by reproducing diffusers' result with diffexp's own step on diffusers' choice (DDIM's
``linspace`` previous timestep, DPM-Solver++'s integer network timesteps).

diffusers keeps its σ grids in float32; to compare the algorithms and not the storage, the float64 grids
are given to the diffusers schedulers (after checking that their own float32 grids agree to float32
round-off).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffexp.denoiser import Denoiser
from diffexp.interop.schedulers import to_scheduler_config
from diffexp.oracles import GaussianMixtureOracle
from diffexp.process import DiffusionProcess
from diffexp.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2MSampler, HeunSampler
from diffexp.samplers.base import NoiseSource, karras_sigmas, sigma_range, timesteps
from diffexp.samplers.ddim import ddim_step
from diffexp.samplers.ddpm import ddpm_step
from diffexp.schedules import linear

diffusers = pytest.importorskip("diffusers")

SHAPE = (1, 4, 4)
N = 6
F64 = torch.float64
EPS32 = 2.0**-23  # float32 unit round-off


def make_oracle(schedule, mean: float = 0.5, var: float = 0.1, prediction: str = "eps"):
    """Two Gaussians at ±mean (weights 0.4/0.6) in 16 dimensions: a nonlinear, exact denoiser."""
    d = math.prod(SHAPE)
    means = torch.stack([torch.full((d,), mean), torch.full((d,), -mean)])
    return GaussianMixtureOracle([0.4, 0.6], means, var, DiffusionProcess(schedule), prediction)


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn((N, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=F64)


def scheduler(cls, schedule, prediction="eps", clip=False, **kw):
    """A diffusers scheduler built from the config diffexp exports, with float64 tables (diffusers builds
    float32 ones; they are compared to ours in test_diffusers_schedules.py)."""
    # from_config ignores the DDPM-only keys a scheduler does not take (as pipelines swapping schedulers do)
    sched = cls.from_config(to_scheduler_config(schedule, prediction, clip_sample=clip), **kw)
    sched.betas = schedule.betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = schedule.alphas_cumprod.clone()
    return sched


def run_diffusers(sched, oracle, x, generator=None, **step_kw):
    """The loop every diffusers pipeline runs: scale the input, evaluate the model, step."""
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = oracle(inp, t.expand(x.shape[0]))
        if generator is not None:
            step_kw["generator"] = generator
        x = sched.step(out, t, x, **step_kw).prev_sample
    return x


def ours(sampler, oracle, x_T, prediction="eps", data_range=None, generator=None):
    den = Denoiser(oracle, oracle.process, prediction, data_range=data_range)
    return sampler(den, x_T=x_T, generator=generator)


def assert_f64_roundoff(a, b, steps):
    # float64 round-off: a few ulps (2.2e-16) per operation, ~10 operations per step, on values of order 1-3
    # (measured: at most 6e-16 per step)
    assert a.dtype == b.dtype == F64
    err = float((a - b).abs().max())
    assert err < 1e-14 * steps, f"max |diff| {err:.3e} over {steps} steps"


# ---- DDPM -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance,variance_type", [("beta", "fixed_large"), ("beta_tilde", "fixed_small")])
@pytest.mark.parametrize("T,steps", [(100, None), (1000, 10)])
def test_ddpm_trajectory_matches_diffusers(variance, variance_type, T, steps):
    """Ancestral DDPM, all T steps or respaced to 10 (β' recomputed from ᾱ on both sides), with x̂_0
    clipped to [-1, 1] (the mixture's means at ±1.5 make the clip active), same noise stream."""
    schedule = linear(T)
    oracle = make_oracle(schedule, mean=1.5)
    x_T = start_noise()
    sched = scheduler(diffusers.DDPMScheduler, schedule, clip=True, variance_type=variance_type)
    sched.set_timesteps(steps or T)
    assert sched.timesteps.tolist() == timesteps(T, steps or T)[::-1]
    theirs = run_diffusers(sched, oracle, x_T.clone(), generator=torch.Generator().manual_seed(1))
    mine = ours(DDPMSampler(steps=steps, variance=variance), oracle, x_T, data_range=(-1.0, 1.0),
                generator=torch.Generator().manual_seed(1))
    assert_f64_roundoff(mine, theirs, steps or T)
    assert float(theirs.abs().max()) > 0.5  # a real sample, not a degenerate zero


def test_ddpm_single_step_matches_diffusers_for_every_target():
    """One step from the same x_t for each prediction target diffusers has (epsilon, sample, v_prediction)."""
    schedule = linear(1000)
    x_t = start_noise(3) * 0.8
    t = 500
    for prediction in ("eps", "x0", "v"):
        oracle = make_oracle(schedule, prediction=prediction)
        sched = scheduler(diffusers.DDPMScheduler, schedule, prediction=prediction, variance_type="fixed_small")
        sched.set_timesteps(1000)
        out = oracle(x_t, torch.full((N,), t))
        theirs = sched.step(out, t, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
        den = Denoiser(oracle, oracle.process, prediction, data_range=None)
        pred = den(x_t, torch.full((N,), t))
        noise = NoiseSource(N, "cpu", F64, generator=torch.Generator().manual_seed(5))
        mine = ddpm_step(oracle.process, t, x_t, pred.x0, noise, "beta_tilde")
        assert_f64_roundoff(mine, theirs, 1)


# ---- DDIM -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_trailing_trajectory_matches_diffusers(eta):
    """The spacing both share exactly: trailing with S | T (diffusers' previous timestep t - T//S is then
    the next grid point)."""
    schedule, S = linear(1000), 10
    oracle = make_oracle(schedule)
    x_T = start_noise()
    sched = scheduler(diffusers.DDIMScheduler, schedule, timestep_spacing="trailing")
    sched.set_timesteps(S)
    assert sched.timesteps.tolist() == timesteps(1000, S, "trailing")[::-1]
    theirs = run_diffusers(sched, oracle, x_T.clone(), generator=torch.Generator().manual_seed(2), eta=eta)
    mine = ours(DDIMSampler(steps=S, eta=eta, spacing="trailing"), oracle, x_T, generator=torch.Generator().manual_seed(2))
    assert_f64_roundoff(mine, theirs, S)


def test_ddim_clipping_matches_diffusers_with_clipped_model_output():
    """diffexp recomputes ε̂ from the clipped x̂_0 (as the DDPM/DDIM reference code): diffusers'
    ``use_clipped_model_output=True``. With its default (False) diffusers pairs the clipped x̂_0 with the
    unclipped ε̂ — a documented difference, visible whenever the clip is active."""
    schedule, S = linear(1000), 10
    oracle = make_oracle(schedule, mean=1.5)
    x_T = start_noise()
    sched = scheduler(diffusers.DDIMScheduler, schedule, clip=True, timestep_spacing="trailing")
    sched.set_timesteps(S)
    mine = ours(DDIMSampler(steps=S, spacing="trailing"), oracle, x_T, data_range=(-1.0, 1.0))
    theirs = run_diffusers(sched, oracle, x_T.clone(), use_clipped_model_output=True)
    assert_f64_roundoff(mine, theirs, S)
    sched.set_timesteps(S)
    unclipped_eps = run_diffusers(sched, oracle, x_T.clone(), use_clipped_model_output=False)
    assert float((unclipped_eps - mine).abs().max()) > 1e-3


def test_ddim_linspace_difference_is_diffusers_previous_timestep():
    """diffusers' DDIM with ``timestep_spacing=linspace`` visits round(linspace(0, T-1, S)) (diffexp's
    ``uniform``) but steps each t to t - T//S instead of to the next grid point (see PITFALLS, diffusers
    #12633). diffexp's own DDIM step on diffusers' (t, t - T//S) pairs reproduces it exactly; diffexp's
    uniform DDIM, which steps to the next grid point, differs."""
    schedule, S, T = linear(1000), 10, 1000
    oracle = make_oracle(schedule)
    den = Denoiser(oracle, oracle.process, "eps", data_range=None)
    x_T = start_noise()
    sched = scheduler(diffusers.DDIMScheduler, schedule, timestep_spacing="linspace")
    sched.set_timesteps(S)
    grid = sched.timesteps.tolist()
    assert grid == timesteps(T, S, "uniform")[::-1]
    theirs = run_diffusers(sched, oracle, x_T.clone())
    ab = schedule.alphas_cumprod
    x = x_T
    for t in grid:
        pred = den(x, torch.full((N,), t))
        prev = t - T // S
        x = ddim_step(pred.x0, pred.eps, float(ab[prev]) if prev >= 0 else 1.0, float(ab[t]), 0.0, None, x)
    assert_f64_roundoff(x, theirs, S)
    mine = ours(DDIMSampler(steps=S, spacing="uniform"), oracle, x_T)
    assert float((mine - theirs).abs().max()) > 1e-3


# ---- Euler / Heun on Karras σ ------------------------------------------------------------------------------
def _karras(schedule, steps):
    """diffexp's Karras grid and the fractional timesteps the network sees, float64."""
    sig = karras_sigmas(steps, *sigma_range(schedule))
    ts = [float(DiffusionProcess(schedule).t_of_sigma(s)) for s in sig[:-1]]
    return sig, ts


def test_karras_grids_match_diffusers_to_float32():
    """diffusers' own Karras σ's (stored in float32) and their timesteps equal diffexp's to float32 round-off."""
    schedule, steps = linear(1000), 12
    sig, ts = _karras(schedule, steps)
    for cls in (diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler):
        sched = scheduler(cls, schedule, use_karras_sigmas=True)
        sched.set_timesteps(steps)
        s_d, t_d = sched.sigmas.double(), sched.timesteps.double()
        if cls is diffusers.HeunDiscreteScheduler:  # [σ0, σ1, σ1, σ2, σ2, ..., 0]: every interior σ twice
            s_d, t_d = torch.cat([s_d[:1], s_d[1::2]]), torch.cat([t_d[:1], t_d[1::2]])
        assert torch.allclose(s_d, torch.tensor(sig, dtype=F64), rtol=4 * EPS32, atol=0)
        assert torch.allclose(t_d, torch.tensor(ts, dtype=F64), rtol=4 * EPS32, atol=1e-6)
    # diffusers starts from N(0, σ_max² I) where diffexp starts from x_T/√ᾱ_{T-1}, N(0, (1+σ_max²) I)
    # (samplers/base.py): with the same x_T the two differ by the factor σ_max/√(1+σ_max²).
    sched = scheduler(diffusers.HeunDiscreteScheduler, schedule, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    assert math.isclose(float(sched.init_noise_sigma), sig[0], rel_tol=4 * EPS32)


def _set_karras(sched, sig, ts, heun: bool):
    s, t = torch.tensor(sig, dtype=F64), torch.tensor(ts, dtype=F64)
    if heun:
        s = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])
        t = torch.cat([t[:1], t[1:].repeat_interleave(2)])
    sched.sigmas, sched.timesteps = s, t


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_heun_trajectory_matches_diffusers(prediction):
    """EDM's Heun (Euler on the last step to σ = 0; 2N-1 evaluations) = HeunDiscreteScheduler with Karras
    σ's, on the same float64 grid and start x̃ = x_T √(1+σ_max²), without clipping on either side."""
    schedule, steps = linear(1000), 8
    oracle = make_oracle(schedule, prediction=prediction)
    sig, ts = _karras(schedule, steps)
    x_T = start_noise()
    sched = scheduler(diffusers.HeunDiscreteScheduler, schedule, prediction=prediction, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    _set_karras(sched, sig, ts, heun=True)
    theirs = run_diffusers(sched, oracle, x_T * math.sqrt(1 + sig[0] ** 2))
    mine = ours(HeunSampler(steps=steps, solver="heun", clip_denoised=False), oracle, x_T, prediction=prediction)
    assert_f64_roundoff(mine, theirs, 2 * steps)


def test_euler_trajectory_matches_diffusers_to_float32():
    """EDM's Euler = EulerDiscreteScheduler with Karras σ's. diffusers computes each step in float32
    (``sample.to(torch.float32)``), so the agreement is float32 round-off: each step rounds x̃ (of size up
    to |x_T|·σ_max ≈ 4·157 at the start) relatively by EPS32, and the flow contracts an error made at σ_i by
    σ_{i+1}/σ_i, so the error at the end stays of order EPS32 times the data scale (~2) per step: the
    bound is twice that (measured: 3e-7 for 10 steps)."""
    schedule, steps = linear(1000), 10
    oracle = make_oracle(schedule)
    sig, ts = _karras(schedule, steps)
    x_T = start_noise()
    sched = scheduler(diffusers.EulerDiscreteScheduler, schedule, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    _set_karras(sched, sig, ts, heun=False)
    theirs = run_diffusers(sched, oracle, x_T * math.sqrt(1 + sig[0] ** 2))
    mine = ours(HeunSampler(steps=steps, solver="euler", clip_denoised=False), oracle, x_T)
    err = float((mine - theirs).abs().max())
    assert err < 4 * EPS32 * steps, err
    assert float(mine.abs().max()) > 0.5


# ---- DPM-Solver++(2M) ------------------------------------------------------------------------------------------
def test_dpmpp_2m_matches_diffusers_to_float32():
    """DPM-Solver++(2M) with Karras σ's (first and last steps first order) = DPMSolverMultistepScheduler
    (dpmsolver++, order 2, midpoint, final σ = 0) on diffexp's grid and fractional timesteps. diffusers
    steps in float32 (tolerance as for Euler)."""
    schedule, steps = linear(1000), 10
    oracle = make_oracle(schedule)
    sig, ts = _karras(schedule, steps)
    x_T = start_noise()
    sched = scheduler(diffusers.DPMSolverMultistepScheduler, schedule, use_karras_sigmas=True, solver_order=2,
                      algorithm_type="dpmsolver++", solver_type="midpoint", final_sigmas_type="zero")
    sched.set_timesteps(steps)
    _set_karras(sched, sig, ts, heun=False)
    theirs = run_diffusers(sched, oracle, x_T.clone())  # VP space: starts from x_T (init_noise_sigma = 1)
    mine = ours(DPMSolverPP2MSampler(steps=steps, spacing="karras", clip_denoised=False), oracle, x_T)
    err = float((mine - theirs).abs().max())
    assert err < 4 * EPS32 * steps, err  # measured: 1.1e-7


def test_dpmpp_2m_difference_is_diffusers_integer_timesteps():
    """diffusers' DPM-Solver++ with Karras σ's evaluates the network at round(t(σ)) (its timesteps are
    integers) while its update uses the exact σ; diffexp evaluates at the fractional t(σ). diffexp's
    sampler with a network that rounds t reproduces diffusers' own grid to float32 round-off."""
    schedule, steps = linear(1000), 10
    oracle = make_oracle(schedule)
    sig, ts = _karras(schedule, steps)
    sched = scheduler(diffusers.DPMSolverMultistepScheduler, schedule, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    assert sched.timesteps.dtype == torch.int64
    assert sched.timesteps.tolist() == [round(t) for t in ts]
    sched.sigmas = torch.tensor(sig, dtype=F64)  # the float64 σ's; the integer timesteps stay
    x_T = start_noise()
    theirs = run_diffusers(sched, oracle, x_T.clone())

    class Rounded(torch.nn.Module):
        def forward(self, x, t, y=None):
            return oracle(x, t.round())

    rounded = Denoiser(Rounded(), oracle.process, "eps", data_range=None)
    mine = DPMSolverPP2MSampler(steps=steps, clip_denoised=False)(rounded, x_T=x_T)
    assert float((mine - theirs).abs().max()) < 4 * EPS32 * steps
    exact = ours(DPMSolverPP2MSampler(steps=steps, clip_denoised=False), oracle, x_T)
    assert float((exact - theirs).abs().max()) > 1e-4  # measured: 7.7e-4, 2000x the float32 agreement
