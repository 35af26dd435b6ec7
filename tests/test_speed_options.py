"""Speed options give the same results as the default path, within stated tolerances.

channels_last (``model.channels_last``), torch.compile of the network (``module.compile``), fused AdamW
(``optimizer.fused``), SDPA attention and bf16 autocast (``trainer.precision=bf16-mixed``). Tiny shapes;
the inductor compile (minutes on a small CPU) is the only slow test — a fast test checks the compile
wiring with the ``eager`` backend (Dynamo tracing without code generation)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import compose
from diffexp.build import build_module
from diffexp.models import MLP, UNet
from diffexp.models.attention import attention
from diffexp.module import DiffusionModule
from diffexp.objectives import SimpleObjective
from diffexp.samplers import NoiseSource
from diffexp.schedules import linear

TINY_UNET = dict(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_groups=4, dropout=0.0)


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the UNet zero-initialises its output and residual convs, which would
    make any two layouts agree trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def tiny_module(net, compile=False, **kw) -> DiffusionModule:
    shape = (1, 8, 8) if isinstance(net, UNet) else (2,)
    data_range = (-1.0, 1.0) if isinstance(net, UNet) else None
    return DiffusionModule(net=net, schedule=linear(50), objective=SimpleObjective(), data_shape=shape,
                           data_range=data_range, compile=compile, **kw)


def loss_of(module: DiffusionModule, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return module.objective.loss(module._net_fn(module.net), x, module.process, module.prediction, generator=g).loss


# ---- channels_last -------------------------------------------------------------------------------------
def test_channels_last_same_outputs_and_gradients():
    """Same weights in NCHW and NHWC: outputs and gradients agree to float32 rounding (≤ 1e-5 relative
    to their scale; different oneDNN kernels sum in different orders), state_dict keys are identical."""
    torch.manual_seed(0)
    ref = randomize(UNet(**TINY_UNET))
    cl = UNet(**TINY_UNET, channels_last=True)
    cl.load_state_dict(ref.state_dict())
    assert list(cl.state_dict()) == list(ref.state_dict())
    assert cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 25, 49])
    out_ref, out_cl = ref(x, t), cl(x, t)
    scale = out_ref.detach().abs().max()
    assert scale > 0.1
    torch.testing.assert_close(out_cl, out_ref, atol=1e-5 * float(scale), rtol=1e-4)
    out_ref.square().mean().backward()
    out_cl.square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), cl.parameters()):
        gs = p.grad.abs().max().clamp_min(1e-3)
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4 * float(gs), rtol=1e-3, msg=name)


def test_channels_last_from_config():
    cfg = compose("train", ["data=digits", "model.base_channels=8", "model.channel_mult=[1,2]",
                            "model.attention_resolutions=[4]", "model.channels_last=true"])
    module = build_module(cfg, {"data_shape": [1, 8, 8], "num_classes": None, "data_range": [-1.0, 1.0]})
    assert module.net.channels_last
    assert module.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.ema.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


# ---- torch.compile ---------------------------------------------------------------------------------------
def assert_same_loss_and_grads(ref, other, x, loss_tol, grad_tol):
    """The loss of ``other`` on ``x`` equals ``ref``'s within ``loss_tol`` = (rtol, atol), and so do the
    parameter gradients within ``grad_tol``; returns ``other``'s loss."""
    l_ref, l_other = loss_of(ref, x), loss_of(other, x)
    torch.testing.assert_close(l_other, l_ref, rtol=loss_tol[0], atol=loss_tol[1])
    l_ref.backward()
    l_other.backward()
    for p, q in zip(ref.net.parameters(), other.net.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=grad_tol[0], atol=grad_tol[1])
    return l_other


