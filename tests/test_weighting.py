"""Loss weightings on every family and target: each weighting gives the same loss whatever the target it
is taken on (λ_target ‖target error‖² equal for ε, x0, v, score and velocity, from errors computed by the
process' own conversions), the closed forms of each weighting's paper, the documented equivalences
(ε-MSE × SNR = x0-MSE, ε-MSE = σ² score-MSE, ε-MSE × (1-t)² = velocity-MSE on flow), and the ddpm path
unchanged."""

import pytest
import torch

from diffexp import schedules as S
from diffexp.objectives import WEIGHTINGS, loss_weight, snr_weight
from diffexp.process import DiffusionProcess
from diffexp.processes import EDMProcess, FlowProcess, SubVPSDEProcess, VEProcess, VPSDEProcess

CONTINUOUS = [VPSDEProcess(), SubVPSDEProcess(), VEProcess(), EDMProcess(), FlowProcess()]
IDS = ["vp_sde", "subvp_sde", "ve", "edm", "flow"]


def interior_times(process, n=64, seed=0):
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return process.t_min + (0.02 + 0.96 * u) * (process.t_max - process.t_min)


def target_errors(process, t, targets):
    """‖ŷ - y‖² per sample for each target, for one random ε̂ read through process.predict."""
    g = torch.Generator().manual_seed(1)
    x0, noise, eps_hat = (torch.randn(t.shape[0], 3, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = process.q_sample(x0, t, noise)
    truth = process.targets(x0, noise, x_t, t)
    pred = process.predict(eps_hat, x_t, t, "eps")
    return {k: ((pred.target(k) - truth.target(k)) ** 2).sum(1) for k in targets}


@pytest.mark.parametrize("weighting", [w for w in WEIGHTINGS if w != "uniform"])  # uniform: λ = 1 on any target
@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_every_target_gives_the_same_loss(process, weighting):
    targets = ["eps", "x0", "v", "score", "velocity"]
    t = interior_times(process)
    errors = target_errors(process, t, targets)
    losses = {k: loss_weight(process, t, k, weighting).double() * errors[k] for k in targets}
    for k in targets[1:]:
        torch.testing.assert_close(losses[k], losses["eps"], rtol=2e-6, atol=0, msg=f"{weighting}: {k} vs eps")


@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_closed_forms(process):
    t = interior_times(process)
    like = torch.empty(t.shape[0], dtype=torch.float64)
    a, s = process.scales(t, like)
    sig = process.sigma(t)  # Karras σ = σ/α
    snr = a**2 / s**2
    f32 = lambda x: x.float()  # noqa: E731
    torch.testing.assert_close(loss_weight(process, t, "x0", "edm", sigma_data=0.5), f32((sig**2 + 0.25) / (sig * 0.5) ** 2))
    torch.testing.assert_close(loss_weight(process, t, "score", "sigma2"), f32(s**2))
    torch.testing.assert_close(loss_weight(process, t, "eps", "sigma2"), torch.ones(t.shape[0]))
    torch.testing.assert_close(loss_weight(process, t, "eps", "min_snr", min_snr_gamma=5.0), f32((5.0 / snr).clamp(max=1)))
    torch.testing.assert_close(loss_weight(process, t, "x0", "min_snr", min_snr_gamma=5.0), f32(snr.clamp(max=5.0)))
    torch.testing.assert_close(loss_weight(process, t, "eps", "p2", p2_k=1.0, p2_gamma=0.5), f32((1 + snr) ** -0.5))
    torch.testing.assert_close(loss_weight(process, t, "x0", "uniform"), torch.ones(t.shape[0]))


def test_flow_velocity_factor():
    """On flow (α = 1-t, σ = t): u = ε - x0, so with x_t fixed δu = δε/(1-t): ε-MSE × (1-t)² = velocity-MSE."""
    process = FlowProcess()
    t = interior_times(process)
    torch.testing.assert_close(loss_weight(process, t, "velocity", "sigma2"), ((1 - t) ** 2).float())
    err = target_errors(process, t, ["eps", "velocity", "x0"])
    torch.testing.assert_close(err["eps"], err["velocity"] * (1 - t) ** 2)
    torch.testing.assert_close(err["x0"], err["eps"] * t**2 / (1 - t) ** 2)  # ε-MSE = SNR · x0-MSE


@pytest.mark.parametrize("weighting", ["uniform", "min_snr", "p2"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_ddpm_integer_t_keeps_the_schedule_path(weighting, prediction):
    sched = S.cosine(50, zero_terminal_snr=True)
    process = DiffusionProcess(sched)
    t = torch.arange(50)
    expected = snr_weight(sched.snr[t].float(), prediction, weighting)
    assert torch.equal(loss_weight(process, t, prediction, weighting), expected)
    assert bool(torch.isfinite(expected).all())


def test_ddpm_fractional_t_and_new_weightings_agree_with_the_schedule():
    """Off the integer grid (e.g. lognormal times) ddpm goes through the generic path, which agrees with
    the schedule's SNR table at integer t."""
    process = DiffusionProcess(S.linear(100))
    t = torch.arange(1, 99).double()
    for w in ("min_snr", "p2"):
        generic = loss_weight(process, t + 1e-9, "v", w)  # fractional: generic path
        torch.testing.assert_close(generic, loss_weight(process, t.long(), "v", w), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="valid"):
        loss_weight(process, t.long(), "eps", "snr")
