"""diffusers interop: noise tables, scheduler mapping, networks as denoisers, import and export of pipelines.

Everything is local and offline: tiny diffusers models are built here and saved into tmp_path.
"""

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
from diffexp import launch
from diffexp.cli.evaluate import evaluate
from diffexp.cli.sample import sample
from diffexp.cli.train import train
from diffexp.interop.export import export_checkpoint, load_exported
from diffexp.interop.pretrained import load_model, load_pretrained
from diffexp.interop.schedulers import from_scheduler_config, to_scheduler_config
from diffexp.models.diffusers import DiffusersDiT, DiffusersUNet
from diffexp.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2MSampler, HeunSampler
from diffexp.schedules import cosine, linear, make_schedule, rescale_zero_terminal_snr, sigmoid
from diffexp.validation import ConfigError

diffusers = pytest.importorskip("diffusers")

EPS32 = 2.0**-23
TINY_UNET_KW = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                    attention_head_dim=8)
TINY_UNET = ["model=diffusers_unet", "model.block_out_channels=[8,16]",
             "model.down_block_types=[DownBlock2D,AttnDownBlock2D]", "model.up_block_types=[AttnUpBlock2D,UpBlock2D]",
             "model.norm_num_groups=4", "model.attention_head_dim=8"]
TINY_DIT = ["model=diffusers_dit", "model.num_attention_heads=2", "model.attention_head_dim=8", "model.num_layers=1",
            "model.patch_size=2"]
TRAIN = ["data=digits", "data.subset=64", "data.batch_size=8", "schedule.num_timesteps=50", "trainer.max_steps=4",
         "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "logger=none", "~callbacks.sample",
         "~callbacks.progress_bar", "~callbacks.lr_monitor", "print_config=false", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]


def float32_cumprod_bound(betas: torch.Tensor) -> torch.Tensor:
    """Relative round-off of diffusers' float32 ᾱ_t: β_t is rounded once (relative EPS32), so α_t = 1 - β_t
    is off by EPS32·β_t/(1-β_t) relatively, and the product adds one rounding per factor: the relative error
    of ᾱ_t is at most EPS32·Σ_{s≤t} (1 + β_s/(1-β_s)) = EPS32·Σ_{s≤t} 1/(1-β_s) (β_T = 1 of a zero-SNR end
    excluded: ᾱ_T = 0 exactly on both sides)."""
    return EPS32 * (1.0 / (1.0 - betas.clamp(max=1 - 1e-6))).cumsum(0) * 2


# ---- noise tables ------------------------------------------------------------------------------------------
DIFFUSERS_CONFIGS = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "linear+ztsnr": dict(beta_schedule="linear", rescale_betas_zero_snr=True),
    "cosine+ztsnr": dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True),
    "sigmoid": dict(beta_schedule="sigmoid"),
}


@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_noise_tables_match_diffusers(name):
    """ᾱ of the imported process vs diffusers' own table. diffusers computes β in float32 (one rounding of
    the same float64 formula: agreement to 2 float32 ulps) and ᾱ by a float32 cumulative product of T
    factors (:func:`float32_cumprod_bound`). The float64 algorithms are compared in the next test."""
    T = 1000
    cfg = dict(num_train_timesteps=T, **DIFFUSERS_CONFIGS[name])
    theirs = diffusers.DDPMScheduler(**cfg)
    ours = from_scheduler_config(cfg).schedule
    assert ours.betas.dtype == torch.float64
    if "ztsnr" not in name:  # (rescaled β = 1 - ᾱ_t/ᾱ_{t-1} cancels catastrophically in float32: compare ᾱ)
        assert torch.allclose(ours.betas, theirs.betas.double(), rtol=2 * EPS32, atol=0)
    ab_t = theirs.alphas_cumprod.double()
    assert bool(((ours.alphas_cumprod - ab_t).abs() <= float32_cumprod_bound(ours.betas) * ab_t + 1e-12).all())
    if "ztsnr" in name:
        assert float(ours.alphas_cumprod[-1]) == 0.0 == float(ab_t[-1])


