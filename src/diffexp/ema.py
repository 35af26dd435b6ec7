"""Exponential moving average of a network's weights, kept as its own state.

Done right (see PITFALLS: EMA): the average is updated once per optimizer step (the module calls
:meth:`update` from ``optimizer_step``, so gradient accumulation does not update it per micro-batch), it
is kept in float32 whatever the training precision, it is saved in the checkpoint as its own entries
(``ema.*``), never by swapping it into the model weights, and it is only used for sampling once it has
been updated at least once.

:class:`PowerEMA` tracks power-function EMA profiles (EDM2) for post-hoc reconstruction of any EMA length
after training (:mod:`diffexp.phema` for the maths, :mod:`diffexp.posthoc_ema` for the snapshots); it follows
the same rules and lives next to the classic EMA, which stays the default.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffexp._internals import foreach_lerp_
from diffexp.phema import power_beta, sigma_rel_to_gamma


class EMA(nn.Module):
    """θ_ema ← β θ_ema + (1-β) θ, with the warm-up β_n = min(β, (1+n)/(10+n)) when ``warmup``."""

    def __init__(self, net: nn.Module, decay: float = 0.999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.net = copy.deepcopy(net).float().eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        beta = self.current_decay()
        ema_params = list(self.net.parameters())
        params = [p.detach().float() for p in net.parameters()]
        foreach_lerp_(ema_params, params, 1.0 - beta)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1

    @property
    def ready(self) -> bool:
        return bool(self.num_updates > 0)

    def train(self, mode: bool = True):  # the averaged copy always stays in eval mode
        super().train(mode)
        self.net.eval()
        return self


class PowerEMA(nn.Module):
    """Power-function EMA profiles θ̂ ← β_n θ̂ + (1-β_n) θ, β_n = (1 - 1/n)^(γ+1) (EDM2 eq. 127), one per σ_rel.

    ``n`` counts the updates (optimizer steps that changed the weights) from 1, so the average after n
    updates weights the weights after update τ by exactly (τ^(γ+1) - (τ-1)^(γ+1)) / n^(γ+1) (see
    :mod:`diffexp.phema`): :meth:`snapshot` copies taken every few steps are the basis from which any other
    σ_rel is reconstructed. The profiles are saved as ``phema.*`` (resume continues them) in ``dtype``.
    """

    def __init__(self, net: nn.Module, sigma_rel=(0.05, 0.10), dtype: torch.dtype = torch.float32):
        super().__init__()
        from diffexp.validation import ConfigError

        if isinstance(sigma_rel, (int, float)):
            sigma_rel = [sigma_rel]
        if not sigma_rel:
            raise ConfigError("module.posthoc_ema.sigma_rel: give at least one EMA length (EDM2 tracks [0.05, 0.10])")
        try:
            self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rel]
        except ValueError as e:
            raise ConfigError(f"module.posthoc_ema.{e}") from None
        self.sigma_rels = [float(s) for s in sigma_rel]
        self.nets = nn.ModuleList(copy.deepcopy(net).to(dtype).eval().requires_grad_(False) for _ in self.sigma_rels)
        self.dtype = dtype
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        n = int(self.num_updates) + 1
        params = [p.detach().to(self.dtype) for p in net.parameters()]
        for gamma, ema in zip(self.gammas, self.nets):
            foreach_lerp_(list(ema.parameters()), params, 1.0 - power_beta(gamma, n))
            for b_ema, b in zip(ema.buffers(), net.buffers()):
                b_ema.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def snapshot(self) -> dict:
        """The current averages (cloned, on the CPU) with what reconstruction needs to know about them."""
        return {"sigma_rel": list(self.sigma_rels), "gamma": list(self.gammas), "num_updates": int(self.num_updates),
                "buffers": [name for name, _ in self.nets[0].named_buffers()],  # copied from the net, not averaged
                "profiles": [{k: v.detach().cpu().clone() for k, v in ema.state_dict().items()} for ema in self.nets]}

    def train(self, mode: bool = True):  # the averaged copies always stay in eval mode
        super().train(mode)
        self.nets.eval()
        return self
