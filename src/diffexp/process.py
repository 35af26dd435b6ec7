"""The one algebra of the Gaussian diffusion process (kept as the import path every module uses).

The families live in :mod:`diffexp.processes` (the shared algebra and conversions in
:mod:`diffexp.processes.base`, the discrete DDPM chain in :mod:`diffexp.processes.ddpm`); this module
re-exports them.
"""

from diffexp.processes import (
    DDPM_TARGETS,
    PREDICTION_TARGETS,
    PROCESSES,
    DiffusionProcess,
    EDMProcess,
    FlowProcess,
    Prediction,
    Process,
    SubVPSDEProcess,
    VEProcess,
    VPSDEProcess,
    check_prediction,
)
from diffexp.processes.ddpm import gather, is_fractional

__all__ = [
    "DDPM_TARGETS",
    "PREDICTION_TARGETS",
    "PROCESSES",
    "DiffusionProcess",
    "EDMProcess",
    "FlowProcess",
    "Prediction",
    "Process",
    "SubVPSDEProcess",
    "VEProcess",
    "VPSDEProcess",
    "check_prediction",
    "gather",
    "is_fractional",
]
