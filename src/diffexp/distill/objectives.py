"""The distillation methods as objectives of the DiffusionModule (config group ``distill``, ``python
distill.py``): the module trains the student exactly as it trains a diffusion model (same EMA, callbacks,
checkpoints, resume, DDP); only the loss differs. Each follows the objective protocol
(``loss(net_fn, x0, process, prediction, generator, y)``, ``validation_loss``, ``check``/``validate``) and two
module hooks: ``bind(net)`` (called once, at construction: the consistency methods keep their target network
θ⁻ here, saved with the checkpoint) and ``after_optimizer_step(net)`` (θ⁻ ← μθ⁻ + (1−μ)θ; the step count of
iCT's curriculum).

The teacher is a checkpoint path (loaded lazily, frozen, never saved in the student's checkpoint) or, in
tests, any :class:`~diffexp.denoiser.Denoiser` (the analytic oracle).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffexp.distill.consistency import (
    DISTANCES,
    SOLVERS,
    consistency_distillation_loss,
    consistency_training_loss,
    ict_num_levels,
    karras_levels,
    time_fn,
)
from diffexp.distill.progressive import PD_TARGETS, nested_grids, pd_loss


class _Distillation(nn.Module):
    needs_teacher = True

    def __init__(self, teacher=None):
        super().__init__()
        self._teacher_source = teacher  # a path (str) or a Denoiser
        self._teacher_cache: list = []  # kept out of the module tree: never in the student's state_dict
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    @property
    def teacher(self):
        if not self._teacher_cache:
            src = self._teacher_source
            if src is None:
                raise ValueError(f"{type(self).__name__} needs a teacher (teacher=CKPT)")
            if isinstance(src, str):
                from diffexp.build import load_denoiser

                src, _ = load_denoiser(src, ema=True)
            src.net.requires_grad_(False).eval()
            self._teacher_cache.append(src)
        return self._teacher_cache[0]

    def _teacher_on(self, device):
        teacher = self.teacher
        for p in list(teacher.net.parameters())[:1] + list(teacher.net.buffers())[:1]:
            if p.device != device:
                teacher.net.to(device)
            break
        return teacher

    def bind(self, net: nn.Module) -> None:
        pass

    def after_optimizer_step(self, net: nn.Module) -> None:
        self.steps_done += 1

    def check(self, process) -> None:
        pass

    def validate(self, prediction, process, data_range=None) -> None:
        self.check(process)

    def validation_loss(self, net_fn, x0, process, prediction, t, noise, y=None):
        """The training loss at draws pinned by the validation noise's first value (comparable across epochs)."""
        g = torch.Generator(device=x0.device).manual_seed(int(noise.flatten()[0].abs().mul(1e6)) % (2**31))
        with torch.no_grad():
            return self.loss(net_fn, x0, process, prediction, generator=g, y=y)


class ProgressiveDistillation(_Distillation):
    """One round of progressive distillation (Salimans & Ho 2022): the student learns ``student_steps``
    DDIM steps from the teacher's 2 × student_steps (:mod:`diffexp.distill.progressive`)."""

    def __init__(self, teacher=None, student_steps: int = 4, target: str = "v", spacing: str = "trailing"):
        super().__init__(teacher)
        if target not in PD_TARGETS:
            raise ValueError(f"target={target!r}; valid: {list(PD_TARGETS)}")
        if not isinstance(student_steps, int) or student_steps < 1:
            raise ValueError(f"student_steps must be a positive integer, got {student_steps!r}")
        self.student_steps, self.target, self.spacing = student_steps, target, spacing

    def check(self, process) -> None:
        nested_grids(process, self.student_steps, self.spacing)

    def loss(self, net_fn, x0, process, prediction, generator=None, y=None):
        teacher = self._teacher_on(x0.device)
        return pd_loss(net_fn, teacher, x0, self.student_steps, prediction, target=self.target, spacing=self.spacing,
                       generator=generator, y=y)


