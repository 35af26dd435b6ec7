"""Every user mistake ends in one short message naming the key or file, before any work starts.

A table of bad inputs runs end to end through the three CLIs (train.py, sample.py, evaluate.py), in-process:
the Hydra main is called with the overrides as its command line (a fresh interpreter costs ~15 s here).
Each must exit with status 2, print at most a few lines on stderr, name the key or file, show no
traceback, and (training) write no checkpoint. Also: ``DIFFEXP_DEBUG=1`` shows the traceback; a
non-finite loss with ``module.nonfinite=raise`` prints its message last; NaN in the data is called bad
data; SIGTERM saves and exits without end-of-run sampling; a run that ends before its first validation
still returns its optimized metric.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from conftest import compose
from diffexp.build import build_module, data_info
from diffexp.cli import evaluate as evaluate_cli
from diffexp.cli import sample as sample_cli
from diffexp.cli import train as train_cli
from diffexp.cli.errors import EXIT_USER_ERROR
from diffexp.errors import DataError
from diffexp.validation import ConfigError

TOY_DATA = ["data=toy2d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.batch_size=16"]
TOY = [*TOY_DATA, "model=mlp", "model.hidden_dim=16", "model.num_blocks=1", "model.time_embed_dim=16", "schedule.num_timesteps=50",
       "sampler.steps=5", "trainer.accelerator=cpu", "trainer.max_steps=3", "trainer.val_check_interval=1000",
       "trainer.limit_val_batches=1", "~callbacks.progress_bar", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "logger=none", "print_config=false"]
MAX_STDERR_LINES = 5


def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Call a Hydra main as `python <script> argv...` would; returns (exit status, stdout, stderr)."""
    saved = sys.argv
    sys.argv = ["prog", *argv]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint of a tiny 2-D model (built, not trained: errors come before sampling), a corrupt
    checkpoint, an image folder with one corrupt PNG, an empty folder and an unreadable MNIST pickle."""
    tmp = tmp_path_factory.mktemp("inputs")
    cfg = compose("train", TOY, tmp)
    module = build_module(cfg, data_info(instantiate(cfg.data)))
    ckpt = {"state_dict": module.state_dict(), "global_step": 0, "epoch": 0}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp / "toy.ckpt")
    (tmp / "garbage.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    from PIL import Image

    images = tmp / "images"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(images / f"img{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp / "empty").mkdir()
    (tmp / "mnist").mkdir()
    (tmp / "mnist" / "mnist.pkl.gz").write_bytes(b"this is not gzip")
    return tmp


def SLOW(*case):  # noqa: N802 - a case that repeats what tests/test_validation.py checks on the config alone
    return pytest.param(*case, marks=pytest.mark.slow)


# (CLI, overrides, strings the message must contain); {tmp} is the files fixture's folder. In-process Hydra
# runs cost ~1.5 s each on a loaded 2-core machine: the cases marked SLOW run with `make test-all`.
CASES = [
    # train.py: optimizer, trainer, schedule, sampler, module options
    ("train", ["optimizer.lr=-1e-3"], ["optimizer.lr=-0.001", "positive"]),
    ("train", ["optimizer.lr=abc"], ["optimizer.lr=abc", "positive number"]),
    SLOW("train", ["optimizer.weight_decay=-1"], ["optimizer.weight_decay=-1"]),
    SLOW("train", ["optimizer.betas=[0.9,1.5]"], ["optimizer.betas=[0.9, 1.5]", "[0, 1)"]),
    SLOW("train", ["trainer.max_steps=0"], ["trainer.max_steps=0"]),
    SLOW("train", ["trainer.max_steps=abc"], ["trainer.max_steps=abc"]),
    SLOW("train", ["trainer.gradient_clip_val=abc"], ["trainer.gradient_clip_val=abc"]),
    SLOW("train", ["trainer.val_check_interval=abc"], ["trainer.val_check_interval=abc"]),
    SLOW("train", ["trainer.precision=16-mixed"], ["trainer.precision=16-mixed", "bf16-mixed"]),
    SLOW("train", ["schedule.num_timesteps=-5"], ["schedule.num_timesteps=-5"]),
    SLOW("train", ["sampler.steps=0"], ["sampler.steps=0"]),
    SLOW("train", ["prediction=noise"], ["prediction=noise", "'eps'"]),
    ("train", ["+callbacks.progress_bar._target_=lightning.pytorch.callbacks.TQDMProgressBar"],
     ["trainer (Trainer)", "enable_progress_bar=False"]),
    SLOW("train", ["module.ema_decay=1.5"], ["module.ema_decay=1.5", "[0.0, 1.0)"]),
    SLOW("train", ["module.nonfinite=explode"], ["module.nonfinite=explode", "'raise' or 'skip'"]),
    SLOW("train", ["conditional=true", "data.dataset=swiss_roll"], ["conditional=true", "no class labels"]),
    # train.py: the data (presence, readability, values, size)
    ("train", ["data.batch_size=1000"], ["data.batch_size=1000", "64 examples", "<= 64"]),
    ("train", ["data.std=nan"], ["bad data", "train split", "NaN"]),
    ("train", ["data.num_train=0"], ["training split is empty"]),
    ("train", ["data.dataset=spiral"], ["data (Toy2DDataModule)", "'spiral'", "gaussian_mixture"]),
    SLOW("train", ["+data.colour=red"], ["data (Toy2DDataModule)", "colour"]),
    ("train", ["data=mnist", "data.root={tmp}/nothing"], ["data.root={tmp}/nothing", "mnist.pkl.gz", "make data"]),
    ("train", ["data=mnist", "data.root={tmp}/mnist"], ["{tmp}/mnist/mnist.pkl.gz", "cannot read"]),
    ("train", ["data=image_folder", "data.root={tmp}/images", "data.image_size=8", "data.batch_size=2"],
     ["{tmp}/images/broken.png", "cannot read image"]),
    ("train", ["data=image_folder", "data.root={tmp}/empty"], ["data.root={tmp}/empty", "image_folder data not found"]),
    SLOW("train", ["seed=abc"], ["seed=abc", "integer"]),
    SLOW("train", ["+optimizer.lrr=1e-3"], ["optimizer (AdamW)", "lrr"]),
    SLOW("train", ["+lr_scheduler.warmup=5"], ["lr_scheduler.warmup", "no such option"]),
    SLOW("train", ["data.num_workers=-2"], ["data.num_workers=-2", ">= 0"]),
    SLOW("train", ["data.eval_batch_size=0"], ["data.eval_batch_size=0"]),
    SLOW("train", ["data=digits", "data.val_size=5000"], ["split size 5000", "data.val_size"]),
    SLOW("train", ["trainer.devices=abc"], ["trainer (Trainer)", "`devices`"]),
    # train.py: resuming
    ("train", ["ckpt_path={tmp}/missing.ckpt"], ["checkpoint not found: {tmp}/missing.ckpt"]),
    ("train", ["ckpt_path={tmp}/garbage.ckpt"], ["{tmp}/garbage.ckpt", "corrupt or truncated"]),
    # sample.py
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "num_samples=0"], ["num_samples=0", "positive integer"]),
    SLOW("sample", ["ckpt_path={tmp}/toy.ckpt", "num_samples=-3"], ["num_samples=-3"]),
    SLOW("sample", ["ckpt_path={tmp}/toy.ckpt", "batch_size=0"], ["batch_size=0"]),
    ("sample", [], ["exactly one of ckpt_path=CKPT", "pretrained=DIR"]),
    ("sample", ["ckpt_path={tmp}/missing.ckpt"], ["checkpoint not found: {tmp}/missing.ckpt"]),
    SLOW("sample", ["ckpt_path={tmp}/garbage.ckpt"], ["{tmp}/garbage.ckpt", "corrupt"]),
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "class_label=3"], ["class_label=3", "unconditional"]),
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "class_label=-1"], ["class_label=-1", ">= 0"]),
    SLOW("sample", ["ckpt_path={tmp}/toy.ckpt", "sampler.steps=0"], ["sampler.steps=0"]),
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "sampler.steps=500"], ["sampler.steps=500", "num_timesteps=50"]),
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "device=banana"], ["device=banana"]),
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "guidance_scale=abc"], ["guidance_scale=abc", "number"]),
    ("sample", ["ckpt_path={tmp}/toy.ckpt", "guidance_scale=-1"], ["guidance_scale=-1", ">= 0"]),
    ("train", ["guidance_scale=1.25"], ["guidance_scale=1.25", "class-conditional", "conditional=true"]),
    SLOW("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[swd]", "guidance_scale=2"], ["guidance_scale=2", "unconditional"]),
    # evaluate.py
    ("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[swd,bogus]"], ["metrics=", "'bogus'", "'swd'"]),
    SLOW("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[swd]", "num_samples=0"], ["num_samples=0"]),
    ("evaluate", ["ckpt_path={tmp}/missing.ckpt", "metrics=[swd]"], ["checkpoint not found: {tmp}/missing.ckpt"]),
    SLOW("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[swd]", "split=holdout"], ["split=holdout"]),
    SLOW("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[nll]", "nll.num_examples=0"], ["nll.num_examples=0"]),
    ("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[nll]", "nll.reverse_variance=huge"],
     ["nll.reverse_variance=huge", "beta_tilde"]),
    ("evaluate", ["ckpt_path={tmp}/toy.ckpt", "metrics=[swd]", "data=mnist"], ["data=mnist", "(1, 28, 28)", "(2,)"]),
]
MAINS = {"train": train_cli.main, "sample": sample_cli.main, "evaluate": evaluate_cli._hydra_main}


VALUES = [c.values if hasattr(c, "values") else c for c in CASES]


@pytest.mark.parametrize("cli,overrides,needles", CASES, ids=[f"{c}:{' '.join(o)}" for c, o, _ in VALUES])
def test_a_bad_input_is_one_short_named_error(cli, overrides, needles, files, tmp_path, capsys):
    fill = lambda s: s.replace("{tmp}", str(files))  # noqa: E731
    other_data = any(o.startswith("data=") for o in overrides)
    base = [o for o in TOY if not (other_data and o in TOY_DATA)] if cli == "train" else []
    argv = [*base, *map(fill, overrides), f"paths.log_dir={tmp_path}"]
    code, out, err = run_cli(MAINS[cli], argv, capsys)
    assert code == EXIT_USER_ERROR, (code, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) <= MAX_STDERR_LINES, err
    assert lines[0].startswith(f"{cli}: error: ") and "DIFFEXP_DEBUG=1" in lines[-1], err
    for needle in map(fill, needles):
        assert needle in err, (needle, err)
    assert "Traceback" not in err + out
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("*.png"))  # no work was done


def test_there_are_at_least_25_fast_cases_across_all_three_tools():
    fast = [c for c in CASES if not hasattr(c, "values")]
    assert len(fast) >= 25 and {c for c, _, _ in fast} == set(MAINS)


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFEXP_DEBUG", "1")
    with pytest.raises(ConfigError, match="optimizer.lr=abc"):
        run_cli(train_cli.main, [*TOY, "optimizer.lr=abc", f"paths.log_dir={tmp_path}"], capsys)


def test_a_nonfinite_loss_is_the_last_thing_the_user_reads(tmp_path, capsys):
    """lr = 1e30 blows the weights up after the first step; with module.nonfinite=raise the message (step, loss,
    what to do) is the whole of stderr, not the tail of a Lightning traceback."""
    code, out, err = run_cli(train_cli.main, [*TOY, "optimizer.lr=1e30", "lr_scheduler=none", "trainer.gradient_clip_val=null",
                                              "trainer.max_steps=20", f"paths.log_dir={tmp_path}"], capsys)
    assert code == EXIT_USER_ERROR, err[-3000:]
    lines = err.strip().splitlines()  # (Lightning's own INFO lines about the hardware may come first)
    assert len(lines) <= 10 and lines[-2].startswith("train: error: non-finite"), err
    assert "module.nonfinite=skip" in err and "Lower the learning rate" in err and "Traceback" not in err + out


class PoisonBatch(Callback):
    """Puts a NaN into the training batch of step 1 (data a custom data module served unchecked)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            batch[0][0, 0] = float("nan")


