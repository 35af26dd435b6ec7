"""diffusers scheduler configs <-> diffexp's discrete DDPM process (the ``ddpm`` family).

Every DDPM-family scheduler of diffusers (DDPM, DDIM, Euler, Heun, DPM-Solver, PNDM, ...) describes the
*training* process by the same fields, which are what this module reads and writes:

    num_train_timesteps, beta_schedule (+ beta_start, beta_end), trained_betas, rescale_betas_zero_snr,
    prediction_type

and indexes it as diffexp does: timestep t in [0, T) with ``alphas_cumprod[t]`` = ᾱ_{t+1} (Ho et al. eq. 4).
The β families, in float64 here (diffusers computes them in float32):

    linear              β_t = linspace(β_start, β_end, T)                       (Ho et al. 2020)
    scaled_linear       β_t = linspace(√β_start, √β_end, T)²                    (latent diffusion)
    squaredcos_cap_v2   β_t = min(1 - ᾱ(t/T)/ᾱ((t-1)/T), 0.999), ᾱ(u) = cos²((u+0.008)/1.008 · π/2)
                        (Nichol & Dhariwal 2021, eq. 17 = diffexp's ``cosine``)
    sigmoid             β_t = sigmoid(linspace(-6, 6, T)) (β_end - β_start) + β_start   (GeoDiff)
    rescale_betas_zero_snr: Lin et al. 2024, Algorithm 1 (= diffexp's ``zero_terminal_snr``)

Inference-only fields (the scheduler class, ``timestep_spacing``, Karras σ's, solver order, clipping,
thresholding) do not change the process: the diffexp sampler chosen at sampling time decides them. They
are validated (an unknown value is an error naming the field) and reported in :class:`ImportedScheduler`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffexp.schedules import NoiseSchedule, cosine_betas, rescale_zero_terminal_snr
from diffexp.validation import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# diffusers prediction_type -> diffexp prediction target (diffexp's "score" has no diffusers name)
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
DIFFEXP_TO_PREDICTION_TYPE = {v: k for k, v in PREDICTION_TYPES.items()}
# diffusers timestep_spacing -> diffexp sampler spacing (None: no diffexp equivalent)
SPACINGS = {"linspace": "uniform", "trailing": "trailing", "leading": None}
# Schedulers whose config describes the discrete DDPM process by the fields above (diffusers'
# KarrasDiffusionSchedulers less EDMEulerScheduler, plus the consistency/parallel variants); any other class
# (flow matching, score-SDE VE, EDM) describes another process and is refused by name.
DDPM_FAMILY_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "DDPMParallelScheduler",
    "DDIMParallelScheduler", "LCMScheduler", "TCDScheduler",
)
# DDPMScheduler.variance_type -> DDPMSampler.variance; "learned*" need a network with 2C outputs
VARIANCE_TYPES = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta",
                  "fixed_large_log": "beta"}


@dataclass
class ImportedScheduler:
    """The diffexp view of a diffusers scheduler config: the process (``schedule``), the network's target
    (``prediction``) and the scheduler's inference defaults, translated where diffexp has them."""

    schedule: NoiseSchedule
    prediction: str
    class_name: str
    spacing: str | None = None  # diffexp spacing of the scheduler's timestep_spacing (None: none matches)
    variance: str | None = None  # DDPM reverse variance (beta / beta_tilde) when the config says
    clip_sample: bool | None = None
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _err(source: str, key: str, value: Any, valid: Any, hint: str = "") -> ConfigError:
    return ConfigError(f"{source}: {key}={value!r} is not supported by diffexp; valid: {valid}" + (f". {hint}" if hint else ""))


def betas_from_config(cfg: dict[str, Any], source: str = "scheduler config") -> tuple[torch.Tensor, str]:
    """(float64 betas, family name) of a diffusers scheduler config (see the module docstring)."""
    T = cfg.get("num_train_timesteps", 1000)
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise _err(source, "num_train_timesteps", T, "a positive integer")
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64).flatten()
        if betas.numel() != T:
            raise ConfigError(f"{source}: trained_betas has {betas.numel()} values but num_train_timesteps={T}")
        name = "trained_betas"
    else:
        kind = cfg.get("beta_schedule", "linear")
        b0, b1 = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
        if kind == "linear":
            betas = torch.linspace(b0, b1, T, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), T, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            betas = cosine_betas(T, s=0.008, max_beta=0.999)
        elif kind == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (b1 - b0) + b0
        else:
            raise _err(source, "beta_schedule", kind, list(BETA_SCHEDULES),
                       "Or give the betas themselves as trained_betas")
        name = kind if kind != "squaredcos_cap_v2" else "cosine"
    if cfg.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
        name += "+ztsnr"
    return betas, name