class _Consistency(_Distillation):
    def __init__(self, teacher=None, target_decay: float = 0.95, distance: str = "l2", rho: float = 7.0,
                 sigma_min: float | None = None, sigma_max: float | None = None):
        super().__init__(teacher)
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}; valid: {list(DISTANCES)}")
        if not 0.0 <= target_decay < 1.0:
            raise ValueError(f"target_decay must lie in [0, 1), got {target_decay}")
        self.target_decay, self.distance, self.rho = float(target_decay), distance, float(rho)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.target_net: nn.Module | None = None

    def bind(self, net: nn.Module) -> None:
        """θ⁻ starts as θ. With target_decay = 0 (iCT) θ⁻ = stopgrad(θ): no copy is kept."""
        if self.target_decay > 0:
            self.target_net = copy.deepcopy(net).requires_grad_(False).eval()

    @torch.no_grad()
    def after_optimizer_step(self, net: nn.Module) -> None:
        super().after_optimizer_step(net)
        if self.target_net is not None:
            for p, q in zip(self.target_net.parameters(), net.parameters()):
                p.lerp_(q.detach().to(p.dtype), 1.0 - self.target_decay)
            for b, c in zip(self.target_net.buffers(), net.buffers()):
                b.copy_(c)

    def train(self, mode: bool = True):  # the target network always stays in eval mode
        super().train(mode)
        if self.target_net is not None:
            self.target_net.eval()
        return self

    def _levels(self, process, n: int):
        lo, hi = process.sigma_range()
        return karras_levels(n, self.sigma_min or lo, self.sigma_max or hi, self.rho)

    def _target_fn(self, net_fn, process):
        return time_fn(self.target_net, process) if self.target_net is not None else net_fn


class ConsistencyDistillation(_Consistency):
    """CD (Song et al. 2023, Algorithm 2) over ``num_levels`` Karras levels with the teacher's ``solver`` step."""

    def __init__(self, teacher=None, num_levels: int = 18, solver: str = "heun", **kw):
        super().__init__(teacher, **kw)
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r}; valid: {list(SOLVERS)}")
        self.num_levels, self.solver = int(num_levels), solver

    def loss(self, net_fn, x0, process, prediction, generator=None, y=None):
        teacher = self._teacher_on(x0.device)
        return consistency_distillation_loss(net_fn, self._target_fn(net_fn, process), teacher, x0,
                                             self._levels(process, self.num_levels), solver=self.solver,
                                             distance_kind=self.distance, generator=generator, y=y)


class ConsistencyTraining(_Consistency):
    """Improved CT (Song & Dhariwal 2023): no teacher; N(k) curriculum over ``total_steps`` optimizer steps,
    log-normal level sampling, pseudo-Huber distance, θ⁻ = stopgrad(θ) (target_decay = 0)."""

    needs_teacher = False

    def __init__(self, total_steps: int = 10000, s0: int = 10, s1: int = 1280, p_mean: float = -1.1, p_std: float = 2.0,
                 target_decay: float = 0.0, distance: str = "pseudo_huber", **kw):
        kw.pop("teacher", None)
        super().__init__(None, target_decay=target_decay, distance=distance, **kw)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r}: the N(k) curriculum needs the run's length in optimizer "
                             "steps (a positive integer; it defaults to trainer.max_steps, so set that)")
        self.total_steps, self.s0, self.s1, self.p_mean, self.p_std = int(total_steps), int(s0), int(s1), p_mean, p_std

    def loss(self, net_fn, x0, process, prediction, generator=None, y=None):
        n = ict_num_levels(int(self.steps_done), self.total_steps, self.s0, self.s1)
        return consistency_training_loss(net_fn, self._target_fn(net_fn, process), process, x0, self._levels(process, n),
                                         distance_kind=self.distance, p_mean=self.p_mean, p_std=self.p_std,
                                         generator=generator, y=y)
