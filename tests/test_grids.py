"""Sampling grids (diffexp.samplers.grids) on every process family and spacing: no duplicates, strictly
monotone, both ends exact (diffusers #12633/#12771 shipped grids that failed exactly these)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffexp import schedules
from diffexp.process import DiffusionProcess
from diffexp.samplers.grids import SPACINGS, process_sigma_range, sigma_grid, time_grid

CONF = Path(__file__).resolve().parents[1] / "conf"


def families():
    out = {"ddpm-linear": DiffusionProcess(schedules.linear(1000)),
           "ddpm-cosine-ztsnr": DiffusionProcess(schedules.cosine(100, zero_terminal_snr=True)),
           "ddpm-linear-T10": DiffusionProcess(schedules.linear(10))}
    for path in sorted((CONF / "process").glob("*.yaml")):
        if path.stem != "ddpm":
            out[path.stem] = instantiate(OmegaConf.load(path))
    return out


FAMILIES = families()


def is_ddpm(process) -> bool:
    return isinstance(process, DiffusionProcess)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grids_are_strictly_monotone_with_exact_ends(family, spacing):
    process = FAMILIES[family]
    lo, hi = process_sigma_range(process)
    assert 0 < lo < hi < math.inf
    t_lo, t_hi = (0.0, process.num_timesteps - 1.0) if is_ddpm(process) else (process.sample_t_min, process.sample_t_max)
    for steps in (1, 2, 7, 10, 50):
        if is_ddpm(process) and spacing == "time" and steps > process.num_timesteps:
            with pytest.raises(ValueError, match="steps <= T"):
                sigma_grid(process, steps, spacing)
            continue
        sig = sigma_grid(process, steps, spacing)
        assert len(sig) == steps + 1 and sig[-1] == 0.0 and math.isclose(sig[0], hi, rel_tol=1e-12)
        assert all(a > b for a, b in zip(sig, sig[1:])), sig  # strictly decreasing: no duplicates
        ts = time_grid(process, steps, spacing)
        assert len(ts) == steps and ts[0] == t_hi
        assert all(a > b for a, b in zip(ts, ts[1:])), ts
        if steps > 1:
            assert math.isclose(sig[-2], lo, rel_tol=1e-12) and ts[-1] == t_lo
        # the two grids describe the same levels: σ(t_i) = σ_i on the finite range (a zero-terminal-SNR
        # schedule's last index has σ = ∞: there the time grid starts, the σ grid one index lower)
        finite = time_grid(process, steps, spacing, finite=True)
        assert all(a > b for a, b in zip(finite, finite[1:])) and (steps == 1 or finite[-1] == ts[-1])
        back = process.sigma(torch.tensor(finite, dtype=torch.float64))
        torch.testing.assert_close(back, torch.tensor(sig[:-1], dtype=torch.float64), rtol=1e-6, atol=0)
        if is_ddpm(process) and spacing == "time":
            assert all(float(t).is_integer() for t in ts)


def test_spacing_formulas():
    process = FAMILIES["ddpm-linear"]
    lo, hi = process_sigma_range(process)
    s = torch.tensor(sigma_grid(process, 5, "karras", rho=7.0)[:-1], dtype=torch.float64)
    i = torch.arange(5, dtype=torch.float64) / 4
    torch.testing.assert_close(s, (hi ** (1 / 7) + i * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7, rtol=1e-12, atol=0)
    log_s = torch.tensor(sigma_grid(process, 6, "logsnr")[:-1], dtype=torch.float64).log()
    torch.testing.assert_close(log_s.diff(), torch.full((5,), (math.log(lo) - math.log(hi)) / 5, dtype=torch.float64))
    if "flow" in FAMILIES:  # SD3's shift: t' = s u/(1 + (s-1) u) of a uniform u, on flow's sampling range
        flow = FAMILIES["flow"]
        ts = time_grid(flow, 5, "shift", shift=3.0)
        u = 0.5
        t_lo, t_hi = flow.sample_t_min, flow.sample_t_max
        assert math.isclose(ts[2], t_lo + (t_hi - t_lo) * 3 * u / (1 + 2 * u), rel_tol=1e-12)
        assert ts[2] > time_grid(flow, 5, "time")[2]  # s > 1 spends more steps at high noise


def test_bad_grid_arguments_are_named():
    process = FAMILIES["ddpm-linear"]
    with pytest.raises(ValueError, match="spacing"):
        sigma_grid(process, 5, "leading")
    with pytest.raises(ValueError, match="steps"):
        sigma_grid(process, 0)
    with pytest.raises(ValueError, match="shift"):
        time_grid(process, 5, "shift", shift=0.0)


def test_ddpm_time_grid_is_the_schedules_own_sigmas():
    """On ddpm the ``time`` grid reads σ_t at the uniform timestep indices from the schedule itself (to the
    last bit: DPM-Solver++'s ``time`` spacing is pinned by the ddpm fixture)."""
    from diffexp.samplers.base import timesteps

    for sched in (schedules.linear(1000), schedules.cosine(100)):
        process = DiffusionProcess(sched)
        for n in (2, 18, 20):
            ref = [float(sched.sigmas[t]) for t in timesteps(sched.num_timesteps, n, "uniform")[::-1]]
            assert sigma_grid(process, n, "time") == ref + [0.0]
