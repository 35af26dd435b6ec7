"""Objectives on every family against closed forms: on Gaussian data the exact denoiser of the family
(the analytic oracle, read as the objective's target) is the minimiser of every objective that fits the
family — the gradient of the loss along a perturbation of the output is zero within 5 standard errors
there and clearly non-zero for a shifted output — the flow-matching loss is minimised by the exact
velocity, and objectives that do not fit a family are refused naming what fits."""

import math

import pytest
import torch

from diffexp import schedules as S
from diffexp.objectives import (
    EDMObjective,
    ELBOObjective,
    FixedSigmaHybridObjective,
    FlowMatchingObjective,
    NCSNObjective,
    ScoreMatchingObjective,
    SimpleObjective,
)
from diffexp.oracles import GaussianOracle
from diffexp.preconditioning import EDMPreconditioned
from diffexp.process import DiffusionProcess
from diffexp.processes import EDMProcess, FlowProcess, SubVPSDEProcess, VEProcess, VPSDEProcess

MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
CONTINUOUS = [VPSDEProcess(), SubVPSDEProcess(), VEProcess(), EDMProcess(), FlowProcess()]
IDS = ["vp_sde", "subvp_sde", "ve", "edm", "flow"]
OBJECTIVES = {
    "simple": lambda: SimpleObjective(),
    "simple-min_snr": lambda: SimpleObjective(weighting="min_snr", timestep_sampler="logit_normal"),
    "flow_matching": lambda: FlowMatchingObjective(),
    "edm": lambda: EDMObjective(),
    "ncsn": lambda: NCSNObjective(num_levels=8),
    "score": lambda: ScoreMatchingObjective(),
}
PREDICTION = {"simple": "eps", "simple-min_snr": "v", "flow_matching": "velocity", "edm": "x0", "ncsn": "eps", "score": "score"}


def direction(x_t):
    return x_t @ torch.tensor([[0.7, -0.4], [0.2, 0.5]], dtype=x_t.dtype) + torch.tensor([0.3, -0.1], dtype=x_t.dtype)


def as_net_fn(net, process):
    """The module's view: objectives call net_fn at process time, the network gets process.net_time(t)."""
    return lambda x_t, t, y=None: net(x_t, process.net_time(t))


def per_sample_grad(objective, process, prediction, net_fn, n=4000, seed=0):
    """d per_sample_i / dδ_i at δ = 0 for the output net_fn + δ_i · direction(x_t): mean and standard error,
    at times drawn from the objective's own sampler."""
    g = torch.Generator().manual_seed(seed)
    x0 = (MU + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T).float()
    t, _ = objective.timestep_sampler.sample(n, process, "cpu", g)
    noise = torch.randn(n, 2, generator=g)
    delta = torch.zeros(n, requires_grad=True)
    fn = lambda x_t, t_, y=None: net_fn(x_t, t_) + delta[:, None] * direction(x_t)  # noqa: E731
    out = objective.validation_loss(fn, x0, process, prediction, t, noise)
    (gr,) = torch.autograd.grad(out.per_sample.sum(), delta)
    gr = gr.double()
    return gr.mean().item(), gr.std().item() / math.sqrt(n)


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_exact_denoiser_minimises_every_objective_on_every_family(process, name):
    objective, prediction = OBJECTIVES[name](), PREDICTION[name]
    objective.validate(prediction, process)
    net_fn = as_net_fn(GaussianOracle(MU, SIGMA, process, prediction=prediction), process)
    m, se = per_sample_grad(objective, process, prediction, net_fn)
    assert abs(m) < 5 * se, f"gradient at the optimum {m:.3g} ± {se:.3g}"
    bad = lambda x_t, t_, y=None: net_fn(x_t, t_) + direction(x_t)  # noqa: E731
    m_bad, se_bad = per_sample_grad(objective, process, prediction, bad)
    assert m_bad > 5 * se_bad, "the test would not detect a wrong output"