def test_nan_in_a_batch_is_reported_as_bad_data_not_the_learning_rate(tmp_path, capsys):
    code, _, err = run_cli(train_cli.main, [*TOY, "+callbacks.poison._target_=test_user_errors.PoisonBatch",
                                            f"paths.log_dir={tmp_path}"], capsys)
    assert code == EXIT_USER_ERROR, err[-3000:]
    assert "at step 1: bad data, 1 of 16 examples of the training batch hold NaN/inf values" in err, err
    assert "not a learning-rate problem" in err and "Lower the learning rate" not in err


def test_nan_in_the_data_is_caught_before_training(compose_cfg):
    cfg = compose_cfg([*TOY, "data.std=nan"])
    with pytest.raises(DataError, match=r"bad data \(gaussian_mixture\) train split: 64 of 64 examples"):
        train_cli.train(cfg)
    assert not Path(cfg.paths.output_dir).exists()


SIGNAL_LOG: dict[str, float] = {}


class SignalAt(Callback):
    """Sends SIGTERM to this process during step ``step``; records when, and the validations after it."""

    def __init__(self, step: int):
        self.step = step
        SIGNAL_LOG.clear()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step and "sent_at" not in SIGNAL_LOG:
            SIGNAL_LOG.update(sent_at=time.monotonic(), validations_after=0)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_start(self, trainer, pl_module):
        if "sent_at" in SIGNAL_LOG:
            SIGNAL_LOG["validations_after"] += 1


