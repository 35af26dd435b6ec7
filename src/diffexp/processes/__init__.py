"""Gaussian diffusion process families (config group ``process``): x_t = α(t) x_0 + σ(t) ε.

See :mod:`diffexp.processes.base` for the algebra every family shares and each module for its
coefficients. ``PROCESSES`` maps the config names to the classes.
"""

from diffexp.processes.base import PREDICTION_TARGETS, Prediction, Process, check_prediction
from diffexp.processes.ddpm import DDPM_TARGETS, DiffusionProcess
from diffexp.processes.edm import EDMProcess
from diffexp.processes.flow import FlowProcess
from diffexp.processes.ve import VEProcess
from diffexp.processes.vp import SubVPSDEProcess, VPSDEProcess

PROCESSES = {
    "ddpm": DiffusionProcess,
    "vp_sde": VPSDEProcess,
    "subvp_sde": SubVPSDEProcess,
    "ve": VEProcess,
    "edm": EDMProcess,
    "flow": FlowProcess,
}

__all__ = [
    "PREDICTION_TARGETS",
    "DDPM_TARGETS",
    "PROCESSES",
    "Prediction",
    "Process",
    "check_prediction",
    "DiffusionProcess",
    "VPSDEProcess",
    "SubVPSDEProcess",
    "VEProcess",
    "EDMProcess",
    "FlowProcess",
]
