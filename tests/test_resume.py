"""Exact resume: a run stopped at step k (crash, or SIGTERM) and resumed from its last checkpoint ends with
the same tensors as the uninterrupted run: weights, EMA, optimizer and LR-scheduler state, the objective's
importance-sampling history, step counters and data position, and the per-step training losses after the
resume (which prove that the data order, the training noise and the dropout/label-dropout streams continue
exactly; no RNG state is saved: the module re-derives them from (seed, rank, step, micro-batch)).

The runs go through ``diffexp.cli.train.train`` with the shipped configs (toy2d, a tiny MLP with dropout,
class-conditional with label dropout, importance-sampled t, cosine LR schedule, validation every 7
steps, 6 batches per epoch). The crash resumes from step 10 (inside epoch 1, batch 4 of 6), the SIGTERM
run from step 12 (the last batch of epoch 1). Without the resumable training loader (diffexp.resume)
the crash case fails: the resumed epoch restarts from its first batch.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import compose
from diffexp.checkpoint import read_checkpoint
from diffexp.cli.train import train

N = 20
BASE = [
    "data=toy2d", "data.num_train=96", "data.num_val=32", "data.num_test=32", "data.batch_size=16",
    "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "model.dropout=0.1",
    "conditional=true", "module.label_dropout=0.2", "module.ema_decay=0.9",
    "schedule.num_timesteps=40", "objective.timestep_sampler=importance", "+objective.history_per_term=2",
    "sampler.steps=5", "optimizer.lr=1e-2", "lr_scheduler.warmup_steps=3", "lr_scheduler.decay=cosine",
    f"lr_scheduler.total_steps={N}", f"trainer.max_steps={N}", "trainer.val_check_interval=7",
    "trainer.limit_val_batches=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "logger=none", "callbacks=model_checkpoint", "print_config=false",
]
LOSSES: dict[str, dict[int, float]] = {}


class Recorder(Callback):
    """Records the training loss of every optimizer step under ``tag``."""

    def __init__(self, tag: str):
        self.tag = tag

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        LOSSES.setdefault(self.tag, {})[trainer.global_step] = float(outputs["loss"])


class Crash(Callback):
    """A hard failure after step ``at_step`` (nothing is saved by it)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"injected crash at step {self.at_step}")


class SendSignal(Callback):
    """Sends ``signum`` to this process while step ``during_step`` runs (as a scheduler would)."""

    def __init__(self, during_step: int, signum: int = int(signal.SIGTERM)):
        self.during_step, self.signum = during_step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.during_step:
            os.kill(os.getpid(), self.signum)


def run(tmp, tag: str, extra=(), every: int = 5):
    """Train with BASE + extra; the run directory is tmp/train/runs/<tag> (paths.log_dir=tmp)."""
    LOSSES.pop(tag, None)
    cfg = compose("train", BASE + [f"callbacks.model_checkpoint.every_n_train_steps={every}",
                                   "+callbacks.rec._target_=test_resume.Recorder", f"+callbacks.rec.tag={tag}",
                                   *extra], tmp)
    cfg.paths.output_dir = str(tmp / "train" / "runs" / tag)
    return train(cfg), tmp / "train" / "runs" / tag / "checkpoints"


def assert_same(a, b, where: str = "") -> None:
    """Recursive bit-exact comparison of checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_final_state(ref, got) -> None:
    assert ref["global_step"] == got["global_step"] == N
    assert_same(ref["state_dict"], got["state_dict"], "state_dict")  # weights, EMA (ema.*), objective history
    assert any(k.startswith("ema.net.") for k in ref["state_dict"]) and ref["state_dict"]["ema.num_updates"] == N
    assert int((ref["state_dict"]["objective.timestep_sampler.loss_counts"] >= 2).sum()) == 40  # history in use
    assert_same(ref["optimizer_states"], got["optimizer_states"], "optimizer")
    assert_same(ref["lr_schedulers"], got["lr_schedulers"], "lr_scheduler")
    assert_same(ref["loops"]["fit_loop"]["state_dict"], got["loops"]["fit_loop"]["state_dict"], "data position")
    assert ref["diffexp"]["ema_updates"] == got["diffexp"]["ema_updates"] == N


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted N-step run: its final checkpoint and per-step losses."""
    tmp = tmp_path_factory.mktemp("ref")
    metrics, ckpts = run(tmp, "ref")
    assert metrics["global_step"] == N
    return read_checkpoint(ckpts / "last.ckpt"), dict(LOSSES["ref"])


