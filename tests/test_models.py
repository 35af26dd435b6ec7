"""Denoiser networks (src/diffexp/models): the network contract of docs/CONTRACTS.md, initialisation,
conditioning, error messages and the parameter counts of the conf/model presets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import diffexp  # noqa: F401  (import order: see CONTRACTS.md)
from diffexp.models import MLP, DiT, UNet, count_parameters, timestep_embedding
from diffexp.models.dit import sincos_2d

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny_unet(in_channels=1, image_size=8, channel_mult=(1, 2), **kw):
    kw.setdefault("attention_resolutions", [image_size // 2])
    return UNet(in_channels, image_size, base_channels=8, channel_mult=channel_mult, num_res_blocks=1, **kw)


def tiny_dit(in_channels=1, image_size=8, **kw):
    kw.setdefault("patch_size", 2)
    return DiT(in_channels, image_size, hidden_size=32, depth=2, num_heads=2, **kw)


def perturb_zero_init(net: torch.nn.Module, seed: int = 0) -> None:
    """Re-draw every all-zero parameter so that the network computes a non-trivial function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if torch.all(p == 0):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- embeddings


def test_timestep_embedding_closed_form_and_float_t():
    dim, half = 16, 8
    t = torch.tensor([0.0, 3.0, 2.5])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (3, dim) and emb.dtype == torch.float32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    torch.testing.assert_close(emb[:, :half], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, half:], torch.sin(t[:, None] * freqs))
    # integer and float timesteps give the same embedding; odd dims are padded
    torch.testing.assert_close(timestep_embedding(torch.tensor([3]), dim)[0], emb[1])
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_sincos_2d_rows_and_columns():
    D, g = 16, 4
    pe = sincos_2d(D, g)
    assert pe.shape == (g * g, D)
    # token (i, j) in row-major order: first half encodes the column j, second half the row i
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))
    i, j = 2, 3
    expect_j = torch.cat([torch.sin(j * omega), torch.cos(j * omega)]).float()
    expect_i = torch.cat([torch.sin(i * omega), torch.cos(i * omega)]).float()
    torch.testing.assert_close(pe[i * g + j], torch.cat([expect_j, expect_i]))


@pytest.mark.parametrize("act,film", [(False, False), (True, True)])
def test_fused_group_norm_act_gradcheck_and_matches_native(act, film):
    """SiLU(GN(x)(1 + s) + t) of norm.py: float64 gradcheck, and equal to the native op composition."""
    import torch.nn.functional as F

    from diffexp.models.norm import GroupNorm, _GroupNormAct, group_norm_act

    torch.manual_seed(0)
    x = (2 * torch.randn(2, 6, 3, 4, dtype=torch.float64) + 1.5).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    s, t = (torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)) if film else (None, None)
    leaves = [v.requires_grad_() for v in (x, w, b, s, t) if v is not None]
    assert torch.autograd.gradcheck(
        lambda *v: _GroupNormAct.apply(*(list(v) + [None] * (5 - len(v))), 3, 1e-5, act), tuple(leaves)
    )
    norm = GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    xc = torch.randn(3, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    sc, sh = (torch.randn(3, 8), torch.randn(3, 8)) if film else (None, None)
    y = group_norm_act(xc, norm, sc, sh, act=act)  # fused path (channels_last, CPU)
    ref = F.group_norm(xc, 4, norm.weight, norm.bias)
    if film:
        ref = ref * (1 + sc[:, :, None, None]) + sh[:, :, None, None]
    ref = F.silu(ref) if act else ref
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(group_norm_act(xc.contiguous(), norm, sc, sh, act=act), ref)  # NCHW: native ops
    y16 = group_norm_act(xc.bfloat16(), norm, sc, sh, act=act)  # bf16 activations: fp32 statistics
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), ref, atol=0.05, rtol=0.02)


def test_attention_explicit_path_matches_sdpa():
    import torch.nn.functional as F

    from diffexp.models.attention import attention

    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    expect = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v), expect)
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())  # CPU bf16: explicit softmax(QKᵀ/√d)V
    torch.testing.assert_close(low.float(), expect, atol=0.03, rtol=0.03)


