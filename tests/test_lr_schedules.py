"""The learning-rate schedule keyed to the elapsed fraction of the budget (``lr_scheduler=time_budget``).

The clock is injected (a fake monotonic clock; Lightning's Timer with its ``time.monotonic`` patched):
values at given elapsed fractions against the closed form, resume continuity (the state saved at elapsed
time e continues from e under a fresh process clock), the step budget when it ends first, the binding to
the Trainer's Timer (and to a Timer whose duration a benchmark extends), and config errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose
from diffexp.lr_schedules import BudgetLR, budget_factor, parse_duration, time_budget_scheduler
from diffexp.validation import ConfigError

# The schedules are stepped without optimizer steps (the first one imports torch's compiler stack: seconds).
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _sched(clock, **kw) -> BudgetLR:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    kw = {"max_time": 100.0, **kw}
    return BudgetLR(opt, clock=clock, **kw)


def _lr(s: BudgetLR) -> float:
    return s.optimizer.param_groups[0]["lr"]


def test_factor_at_given_fractions():
    f = budget_factor
    assert f(0.0) == f(0.5) == f(0.8) == 1.0
    assert f(0.9) == pytest.approx(0.5) and f(1.0) == 0.0 and f(1.7) == 0.0
    assert f(0.05, warmup_fraction=0.1) == pytest.approx(0.5) and f(0.1, warmup_fraction=0.1) == 1.0
    assert f(0.9, decay="cosine") == pytest.approx(0.5) and f(0.85, decay="cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert f(0.85, decay="sqrt") == pytest.approx(1 - math.sqrt(0.25))
    assert f(0.9, min_factor=0.1) == pytest.approx(0.1 + 0.9 * 0.5) and f(2.0, min_factor=0.1) == pytest.approx(0.1)
    assert f(0.5, decay_start=0.0) == pytest.approx(0.5)  # decay over the whole budget
    assert parse_duration("00:00:12:00") == 720.0 and parse_duration("01:02:03:04") == 93784.0
    assert parse_duration({"minutes": 2}) == 120.0 and parse_duration(None) is None and parse_duration(30) == 30.0


def test_lr_follows_the_elapsed_fraction_of_the_time_budget():
    clock = FakeClock(1000.0)  # a monotonic clock does not start at 0
    s = _sched(clock, warmup_steps=4)
    expected_warm = [0.025, 0.05, 0.075, 0.1, 0.1]
    for k, want in enumerate(expected_warm):  # warm-up by optimizer steps while the clock stands still
        assert _lr(s) == pytest.approx(want), k
        s.step()
    for elapsed, factor in [(50.0, 1.0), (80.0, 1.0), (85.0, 0.75), (95.0, 0.25), (100.0, 0.0), (130.0, 0.0)]:
        clock.t = 1000.0 + elapsed
        s.step()
        assert s.fraction() == pytest.approx(elapsed / 100.0)
        assert _lr(s) == pytest.approx(0.1 * factor), elapsed


def test_step_budget_counts_when_it_ends_first():
    clock = FakeClock()
    s = _sched(clock, max_steps=10)
    for _ in range(9):
        s.step()
    clock.t = 10.0  # 10 % of the time, 90 % of the steps
    s.step()
    assert s.fraction() == pytest.approx(1.0) and _lr(s) == 0.0
    only_steps = _sched(clock, max_time=None, max_steps=20)
    for _ in range(17):
        only_steps.step()
    assert only_steps.fraction() == pytest.approx(0.85) and _lr(only_steps) == pytest.approx(0.075)


def test_resume_continues_the_schedule_where_it_stopped(tmp_path):
    a_clock = FakeClock(500.0)
    a = _sched(a_clock, warmup_steps=2, decay="cosine")
    for elapsed in (10.0, 40.0, 70.0):
        a_clock.t = 500.0 + elapsed
        a.step()
    torch.save(a.state_dict(), tmp_path / "sched.pt")  # as in a checkpoint
    state = torch.load(tmp_path / "sched.pt", weights_only=False)
    assert state["elapsed_s"] == pytest.approx(70.0) and "_clock" not in state

    b_clock = FakeClock(9000.0)  # a new process: another clock origin, time since the save not counted
    b = _sched(b_clock, warmup_steps=2, decay="cosine")
    b.load_state_dict(state)
    assert b.last_epoch == a.last_epoch == 3 and b.elapsed() == pytest.approx(70.0)
    for dt in (15.0, 20.0, 40.0):
        a_clock.t += dt
        b_clock.t += dt
        for s in (a, b):
                s.step()
        assert _lr(b) == pytest.approx(_lr(a)) and b.fraction() == pytest.approx(a.fraction())
    assert _lr(b) == 0.0  # 145 s of a 100 s budget: annealed
    # Resuming with a larger budget extends the schedule (the config's budget wins over the saved one).
    c = _sched(FakeClock(0.0), max_time=400.0, decay="cosine")
    c.load_state_dict(state)
    assert c.budget_s == 400.0 and c.elapsed() == pytest.approx(70.0) and c.fraction() == pytest.approx(70.0 / 400.0)


def test_bound_to_the_trainers_timer_and_follows_its_duration(monkeypatch):
    import lightning.pytorch.callbacks.timer as timer_mod
    from lightning.pytorch.callbacks import Timer

    from diffexp._internals import extend_time_budget

    now = FakeClock(123.0)
    monkeypatch.setattr(timer_mod.time, "monotonic", now)
    timer = Timer(duration="00:00:01:40")  # 100 s
    trainer = type("T", (), {"callbacks": [timer]})()
    s = _sched(FakeClock(), max_time="00:00:01:40")
    s.bind_trainer(trainer)
    assert s.fraction() == 0.0  # before training starts
    timer.on_train_start(trainer, None)
    now.t += 90.0
    assert s.fraction() == pytest.approx(0.9)
    assert extend_time_budget(trainer, 50.0)  # the benchmarks exclude evaluations by extending the Timer
    assert s.fraction() == pytest.approx(90.0 / 150.0)
    # Resume: a new Timer restored from the checkpoint's state continues the elapsed time.
    state = timer.state_dict()
    timer2 = Timer(duration="00:00:01:40")
    timer2.load_state_dict(state)
    s2 = _sched(FakeClock(), max_time="00:00:01:40")
    s2.bind_trainer(type("T", (), {"callbacks": [timer2]})())
    timer2.on_train_start(trainer, None)
    now.t += 5.0
    assert s2.fraction() == pytest.approx(0.95)
    # A budget other than the Timer's: elapsed from the Timer, the budget fixed.
    s3 = _sched(FakeClock(), max_time=200.0)
    s3.bind_trainer(type("T", (), {"callbacks": [timer2]})())
    assert s3.fraction() == pytest.approx(95.0 / 200.0)


def test_config_composes_trains_and_ends_annealed(tmp_path):
    from diffexp.checkpoint import read_checkpoint
    from diffexp.cli.train import train

    cfg = compose("train", [
        "data=toy2d", "data.num_train=64", "data.num_val=16", "data.batch_size=16", "model=mlp", "model.hidden_dim=16",
        "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=20", "sampler.steps=5", "lr_scheduler=time_budget",
        "lr_scheduler.warmup_steps=2", "trainer.max_steps=12", "trainer.max_time=00:01:00:00", "optimizer.lr=1e-2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.val_check_interval=6", "trainer.limit_val_batches=1", "logger=none", "callbacks=model_checkpoint",
        "print_config=false"], tmp_path)
    train(cfg)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    state = ckpt["lr_schedulers"][0]
    assert state["last_epoch"] == 12 and state["budget_s"] == 3600.0 and state["max_steps"] == 12
    assert 0.0 < state["elapsed_s"] < 3600.0
    # The step budget ended first: f = 12/12, the lr is annealed to min_factor = 0.
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0


@pytest.mark.parametrize("overrides,match", [
    (["trainer.max_time=null", "trainer.max_steps=-1"], "needs a budget"),
    (["lr_scheduler.decay=step"], r"lr_scheduler\.decay=step: valid: \['linear', 'cosine', 'sqrt'\]"),
    (["lr_scheduler.decay_start=1.5"], r"lr_scheduler\.decay_start=1\.5"),
    (["trainer.max_time=12min"], r"lr_scheduler\.max_time: .*DD:HH:MM:SS"),
    (["lr_scheduler.warmup_fraction=0.9"], r"lr_scheduler\.warmup_fraction=0\.9"),
])
def test_invalid_options_are_config_errors_before_training(tmp_path, overrides, match):
    from diffexp.build import build_module

    cfg = compose("train", ["data=toy2d", "model=mlp", "lr_scheduler=time_budget", "trainer.max_time=00:00:12:00",
                            *overrides], tmp_path)
    info = {"data_shape": [2], "num_classes": None, "data_range": None}
    with pytest.raises(ConfigError, match=match):
        build_module(cfg, info)
    with pytest.raises(ConfigError):
        time_budget_scheduler(max_time=None, max_steps=None)