@pytest.mark.parametrize("family", ["linear", "cosine"])
def test_zero_snr_rescale_matches_diffusers_in_float64(family):
    """Lin et al.'s Algorithm 1: diffusers' implementation, given float64 betas, equals diffexp's to
    float64 round-off; diffexp's cosine equals diffusers' squaredcos_cap_v2 formula (computed in float64
    before its float32 cast) to one float32 rounding."""
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as theirs

    betas = make_schedule(family, 1000).betas
    assert torch.allclose(rescale_zero_terminal_snr(betas), theirs(betas.clone()), rtol=1e-13, atol=1e-15)
    if family == "cosine":
        assert torch.allclose(betas, betas_for_alpha_bar(1000).double(), rtol=EPS32, atol=0)


@pytest.mark.parametrize("schedule", [linear(1000), cosine(1000), linear(1000, True), cosine(200, True), linear(50),
                                      sigmoid(100)], ids=str)
def test_exported_scheduler_config_describes_the_same_process(schedule):
    """diffexp -> DDPMScheduler config -> diffexp is exact (float64); diffusers reading the config builds
    the same ᾱ to its float32 precision. Families diffusers lacks (diffexp's sigmoid) go as trained_betas."""
    cfg = to_scheduler_config(schedule, "v")
    assert cfg["prediction_type"] == "v_prediction" and cfg["num_train_timesteps"] == schedule.num_timesteps
    assert (cfg["trained_betas"] is not None) == schedule.name.startswith("sigmoid")
    assert torch.equal(from_scheduler_config(cfg).schedule.alphas_cumprod, schedule.alphas_cumprod)
    theirs = diffusers.DDPMScheduler.from_config(cfg).alphas_cumprod.double()
    ab = schedule.alphas_cumprod
    assert bool(((theirs - ab).abs() <= float32_cumprod_bound(schedule.betas) * ab + 1e-12).all())


@pytest.mark.parametrize("field,value", [("beta_schedule", "exp"), ("prediction_type", "flow_prediction"),
                                         ("variance_type", "learned_range"), ("timestep_spacing", "uniform"),
                                         ("timestep_type", "continuous"), ("clip_sample_range", 2.0),
                                         ("num_train_timesteps", 0), ("_class_name", "FlowMatchEulerDiscreteScheduler")])
def test_unsupported_scheduler_settings_name_the_field(field, value):
    cfg = {"num_train_timesteps": 100, "clip_sample": True, field: value}
    with pytest.raises(ConfigError, match=field):
        from_scheduler_config(cfg)


def test_scheduler_mapping_of_prediction_spacing_and_variance():
    imp = from_scheduler_config({"prediction_type": "sample", "timestep_spacing": "trailing", "variance_type": "fixed_small"})
    assert (imp.prediction, imp.spacing, imp.variance) == ("x0", "trailing", "beta_tilde")
    assert any("sampler.spacing=trailing" in n for n in imp.notes)
    imp = from_scheduler_config({"timestep_spacing": "leading", "thresholding": True})
    assert imp.spacing is None and imp.prediction == "eps" and len(imp.notes) == 2  # said, not silently dropped
    with pytest.raises(ConfigError, match="prediction=.score"):
        to_scheduler_config(linear(100), "score")


# ---- networks as denoisers ---------------------------------------------------------------------------------
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
    cfg = compose("train", [o for o in TRAIN if o != "trainer.max_steps=4"] + TINY_UNET
                  + ["trainer.max_steps=2", f"process={process}"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train/loss"])
    module = load_model(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    x = HeunSampler(steps=3)(module.denoiser(), shape=(1, 8, 8), seeds=[0, 1])
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


# ---- export and import ---------------------------------------------------------------------------------------
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
                            "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=8", *TRAIN[3:],
                            f"process={process}"], tmp_path))
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