# ---------------------------------------------------------------- UNet


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 28, 32])
def test_unet_shapes(channels, size):
    net = tiny_unet(channels, size)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape


def test_unet_three_levels_mnist_and_cifar_sizes():
    for size in (28, 32):
        net = tiny_unet(1, size, channel_mult=(1, 2, 2), attention_resolutions=[size // 4])
        assert net(torch.randn(2, 1, size, size), torch.tensor([1, 2])).shape == (2, 1, size, size)


def test_unet_zero_output_at_init_and_float_t():
    net = tiny_unet(3, 16)
    x = torch.randn(3, 3, 16, 16)
    out = net(x, torch.tensor([0.5, 17.25, 998.9]))
    assert torch.count_nonzero(out) == 0
    perturb_zero_init(net)
    a = net(x, torch.tensor([10.0, 10.0, 10.0]))
    b = net(x, torch.tensor([10.5, 10.5, 10.5]))
    assert a.abs().max() > 1e-3 and (a - b).abs().max() > 1e-6  # t enters the function, fractional t too


def test_unet_conditional_null_label_and_errors():
    torch.manual_seed(0)
    net = tiny_unet(1, 8, num_classes=10)
    assert net.label_embed.table.num_embeddings == 11
    perturb_zero_init(net)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 5, 5])
    y = torch.tensor([0, 9, 10])  # 10 = null label
    out = net(x, t, y=y)
    assert out.shape == x.shape
    assert (out - net(x, t, y=torch.tensor([1, 9, 10]))).abs()[0].max() > 1e-6  # labels matter
    torch.testing.assert_close(net(x, t), net(x, t, y=torch.full((3,), 10)))  # y=None ≡ null label
    with pytest.raises(ValueError, match="num_classes"):
        tiny_unet(1, 8)(x, t, y=y)


def test_unet_backward_and_gradient_step():
    net = tiny_unet(1, 8, num_classes=3, dropout=0.1)
    x = torch.randn(4, 1, 8, 8)
    for _ in range(2):  # plain SGD (torch.optim would import torch._dynamo: seconds of test time)
        net.zero_grad()
        loss = (net(x, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])) - x).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
    # after one step the zero-initialised output layer is no longer zero, so the gradient reaches the input conv
    assert net.conv_in.weight.grad.abs().sum() > 0


def test_unet_bad_image_size_error():
    with pytest.raises(ValueError, match=r"image_size=30.*channel_mult=\[1, 2, 2\].*valid sizes: \[4, 8"):
        UNet(1, 30, base_channels=8, channel_mult=[1, 2, 2])


def test_unet_channels_last_and_bf16_match_fp32():
    torch.manual_seed(0)
    ref = tiny_unet(3, 16, num_classes=4)
    perturb_zero_init(ref)
    cl = tiny_unet(3, 16, num_classes=4, channels_last=True)
    cl.load_state_dict(ref.state_dict())
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 400]), torch.tensor([1, 4])
    expect = ref(x, t, y)
    out_cl = cl(x, t, y)
    assert out_cl.is_contiguous()  # returned in the caller's (NCHW) layout
    torch.testing.assert_close(out_cl, expect, atol=1e-4, rtol=1e-4)
    expect.square().mean().backward()
    out_cl.square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), cl.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        low = ref(x, t, y)
    assert low.shape == x.shape and torch.isfinite(low).all()
    assert (low.float() - expect).norm() / expect.norm() < 0.05


# ---------------------------------------------------------------- DiT


@pytest.mark.parametrize("channels,size,patch,pos", [(1, 8, 2, "sincos"), (3, 16, 4, "learned"), (1, 28, 4, "sincos")])
def test_dit_shapes_zero_init_and_float_t(channels, size, patch, pos):
    net = tiny_dit(channels, size, patch_size=patch, pos_embed=pos)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0.25, 500.0]))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0


def test_dit_unpatchify_inverts_patchify():
    net = tiny_dit(3, 8, patch_size=2)
    x = torch.randn(2, 3, 8, 8)
    B, c, g, p = 2, 3, 4, 2
    tokens = x.view(B, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * c)  # (h, w, p, q, c)
    torch.testing.assert_close(net.unpatchify(tokens), x)


