"""The families' sampling σ ranges (``sample_sigma_min/max``, diffexp.processes.base.Process._narrowed):
the shipped flow and sub-VP yamls narrow the samplers' range to EDM's σ ∈ [0.002, 80]; every grid's ends
follow; wrong values are refused naming the option. Why the range matters: tests/test_samplers_families.py."""

from __future__ import annotations

import pytest
import torch

from conftest import compose
from diffexp.build import build_process
from diffexp.processes import FlowProcess, SubVPSDEProcess, VPSDEProcess
from diffexp.samplers.grids import sampling_times, sigma_grid, time_grid


@pytest.mark.parametrize("family", ["flow", "subvp_sde"])
def test_shipped_range_is_edms_and_every_grid_spans_it(family, tmp_path):
    process = build_process(compose("train", ["data=toy2d", f"process={family}"], tmp_path))
    lo, hi = process.sigma_range()
    assert lo == pytest.approx(0.002, rel=1e-9) and hi == pytest.approx(80.0, rel=1e-9)
    for spacing in ("time", "karras", "logsnr", "shift"):
        s = sigma_grid(process, 10, spacing)
        assert s[0] == pytest.approx(hi, rel=1e-9) and s[-2] == pytest.approx(lo, rel=1e-9) and s[-1] == 0.0
        t = time_grid(process, 10, spacing)
        assert (t[0], t[-1]) == (process.sample_t_max, process.sample_t_min)
    t = torch.tensor(sampling_times(process, 10, "uniform"), dtype=torch.float64)
    assert float(process.sigma(t[0])) == pytest.approx(80.0, rel=1e-9)


def test_without_the_options_the_range_is_the_sample_t_range():
    flow, vp = FlowProcess(sample_eps=1e-3), VPSDEProcess()
    assert (flow.sample_t_min, flow.sample_t_max) == (1e-3, 1 - 1e-3)
    assert (vp.sample_t_min, vp.sample_t_max) == (1e-3, 1.0)
    # a cap outside the range leaves it alone
    assert FlowProcess(sample_sigma_min=1e-6, sample_sigma_max=1e6).sample_t_max == 1 - 1e-3


@pytest.mark.parametrize("kwargs,match", [
    ({"sample_sigma_min": -1.0}, "sample_sigma_min must be a positive"),
    ({"sample_sigma_max": "80"}, "sample_sigma_max must be a positive"),
    ({"sample_sigma_min": 80.0, "sample_sigma_max": 0.002}, "sample_sigma_min < sample_sigma_max"),
    ({"sample_sigma_min": 1e5}, "leave no sampling range on subvp_sde"),
])
def test_wrong_range_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubVPSDEProcess(**kwargs)