def test_compile_keeps_state_dict_keys_and_results():
    """module.compile (eager backend: the Dynamo graph capture, no code generation): the same loss and
    gradients as the eager module, and the state_dict / EMA / checkpoint keys carry no `_orig_mod.`."""
    torch.manual_seed(0)
    net = randomize(MLP(in_channels=2, hidden_dim=16, num_blocks=1, time_embed_dim=8))
    eager = tiny_module(copy.deepcopy(net))
    comp = tiny_module(copy.deepcopy(net), compile={"backend": "eager"})
    assert comp.compile_options == {"backend": "eager"}
    assert list(comp.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in comp.state_dict())
    x = torch.randn(16, 2)
    l_comp = assert_same_loss_and_grads(eager, comp, x, (1e-6, 1e-7), (1e-5, 1e-7))
    # EMA update and a checkpoint round trip into an uncompiled module, strictly
    comp.ema.update(comp.net)
    fresh = tiny_module(copy.deepcopy(net))
    fresh.load_state_dict(comp.state_dict(), strict=True)
    torch.testing.assert_close(loss_of(fresh, x), l_comp, rtol=1e-6, atol=1e-7)


def test_compile_from_config_flag():
    cfg = compose("train", ["data=toy2d", "model=mlp", "model.hidden_dim=16", "model.num_blocks=1",
                            "model.time_embed_dim=8", "module.compile={backend: eager}"])
    info = {"data_shape": [2], "num_classes": None, "data_range": None}
    module = build_module(cfg, info)
    assert module.compile_options == {"backend": "eager"}
    assert getattr(module.net, "_compiled_call_impl", None) is not None
    assert getattr(module.ema.net, "_compiled_call_impl", None) is None  # the EMA copy stays eager
    default = build_module(compose("train", ["data=toy2d", "model=mlp", "model.hidden_dim=16", "model.num_blocks=1",
                                             "model.time_embed_dim=8"]), info)
    assert default.compile_options is None and getattr(default.net, "_compiled_call_impl", None) is None
    assert list(module.state_dict()) == list(default.state_dict())


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    """The default backend (inductor, C++ code generation; minutes on 2 busy cores): forward and
    gradients of a tiny MLP equal eager within float32 reassociation error."""
    torch.manual_seed(0)
    net = randomize(MLP(in_channels=2, hidden_dim=16, num_blocks=1, time_embed_dim=8))
    eager, comp = tiny_module(copy.deepcopy(net)), tiny_module(copy.deepcopy(net), compile=True)
    assert_same_loss_and_grads(eager, comp, torch.randn(16, 2), (1e-5, 1e-6), (1e-4, 1e-6))
    assert not any("_orig_mod" in k for k in comp.state_dict())