def test_crash_mid_epoch_then_resume_matches_uninterrupted_run(reference, tmp_path):
    """Checkpoints every 5 steps, a crash after step 13: resume from step 10 (epoch 1, batch 4 of 6)."""
    every, crash_at, resume_at = 5, 13, 10
    ref_ckpt, ref_losses = reference
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, "crashed", ["+callbacks.crash._target_=test_resume.Crash", f"+callbacks.crash.at_step={crash_at}"], every)
    last = tmp_path / "train" / "runs" / "crashed" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)
    assert saved["global_step"] == resume_at  # the last periodic save before the crash
    position = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (position["epoch"], position["batches"]) == ((resume_at - 1) // 6, (resume_at - 1) % 6 + 1)
    metrics, ckpts = run(tmp_path, "resumed", [f"ckpt_path={last}"], every)
    assert metrics["global_step"] == N
    assert_same_final_state(ref_ckpt, read_checkpoint(ckpts / "last.ckpt"))
    resumed = LOSSES["resumed"]
    assert sorted(resumed) == list(range(resume_at + 1, N + 1))
    assert all(resumed[s] == ref_losses[s] for s in resumed), {s: (resumed[s], ref_losses[s]) for s in resumed}


def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(reference, tmp_path):
    """In-process SIGTERM during step 12, the last of epoch 1 (the subprocess version is in
    test_checkpoint.py): step 12 finishes, last.ckpt is saved there (not at the periodic step 10), the run
    exits with 128+15 without a traceback, and resuming it with ckpt_path=auto (into a new run directory)
    reproduces the uninterrupted run exactly across the epoch boundary."""
    ref_ckpt, ref_losses = reference
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "killed", ["+callbacks.kill._target_=test_resume.SendSignal", "+callbacks.kill.during_step=12"])
    assert e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored after training
    saved = read_checkpoint(tmp_path / "train" / "runs" / "killed" / "checkpoints" / "last.ckpt")
    stopped_at = saved["global_step"]
    assert stopped_at == 12
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] == {"epoch": 1, "batches": 6, "batch_size": 16,
                                                                             "length": 6}
    metrics, ckpts = run(tmp_path, "after_kill", ["ckpt_path=auto"])  # a new run directory; auto finds the killed run
    assert metrics["global_step"] == N
    assert_same_final_state(ref_ckpt, read_checkpoint(ckpts / "last.ckpt"))
    assert sorted(LOSSES["after_kill"]) == list(range(stopped_at + 1, N + 1))
    assert all(LOSSES["after_kill"][s] == ref_losses[s] for s in LOSSES["after_kill"])


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, False), (2, True)])
def test_loader_state_continues_the_epoch_with_or_without_workers(workers, persistent):
    """ResumableDataLoader alone, in Lightning's order of calls (load_state_dict, iter, set_epoch): the
    resumed pass yields exactly the rest of the epoch, the skip happens once, and the next epoch is whole."""
    from diffexp.data import Toy2DDataModule

    class IndexToy(Toy2DDataModule):  # labels = example index: which examples a batch holds
        def _load(self):
            return {k: (x, torch.arange(len(x))) for k, (x, _) in super()._load().items()}

    def loader():
        dm = IndexToy(num_train=60, num_val=8, num_test=8, batch_size=8, num_workers=workers,
                      persistent_workers=persistent, seed=3)
        return dm.train_dataloader()

    def epoch(dl, e, stop=None):
        dl.sampler.set_epoch(e)
        out = []
        for i, (_, y) in enumerate(dl):
            out.append(y)
            if stop is not None and i + 1 == stop:
                break
        return out

    full = loader()
    e1, e2 = epoch(full, 1), epoch(full, 2)
    assert len(e1) == 7 and not torch.equal(torch.cat(e1), torch.cat(e2))
    first = loader()
    assert all(torch.equal(a, b) for a, b in zip(epoch(first, 1, stop=3), e1))
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 3, "batch_size": 8, "length": 7}
    resumed = loader()
    resumed.load_state_dict(state)
    it = iter(resumed)  # Lightning creates the iterator before it calls set_epoch
    resumed.sampler.set_epoch(1)
    rest = [y for _, y in it]
    assert len(rest) == 4 and all(torch.equal(a, b) for a, b in zip(rest, e1[3:]))
    assert resumed.state_dict()["batches"] == 7
    nxt = epoch(resumed, 2)
    assert len(nxt) == 7 and all(torch.equal(a, b) for a, b in zip(nxt, e2))
