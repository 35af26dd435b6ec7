"""``latent=auto``: train.py trains (or reuses) the first stage of latent diffusion itself.

Before the diffusion model's data are built, :func:`use_auto_autoencoder` composes ``conf/train_autoencoder.yaml``
(the running app's Hydra search path) with the overrides of the run's ``latent_train`` block, puts the run's own
``data`` (resolved), ``seed`` and ``paths`` in it, and names the result by a hash of that config and of the data's
identity (the image data module's cache keys). The autoencoder lives at
``paths.cache_dir/autoencoders/<hash>/`` (``checkpoints/last.ckpt``, ``metrics.json``, ``config.yaml``):

* cached (the folder exists): reused, one line says so;
* else trained by the code path of ``train_autoencoder.py`` (:mod:`diffexp.autoencoder.training`) into a
  temporary folder beside it (``.<hash>.<host>.<pid>.<thread>.tmp``), renamed into place only when training
  finished, so a crash or a signal never leaves a half-trained autoencoder that a later run would reuse
  (abandoned temporary folders are removed by the next run, :func:`diffexp.atomic.clean_partial_dirs`).

Then ``cfg.latent`` is the checkpoint's path and the run proceeds exactly as with ``latent=<that path>``; the
record ``cfg.latent_autoencoder`` (path, weights hash, ...) gains ``auto: {config_hash, dir, reused, overrides}``.

``latent_train`` is a dict of dotted override keys of conf/train_autoencoder.yaml (group choices such as
``autoencoder: kl_f4_small`` or values such as ``trainer.max_time: "00:00:04:00"``); nested dicts are read as
dotted keys (``{trainer: {max_steps: 5}}`` is ``trainer.max_steps=5``) and a key may carry Hydra's ``+``/``~``
prefix. A key that is not in that config, a group option that does not exist, or a value the autoencoder's
builders reject is a :class:`ConfigError` naming ``latent_train.<key>``, before anything trains.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from diffexp.atomic import clean_partial_dirs, publish_dir, temporary_path
from diffexp.errors import ConfigError
from diffexp.logs import say

BLOCK = "latent_train"
CONFIG_NAME = "train_autoencoder"
NOT_SETTABLE = ("data", "seed", "paths", "hydra")  # the run's own (the brief of latent=auto: same data and seed)
UNHASHED = ("paths", "logger", "print_config", "tags", "task_name")  # where and how it is logged, not what is trained
DATA_UNHASHED = ("root", "num_workers", "pin_memory")  # where the files are and how they are read (identity: cache keys)


def is_auto(cfg: DictConfig) -> bool:
    return cfg.get("latent") == "auto"


# ---------------------------------------------------------------------------------------------- overrides
def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        out: list[tuple[str, Any]] = []
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out += _flatten(v, key) if isinstance(v, dict) and v else [(key, v)]
        return out
    return [(prefix, node)]


def _format(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted, so ``00:00:04:00`` or a path stays one string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_format(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def autoencoder_overrides(cfg: DictConfig) -> list[tuple[str, str]]:
    """``[(key, hydra override)]`` of the run's ``latent_train`` block (ConfigError for what it may not set)."""
    block = cfg.get(BLOCK)
    if block is None:
        return []
    if not isinstance(block, DictConfig):
        raise ConfigError(f"{BLOCK}={block}: must be a dict of overrides of conf/{CONFIG_NAME}.yaml, e.g. "
                          f"{BLOCK}='{{autoencoder: kl_f4, trainer.max_time: \"00:00:04:00\"}}'")
    out = []
    for key, value in _flatten(OmegaConf.to_container(block, resolve=True)):
        bare = key.lstrip("+~")
        if bare.split(".")[0] in NOT_SETTABLE:
            raise ConfigError(f"{BLOCK}.{bare}: the autoencoder of latent=auto trains on the run's own data, seed "
                              f"and paths; set {bare} on the run itself")
        out.append((bare, key if key.startswith("~") and value is None else f"{key}={_format(value)}"))
    return out


# ---------------------------------------------------------------------------------------------- compose
def _compose(overrides: list[str]) -> DictConfig:
    """conf/train_autoencoder.yaml with ``overrides``, through the running app's Hydra (its search path), or
    through diffexp's conf/ when no app runs (tests, notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(CONFIG_NAME, overrides)
    from diffexp.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(CONFIG_NAME, overrides)


def _explain(key: str, override: str, error: Exception) -> str:
    """One line for Hydra's complaint about one override."""
    text = str(error)
    if "Could not override" in text or ("Key '" in text and "not in struct" in text):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(_compose([]), parent) if parent else _compose([])
        keys = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
        where = f"{parent} has: {keys}" if parent else f"top-level keys: {keys}"
        return f"{BLOCK}.{key}: conf/{CONFIG_NAME}.yaml has no such key ({where})"
    if "Could not find" in text:
        options = []
        if "Available options" in text:
            for line in text.split("Available options", 1)[1].splitlines()[1:]:
                if not line.startswith("\t"):
                    break  # (then Hydra's config search path)
                options.append(line.strip())
        valid = f"; valid: {', '.join(options)}" if options else ""
        return f"{BLOCK}.{override.split('=', 1)[0].lstrip('+~')}: no such option{valid}"
    return f"{BLOCK}.{key} ({override}): {text.splitlines()[0]}"