def test_flow_matching_minimised_by_the_exact_velocity():
    """On flow, E[u | x_t] = E[ε - x_0 | x_t]: the oracle's velocity equals ε* - x0* and minimises the loss;
    the loss there is below that of outputs shifted either way (common random numbers)."""
    process = FlowProcess()
    oracle = GaussianOracle(MU, SIGMA, process, prediction="velocity")
    eps_oracle = GaussianOracle(MU, SIGMA, process, prediction="eps")
    x0_oracle = GaussianOracle(MU, SIGMA, process, prediction="x0")
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.rand(16, generator=g, dtype=torch.float64) * 0.9
    nt = process.net_time(t)
    torch.testing.assert_close(oracle(x, nt), eps_oracle(x, nt) - x0_oracle(x, nt))
    obj = FlowMatchingObjective()
    x0 = (MU + torch.randn(4000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T).float()
    tt, noise = torch.rand(4000, generator=g, dtype=torch.float64), torch.randn(4000, 2, generator=g)
    net_fn = as_net_fn(oracle, process)
    losses = [obj.validation_loss(lambda x_t, t_, y=None, d=d: net_fn(x_t, t_) + d * direction(x_t), x0, process,
                                  "velocity", tt, noise).loss for d in (-0.3, 0.0, 0.3)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


@pytest.mark.parametrize("process", [EDMProcess(), VPSDEProcess()], ids=["edm", "vp_sde"])
def test_edm_objective_through_the_preconditioner(process):
    """F* = (x0* - c_skip x_t)/c_out makes the preconditioned D the exact denoiser, the minimiser of EDM's loss."""

    class OptimalF(torch.nn.Module):
        def forward(self, x_in, net_t, y=None):
            from diffexp.preconditioning import edm_coefficients

            t = process.t_of_net_time(net_t)
            a, s = process.scales(t, torch.empty(x_in.shape[0], 1, dtype=torch.float64))
            c_skip, c_out, c_in = edm_coefficients(a, s, 0.5)
            x_t = x_in.double() / c_in
            x0 = GaussianOracle(MU, SIGMA, process, prediction="x0")(x_t, net_t)
            return ((x0 - c_skip * x_t) / c_out).to(x_in.dtype)

    wrapped = EDMPreconditioned(OptimalF(), process, sigma_data=0.5)
    obj = EDMObjective(sigma_data=0.5)
    m, se = per_sample_grad(obj, process, "x0", as_net_fn(wrapped, process))
    assert abs(m) < 5 * se


@pytest.mark.parametrize("make", [lambda: ELBOObjective(decoder="gaussian"), lambda: FixedSigmaHybridObjective(decoder="gaussian"),
                                  lambda: SimpleObjective(timestep_sampler="importance")], ids=["elbo", "hybrid", "importance"])
@pytest.mark.parametrize("process", CONTINUOUS, ids=IDS)
def test_discrete_only_objectives_are_refused_on_continuous_families(make, process):
    with pytest.raises(ValueError, match="process=ddpm") as e:
        make().validate("eps", process)
    assert "simple" in str(e.value) or "uniform" in str(e.value)  # names what fits


def test_flow_matching_is_refused_on_ddpm():
    with pytest.raises(ValueError, match="continuous family") as e:
        FlowMatchingObjective().validate("eps", DiffusionProcess(S.linear(100)))
    assert "simple" in str(e.value)


def test_edm_and_ncsn_fit_ddpm_too():
    """Log-normal σ and the σ ladder map onto ddpm's fractional indices; the exact denoiser minimises them."""
    process = DiffusionProcess(S.cosine(100))
    for name in ("edm", "ncsn"):
        obj, prediction = OBJECTIVES[name](), PREDICTION[name]
        obj.validate(prediction, process)
        m, se = per_sample_grad(obj, process, prediction, as_net_fn(GaussianOracle(MU, SIGMA, process, prediction=prediction), process))
        assert abs(m) < 5 * se
