"""Export a diffexp checkpoint: ``python export.py ckpt_path=CKPT format=diffusers|safetensors out=DIR``.

``format=diffusers`` (networks built with ``model=diffusers_unet`` / ``diffusers_dit``): a diffusers folder
that diffusers loads offline. For a UNet it is a ``DDPMPipeline`` (``model_index.json``, ``unet/`` with
``diffusion_pytorch_model.safetensors``, ``scheduler/``), loadable by ``DDPMPipeline.from_pretrained(DIR)``
and ``DDIMPipeline.from_pretrained(DIR)``; for a DiT, ``transformer/`` and ``scheduler/`` (diffusers has no
pixel-space DiT pipeline: load them with ``DiTTransformer2DModel.from_pretrained(DIR, subfolder="transformer")``).
The scheduler is a ``DDPMScheduler`` describing the training process (:func:`to_scheduler_config`: the same ᾱ,
the network's ``prediction_type``, ``variance_type`` from ``variance``, ``clip_sample`` for [-1, 1] images,
``timestep_spacing: linspace`` = diffexp's ``uniform``).

``format=safetensors`` (any diffexp network, any process family): ``model.safetensors`` (the network's state
dict), ``diffexp.json`` (the resolved training config and the data facts the network needs), ``load.py`` and,
for the ddpm chain, ``scheduler_config.json`` (the process, for diffusers users); :func:`load_exported`
rebuilds the module from the config by class names and loads the tensors. No pickle anywhere: loading never executes code stored in the folder.

The recipe's classifier-free guidance scale (train.py's ``guidance_scale``) travels in ``diffexp.json`` (its
config, and a top-level ``guidance_scale`` for people reading the file), so ``sample.py`` / ``evaluate.py
pretrained=DIR`` sample at it; a diffusers pipeline cannot carry it (``DDPMPipeline`` takes no class labels, and no
diffusers config field holds a CFG scale): users of the diffusers folder apply w themselves.

Both write the EMA weights by default (``ema=false``: the raw weights; a checkpoint whose EMA was never
updated exports its raw weights, and ``diffexp.json`` says which were written).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from diffexp.atomic import atomic_write, atomic_write_json, atomic_write_text
from diffexp.guidance.setup import recipe_guidance_scale
from diffexp.interop.pretrained import EXPORT_RECORD
from diffexp.interop.schedulers import to_scheduler_config
from diffexp.validation import ConfigError

FORMATS = ("diffusers", "safetensors")

LOADER = '''"""Loader of this diffexp export (no pickled code: the network is rebuilt from diffexp.json).

    import load
    module = load.module()              # a diffexp DiffusionModule (EMA or raw weights: see diffexp.json)
    denoiser = module.denoiser()        # what every diffexp sampler takes