def from_scheduler_config(cfg: dict[str, Any], source: str = "scheduler config") -> ImportedScheduler:
    """Translate a diffusers scheduler config (a dict, as in ``scheduler_config.json``) to diffexp.

    Process fields map exactly; settings that would change what the network means or that diffexp cannot
    reproduce raise :class:`ConfigError` naming the field: a scheduler class outside the DDPM family
    (``_class_name``), an unknown ``beta_schedule`` or ``prediction_type``, learned variances
    (``variance_type: learned|learned_range``: the network outputs 2C channels), continuous / flow-matching
    timesteps, and ``clip_sample_range`` other than 1 (diffexp clips x̂_0 to the data range [-1, 1])."""
    cls = cfg.get("_class_name")
    if cls is not None and cls not in DDPM_FAMILY_SCHEDULERS:
        raise _err(source, "_class_name", cls, "a DDPM-family scheduler, e.g. DDPMScheduler, DDIMScheduler, "
                   "EulerDiscreteScheduler, DPMSolverMultistepScheduler",
                   "Other schedulers (flow matching, score-SDE VE, EDM) describe another process")
    pt = cfg.get("prediction_type", "epsilon")
    if pt not in PREDICTION_TYPES:
        raise _err(source, "prediction_type", pt, list(PREDICTION_TYPES))
    if cfg.get("timestep_type", "discrete") != "discrete":
        raise _err(source, "timestep_type", cfg["timestep_type"], ["discrete"],
                   "continuous (EDM-style) timesteps are not the discrete DDPM process")
    if cfg.get("use_flow_sigmas") or cfg.get("use_dynamic_shifting"):
        key = "use_flow_sigmas" if cfg.get("use_flow_sigmas") else "use_dynamic_shifting"
        raise _err(source, key, True, [False], "flow-matching schedules are not the DDPM process")
    vt = cfg.get("variance_type")
    if vt is not None and vt not in VARIANCE_TYPES:
        raise _err(source, "variance_type", vt, [None, *VARIANCE_TYPES],
                   "learned variances need a network with 2x the channels, which diffexp samplers do not read")
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise _err(source, "timestep_spacing", spacing, list(SPACINGS))
    clip = cfg.get("clip_sample")
    if clip and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise _err(source, "clip_sample_range", cfg["clip_sample_range"], [1.0],
                   "diffexp clips x̂_0 to the data range [-1, 1]")
    betas, name = betas_from_config(cfg, source)
    try:
        schedule = NoiseSchedule(betas, name=f"diffusers:{name}")
    except ValueError as e:
        raise ConfigError(f"{source}: the betas it describes are invalid: {e}") from e
    notes = []
    if SPACINGS[spacing] not in (None, "uniform"):
        notes.append(f"timestep_spacing={spacing!r}: the pipeline's default grid is diffexp's "
                     f"sampler.spacing={SPACINGS[spacing]} (DDIM); the diffexp sampler's own setting is used")
    if SPACINGS[spacing] is None:
        notes.append(f"timestep_spacing={spacing!r} has no diffexp equivalent; the diffexp sampler's own spacing is used")
    if cfg.get("thresholding"):
        notes.append("thresholding=true (dynamic thresholding) is a diffusers inference option diffexp does not "
                     "reproduce; diffexp samplers clip x̂_0 to [-1, 1] (clip_denoised)")
    return ImportedScheduler(schedule=schedule, prediction=PREDICTION_TYPES[pt], class_name=str(cfg.get("_class_name", "?")),
                             spacing=SPACINGS[spacing], variance=VARIANCE_TYPES.get(vt) if vt else None,
                             clip_sample=clip, notes=notes, config=dict(cfg))


def read_scheduler_config(path: str | Path) -> ImportedScheduler:
    """:func:`from_scheduler_config` of a ``scheduler_config.json`` file (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"no scheduler config at {path} (a diffusers pipeline keeps it in scheduler/scheduler_config.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    return from_scheduler_config(cfg, source=str(path))


# ---- diffexp -> diffusers ---------------------------------------------------------------------------------
def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Both sides are float64 formulas of the same family: agreement to a few ulps identifies it.
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-12, atol=0.0))


def to_scheduler_config(schedule: NoiseSchedule, prediction: str, clip_sample: bool = True,
                        variance: str = "beta") -> dict[str, Any]:
    """A ``DDPMScheduler`` config describing the same process as ``schedule`` with the network target
    ``prediction``. The β family is recognised from the betas themselves (linear, scaled_linear,
    squaredcos_cap_v2, each optionally zero-SNR rescaled); any other schedule (diffexp's sigmoid, a cosine
    with another offset) is written as ``trained_betas``, which diffusers reads in float32.
    ``variance``: the DDPM reverse variance (beta -> fixed_large, beta_tilde -> fixed_small);
    ``timestep_spacing`` is ``linspace``, diffexp's ``uniform``."""
    if prediction not in DIFFEXP_TO_PREDICTION_TYPE:
        raise ConfigError(f"prediction={prediction!r} has no diffusers prediction_type; exportable targets: "
                          f"{sorted(DIFFEXP_TO_PREDICTION_TYPE)}")
    if variance not in ("beta", "beta_tilde"):
        raise ConfigError(f"variance={variance!r}; valid: ['beta', 'beta_tilde']")
    betas, T = schedule.betas, schedule.num_timesteps
    cfg: dict[str, Any] = {"_class_name": "DDPMScheduler", "num_train_timesteps": T,
                           "prediction_type": DIFFEXP_TO_PREDICTION_TYPE[prediction],
                           "variance_type": "fixed_large" if variance == "beta" else "fixed_small",
                           "clip_sample": bool(clip_sample), "clip_sample_range": 1.0, "thresholding": False,
                           "timestep_spacing": "linspace", "steps_offset": 0, "trained_betas": None}
    # Candidates checked through the import path itself, so export and import are inverse by construction.
    ends = {(float(betas[0]), float(betas[-1])), (1e-4 * 1000 / T, 0.02 * 1000 / T)}  # as given; diffexp's linear
    candidates = [{"beta_schedule": kind, "beta_start": s, "beta_end": e, "rescale_betas_zero_snr": z}
                  for z in (False, True) for kind in ("linear", "scaled_linear") for s, e in sorted(ends)]
    candidates += [{"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02, "rescale_betas_zero_snr": z}
                   for z in (False, True)]
    for cand in candidates:
        if _same(betas_from_config({**cfg, **cand})[0], betas):
            return {**cfg, **cand}
    return {**cfg, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
            "trained_betas": [float(b) for b in betas], "rescale_betas_zero_snr": False}