def compose_autoencoder_config(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """The autoencoder's config for the run ``cfg``, and the overrides it was composed with."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    pairs = autoencoder_overrides(cfg)
    overrides = [o for _, o in pairs]
    try:
        ae_cfg = _compose(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        for key, override in pairs:  # name the override that fails on its own
            try:
                _compose([override])
            except (HydraException, OmegaConfBaseException, ValueError) as one:
                raise ConfigError(_explain(key, override, one)) from None
        raise ConfigError(f"{BLOCK}: {str(e).splitlines()[0]}") from None
    paths = {k: cfg.paths[k] for k in cfg.paths if k != "output_dir"}  # resolved: the run's own folders
    with open_dict(ae_cfg):
        ae_cfg.data = OmegaConf.to_container(cfg.data, resolve=True)
        ae_cfg.seed = int(cfg.seed)
        ae_cfg.paths = {**paths, "output_dir": "<output_dir>"}
        ae_cfg.print_config = False
    return ae_cfg, overrides


def config_hash(ae_cfg: DictConfig, pixels) -> str:
    """sha256 prefix of what determines the autoencoder: its resolved config (without where it is logged), the
    data's identity (the image data module's cache keys, which name dataset, split and preprocessing) and seed."""
    resolved = OmegaConf.to_container(ae_cfg, resolve=True)
    data = {k: v for k, v in resolved.pop("data").items() if k not in DATA_UNHASHED}
    payload = {"config": {k: v for k, v in resolved.items() if k not in UNHASHED}, "seed": resolved["seed"],
               "data": data, "data_identity": {s: pixels.cache_key(s) for s in pixels.splits}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- train / reuse
def use_auto_autoencoder(cfg: DictConfig, pixels) -> dict[str, Any]:
    """Train or reuse the autoencoder of ``latent=auto``; set ``cfg.latent`` to its checkpoint and return
    what the run records about it (``latent_autoencoder.auto``)."""
    ae_cfg, overrides = compose_autoencoder_config(cfg)
    config_id = config_hash(ae_cfg, pixels)
    final = Path(cfg.paths.cache_dir) / "autoencoders" / config_id
    last = final / "checkpoints" / "last.ckpt"
    reused = last.is_file() and (final / "metrics.json").is_file()
    if reused:
        say(f"[latent=auto] reusing the autoencoder trained before with this config, data and seed: {last}")
    else:
        _train(ae_cfg, final, overrides)
    with open_dict(cfg):
        cfg.latent = str(last)
    return {"config_hash": config_id, "dir": str(final), "reused": reused, "overrides": overrides}


def _train(ae_cfg: DictConfig, final: Path, overrides: list[str]) -> None:
    """Train into a temporary folder beside ``final`` and rename it into place when training has finished."""
    from diffexp.autoencoder.training import budget, fit_autoencoder, prepare_autoencoder_run

    final.parent.mkdir(parents=True, exist_ok=True)
    clean_partial_dirs(final.parent)
    tmp = temporary_path(final)
    with open_dict(ae_cfg):
        ae_cfg.paths.output_dir = str(tmp)
    try:
        run = prepare_autoencoder_run(ae_cfg, key_prefix=f"{BLOCK}.")  # a bad override: ConfigError, nothing trained
        what = ", ".join(overrides) if overrides else f"the defaults of conf/{CONFIG_NAME}.yaml"
        say(f"[latent=auto] training the autoencoder ({what}; budget {budget(ae_cfg) or 'unbounded'}) -> {final}")
        metrics = fit_autoencoder(run)
        stopped = next((int(cb.received) for cb in run.callbacks if getattr(cb, "received", None)), None)
        if stopped is not None:  # preempted: not a finished autoencoder, never published
            shutil.rmtree(tmp, ignore_errors=True)
            say(f"[latent=auto] stopped by {signal.Signals(stopped).name} while training the autoencoder; nothing "
                f"cached, the same command trains it again")
            sys.exit(128 + stopped)
        if not (tmp / "checkpoints" / "last.ckpt").is_file():
            raise RuntimeError(f"autoencoder training ended without {tmp / 'checkpoints' / 'last.ckpt'}")
        publish_dir(tmp, final)  # False: another run finished the same autoencoder first; that one is used
        say(f"[latent=auto] autoencoder trained ({metrics['global_step']} steps, {metrics['train_seconds']:.0f} s, "
            f"val/rec_mse {metrics.get('val/rec_mse', float('nan')):.4g}, latents {tuple(metrics['latent_shape'])}): "
            f"{final / 'checkpoints' / 'last.ckpt'}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
