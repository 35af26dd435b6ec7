"""Energy-parameterised denoisers (diffexp.models.energy): the score is −∇_x E, a conservative field, and the
wrapper trains with every objective and samples with every sampler through the shipped configs."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose
from diffexp.build import build_module
from diffexp.cli.train import train
from diffexp.denoiser import Denoiser
from diffexp.models import MLP
from diffexp.models.energy import EnergyNet
from diffexp.process import DiffusionProcess
from diffexp.schedules import linear

PREDICTIONS = ["eps", "x0", "v", "score"]
QUIET = ["logger=none", "callbacks=none", "print_config=false", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "trainer.enable_checkpointing=false"]
TOY = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "model=mlp", "model.hidden_dim=32",
       "model.num_blocks=1", "model.time_embed_dim=16", "+model.energy=true", "schedule.num_timesteps=50",
       "data.batch_size=8", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]


def _energy_net(prediction: str, head: str = "l2", dim: int = 3, seed: int = 0) -> tuple[EnergyNet, DiffusionProcess]:
    torch.manual_seed(seed)
    process = DiffusionProcess(linear(100))
    net = MLP(in_channels=dim, hidden_dim=32, num_blocks=1, time_embed_dim=16)
    for p in net.parameters():  # zero-initialised output layers would make f ≡ 0 (E a pure quadratic): randomise
        torch.nn.init.normal_(p, std=0.3)
    return EnergyNet(net, process, prediction, head=head).double(), process


def _score(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return denoiser(x, t).score


@pytest.mark.parametrize("head", ["l2", "dot"])
def test_score_is_minus_grad_energy_by_finite_differences(head):
    """ŝ(x, t) from the Denoiser (prediction=score) equals −∂E/∂x_j by central differences of E,
    step h = 1e-5 in float64: truncation O(h²·E''') and rounding O(1e-16·E/h) are both < 1e-8."""
    net, process = _energy_net("score", head)
    denoiser = Denoiser(net, process, "score", data_range=None)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 20, 50, 90])
    score = _score(denoiser, x, t)
    h = 1e-5
    fd = torch.zeros_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        with torch.no_grad():
            fd[:, j] = -(net.energy(x + e, t) - net.energy(x - e, t)) / (2 * h)
    assert torch.allclose(score, fd, rtol=1e-6, atol=1e-6), (score, fd)
    assert score.abs().max() > 1e-2  # not trivially zero


def _jacobian_fd(fn, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """(B, D, D) Jacobian d fn_i / d x_j by central differences."""
    cols = []
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        cols.append((fn(x + e) - fn(x - e)) / (2 * h))
    return torch.stack(cols, dim=2)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_score_field_is_conservative_for_every_target(prediction):
    """The Jacobian of the score (read through the process algebra from any target) is symmetric to
    finite-difference accuracy (~1e-8 relative here), while a plain network's is not (asymmetry O(1))."""
    net, process = _energy_net(prediction)
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([5, 40, 80])
    denoiser = Denoiser(net, process, prediction, data_range=None)
    jac = _jacobian_fd(lambda z: _score(denoiser, z, t), x)
    asym = (jac - jac.transpose(1, 2)).abs().max()
    assert asym < 1e-6 * jac.abs().max(), (asym, jac)
    plain = Denoiser(net.net, process, "eps", data_range=None)  # the unwrapped network as an ε-predictor
    jac_plain = _jacobian_fd(lambda z: _score(plain, z, t), x)
    assert (jac_plain - jac_plain.transpose(1, 2)).abs().max() > 1e-3 * jac_plain.abs().max()


def test_l2_head_starts_at_the_prior_answer():
    """With f ≡ 0 the l2 energy is ½‖x‖², so ε̂ = x exactly (the right ε at the prior end, x_T = ε)."""
    process = DiffusionProcess(linear(100))

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    net = EnergyNet(Zero(), process, "eps")
    x = torch.randn(5, 4)
    assert torch.equal(net(x, torch.full((5,), 99)), x)


def test_gradients_reach_the_parameters_through_the_input_gradient():
    """Training: the ε̂ = ∇_x Ẽ output is differentiable in θ (create_graph), so a loss on it has parameter
    gradients that match finite differences in one parameter."""
    net, _ = _energy_net("eps")
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.randint(0, 100, (6,), generator=torch.Generator().manual_seed(4))
    target = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    p = next(net.parameters())
    loss = (net(x, t) - target).square().sum()
    (g,) = torch.autograd.grad(loss, p)
    h = 1e-6
    with torch.no_grad():
        idx = (0,) * p.ndim
        p[idx] += h
        up = (net(x, t) - target).square().sum()
        p[idx] -= 2 * h
        down = (net(x, t) - target).square().sum()
        p[idx] += h
    assert math.isclose(float(g[idx]), float((up - down) / (2 * h)), rel_tol=1e-5, abs_tol=1e-8)


def test_output_is_detached_and_works_under_inference_mode():
    net, process = _energy_net("eps")
    x = torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([1, 2])
    with torch.inference_mode():
        a = net(x, t)
    with torch.no_grad():
        b = net(x, t)
    assert not b.requires_grad and torch.allclose(a, b)


@pytest.mark.parametrize("objective", ["simple", "elbo", "hybrid_fixed", "score"])
def test_trains_with_every_objective(objective, tmp_path):
    cfg = compose("train", TOY + QUIET + [f"objective={objective}"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_trains_with_every_target(prediction, tmp_path):
    cfg = compose("train", TOY + QUIET + [f"prediction={prediction}"], tmp_path)
    assert math.isfinite(train(cfg)["val/loss"])


SAMPLERS = {"ddpm": [], "ddim": ["sampler.steps=10"], "dpmpp_2m": ["sampler.steps=10"], "heun": ["sampler.steps=5"],
            "pc": ["sampler.steps=10"], "langevin": ["sampler.num_levels=3", "sampler.steps_per_level=3"]}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samples_with_every_sampler(sampler, tmp_path):
    cfg = compose("train", TOY + [f"sampler={sampler}"] + SAMPLERS[sampler], tmp_path)
    module = build_module(cfg, {"data_shape": [2], "num_classes": None, "data_range": None})
    assert isinstance(module.net, EnergyNet)
    x = instantiate(cfg.sampler)(module.denoiser(ema=False), shape=(2,), seeds=[0, 1, 2])
    assert x.shape == (3, 2) and torch.isfinite(x).all()


def test_energy_with_preconditioning_is_a_config_error(tmp_path):
    from diffexp.validation import ConfigError

    cfg = compose("train", TOY + ["module.precondition=edm", "prediction=x0"], tmp_path)
    with pytest.raises(ConfigError, match=r"model.energy=true with module.precondition=edm"):
        build_module(cfg, {"data_shape": [2], "num_classes": None, "data_range": None})


FAMILIES = {"vp_sde": ["objective=simple"], "ve": ["objective=ncsn"], "edm": ["objective=edm", "prediction=x0"],
            "flow": ["objective=flow_matching", "prediction=velocity"]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trains_and_samples_on_every_process_family(family, tmp_path):
    toy = [o for o in TOY if not o.startswith("schedule.")]  # continuous families reject schedule overrides
    cfg = compose("train", toy + QUIET + [f"process={family}", "sampler=heun", "sampler.steps=3"] + FAMILIES[family],
                  tmp_path)
    assert math.isfinite(train(cfg)["val/loss"])
    module = build_module(cfg, {"data_shape": [2], "num_classes": None, "data_range": None})
    x = instantiate(cfg.sampler)(module.denoiser(ema=False), shape=(2,), seeds=[0, 1])
    assert torch.isfinite(x).all()
