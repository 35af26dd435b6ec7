"""Learned reverse variances (Nichol & Dhariwal 2021, "Improved DDPM", §3.1): ``+model.learn_sigma=true``.

The network is built with twice the data's output channels (``out_channels = 2 C``, which every diffexp
network factory accepts) and its output is read as [mean output | v-output] along dim 1. The first C
channels are what the network predicts (``prediction``: ε, x_0, v, ...); the last C give the
interpolation fraction v = (o + 1)/2 of

    Σ_θ(x_t, t) = exp(v log β_t + (1 - v) log β̃_t)                          (eq. 15)

(improved-diffusion's ``model_var_values``, mapped from [-1, 1] to [0, 1] and not clamped). The log-variance
itself is formed by :meth:`DiffusionProcess.learned_log_variance` (the algebra lives in the process), so a
respaced sampler interpolates between its own respaced β'_k and β̃'_k.

Where it is read: :class:`diffexp.denoiser.Denoiser` splits the output and passes v on as
``Prediction.var_frac``; the ancestral sampler, the variational bound (:mod:`diffexp.likelihood`) and
``objective=hybrid`` (:mod:`diffexp.objectives.hybrid`) use it. Learned variances exist only on the
discrete ``ddpm`` process, whose reverse chain has the β_t, β̃_t to interpolate between.
"""

from __future__ import annotations

from torch import Tensor, nn


class LearnedVarianceNet(nn.Module):
    """Marks a network whose output has 2 C channels (mean output, then v) and checks that it does."""

    learn_sigma = True

    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        self.net, self.channels = net, int(channels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.net(x, t) if y is None else self.net(x, t, y=y)
        if out.shape[1] != 2 * self.channels:
            raise ValueError(
                f"+model.learn_sigma=true needs a network with 2*{self.channels} output channels, got {out.shape[1]}"
            )
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels} (+{self.channels} variance channels)"


def learns_sigma(net) -> bool:
    """Whether ``net`` outputs learned-variance channels (module.compile compiles in place, keeping the class)."""
    return bool(getattr(net, "learn_sigma", False))


def split_output(out: Tensor) -> tuple[Tensor, Tensor]:
    """(mean output, v) of a learned-variance network's output: v = (o + 1)/2 of the last half of dim 1."""
    mean_out, var_out = out.chunk(2, dim=1)
    return mean_out, (var_out + 1.0) / 2.0
