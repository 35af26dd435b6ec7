"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student learns one DDIM step that equals
two DDIM steps of its teacher; each round halves the step count (N → N/2 → … → 1).

Grids: the student of a round samples with the existing DDIM sampler over N steps of ``spacing``; its k-th
step goes from t_k to t_{k+1} (t_N = the data, α = 1, σ = 0). The teacher's 2N-step grid must contain the
student's at every other point (checked by :func:`nested_grids`), which holds for ``trailing`` spacing on
ddpm (t_k = T − round(kT/N) − 1, and round(2k·T/2N) = round(kT/N)) whenever 2N ≤ T. The teacher's two steps t → t' → t'' (η = 0, Song et al.
2021 eq. 12 in (α, σ)):

    x̂ = D(z_t, t),   z_t' = α_t' x̂ + σ_t' ε̂,   then the same from t' to t'',

and the student's target is the x̂_0 whose single DDIM step from t lands on z_t'' (Algorithm 2):

    x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t)         (x̃ = z_t'' when t'' is the data).

Losses (the paper's two choices, §4): ``target=x0`` weights ‖x̂_θ − x̃‖² by the truncated SNR
max(α²/σ², 1); ``target=v`` is ‖v̂_θ − ṽ‖² with ṽ the v of (z_t, x̃) (SNR + 1 weighting on VP processes).
Conversions between targets go through the process (``process.predict``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffexp.objectives.base import LossOutput
from diffexp.samplers.base import timesteps
from diffexp.samplers.grids import is_discrete, sampling_times

PD_TARGETS = ("x0", "v")
DATA = -1.0  # marks the data end of a grid (α = 1, σ = 0)


def pd_grid(process, steps: int, spacing: str = "trailing") -> list[float]:
    """The DDIM sampler's grid of ``steps`` steps, highest time first, with DATA appended."""
    if is_discrete(process) and spacing in ("uniform", "quadratic", "trailing"):
        return [float(t) for t in timesteps(process.num_timesteps, steps, spacing)[::-1]] + [DATA]
    return [float(t) for t in sampling_times(process, steps, spacing)] + [DATA]


def nested_grids(process, student_steps: int, spacing: str = "trailing") -> tuple[list[float], list[float]]:
    """(student grid, teacher grid of 2N steps); raises ValueError unless the student's points are every
    other point of the teacher's."""
    student, teacher = pd_grid(process, student_steps, spacing), pd_grid(process, 2 * student_steps, spacing)
    if teacher[::2] != student:
        raise ValueError(f"progressive distillation needs nested DDIM grids: {student_steps} and {2 * student_steps} "
                         f"steps of spacing={spacing!r} are not (use spacing=trailing on a ddpm schedule)")
    return student, teacher


def _scales(process, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(α, σ) per sample, (1, 0) where t is DATA."""
    data = t < 0
    tt = torch.where(data, torch.zeros_like(t), t)
    a, s = process.scales(tt.long() if process.is_discrete else tt, like)
    m = data.reshape(a.shape) if a.numel() == t.numel() else data.reshape((-1,) + (1,) * (like.ndim - 1))
    return torch.where(m, torch.ones_like(a), a), torch.where(m, torch.zeros_like(s), s)


def _time(process, t: Tensor) -> Tensor:
    return t.long() if process.is_discrete else t


def ddim_step(teacher, z: Tensor, t: Tensor, t_next: Tensor, y=None) -> Tensor:
    """One deterministic DDIM step of ``teacher`` from per-sample t to t_next: α_next x̂ + σ_next ε̂."""
    pred = teacher(z, _time(teacher.process, t), y=y)
    a_n, s_n = _scales(teacher.process, t_next, z)
    return a_n * pred.x0 + s_n * pred.eps


@torch.no_grad()
def pd_target(teacher, z_t: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, y=None) -> Tensor:
    """x̃ of Algorithm 2: the x̂_0 whose one DDIM step t → t_next equals the teacher's two steps via t_mid."""
    z_next = ddim_step(teacher, ddim_step(teacher, z_t, t, t_mid, y), t_mid, t_next, y)
    a, s = _scales(teacher.process, t, z_t)
    a_n, s_n = _scales(teacher.process, t_next, z_t)
    ratio = s_n / s
    return (z_next - ratio * z_t) / (a_n - ratio * a)


def pd_loss(student_fn, teacher, x0: Tensor, student_steps: int, prediction: str, *, target: str = "v",
            spacing: str = "trailing", generator=None, y=None) -> LossOutput:
    """The round's loss: k ~ U{0..N−1} then ε from ``generator``; z_t = α x_0 + σ ε at the student's t_k;
    ``student_fn(z_t, t, y)`` returns the raw network output at process time t, read as ``prediction``."""
    if target not in PD_TARGETS:
        raise ValueError(f"unknown progressive distillation target {target!r}; valid: {list(PD_TARGETS)}")
    process = teacher.process
    student, teach = nested_grids(process, student_steps, spacing)
    dev = generator.device if generator is not None else None
    k = torch.randint(0, student_steps, (x0.shape[0],), generator=generator, device=dev).cpu()
    g = lambda grid, idx: torch.tensor(grid, dtype=torch.float64)[idx].to(x0.device)  # noqa: E731
    t, t_mid, t_next = g(student, k), g(teach, 2 * k + 1), g(student, k + 1)
    eps = torch.randn(x0.shape, generator=generator, device=dev).to(x0)
    tt = _time(process, t)
    z_t = process.q_sample(x0, tt, eps)
    x_tilde = pd_target(teacher, z_t, t, t_mid, t_next, y)
    pred = process.predict(student_fn(z_t, tt, y), z_t, tt, prediction)
    want = process.predict(x_tilde, z_t, tt, "x0")
    if target == "x0":
        a, s = process.scales(tt, z_t)
        weights = (a**2 / s**2).clamp_min(1.0).flatten()
        per_sample = weights * (pred.x0 - want.x0).flatten(1).pow(2).mean(1)
    else:
        weights = torch.ones(x0.shape[0], device=x0.device)
        per_sample = (pred.v - want.v).flatten(1).pow(2).mean(1)
    return LossOutput(loss=per_sample.mean(), per_sample=per_sample.detach(), t=tt, weights=weights)