"""
from pathlib import Path


def module(map_location="cpu"):
    from diffexp.interop.export import load_exported

    return load_exported(Path(__file__).resolve().parent, map_location=map_location)
'''


def _prepare_out(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ConfigError(f"out={out} exists and is not an empty folder; choose another out= or set overwrite=true")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_checkpoint(ckpt_path: str | os.PathLike, out: str | os.PathLike, format: str = "diffusers", ema: bool = True,
                      variance: str = "beta", overwrite: bool = False) -> dict[str, Any]:
    """Write ``out`` (see the module docstring) and return the record written to ``out/diffexp.json``."""
    from diffexp.build import load_module

    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; valid: {list(FORMATS)}")
    module = load_module(ckpt_path)
    if getattr(module, "first_stage", None) is not None:  # diffexp.latent: the decoder would be lost
        raise ConfigError(f"{ckpt_path} is a latent diffusion checkpoint; exports hold the denoiser only, without its "
                          "autoencoder: sample and evaluate it with sample.py / evaluate.py")
    net = module.sampling_net(ema=ema)
    weights = "ema" if (ema and module.uses_ema) else "raw"
    record: dict[str, Any] = {
        "format": format, "weights": weights, "checkpoint": str(Path(ckpt_path).resolve()),
        "global_step": int(module.checkpoint_info["global_step"]), "prediction": module.prediction,
        "num_classes": module.num_classes, "data_shape": list(module.data_shape),
        "data_range": list(module.data_range) if module.data_range is not None else None,
        "null_label": module.num_classes, "config": module.config,
        # the recipe's classifier-free guidance scale (also inside config): diffusers pipelines have no place for it
        "guidance_scale": recipe_guidance_scale(module.config, ckpt_path),
    }
    clip = module.data_range is not None and tuple(module.data_range) == (-1.0, 1.0)
    if format == "diffusers":
        _export_diffusers(module, net, record, clip, variance, _prepare_out_checked(module, net, out, overwrite))
    else:
        _export_safetensors(module, net, record, clip, variance, _prepare_out(out, overwrite))
    print(f"exported {weights} weights of {ckpt_path} (step {record['global_step']}) as {format} -> {out}")
    return record


def _prepare_out_checked(module, net, out, overwrite) -> Path:
    from diffexp.models.diffusers import inner_model

    if inner_model(net) is None:
        raise ConfigError(f"format=diffusers needs a diffusers network (model=diffusers_unet or model=diffusers_dit); "
                          f"this checkpoint's network is {type(net).__module__}.{type(net).__name__}: use format=safetensors")
    if len(module.data_shape) != 3:
        raise ConfigError(f"format=diffusers exports image models; this one has data_shape={tuple(module.data_shape)}")
    if not module.process.is_discrete:
        raise ConfigError(f"format=diffusers writes a DDPMScheduler, i.e. the ddpm process; this checkpoint trained "
                          f"process={module.process.name}: use format=safetensors")
    if module.prediction == "score":
        raise ConfigError("prediction=score has no diffusers prediction_type (valid: eps, x0, v): use format=safetensors")
    return _prepare_out(out, overwrite)


def _export_diffusers(module, net, record, clip, variance, out: Path) -> None:
    from diffexp.interop import require_diffusers
    from diffexp.models.diffusers import inner_model

    diffusers = require_diffusers()
    component, model = inner_model(net)
    scheduler = diffusers.DDPMScheduler.from_config(to_scheduler_config(module.schedule, module.prediction, clip, variance))
    if component == "unet":
        diffusers.DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(str(out), safe_serialization=True)
    else:
        model.save_pretrained(str(out / component), safe_serialization=True)
        scheduler.save_pretrained(str(out / "scheduler"))
    record["component"] = component
    atomic_write_json(out / EXPORT_RECORD, record, default=str)  # last: a folder holding it is complete


def _export_safetensors(module, net, record, clip, variance, out: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = save(state, metadata={"format": "pt", "weights": record["weights"]})
    atomic_write(out / "model.safetensors", lambda f: f.write(blob))
    if module.process.is_discrete and module.prediction != "score" and len(module.data_shape) == 3:
        atomic_write_json(out / "scheduler_config.json", to_scheduler_config(module.schedule, module.prediction, clip,
                                                                             variance))
    atomic_write_text(out / "load.py", LOADER)
    atomic_write_json(out / EXPORT_RECORD, record, default=str)  # last: a folder holding it is complete


def load_exported(path: str | os.PathLike, map_location="cpu"):
    """The DiffusionModule of a ``format=safetensors`` export: rebuilt from ``diffexp.json``'s training config
    by :func:`diffexp.build.build_module` (network, process family, wrappers, all by class name through Hydra),
    with the network's tensors loaded from ``model.safetensors`` (strict). The folder's one set of weights is
    the network; the module's EMA is left un-updated, so samplers use those weights."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from diffexp.build import build_module

    root = Path(path)
    rec_path, weights_path = root / EXPORT_RECORD, root / "model.safetensors"
    for p in (rec_path, weights_path):
        if not p.is_file():
            raise ConfigError(f"{root} is not a diffexp safetensors export: {p.name} is missing")
    record = json.loads(rec_path.read_text())
    cfg = OmegaConf.create(record["config"])
    info = {"data_shape": record["data_shape"], "num_classes": record["num_classes"], "data_range": record.get("data_range")}
    module = build_module(cfg, info)
    try:
        module.net.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{weights_path} does not match the network {root / EXPORT_RECORD} describes: {e}") from e
    module.checkpoint_info = {"path": str(root), "global_step": int(record.get("global_step", 0)), "epoch": 0,
                              "pretrained": True, "weights": record.get("weights")}
    device = torch.device(map_location) if isinstance(map_location, str) else map_location
    return module.to(device).eval()
