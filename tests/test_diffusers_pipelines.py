"""diffusers pipelines in and out: export.py (format=diffusers / safetensors) loaded offline by diffusers and by
diffexp, pretrained=DIR in the sample and evaluate CLIs, and sample parity with DDPMPipeline for the same seeds.
Everything is local: tiny models trained a few steps or built here and saved into tmp_path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, compose
from diffexp.cli.evaluate import evaluate
from diffexp.cli.sample import sample
from diffexp.cli.train import train
from diffexp.interop.export import export_checkpoint, load_exported
from diffexp.interop.pretrained import load_model, load_pretrained
from diffexp.samplers import DDPMSampler, DPMSolverPP2MSampler
from diffexp.validation import ConfigError
from diffusers_helpers import TINY_UNET, TINY_UNET_KW, TRAIN

diffusers = pytest.importorskip("diffusers")

EPS32 = 2.0**-23


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory):
    """A 4-step digits checkpoint of a tiny diffusers UNet (8x8, T=50, EMA)."""
    tmp = tmp_path_factory.mktemp("dunet")
    train(compose("train", TRAIN + TINY_UNET, tmp))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def _seeds_gen(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_exported_pipeline_loads_offline_and_samples_like_diffexp(unet_ckpt, tmp_path):
    """export.py format=diffusers: DDPMPipeline.from_pretrained(DIR) loads it (safetensors, no pickle), its
    UNet holds the EMA weights, and DDPMPipeline's samples with per-sample generators equal diffexp's DDPM
    samples with the same seeds (diffusers draws x_T then each step's noise per sample, as diffexp does):
    to float32 round-off over the 10 steps (measured ~5e-7)."""
    out = tmp_path / "pipe"
    record = export_checkpoint(unet_ckpt, out, format="diffusers")
    assert record["weights"] == "ema"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "unet/diffusion_pytorch_model.safetensors" in files and "scheduler/scheduler_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".ckpt", ".pkl"))], files
    pipe = diffusers.DDPMPipeline.from_pretrained(str(out), local_files_only=True)
    module = load_model(str(unet_ckpt))
    ema_state, raw_state = module.ema.net.unet.state_dict(), module.net.unet.state_dict()
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema_state.items())
    assert not all(torch.equal(loaded[k], v) for k, v in raw_state.items())
    assert torch.allclose(pipe.scheduler.alphas_cumprod.double(), module.schedule.alphas_cumprod, rtol=50 * EPS32)
    seeds = [3, 4, 5]
    theirs = pipe(batch_size=3, generator=_seeds_gen(seeds), num_inference_steps=10, output_type="np").images
    x = DDPMSampler(steps=10)(module.denoiser(ema=True), shape=(1, 8, 8), seeds=seeds)
    mine = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert theirs.shape == (3, 8, 8, 1) and np.abs(theirs - mine).max() < 1e-5
    assert theirs.std() > 0.05
    ddim = diffusers.DDIMPipeline.from_pretrained(str(out), local_files_only=True)  # the other DDPM-family pipeline
    assert np.isfinite(ddim(batch_size=2, generator=_seeds_gen([0, 1]), num_inference_steps=5, output_type="np").images).all()
    with pytest.raises(ConfigError, match="overwrite"):
        export_checkpoint(unet_ckpt, out, format="diffusers")


def test_latent_checkpoints_are_not_exported(unet_ckpt, tmp_path, monkeypatch):
    """A latent-diffusion module (a first stage attached) would export latents as images: refused by name."""
    import diffexp.build

    module = load_model(str(unet_ckpt))
    module.first_stage = torch.nn.Identity()
    monkeypatch.setattr(diffexp.build, "load_module", lambda path, map_location="cpu": module)
    for fmt in ("diffusers", "safetensors"):
        with pytest.raises(ConfigError, match="latent diffusion"):
            export_checkpoint(unet_ckpt, tmp_path / fmt, format=fmt)
        assert not (tmp_path / fmt).exists()


def test_export_cli_raw_weights_and_roundtrip_through_pretrained(unet_ckpt, tmp_path):
    """export.py (the Hydra CLI) with ema=false writes the raw weights; pretrained=DIR reads the pipeline
    back with the checkpoint's process, target and data facts (from diffexp.json)."""
    from diffexp.cli.export import export

    out = tmp_path / "raw"
    record = export(compose("export", [f"ckpt_path={unet_ckpt}", f"out={out}", "ema=false", "variance=beta_tilde"],
                            tmp_path))
    assert record["weights"] == "raw" and record["component"] == "unet"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["variance_type"] == "fixed_small"
    module, back = load_model(str(unet_ckpt)), load_pretrained(out)
    assert all(torch.equal(back.net.unet.state_dict()[k], v) for k, v in module.net.unet.state_dict().items())
    assert torch.equal(back.schedule.alphas_cumprod, module.schedule.alphas_cumprod)  # float64 round trip, exact
    assert back.prediction == module.prediction and back.data_shape == module.data_shape
    assert back.config["data"] == module.config["data"]  # evaluate.py finds its reference data without data=


def test_sample_and_evaluate_cli_read_a_diffusers_pipeline(unet_ckpt, tmp_path):
    """pretrained=DIR: a pipeline saved by diffusers itself (a DDIMScheduler, v-prediction, scaled_linear,
    trailing spacing) becomes a diffexp model: the mapped process, every sampler, the sample and evaluate
    CLIs; sampling it with DDPM equals DDPMPipeline's samples for the same seeds."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, **TINY_UNET_KW)
    sched = diffusers.DDIMScheduler(num_train_timesteps=40, beta_schedule="scaled_linear", beta_start=0.001,
                                    beta_end=0.3, prediction_type="v_prediction", timestep_spacing="trailing")
    folder = tmp_path / "theirs"
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(folder))
    module = load_pretrained(folder)
    assert module.prediction == "v" and module.schedule.num_timesteps == 40 and module.num_classes is None
    assert module.imported_scheduler.spacing == "trailing" and module.data_shape == (1, 8, 8)
    assert torch.allclose(module.schedule.alphas_cumprod, sched.alphas_cumprod.double(), rtol=40 * EPS32)
    cfg = compose("sample", [f"pretrained={folder}", "sampler=ddpm", "sampler.steps=8", "num_samples=3", "seed=7"],
                  tmp_path / "s")
    record = sample(cfg)
    assert record["pretrained"] and record["checkpoint"] == str(folder.resolve()) and record["nfe"] == 8
    assert record["weights"] == "pretrained"  # a folder diffexp did not write: not claimed as EMA or raw
    images = np.load(tmp_path / "s" / "run" / "samples.npz")["images"]
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler.from_config(
        {**sched.config, "timestep_spacing": "linspace", "variance_type": "fixed_large"}))
    theirs = pipe(batch_size=3, generator=_seeds_gen([7, 8, 9]), num_inference_steps=8, output_type="np").images
    assert np.abs(images.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1  # uint8 rounding
    x = DPMSolverPP2MSampler(steps=4)(module.denoiser(), shape=(1, 8, 8), seeds=[0])
    assert torch.isfinite(x).all()
    cfg = compose("evaluate", [f"pretrained={folder}", "data=digits", "extractor=random", "metrics=[fid]",
                               "num_samples=8", "batch_size=8", "num_real=32", "sampler=ddim", "sampler.steps=3",
                               f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "e")
    rec = evaluate(cfg)
    assert rec["pretrained"] and math.isfinite(rec["values"]["fid"]) and rec["nfe"] == 3


def test_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of ckpt_path"):
        load_model(None, None)
    with pytest.raises(ConfigError, match="no such folder"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "latent").mkdir()
    (tmp_path / "latent" / "model_index.json").write_text(json.dumps(
        {"_class_name": "LDMPipeline", "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(ConfigError, match="vae"):
        load_pretrained(tmp_path / "latent")
    with pytest.raises(ConfigError, match="model_index.json"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_safetensors_export_of_a_diffexp_network(process, tmp_path):
    """format=safetensors for diffexp's own networks and any process family: tensors + config + loader, no
    pickle; the loaded network is the EMA network of the checkpoint (same outputs) over the same process;
    format=diffusers names the alternative."""
    train(compose("train", ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "model=mlp",
                            "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=8", *[o for o in TRAIN[3:] if process == "ddpm" or not o.startswith("schedule.")],  # (ignored, so
                            f"process={process}"], tmp_path))  # rejected, on a continuous process)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="format=safetensors"):
        export_checkpoint(ckpt, tmp_path / "d", format="diffusers")
    out = tmp_path / "st"
    export_checkpoint(ckpt, out, format="safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["diffexp.json", "load.py", "model.safetensors"]  # 2-D data: no
    # scheduler_config.json (diffusers schedulers describe images)
    assert not (out / "model.safetensors").read_bytes().startswith(b"PK")  # not a torch (zip/pickle) file
    exported, module = load_exported(out), load_model(str(ckpt))
    x = torch.randn(5, 2)
    t = torch.tensor([0, 10, 20, 30, 49]) if process == "ddpm" else torch.tensor([0.01, 0.2, 0.5, 0.7, 1.0])
    with torch.no_grad():
        assert torch.equal(exported.net(x, t), module.ema.net(x, t))
    assert type(exported.process) is type(module.process) and exported.prediction == module.prediction
    assert exported.process.is_discrete == (process == "ddpm")
    assert load_model(pretrained=str(out)).checkpoint_info["weights"] == "ema"  # pretrained=DIR reads it too
    rec = sample(compose("sample", [f"pretrained={out}", "sampler=ddim", "sampler.steps=3", "num_samples=4"],
                         tmp_path / "s"))
    assert rec["weights"] == "ema" and rec["pretrained"]  # the exported weights, as diffexp.json says
    samples = DDPMSampler(steps=5)(exported.denoiser(), shape=(2,), seeds=[0, 1, 2])
    assert samples.shape == (3, 2) and torch.isfinite(samples).all()


def test_export_cli_user_errors_are_one_line(tmp_path):
    """python export.py: a missing checkpoint is one named message and exit status 2 (an unknown format is
    refused the same way, before the checkpoint is read: checked in-process)."""
    env = dict(os.environ, DIFFEXP_LOGS=str(tmp_path / "logs"))
    env.pop("DIFFEXP_DEBUG", None)
    proc = subprocess.run([sys.executable, "export.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'x'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "export: error: checkpoint not found" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match="format='onnx'; valid"):
        export_checkpoint(tmp_path / "nope.ckpt", tmp_path / "x", format="onnx")
