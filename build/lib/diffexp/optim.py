"""Optimizer and learning-rate schedules, given to the module as Hydra partials."""

from __future__ import annotations

import math

import torch


def warmup_lr_lambda(warmup_steps: int, total_steps: int | None = None, decay: str = "constant"):
    """Linear warm-up over ``warmup_steps`` then constant, or cosine decay to 0 at ``total_steps``."""
    if decay not in ("constant", "cosine"):
        raise ValueError(f"unknown lr decay {decay!r}; valid: ['constant', 'cosine']")
    if decay == "cosine" and not total_steps:
        raise ValueError("cosine lr decay needs total_steps (set trainer.max_steps)")

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return fn


def warmup_scheduler(optimizer, warmup_steps: int = 0, total_steps: int | None = None, decay: str = "constant"):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lr_lambda(warmup_steps, total_steps, decay))
