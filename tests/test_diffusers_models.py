"""diffusers networks as diffexp denoisers (model=diffusers_unet / diffusers_dit): the contract, the shipped
configs, training through the framework (conditional, every family, DDP). Offline, tiny networks."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, compose
from diffexp import launch
from diffexp.cli.train import train
from diffexp.interop.export import export_checkpoint
from diffexp.interop.pretrained import load_model, load_pretrained
from diffexp.models.diffusers import DiffusersDiT, DiffusersUNet
from diffexp.samplers import DDIMSampler, HeunSampler
from diffusers_helpers import TINY_DIT, TINY_UNET, TINY_UNET_KW, TRAIN

diffusers = pytest.importorskip("diffusers")


def test_adapters_follow_the_denoiser_contract():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    unet = DiffusersUNet(1, 8, num_classes=10, **TINY_UNET_KW).eval()
    assert unet.unet.class_embedding.num_embeddings == 11  # 10 classes + the null label
    dit = DiffusersDiT(1, 8, num_classes=10, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                       patch_size=2).train()  # train mode: its own random label dropout must be off
    for net in (unet, dit):
        with torch.no_grad():
            a = net(x, torch.tensor([0, 10, 49]), y=torch.tensor([1, 2, 10]))
            b = net(x, torch.tensor([0.0, 10.5, 49.0]), y=torch.tensor([1, 2, 10]))  # fractional t works
            c = net(x, torch.tensor([0, 10, 49]), y=torch.tensor([3, 2, 10]))
            assert a.shape == x.shape and torch.isfinite(b).all()
            assert torch.equal(a, net(x, torch.tensor([0, 10, 49]), y=torch.tensor([1, 2, 10])))  # deterministic
            assert not torch.equal(a[0], c[0]) and torch.equal(a[1:], c[1:])  # the label conditions its sample only
    uncond = DiffusersDiT(1, 8, num_attention_heads=2, attention_head_dim=8, num_layers=1, patch_size=2)
    assert uncond(x, torch.tensor(5)).shape == x.shape  # no labels, scalar t
    with pytest.raises(ValueError, match="cannot be halved"):
        DiffusersUNet(1, 6, block_out_channels=(8, 8, 8), down_block_types=("DownBlock2D",) * 3,
                      up_block_types=("UpBlock2D",) * 3, norm_num_groups=4)
    with pytest.raises(ValueError, match="sample_size"):  # set from the data, not the model config
        DiffusersUNet(1, 8, sample_size=32, **TINY_UNET_KW)
    with pytest.raises(ValueError, match="patch_size=3"):
        DiffusersDiT(1, 8, patch_size=3)


@pytest.mark.parametrize("model", ["diffusers_unet", "diffusers_dit"])
def test_shipped_model_configs_build_for_mnist(model):
    """conf/model/diffusers_*.yaml as shipped: built for 28x28 MNIST (as train.py does), a forward pass."""
    from diffexp.build import build_net

    net = build_net(compose("train", [f"model={model}"]), (1, 28, 28), None).eval()
    assert 0.5e6 < sum(p.numel() for p in net.parameters()) < 6e6  # small, CPU-sized defaults
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("model", ["unet", "dit"])
def test_diffusers_networks_train_conditional_with_every_part(model, tmp_path):
    """model=diffusers_* trains through the framework (class-conditional with label dropout, v target,
    EMA, checkpoint) and the checkpoint samples with classifier-free guidance."""
    cfg = compose("train", TRAIN + (TINY_UNET if model == "unet" else TINY_DIT) + ["conditional=true", "prediction=v"],
                  tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 4 and math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    module = load_model(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert module.uses_ema and module.num_classes == 10
    x = DDIMSampler(steps=3)(module.denoiser(), shape=(1, 8, 8), seeds=[0, 1], y=torch.tensor([3, 4]), guidance_scale=2.0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    # exported (unet/ or transformer/ + scheduler/, each loadable by diffusers) and read back, classes included
    out = tmp_path / "exported"
    export_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", out, format="diffusers")
    component, cls = ("unet", diffusers.UNet2DModel) if model == "unet" else ("transformer", diffusers.DiTTransformer2DModel)
    assert (out / component / "diffusion_pytorch_model.safetensors").is_file()
    assert isinstance(cls.from_pretrained(str(out), subfolder=component, local_files_only=True), cls)
    back = load_pretrained(out)
    assert back.num_classes == 10 and back.prediction == "v"
    xt, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 20, 49]), torch.tensor([0, 9, 10])  # 10: the null label
    with torch.no_grad():
        assert torch.equal(back.net(xt, t, y=y), module.ema.net(xt, t, y=y))


@pytest.mark.slow  # ~110 s on the loaded 2-core machine (two processes importing torch, Lightning, diffusers)
@pytest.mark.ddp
def test_diffusers_unet_trains_under_ddp(tmp_path):
    """Two gloo ranks on CPU (train.py, trainer.devices=2): the run ends cleanly with one checkpoint whose
    EMA was updated once per optimizer step, and it loads as a diffusers model (the ranks' weights being
    identical is tested for every network in test_ddp.py)."""
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for key in (*launch.DDP_ENV_VARS, "DIFFEXP_LOGS", "DIFFEXP_RUN_ID"):
        env.pop(key, None)
    overrides = [o for o in TRAIN + TINY_UNET if o != "trainer.max_steps=4"] + [
        "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=2", "lr_scheduler=none",
        f"paths.log_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (ckpt,) = list(tmp_path.rglob("last.ckpt"))
    module = load_model(str(ckpt))
    assert int(module.ema.num_updates) == 2 and isinstance(module.net, DiffusersUNet)


@pytest.mark.parametrize("process", ["edm", "flow"])
def test_diffusers_unet_trains_on_continuous_families(process, tmp_path):
    """The adapter takes whatever time a process family feeds the network (fractional t, EDM's c_noise)."""
    # schedule.* applies to process=ddpm only (a continuous family refuses it as a config error)
    base = [o for o in TRAIN if o != "trainer.max_steps=4" and not o.startswith("schedule.")]
    cfg = compose("train", base + TINY_UNET + ["trainer.max_steps=2", f"process={process}"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train/loss"])
    module = load_model(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    x = HeunSampler(steps=3)(module.denoiser(), shape=(1, 8, 8), seeds=[0, 1])
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
