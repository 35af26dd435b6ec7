"""Importance sampling of the discrete timestep by the loss' second moment (Nichol & Dhariwal 2021,
Sec. 3.3, eq. 18 and improved-diffusion's ``LossSecondMomentResampler``).

``sample`` returns timestep indices and importance weights w_t = 1 / (T p_t), so that
E_{t~p}[w_t f(t)] = (1/T) Σ_t f(t): every estimate stays unbiased for the uniform average. Discrete
processes only (``ddpm``): the history is kept per timestep index.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.objectives.time_samplers.base import TimeSampler, num_timesteps_of


class LossSecondMomentTimesteps(TimeSampler):
    """p_t ∝ √E[L_t²] over the last ``history_per_term`` losses seen at each t, mixed with
    ``uniform_prob`` of the uniform distribution; uniform until every t has a full history.

    The history lives in buffers (saved in checkpoints, moved with ``.to``); they are sized by
    :meth:`setup` (or the first ``sample``) and resized when a checkpoint is loaded. Under DDP with
    ``broadcast_buffers`` the history is rank 0's (identical on all ranks); to pool all ranks' losses
    as improved-diffusion does, all-gather (t, values) and call :meth:`update` with them."""

    def __init__(self, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__()
        if history_per_term < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(
                f"need history_per_term >= 1 and uniform_prob in [0, 1], got {history_per_term}, {uniform_prob}"
            )
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        self.register_buffer("loss_history", torch.zeros(0, self.history_per_term))
        self.register_buffer("loss_counts", torch.zeros(0, dtype=torch.long))  # values ever seen per t

    def check(self, process) -> None:
        if num_timesteps_of(process) is None:
            raise ValueError(
                "timestep_sampler=importance keeps a loss history per discrete timestep and needs process=ddpm; "
                "on continuous families use uniform, lognormal, logit_normal or ladder"
            )

    def setup(self, process) -> None:
        self.check(process)
        num_timesteps = num_timesteps_of(process)
        n = self.loss_counts.numel()
        if n == 0:
            dev = self.loss_counts.device
            self.loss_history = torch.zeros(num_timesteps, self.history_per_term, device=dev)
            self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long, device=dev)
        elif n != num_timesteps:
            raise ValueError(f"the importance sampler's loss history has T={n} but the schedule has T={num_timesteps}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("loss_history", "loss_counts"):
            if prefix + name in state_dict:  # adopt the saved shape before copying
                setattr(self, name, torch.zeros_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def warmed_up(self) -> bool:
        return self.loss_counts.numel() > 0 and bool((self.loss_counts >= self.history_per_term).all())

    def probs(self, num_timesteps: int) -> Tensor:
        """p_t = (1-u) √E[L_t²] / Σ_s √E[L_s²] + u/T once warmed up, else uniform (float64)."""
        self.setup(num_timesteps)
        if not self.warmed_up:
            return torch.full(
                (num_timesteps,), 1.0 / num_timesteps, dtype=torch.float64, device=self.loss_counts.device
            )
        rms = self.loss_history.double().pow(2).mean(1).sqrt()
        if not bool(rms.sum() > 0) or not bool(torch.isfinite(rms).all()):
            return torch.full_like(rms, 1.0 / num_timesteps)
        return (1.0 - self.uniform_prob) * rms / rms.sum() + self.uniform_prob / num_timesteps

    def sample(self, batch_size: int, process, device, generator=None) -> tuple[Tensor, Tensor]:
        self.setup(process)
        num_timesteps = num_timesteps_of(process)
        if not self.warmed_up:
            t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device)
            return t, torch.ones(batch_size, device=device)
        p = self.probs(num_timesteps).to(device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return t, (1.0 / (num_timesteps * p[t])).float()

    @torch.no_grad()
    def update(self, t: Tensor, values: Tensor) -> None:
        """Append one loss value per sample to its t's ring buffer (keeps the last ``history_per_term``)."""
        dev = self.loss_counts.device
        t, values = t.to(dev).long(), values.detach().to(dev, self.loss_history.dtype)
        if t.numel() == 0:
            return
        K = self.history_per_term
        order = torch.argsort(t, stable=True)
        ts, vs = t[order], values[order]
        n_per_t = torch.bincount(ts, minlength=self.loss_counts.numel())
        first = torch.cumsum(n_per_t, 0) - n_per_t  # index in ts of each t's first occurrence
        rank = torch.arange(ts.numel(), device=dev) - first[ts]  # occurrence number within the batch
        keep = rank >= n_per_t[ts] - K  # only the last K of a t can survive
        slot = (self.loss_counts[ts] + rank) % K
        self.loss_history[ts[keep], slot[keep]] = vs[keep]
        self.loss_counts += n_per_t
