"""The PF-ODE likelihood against closed forms: the divergence estimators on linear maps, the exact NLL of a
Gaussian mixture (the oracle denoiser) on every family, Hutchinson = exact trace in expectation, the ddpm
ELBO ≥ the ODE NLL, and the data conventions."""

import math

import pytest
import torch

from diffexp import schedules as S
from diffexp.denoiser import Denoiser
from diffexp.likelihood import elbo_bits_per_dim
from diffexp.likelihood_ode import DEQUANT_OFFSET_BPD, divergence, draw_probe, ode_bits_per_dim, ode_log_likelihood
from diffexp.metrics.nll_ode import evaluate_nll_ode, nll_ode_keys
from diffexp.oracles import GaussianMixtureOracle
from diffexp.processes import DiffusionProcess, EDMProcess, FlowProcess, SubVPSDEProcess, VEProcess, VPSDEProcess

W = [0.3, 0.7]
MEANS = [[-1.0, 0.5], [1.0, -0.5]]
COVS = [[[0.25, 0.1], [0.1, 0.2]], [[0.09, -0.05], [-0.05, 0.16]]]  # full: the Jacobian has off-diagonals

FAMILIES = {
    "ddpm": lambda: DiffusionProcess(S.NoiseSchedule(S.linear_betas(1000))),
    "vp_sde": VPSDEProcess,
    "subvp_sde": SubVPSDEProcess,
    "ve": VEProcess,
    "edm": EDMProcess,
    "flow": FlowProcess,
}


def oracle_model(family: str, prediction: str = "eps"):
    process = FAMILIES[family]()
    oracle = GaussianMixtureOracle(W, MEANS, COVS, process, prediction=prediction)
    return oracle, Denoiser(oracle, process, prediction=prediction, data_range=None)


