"""A learning-rate schedule keyed to the elapsed fraction of the run's budget (``lr_scheduler=time_budget``).

With ``trainer.max_time`` the number of steps a run will take is unknown in advance, so a step-keyed decay
either never ends or ends too early. Here the progress of the run is

    f = max(elapsed / max_time, step / max_steps)                         (whichever budget ends first)

and the learning rate is lr₀ · w(step) · s(f) with a linear warm-up w(step) = min(1, (step+1)/warmup_steps)
(Adam's early steps need it whatever the clock) and a warm-up–stable–decay shape in f:

    s(f) = min(1, f / warmup_fraction)                               for f < decay_start
    s(f) = m + (1 − m) · d((f − decay_start) / (1 − decay_start))      after, clamped at f ≥ 1,

with d(u) = 1 − u (linear), (1 + cos πu)/2 (cosine) or 1 − √u (sqrt), m = min_factor: budgeted runs end
annealed. Elapsed time is the Trainer's own training clock (Lightning's ``Timer``, which also stops the
run and is restored on resume) when the module binds the scheduler to the Trainer, following any change of
the Timer's duration; otherwise the scheduler's clock (``clock``, injectable; its elapsed time is saved in
``state_dict`` and continued after ``load_state_dict``). Runs keyed to wall-clock time are not
bit-reproducible across machines or loads: the learning rate depends on how fast the steps went.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from torch.optim.lr_scheduler import LRScheduler

__all__ = ["DECAYS", "parse_duration", "budget_factor", "BudgetLR", "time_budget_scheduler"]

DECAYS = ("linear", "cosine", "sqrt")


def parse_duration(value) -> float | None:
    """Seconds of a ``trainer.max_time`` value: ``"DD:HH:MM:SS"``, a number of seconds, a timedelta, a dict
    of timedelta arguments, or None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        return timedelta(**dict(value)).total_seconds()
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration: use DD:HH:MM:SS (e.g. 00:00:12:00) or seconds")
    d, h, mi, s = (int(g) for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def budget_factor(f: float, warmup_fraction: float = 0.0, decay_start: float = 0.8, decay: str = "linear",
                  min_factor: float = 0.0) -> float:
    """s(f) of the module docstring: the learning-rate factor at budget fraction ``f``."""
    f = max(0.0, float(f))
    if f < decay_start:
        return min(1.0, f / warmup_fraction) if warmup_fraction > 0 else 1.0
    u = min(1.0, (f - decay_start) / (1.0 - decay_start)) if decay_start < 1.0 else 1.0
    d = {"linear": 1.0 - u, "cosine": 0.5 * (1.0 + math.cos(math.pi * u)), "sqrt": 1.0 - math.sqrt(u)}[decay]
    return min_factor + (1.0 - min_factor) * d  # (the warm-up ends by decay_start: warmup_fraction <= decay_start)


class BudgetLR(LRScheduler):
    """lr₀ · w(step) · s(f) with f the elapsed fraction of the budget (see the module docstring).

    ``clock()`` returns seconds (monotonic) for the scheduler's own elapsed time; :meth:`bind_trainer`
    switches to the Trainer's ``Timer``. Call :meth:`step` once per optimizer step (``interval: step``).
    """

    def __init__(self, optimizer, max_time=None, max_steps: int | None = None, warmup_steps: int = 0,
                 warmup_fraction: float = 0.0, decay_start: float = 0.8, decay: str = "linear",
                 min_factor: float = 0.0, clock: Callable[[], float] = time.monotonic, last_epoch: int = -1):
        check_budget_args(max_time, max_steps, warmup_steps, warmup_fraction, decay_start, decay, min_factor)
        self.budget_s = parse_duration(max_time)
        self.max_steps = int(max_steps) if max_steps and int(max_steps) > 0 else None
        self.warmup_steps, self.warmup_fraction = int(warmup_steps), float(warmup_fraction)
        self.decay_start, self.decay, self.min_factor = float(decay_start), decay, float(min_factor)
        self._clock, self._t0, self._offset = clock, clock(), 0.0
        self._timer = None  # Lightning's Timer once bound
        self._follow_timer = False
        super().__init__(optimizer, last_epoch)

    # ---- the clock ------------------------------------------------------------------------------
    def bind_trainer(self, trainer) -> None:
        """Take elapsed time from the Trainer's ``Timer`` (the clock that stops the run; restored on resume);
        when the budget is the Timer's duration, follow that duration too (e.g. when a benchmark extends it)."""
        timer = next((cb for cb in getattr(trainer, "callbacks", []) if type(cb).__name__ == "Timer"), None)
        if timer is None or timer.time_remaining() is None:
            return
        self._timer = timer
        duration = timer.time_remaining() + timer.time_elapsed()
        self._follow_timer = self.budget_s is not None and abs(duration - self.budget_s) < 1e-6

    def elapsed(self) -> float:
        if self._timer is not None:
            return float(self._timer.time_elapsed("train"))
        return self._offset + self._clock() - self._t0

    def fraction(self) -> float:
        """Progress f of the run: the larger of the elapsed time and step fractions of the budget."""
        f = 0.0
        if self.budget_s:
            budget = self.budget_s
            if self._follow_timer:
                budget = self._timer.time_elapsed("train") + self._timer.time_remaining("train")
            f = self.elapsed() / budget
        if self.max_steps:
            f = max(f, max(self.last_epoch, 0) / self.max_steps)
        return f

    def factor(self) -> float:
        step = max(self.last_epoch, 0)
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warm * budget_factor(self.fraction(), self.warmup_fraction, self.decay_start, self.decay,
                                    self.min_factor)

    def get_lr(self) -> list[float]:
        factor = self.factor()
        return [base * factor for base in self.base_lrs]

    # ---- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        skip = {"optimizer", "_clock", "_timer", "_t0", "_offset", "_follow_timer"}
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        state["elapsed_s"] = self.elapsed()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the step count and the elapsed time; the budget and the shape stay those of this run's config
        (resuming with a larger ``trainer.max_time`` extends the schedule)."""
        state = {k: v for k, v in state_dict.items() if k not in _CONFIG_KEYS}
        self._offset, self._t0 = float(state.pop("elapsed_s", 0.0)), self._clock()
        self.__dict__.update(state)


_CONFIG_KEYS = ("budget_s", "max_steps", "warmup_steps", "warmup_fraction", "decay_start", "decay", "min_factor")


def check_budget_args(max_time, max_steps, warmup_steps, warmup_fraction, decay_start, decay, min_factor) -> None:
    from diffexp.validation import ConfigError

    errors = []
    try:
        seconds = parse_duration(max_time)
        if seconds is not None and seconds <= 0:
            errors.append(f"lr_scheduler.max_time={max_time}: the time budget must be positive")
    except (ValueError, TypeError) as e:
        seconds = None
        errors.append(f"lr_scheduler.max_time: {e}")
    steps = int(max_steps) if max_steps is not None else -1
    if seconds is None and steps <= 0 and not errors:
        errors.append("lr_scheduler=time_budget needs a budget: trainer.max_time (e.g. '00:00:12:00') and/or "
                      "trainer.max_steps > 0 (both null/-1 now)")
    if decay not in DECAYS:
        errors.append(f"lr_scheduler.decay={decay}: valid: {list(DECAYS)}")
    if not 0.0 <= float(decay_start) <= 1.0:
        errors.append(f"lr_scheduler.decay_start={decay_start}: a fraction of the budget in [0, 1]")
    if not 0.0 <= float(warmup_fraction) <= float(decay_start):
        errors.append(f"lr_scheduler.warmup_fraction={warmup_fraction}: a fraction in [0, decay_start={decay_start}]")
    if not 0.0 <= float(min_factor) <= 1.0:
        errors.append(f"lr_scheduler.min_factor={min_factor}: the final lr as a fraction of optimizer.lr, in [0, 1]")
    if int(warmup_steps) < 0:
        errors.append(f"lr_scheduler.warmup_steps={warmup_steps}: must be >= 0")
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def time_budget_scheduler(max_time=None, max_steps: int | None = None, warmup_steps: int = 0,
                          warmup_fraction: float = 0.0, decay_start: float = 0.8, decay: str = "linear",
                          min_factor: float = 0.0):
    """The Hydra target of ``conf/lr_scheduler/time_budget.yaml``: checks the options when the config is
    instantiated (before the Trainer starts) and returns ``optimizer -> BudgetLR``."""
    kwargs = dict(max_time=max_time, max_steps=max_steps, warmup_steps=warmup_steps, warmup_fraction=warmup_fraction,
                  decay_start=decay_start, decay=decay, min_factor=min_factor)
    check_budget_args(**kwargs)
    return partial(BudgetLR, **kwargs)