def test_sigterm_saves_and_exits_without_end_of_run_sampling(compose_cfg, capsys):
    """The end-of-run sample grid (at_end) and Lightning's validation-on-stop are skipped; last.ckpt holds the
    step the signal arrived in; the message says what was skipped. (Hang guard: < 30 s from signal to exit.)"""
    cfg = compose_cfg([*TOY, "trainer.max_steps=1000", "callbacks.sample.every_n_steps=100000",
                       "callbacks.sample.num_samples=4", "trainer.val_check_interval=1",
                       "+callbacks.sig._target_=test_user_errors.SignalAt", "+callbacks.sig.step=3"])
    with pytest.raises(SystemExit) as e:
        train_cli.train(cfg)
    elapsed = time.monotonic() - SIGNAL_LOG["sent_at"]
    assert e.value.code == 128 + signal.SIGTERM and elapsed < 30
    run = Path(cfg.paths.output_dir)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not list(run.rglob("*.png")), "no end-of-run sample grid after a signal"
    assert SIGNAL_LOG["validations_after"] == 0  # not even the validation Lightning runs on a stop
    out = capsys.readouterr().out
    assert "skipped the end-of-run sample grids, metrics and validation" in out


def test_a_run_that_ends_before_its_first_validation_still_returns_its_metric(compose_cfg):
    """trainer.max_steps=3 < trainer.val_check_interval=1000 (a quick sweep job): the run validates once at the
    end, so the sweeper gets val/loss instead of None."""
    cfg = compose_cfg(TOY)
    metrics = train_cli.train(cfg)
    assert metrics["global_step"] == 3 and "val/loss" in metrics and metrics["val/loss"] > 0


