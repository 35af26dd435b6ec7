"""`python sample.py ckpt_path=... sampler=ddim sampler.steps=50 num_samples=1000 seed=0` / `diffexp-sample`.

Writes ``samples.npz`` (uint8 images, or float 2-D points, with their seeds and labels), a PNG grid
and ``record.json`` saying what produced them.
"""

from __future__ import annotations

import time
from pathlib import Path

import diffexp  # noqa: F401
from diffexp.cli.errors import enable_debug_tracebacks, user_errors
from diffexp.config import CONFIG_DIR, setup_environment

setup_environment()
enable_debug_tracebacks()

import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from diffexp.atomic import atomic_write_json  # noqa: E402
from diffexp.cli.checks import check_against_checkpoint, check_sample_config  # noqa: E402
from diffexp.guidance.noisy_classifier import classifier_guidance_from_config  # noqa: E402
from diffexp.guidance.setup import check_classifier_fits, label_classes, use_recipe_guidance_scale  # noqa: E402
from diffexp.images import samples_to_image, save_png, to_uint8  # noqa: E402
from diffexp.interop.pretrained import load_model  # noqa: E402
from diffexp.latent import image_range, to_images  # noqa: E402
from diffexp.logs import route_to_run_log, say  # noqa: E402
from diffexp.posthoc_ema import weights_label  # noqa: E402
from diffexp.samplers.recipe import use_recipe_sampler  # noqa: E402


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def generate(module, sampler, num_samples: int, seed: int, batch_size: int, ema: bool = True,
             labels: torch.Tensor | None = None, guidance_scale: float = 1.0, device=None,
             classifier_guidance=None) -> torch.Tensor:
    """Samples for seeds seed..seed+n-1 in batches (per-sample seeds: batch size does not matter)."""
    device = device or next(module.parameters()).device
    denoiser = module.denoiser(ema=ema)
    denoiser.classifier_guidance = classifier_guidance  # diffexp.guidance: acts whenever labels are given
    out = []
    for start in range(0, num_samples, batch_size):
        seeds = list(range(seed + start, seed + min(num_samples, start + batch_size)))
        y = labels[start : start + len(seeds)].to(device) if labels is not None else None
        x = sampler(denoiser, shape=tuple(module.data_shape), seeds=seeds, y=y, guidance_scale=guidance_scale)
        x = to_images(module, x)  # latent diffusion: decoded by the first stage
        if image_range(module) is not None:
            x = x.clamp(*image_range(module))
        out.append(x.cpu())
    return torch.cat(out)


def sample(cfg: DictConfig) -> dict:
    check_sample_config(cfg)  # every mistake named by its key, before the checkpoint is read
    out_dir = Path(cfg.paths.output_dir)
    device = pick_device(cfg.device)
    # ckpt_path=CKPT, or pretrained=DIR: a local diffusers pipeline folder or a diffexp export (diffexp.interop)
    module = load_model(cfg.ckpt_path, cfg.get("pretrained"), map_location=device).to(device)
    scale, scale_source = use_recipe_guidance_scale(cfg, module)  # null: the checkpoint's recipe value
    sampler_source = use_recipe_sampler(cfg, module)  # sampler=recipe (the default): the checkpoint's sampler
    check_against_checkpoint(cfg, module)  # sampler steps vs its schedule, labels vs its classes
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = instantiate(cfg.sampler)
    T = module.process.num_timesteps
    nfe = sampler.nfe(T)
    labels = None
    guidance = classifier_guidance_from_config(cfg, device)
    check_classifier_fits(module, guidance, cfg.get("classifier_ckpt"))
    num_classes = label_classes(module, guidance)  # the checkpoint's classes, else the guidance classifier's
    if num_classes is not None:
        labels = (torch.full((cfg.num_samples,), int(cfg.class_label)) if cfg.class_label is not None
                  else torch.arange(cfg.num_samples) % num_classes)
    start = time.time()
    x = generate(module, sampler, cfg.num_samples, cfg.seed, cfg.batch_size, cfg.ema, labels, cfg.guidance_scale, device,
                 classifier_guidance=guidance)
    elapsed = time.time() - start
    arrays = {"seeds": np.arange(cfg.seed, cfg.seed + cfg.num_samples)}
    if x.ndim == 4:
        arrays["images"] = to_uint8(x, image_range(module)).permute(0, 2, 3, 1).numpy()  # NHWC uint8
    else:
        arrays["points"] = x.numpy()
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez_compressed(out_dir / "samples.npz", **arrays)
    grid = samples_to_image(x[: cfg.grid_size], image_range(module), title=f"{sampler.name}")
    save_png(grid, out_dir / "grid.png")
    record = {
        "checkpoint": str(Path(module.checkpoint_info["path"]).resolve()),
        "pretrained": bool(module.checkpoint_info.get("pretrained", False)),
        "global_step": module.checkpoint_info["global_step"],
        "weights": weights_label(module, cfg.ema),  # ema | raw | phema-sigma0.100 | as stored (pretrained=DIR)
        "sampler": sampler.name,
        "sampler_config": OmegaConf.to_container(cfg.sampler, resolve=True),
        "sampler_source": sampler_source,  # explicit | checkpoint (its recipe) | default (none stored: ddim.yaml)
        "nfe": nfe,
        "num_samples": cfg.num_samples,
        "seeds": [cfg.seed, cfg.seed + cfg.num_samples - 1],
        "guidance_scale": scale,
        "guidance_scale_source": scale_source,  # explicit | checkpoint (its recipe) | default (none stored: 1.0)
        "class_label": cfg.class_label,
        "classifier_guidance": None if guidance is None else {"scale": guidance.scale, "classifier_ckpt": cfg.classifier_ckpt},
        "device": str(device),
        "seconds": elapsed,
        "samples": str(out_dir / "samples.npz"),
        "grid": str(out_dir / "grid.png"),
    }
    atomic_write_json(out_dir / "record.json", record)
    say(f"{cfg.num_samples} samples ({sampler.name}, {nfe} NFE, {record['weights']} weights) in {elapsed:.1f} s -> {out_dir}")
    return record


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    route_to_run_log()  # messages also go to the job's sample.log
    with user_errors("sample"):  # a mistake in the config, checkpoint or data: one message, exit status 2
        sample(cfg)


if __name__ == "__main__":
    main()
