"""diffexp: an experiment framework for diffusion models on PyTorch Lightning and Hydra."""

from diffexp._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