def test_a_sweep_over_a_val_metric_without_validation_is_refused_at_config_time(compose_cfg):
    from diffexp.validation import validate_config

    validate_config(compose_cfg([*TOY, "trainer.limit_val_batches=0"]))  # a single run may switch validation off
    cfg = compose_cfg([*TOY, "trainer.limit_val_batches=0", "hydra.mode=MULTIRUN"])  # (as a sweep job sees it)
    try:
        with pytest.raises(ConfigError, match="optimized_metric=val/loss needs validation, but trainer.limit_val_batches=0"):
            validate_config(cfg)
    finally:
        compose_cfg(TOY)  # leave a single-run Hydra context behind for the tests that follow


def test_missing_inception_weights_are_a_user_error(tmp_path):
    from diffexp.errors import UserError
    from diffexp.metrics.extractors import InceptionExtractor

    with pytest.raises(UserError, match=f"(?s)not found at {tmp_path}/none.pth.*extractor.weights_path") as e:
        InceptionExtractor(weights_path=tmp_path / "none.pth")
    assert isinstance(e.value, FileNotFoundError)


def test_in_a_multirun_the_job_fails_as_a_job(compose_cfg, capsys):
    """In a sweep the short message is printed and the error re-raised (not SystemExit), so that Hydra's launcher
    and sweeper record a failed job instead of a worker process that exited."""
    from diffexp.cli.errors import user_errors

    compose_cfg([*TOY, "hydra.mode=MULTIRUN"])
    try:
        with pytest.raises(ConfigError):
            with user_errors("train"):
                raise ConfigError("optimizer.lr=abc: must be a positive number")
        assert capsys.readouterr().err == "train: error: optimizer.lr=abc: must be a positive number\n"
    finally:
        compose_cfg(TOY)
    with pytest.raises(SystemExit) as e:  # a single run exits with status 2
        with user_errors("train"):
            raise ConfigError("optimizer.lr=abc: must be a positive number")
    assert e.value.code == 2


def test_a_metrics_callback_without_its_inception_weights_is_refused_before_training(compose_cfg, tmp_path):
    from diffexp.validation import validate_config

    cfg = compose_cfg(["data=digits", "callbacks=with_metrics", "extractor=inception",
                       f"extractor.weights_path={tmp_path}/none.pth", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match=f"callbacks.metrics.extractor \\(inception\\): weights not found at {tmp_path}/none.pth"):
        validate_config(cfg, instantiate(cfg.data))


def test_checking_a_good_config_logs_no_errors(compose_cfg, caplog):
    """The checks themselves must not print noise (Hydra's get_class logs an error for a function target)."""
    import logging

    from diffexp.validation import validate_config

    cfg = compose_cfg(TOY)
    with caplog.at_level(logging.WARNING):
        validate_config(cfg, instantiate(cfg.data))
    assert not caplog.records, [r.getMessage() for r in caplog.records]