def test_dit_conditional_backward_and_errors():
    torch.manual_seed(0)
    net = tiny_dit(1, 8, num_classes=5)
    assert net.label_embed.table.num_embeddings == 6
    perturb_zero_init(net)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    y = torch.tensor([0, 4, 5])
    out = net(x, t, y)
    assert (out - net(x, t, torch.tensor([1, 4, 5]))).abs()[0].max() > 1e-6
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((3,), 5)))
    out.pow(2).mean().backward()
    assert net.x_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match=r"image_size=28.*patch_size=3.*valid patch sizes.*\[1, 2, 4, 7"):
        DiT(1, 28, patch_size=3)
    with pytest.raises(ValueError, match="pos_embed"):
        DiT(1, 8, patch_size=2, pos_embed="rope")
    with pytest.raises(ValueError, match="num_classes"):
        tiny_dit(1, 8)(x, t, y)


# ---------------------------------------------------------------- MLP


def test_mlp_vectors_images_and_conditioning():
    torch.manual_seed(0)
    net = MLP(in_channels=2, hidden_dim=32, num_blocks=2, time_embed_dim=16, num_classes=3)
    x = torch.randn(5, 2)
    t = torch.tensor([0.0, 1.5, 10.0, 100.0, 999.0])
    out = net(x, t, torch.tensor([0, 1, 2, 3, 3]))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    perturb_zero_init(net)
    out = net(x, t, torch.tensor([0, 1, 2, 3, 3]))
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((5,), 3)))
    out.pow(2).sum().backward()
    assert net.inp.weight.grad.abs().sum() > 0
    img = MLP(in_channels=1, image_size=4, hidden_dim=16, num_blocks=1)
    assert img(torch.randn(2, 1, 4, 4), torch.tensor([1, 2])).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(2, 3), torch.tensor([1, 2]))


# ---------------------------------------------------------------- presets (conf/model)


def preset(name: str, **data):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}"])
    factory = instantiate(cfg.model)
    with torch.device("meta"):  # parameter counting without allocating or initialising weights
        return factory(**data)


@pytest.mark.parametrize(
    "name,data,lo,hi",
    [
        ("unet", dict(in_channels=1, image_size=28, num_classes=10), 0.5e6, 2.0e6),
        ("unet_large", dict(in_channels=3, image_size=32, num_classes=None), 35.6e6, 35.8e6),  # Ho et al.: 35.7M
        ("mlp", dict(in_channels=2, image_size=None, num_classes=None), 0.1e6, 2.0e6),
        ("dit", dict(in_channels=1, image_size=28, num_classes=10), 3.5e6, 5.0e6),
        ("dit_tiny", dict(in_channels=1, image_size=28, num_classes=10), 3.5e6, 5.0e6),
        ("dit_small", dict(in_channels=3, image_size=32, num_classes=10), 30e6, 35e6),  # DiT-S/2: ~33M
    ],
)
def test_preset_param_counts(name, data, lo, hi):
    net = preset(name, **data)
    n = count_parameters(net)
    print(f"{name}: {n / 1e6:.3f}M parameters")
    assert lo < n < hi


def test_default_preset_runs_on_mnist_shape():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+model=unet"])
    net = instantiate(cfg.model)(in_channels=1, image_size=28, num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.tensor([3, 7]), torch.tensor([1, 10])).shape == x.shape


# ---------------------------------------------------------------- torch.compile (slow: inductor compiles C++)


@pytest.mark.slow
@pytest.mark.parametrize("build", [lambda: tiny_unet(1, 8, num_classes=3), lambda: tiny_dit(1, 8, num_classes=3)])
def test_compile_matches_eager(build):
    torch.manual_seed(0)
    net = build()
    perturb_zero_init(net)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.5]), torch.tensor([0, 3])
    compiled = torch.compile(net)
    torch.testing.assert_close(compiled(x, t, y), net(x, t, y), atol=1e-4, rtol=1e-4)
    compiled(x, t, y).sum().backward()
