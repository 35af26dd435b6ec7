"""Guidance that steers a trained denoiser at sampling time (classifier guidance, Dhariwal & Nichol 2021).
Classifier-free guidance needs no extra model and lives in :class:`diffexp.denoiser.Denoiser` itself."""

from diffexp.guidance.classifier import ClassifierGuidance

__all__ = ["ClassifierGuidance"]