# ---- fused AdamW -------------------------------------------------------------------------------------------
def test_fused_adamw_matches_default():
    """optimizer.fused=true (from the shipped config): after 5 steps with weight decay the parameters
    equal those of the default implementation to float32 rounding (1e-6 on updates of size ~lr)."""
    cfg = compose("train", ["optimizer=adamw", "optimizer.fused=true", "optimizer.weight_decay=0.01",
                            "optimizer.lr=1e-2"])
    torch.manual_seed(0)
    ref = randomize(MLP(in_channels=2, hidden_dim=16, num_blocks=1, time_embed_dim=8))
    fused, init = copy.deepcopy(ref), [p.detach().clone() for p in ref.parameters()]
    opt_fused = instantiate(cfg.optimizer)(params=fused.parameters())
    assert opt_fused.defaults["fused"] is True
    cfg.optimizer.fused = None
    opt_ref = instantiate(cfg.optimizer)(params=ref.parameters())
    assert not opt_ref.defaults.get("fused")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ref.parameters()]
        for net, opt in ((ref, opt_ref), (fused, opt_fused)):
            for p, gr in zip(net.parameters(), grads):
                p.grad = gr.clone()
            opt.step()
    assert min((p - p0).abs().max() for p, p0 in zip(ref.parameters(), init)) > 1e-2  # the steps moved every tensor
    for p, q in zip(ref.parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


# ---- SDPA attention ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_attention_matches_softmax_formula(dtype, tol):
    """diffexp's attention (SDPA in fp32; explicit in bf16 on CPU) = softmax(QKᵀ/√d)V computed in float64."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 49, 16, generator=g) for _ in range(3))
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4.0, -1) @ v.double()
    out = attention(q.to(dtype), k.to(dtype), v.to(dtype)).double()
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v).double(), ref, atol=1e-5, rtol=1e-5)


# ---- bf16 autocast ------------------------------------------------------------------------------------------
def test_bf16_autocast_matches_fp32():
    """Under bf16 autocast (trainer.precision=bf16-mixed) the UNet output is within 3% (relative L2) of
    fp32 — bf16 keeps 8 mantissa bits (2^-9 ≈ 0.2% per rounding, accumulated over ~20 layers) — and the
    training loss, computed in fp32 from the bf16 output, within 2%."""
    torch.manual_seed(0)
    net = randomize(UNet(**TINY_UNET), seed=1)
    x, t = torch.randn(8, 1, 8, 8), torch.arange(8) * 6
    ref = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
    assert out.dtype == torch.bfloat16
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 3e-2, rel
    module = tiny_module(net)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    l32 = loss_of(module, x0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l16 = loss_of(module, x0)
    assert l16.dtype == torch.float32
    assert abs(l16.item() - l32.item()) / l32.item() < 2e-2, (l16.item(), l32.item())


def test_bf16_mixed_training_keeps_fp32_weights_and_ema(tmp_path):
    """Two Lightning steps with precision=bf16-mixed: weights, gradients' effect and EMA stay float32
    and finite, and the first step's loss equals the fp32 run's within 2%."""
    torch.manual_seed(0)
    net = randomize(UNet(**TINY_UNET), seed=2)
    x = torch.rand(32, 1, 8, 8) * 2 - 1
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long)),
                                       batch_size=8)
    losses = {}
    for precision in ("32", "bf16-mixed"):
        module = tiny_module(copy.deepcopy(net), seed=0)

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, key=precision):
                losses.setdefault(key, []).append(float(outputs["loss"]))

        trainer = L.Trainer(accelerator="cpu", max_steps=2, precision=precision, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Record()], default_root_dir=tmp_path)
        trainer.fit(module, train_dataloaders=data)
        assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in module.net.parameters())
        assert all(p.dtype == torch.float32 for p in module.ema.net.parameters())
        assert int(module.ema.num_updates) == 2
    assert len(losses["32"]) == len(losses["bf16-mixed"]) == 2
    assert abs(losses["bf16-mixed"][0] - losses["32"][0]) / losses["32"][0] < 2e-2, losses


# ---- per-sample noise ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_per_sample_noise_equals_separate_generator_draws(shape, dtype):
    """NoiseSource fills row i in place from sample i's generator: bit-identical to drawing each sample
    with its own torch.Generator(seed_i) and torch.randn, for the first and the later draws."""
    seeds = [3, 0, 7, 12345]
    src = NoiseSource(len(seeds), "cpu", dtype=dtype, seeds=seeds)
    draws = [src.randn(shape), src.randn(shape)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    for draw in draws:
        ref = torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in gens])
        assert draw.dtype == dtype and draw.shape == (len(seeds), *shape)
        assert torch.equal(draw, ref)
    assert not torch.equal(draws[0], draws[1])


# ---- per-step seeding of the global RNG ----------------------------------------------------------------------
def test_training_step_seeds_the_global_cpu_stream():
    """training_step re-derives the global RNG stream (dropout) from (seed, rank, step, batch) by seeding the
    CPU generator only (cheaper than torch.manual_seed on a CPU-only machine, same CPU stream): after a step of
    a dropout-free network the next global draw equals the first draw of that seed."""
    import warnings

    from diffexp.rng import derive_seed

    module = tiny_module(MLP(in_channels=2, hidden_dim=16, num_blocks=1, time_embed_dim=8), seed=7)
    batch = (torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        module.training_step(batch, 3)
    expected = torch.rand(4, generator=torch.Generator().manual_seed(derive_seed(7, "global", 0, 0, 3)))
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
