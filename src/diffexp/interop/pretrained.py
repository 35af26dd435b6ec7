"""A local model folder as a diffexp model: ``sample.py pretrained=DIR`` / ``evaluate.py pretrained=DIR``.

Two kinds of folder are read, both offline (a path, never a hub name):

* a **diffusers pipeline** (``model_index.json``, ``unet/`` or ``transformer/``, ``scheduler/``), e.g. one
  saved by ``DDPMPipeline.save_pretrained`` or by ``export.py format=diffusers``: the network is wrapped by
  :mod:`diffexp.models.diffusers` and the scheduler config mapped to the diffexp process by
  :mod:`diffexp.interop.schedulers`, so every diffexp sampler and metric runs on it;
* a **diffexp safetensors export** (``export.py format=safetensors``): see :mod:`diffexp.interop.export`.

The result is a :class:`~diffexp.module.DiffusionModule` (no objective, no EMA: the folder holds one set of
weights) with ``checkpoint_info`` naming the folder, so the sample and evaluate CLIs treat it as a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffexp.validation import ConfigError

EXPORT_RECORD = "diffexp.json"  # written next to every export: what the weights are and where they came from
NETWORK_CLASSES = {"UNet2DModel": "unet", "DiTTransformer2DModel": "transformer"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e


def load_model(ckpt_path: str | None = None, pretrained: str | None = None, map_location="cpu"):
    """The module behind ``ckpt_path=CKPT`` (a Lightning checkpoint) or ``pretrained=DIR`` (exactly one)."""
    if (ckpt_path is None) == (pretrained is None):
        raise ConfigError("give exactly one of ckpt_path=CKPT (a diffexp checkpoint) or pretrained=DIR (a diffusers "
                          f"pipeline folder or a diffexp export); got ckpt_path={ckpt_path!r}, pretrained={pretrained!r}")
    if ckpt_path is not None:
        from diffexp.build import load_module

        return load_module(ckpt_path, map_location=map_location)
    return load_pretrained(pretrained, map_location=map_location)


def load_pretrained(path: str | os.PathLike, map_location="cpu"):
    """A DiffusionModule over a local diffusers pipeline folder or a diffexp safetensors export."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"pretrained={path}: no such folder (expected a diffusers pipeline folder with "
                          "model_index.json, or a diffexp export)")
    record = _read_json(root / EXPORT_RECORD) if (root / EXPORT_RECORD).is_file() else {}
    if record.get("format") == "safetensors":
        from diffexp.interop.export import load_exported

        return load_exported(root, map_location=map_location)
    return _load_diffusers(root, record, map_location)


def _network_component(root: Path, record: dict[str, Any]) -> tuple[str, str]:
    """(subfolder, diffusers class name) of the pipeline's denoising network."""
    if record.get("component"):
        name = record["component"]
        return name, _read_json(root / name / "config.json").get("_class_name", "?")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ConfigError(f"pretrained={root}: no model_index.json (not a diffusers pipeline folder); save one with "
                          "pipeline.save_pretrained(DIR) or export.py format=diffusers")
    index = _read_json(index_path)
    if (index.get("vae") or [None])[0] is not None:
        raise ConfigError(f"pretrained={root}: model_index.json has a 'vae': latent-diffusion pipelines are not "
                          "supported (diffexp samples in pixel space); components: "
                          f"{sorted(k for k in index if not k.startswith('_'))}")
    for name in ("unet", "transformer"):
        if isinstance(index.get(name), list) and index[name][1] is not None:
            cls = index[name][1]
            if cls not in NETWORK_CLASSES:
                raise ConfigError(f"pretrained={root}: model_index.json {name}={index[name]}: the network class "
                                  f"{cls!r} is not supported; supported: {sorted(NETWORK_CLASSES)}")
            return name, cls
    raise ConfigError(f"pretrained={root}: model_index.json names no 'unet' or 'transformer' component; components: "
                      f"{sorted(k for k in index if not k.startswith('_'))}")


def _load_diffusers(root: Path, record: dict[str, Any], map_location):
    import torch

    from diffexp.interop import require_diffusers
    from diffexp.interop.schedulers import read_scheduler_config
    from diffexp.models.diffusers import DiffusersDiT, DiffusersUNet
    from diffexp.module import DiffusionModule

    diffusers = require_diffusers()
    component, cls_name = _network_component(root, record)
    if cls_name not in NETWORK_CLASSES:
        raise ConfigError(f"pretrained={root}: {component}/config.json: class {cls_name!r} is not supported; "
                          f"supported: {sorted(NETWORK_CLASSES)}")
    imported = read_scheduler_config(root / "scheduler")
    model = getattr(diffusers, cls_name).from_pretrained(str(root / component), local_files_only=True)
    cfg = model.config
    if cls_name == "UNet2DModel":
        if cfg.get("class_embed_type") is not None:
            raise ConfigError(f"pretrained={root}: unet/config.json class_embed_type={cfg['class_embed_type']!r} is "
                              "not supported; valid: [null] (a label embedding table, num_class_embeds)")
        if cfg.get("out_channels") != cfg.get("in_channels"):
            raise ConfigError(f"pretrained={root}: unet/config.json out_channels={cfg.get('out_channels')} differs from "
                              f"in_channels={cfg.get('in_channels')} (learned variances are not supported)")
        n_embeds = cfg.get("num_class_embeds")
        num_classes = record.get("num_classes", n_embeds - 1 if n_embeds else None)
        net = DiffusersUNet.wrap(model, num_classes)
    else:
        n_embeds = int(cfg.get("num_embeds_ada_norm") or 1)
        num_classes = record.get("num_classes", n_embeds if n_embeds > 1 else None)
        net = DiffusersDiT.wrap(model, num_classes)
    size = cfg.get("sample_size")
    if size is None:
        raise ConfigError(f"pretrained={root}: {component}/config.json has no sample_size; diffexp needs the image size "
                          "the network was trained on (set sample_size in that file)")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    data_shape = tuple(record.get("data_shape") or (cfg.get("in_channels"), h, w))
    config = dict(record.get("config") or {})
    config["pretrained"] = {"path": str(root.resolve()), "scheduler": imported.config, "notes": imported.notes}
    module = DiffusionModule(net=net, schedule=imported.schedule, objective=None, prediction=imported.prediction,
                             ema_decay=0.0, num_classes=num_classes, data_shape=data_shape, data_range=(-1.0, 1.0),
                             config=config)
    module.checkpoint_info = {"path": str(root), "global_step": int(record.get("global_step", 0)), "epoch": 0,
                              "pretrained": True, "weights": record.get("weights", "pretrained")}
    module.imported_scheduler = imported
    for note in imported.notes:
        print(f"[pretrained] {root}: {note}")
    return module.to(torch.device(map_location) if isinstance(map_location, str) else map_location).eval()