def ve_log_prob(oracle, process, x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact log p̃_σ(x̃) of the VE-view marginal: log p_t(α x̃) + D log α at t = t_of_sigma(σ)."""
    t = process.t_of_sigma(torch.tensor(sigma, dtype=torch.float64))
    if process.is_discrete:
        a = 1.0 / math.sqrt(1.0 + sigma**2)
    else:
        a = float(process.scales(t.reshape(1), torch.empty(1, dtype=torch.float64))[0])
    return oracle.marginal_log_prob(a * x_ve.double(), t) + x_ve[0].numel() * math.log(a)


# ---- the divergence estimators ---------------------------------------------------------------------
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_divergence_of_a_linear_map(probe):
    """∇·(Ax) = tr A exactly; Hutchinson's εᵀAε has mean tr A and variance 2‖A_sym‖_F² (Gaussian) or
    2(‖A_sym‖_F² − Σ A_ii²) (Rademacher); the sample mean lies within 5 standard errors."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(4000, 5, generator=g, dtype=torch.float64)
    y, exact = divergence(lambda z: z @ A.T, x, None)
    assert torch.allclose(y, x @ A.T)
    assert torch.allclose(exact, torch.full_like(exact, float(A.trace())), atol=1e-12)
    eps = draw_probe(x.shape, probe, g, x.device, x.dtype)
    if probe == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    _, est = divergence(lambda z: z @ A.T, x, eps)
    assert torch.allclose(est, ((eps @ A.T) * eps).sum(1))
    sym = 0.5 * (A + A.T)
    var = 2 * float((sym**2).sum()) - (2 * float((A.diagonal() ** 2).sum()) if probe == "rademacher" else 0.0)
    assert float(est.var()) == pytest.approx(var, rel=0.15)
    assert abs(float(est.mean()) - float(A.trace())) < 5 * math.sqrt(var / len(est))


# ---- the mixture oracle on every family --------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pf_ode_nll_equals_exact_mixture_nll(family):
    """With the exact denoiser the PF-ODE density is the marginal: log p̃_{σ_min}(x) from the solve, with the
    exact marginal at σ_max in place of the prior, equals the closed form within the solver tolerance; with the
    process's prior (what is reported) the difference is the prior's mismatch, here < 0.03 nats."""
    oracle, model = oracle_model(family, "v" if family == "flow" else "eps")
    x, _ = oracle.sample(6, generator=torch.Generator().manual_seed(1))
    out = ode_log_likelihood(model, x, divergence_mode="exact", rtol=1e-5, atol=1e-5)
    exact = ve_log_prob(oracle, model.process, x, out["sigma_min"])
    solved = ve_log_prob(oracle, model.process, out["x_T"], out["sigma_max"]) + out["delta_logp"]
    assert out["divergence"] == "exact" and out["nfe"] > 20
    assert float((solved - exact).abs().max()) < 1e-3
    assert float((out["logp"] - exact).abs().max()) < 0.03


def test_hutchinson_equals_exact_divergence_in_expectation():
    """The same solve with one probe per sample: the per-sample difference to the exact trace is random
    (sd > 0) with mean zero within 4 standard errors, for Gaussian and Rademacher probes; 4 probes per
    sample shrink its spread (about 1/√4)."""
    oracle, model = oracle_model("edm")
    x, _ = oracle.sample(48, generator=torch.Generator().manual_seed(2))
    exact = ode_bits_per_dim(model, x, divergence_mode="exact", discrete=False)["bpd"]
    sds = {}
    for probe, k in (("gaussian", 1), ("rademacher", 1), ("gaussian", 4)):
        g = torch.Generator().manual_seed(3)
        out = ode_bits_per_dim(model, x, divergence_mode="hutchinson", probe=probe, num_probes=k, generator=g,
                               discrete=False)
        assert out["divergence"] == "hutchinson" and out["probe"] == probe and out["num_probes"] == k
        d = out["bpd"] - exact
        sd = float(d.std())
        assert sd > 1e-4
        assert abs(float(d.mean())) < 4 * sd / math.sqrt(len(d))
        sds[(probe, k)] = sd
    assert sds[("gaussian", 4)] < 0.8 * sds[("gaussian", 1)]


def test_ddpm_elbo_bounds_the_ode_nll():
    """On the ddpm family the variational bound (all T terms) of the exact denoiser is ≥ the PF-ODE NLL
    (the exact likelihood of the same model), within 3 standard errors of the bound's noise."""
    oracle, model = oracle_model("ddpm")
    x, _ = oracle.sample(24, generator=torch.Generator().manual_seed(4))
    ode = ode_bits_per_dim(model, x, discrete=False)["bpd"]
    elbo = elbo_bits_per_dim(model, x, discrete=False, generator=torch.Generator().manual_seed(5))["bpd"]
    gap = elbo.double() - ode
    assert float(gap.mean()) > -3 * float(gap.std()) / math.sqrt(len(gap))
    assert float(gap.mean()) < 0.5  # and close: the bound of a perfect model is tight to a fraction of a bit


def test_discrete_convention_and_errors():
    """8-bit data: dequantised in its bin and shifted by log2(255/2) bits/dim; data outside [-1, 1] and
    unknown options are named."""
    oracle, model = oracle_model("edm")
    x = (torch.randint(0, 256, (4, 2), generator=torch.Generator().manual_seed(6)) / 127.5 - 1).float()
    out = ode_bits_per_dim(model, x, discrete=True, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out["bpd"] - out["density_bpd"], torch.full((4,), DEQUANT_OFFSET_BPD, dtype=torch.float64))
    assert "dequantisation" in out["convention"] and out["discrete"]
    with pytest.raises(ValueError, match="discrete=False"):
        ode_bits_per_dim(model, x * 3, discrete=True)
    for kw, name in (({"divergence_mode": "trace"}, "divergence"), ({"probe": "sphere"}, "probe"),
                     ({"num_probes": 0}, "num_probes"), ({"method": "rk4"}, "method"), ({"rtol": -1.0}, "rtol")):
        with pytest.raises(ValueError, match=name):
            ode_bits_per_dim(model, x, **kw)


def test_evaluate_nll_ode_chunks_and_keys():
    """The data-set mean over chunks equals the per-chunk means; keys name convention, split, weights and
    the estimator; NFE is reported."""
    oracle, model = oracle_model("flow", "velocity")
    x, _ = oracle.sample(6, generator=torch.Generator().manual_seed(8))
    res = evaluate_nll_ode(model, x, batch_size=3, seed=0, rtol=1e-4, atol=1e-4)
    exact = -ve_log_prob(oracle, model.process, x, res["sigma_min"]) / (2 * math.log(2))
    assert res["n"] == 6 and res["nfe"] > 10 and res["divergence"] == "exact" and not res["discrete"]
    assert res["bpd"] == pytest.approx(float(exact.mean()), abs=0.03)
    keys = nll_ode_keys(res, "test", "ema")
    assert "nll_ode/bpd/continuous/test-n6/ema/exact/dopri5-tol0.0001" in keys
    assert keys["nll_ode/nfe/continuous/test-n6/ema/exact/dopri5-tol0.0001"] == res["nfe"]


def test_learned_variance_channels_play_no_part():
    """A learned-variance network (model.learn_sigma) returns its variance channels beside the target; the
    ODE reads only the target half, so the likelihood equals that of the bare oracle."""
    oracle, model = oracle_model("vp_sde")

    class WithVariance(torch.nn.Module):
        learn_sigma = True

        def __init__(self):
            super().__init__()
            self.inner = oracle

        def forward(self, x, t, y=None):
            out = self.inner(x, t)
            return torch.cat([out, torch.full_like(out, 0.3)], dim=1)

    x, _ = oracle.sample(4, generator=torch.Generator().manual_seed(9))
    bare = ode_log_likelihood(model, x, rtol=1e-4, atol=1e-4)["logp"]
    wrapped = ode_log_likelihood(Denoiser(WithVariance(), model.process, data_range=None), x, rtol=1e-4, atol=1e-4)
    assert torch.allclose(wrapped["logp"], bare, atol=1e-10)


# ---- DDP: each rank solves its own chunks, sums reduced after ------------------------------------------
def _ddp_payload():
    _, model = oracle_model("edm")
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    # 3 chunks of 2: rank 0 solves chunks 0 and 2, rank 1 chunk 1 (different step counts, no collective inside)
    return evaluate_nll_ode(model, x, batch_size=2, seed=3, divergence="hutchinson", probe="rademacher",
                            rtol=1e-4, atol=1e-4)


def _ddp_worker(rank, world, port, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = _ddp_payload()
        if rank == 0:
            torch.save(res, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow  # two spawned interpreters: about a minute on a loaded 2-core machine
def test_two_ranks_give_the_single_process_nll(tmp_path):
    """Chunks sharded over 2 gloo ranks with unequal work: the same mean, spread and NFE as one process."""
    import torch.multiprocessing as mp

    from conftest import free_port

    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")
    ddp, single = torch.load(out), _ddp_payload()
    assert ddp["n"] == single["n"] == 5 and ddp["nfe_max"] == single["nfe_max"]
    for k in ("bpd", "bpd_stderr", "density_bpd", "nfe"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-9, abs=1e-12), k


if __name__ == "__main__":  # spawn workers import this module by name
    import sys

    sys.exit(pytest.main([__file__, "-x", "-q"]))
