"""Samplers (config group ``sampler``). Each is a small class called as
``sampler(denoiser, shape=..., seeds=...)``; see :mod:`diffexp.samplers.base` for the protocol."""

from diffexp.samplers.adaptive import AdaptiveODESampler
from diffexp.samplers.base import BoundDenoiser, NoiseSource, Sampler, StepInfo, karras_sigmas, timesteps
from diffexp.samplers.consistency import ConsistencySampler
from diffexp.samplers.ddim import DDIMSampler
from diffexp.samplers.ddpm import DDPMSampler
from diffexp.samplers.dpmpp_2m import DPMSolverPP2MSampler
from diffexp.samplers.heun import HeunSampler
from diffexp.samplers.langevin import LangevinSampler
from diffexp.samplers.pc import PCSampler
from diffexp.samplers.sde import EulerMaruyamaSampler

SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "langevin": LangevinSampler,
    "pc": PCSampler,
    "heun": HeunSampler,
    "dpmpp_2m": DPMSolverPP2MSampler,
    "adaptive": AdaptiveODESampler,
    "euler_maruyama": EulerMaruyamaSampler,
    "consistency": ConsistencySampler,
}

__all__ = [
    "Sampler",
    "StepInfo",
    "NoiseSource",
    "BoundDenoiser",
    "timesteps",
    "karras_sigmas",
    "SAMPLERS",
    "DDPMSampler",
    "DDIMSampler",
    "LangevinSampler",
    "PCSampler",
    "HeunSampler",
    "DPMSolverPP2MSampler",
    "AdaptiveODESampler",
    "EulerMaruyamaSampler",
    "ConsistencySampler",
]
