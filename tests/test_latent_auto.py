"""latent=auto (diffexp.latent_auto): train.py trains the first stage itself, caches it by a hash of its config,
data and seed, reuses it on the next run, retrains when an override changes, never publishes a half-trained
one, and names a bad ``latent_train`` override before anything trains. sample.py and evaluate.py then work
on the diffusion checkpoint as with latent=<path>."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import MNIST as MNIST_ROOT
from conftest import compose
from diffexp.errors import ConfigError

pytestmark = pytest.mark.skipif(MNIST_ROOT is None, reason="no MNIST copy (make data)")

MNIST = [f"data.root={MNIST_ROOT}", "data.subset=64", "data.val_subset=32", "data.batch_size=16"]
TINY_LATENT_UNET = ["model.base_channels=8", "model.num_res_blocks=1", "model.attention_resolutions=[]",
                    "model.num_groups=4"]
FEW = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "schedule.num_timesteps=50",
       "sampler.steps=4", "print_config=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "logger=csv", "callbacks.sample.num_samples=4", "callbacks.sample.every_n_steps=null",
       "callbacks.model_checkpoint.every_n_train_steps=2", "~callbacks.progress_bar", "trainer.precision=32"]
# The autoencoder: tiny, 3 steps, reconstruction FID with the random extractor on 16 images.
AE = ("latent_train={autoencoder: kl_f4_small, extractor: random, trainer.max_steps: 3, trainer.val_check_interval: 3, "
      "trainer.limit_val_batches: 1, callbacks.progress_bar: null, trainer.enable_model_summary: false, "
      "callbacks.reconstruction.num_samples: 16, callbacks.reconstruction.every_n_steps: 0}")


def _cfg(root: Path, name: str, extra=(), ae: str = AE):
    return compose("train", ["experiment=ldm_mnist", "latent=auto", ae, f"paths.cache_dir={root}/cache"]
                   + MNIST + FEW + TINY_LATENT_UNET + list(extra), root / name)


@pytest.fixture(scope="module")
def auto_runs(tmp_path_factory):
    """Two identical latent=auto runs: the first trains and caches the autoencoder, the second reuses it."""
    from diffexp.cli.train import train

    root = tmp_path_factory.mktemp("lauto")
    first = _cfg(root, "first")
    m1 = train(first)
    ckpt = Path(first.latent)
    mtime = ckpt.stat().st_mtime_ns
    second = _cfg(root, "second")
    m2 = train(second)
    return root, first, second, m1, m2, mtime


def test_auto_trains_caches_and_trains_the_diffusion_model(auto_runs):
    root, first, _, m1, _, _ = auto_runs
    rec = first.latent_autoencoder
    folder = root / "cache" / "autoencoders" / rec.auto.config_hash
    assert Path(first.latent) == folder / "checkpoints" / "last.ckpt" and (folder / "metrics.json").is_file()
    assert rec.path == str(Path(first.latent).resolve()) and rec.auto.reused is False
    assert "autoencoder='kl_f4_small'" in rec.auto.overrides
    from diffexp.autoencoder import load_autoencoder

    ae, info = load_autoencoder(first.latent)
    assert info["global_step"] == 3 and info["hash"] == rec.hash and info["latent_shape"] == [2, 7, 7]
    assert m1["global_step"] == 2 and math.isfinite(m1["train/loss"])
    # Nothing half-written is left beside the cache entry.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    # The diffusion checkpoint records the resolved autoencoder (path and hash), like latent=<path>.
    from diffexp.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(root / "first" / "run" / "checkpoints" / "last.ckpt")
    assert meta["config"]["latent"] == first.latent and meta["config"]["latent_autoencoder"]["hash"] == rec.hash
    assert meta["config"]["latent_autoencoder"]["auto"]["config_hash"] == rec.auto.config_hash


def test_same_config_reuses_the_cached_autoencoder(auto_runs, capsys):
    _, first, second, _, m2, mtime = auto_runs
    assert second.latent == first.latent and second.latent_autoencoder.auto.reused is True
    assert Path(second.latent).stat().st_mtime_ns == mtime  # not retrained (nor rewritten)
    assert second.latent_autoencoder.hash == first.latent_autoencoder.hash and m2["global_step"] == 2


def test_a_changed_override_or_seed_is_another_autoencoder(auto_runs):
    from diffexp.latent import latent_datamodule
    from diffexp.latent_auto import compose_autoencoder_config, config_hash

    root, first, _, _, _, _ = auto_runs
    pixels = _pixels(first)
    base = config_hash(compose_autoencoder_config(first)[0], pixels)
    assert base == first.latent_autoencoder.auto.config_hash  # the hash is a function of the config
    changed = _cfg(root, "changed", ae=AE.replace("trainer.max_steps: 3", "trainer.max_steps: 2"))
    other_seed = _cfg(root, "seed", extra=["seed=1"])
    assert config_hash(compose_autoencoder_config(other_seed)[0], _pixels(other_seed)) != base
    latent_datamodule(changed, _pixels(changed))  # as benches build a recipe: latent=auto resolved in the library
    auto = changed.latent_autoencoder.auto  # retrained: a new cache entry, 2 steps
    assert auto.reused is False and auto.config_hash != base
    from diffexp.autoencoder import load_autoencoder

    assert load_autoencoder(changed.latent)[1]["global_step"] == 2
    assert len(list((root / "cache" / "autoencoders").iterdir())) == 2


def _pixels(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg.data)


def test_sample_and_evaluate_run_on_the_auto_checkpoint(auto_runs):
    from diffexp.cli.evaluate import evaluate
    from diffexp.cli.sample import sample

    root, _, _, _, _, _ = auto_runs
    ckpt = root / "first" / "run" / "checkpoints" / "last.ckpt"
    cfg = compose("sample", [f"ckpt_path={ckpt}", "num_samples=3", "batch_size=3", "sampler.steps=3",
                             "device=cpu"], root / "sample")
    record = sample(cfg)
    import numpy as np

    images = np.load(record["samples"])["images"]  # decoded by the first stage the checkpoint carries
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    ev = compose("evaluate", [f"ckpt_path={ckpt}", "metrics=[nll]", "nll.num_examples=4", "nll.batch_size=4",
                              f"paths.cache_dir={root}/cache", "device=cpu"], root / "eval")
    result = evaluate(ev)
    assert result["nll"]["space"] == "latent" and math.isfinite(result["values"]["nll_bpd"])


@pytest.mark.parametrize("override,message", [
    ("+latent_train.trainer.max_stepz=3", r"^latent_train\.trainer\.max_stepz: conf/train_autoencoder\.yaml has no "
                                          r"such key \(trainer has: .*max_steps"),
    ("+latent_train.autoencoder=kl_f9", r"^latent_train\.autoencoder: no such option; valid: kl_f4, kl_f4_small$"),
    ("+latent_train.autoencoder.kl_weight=abc", r"^latent_train\.autoencoder\.kl_weight=abc: must be float$"),
    ("+latent_train.trainer.max_steps=-5", r"latent_train\.trainer\.max_steps=-5: must be a positive number"),
    ("+latent_train.data.batch_size=8", r"^latent_train\.data\.batch_size: the autoencoder of latent=auto trains on "
                                        r"the run's own data"),
    ("latent_train=3", r"^latent_train=3: must be a dict of overrides"),
])
def test_a_bad_override_is_a_config_error_before_training(tmp_path, override, message):
    from diffexp.cli.train import train

    cfg = _cfg(tmp_path, "bad", ae=override)
    with pytest.raises(ConfigError, match=message) as info:
        train(cfg)
    assert "\n" not in str(info.value).split("invalid config:\n  - ")[-1]  # one line naming the key
    assert not (tmp_path / "cache" / "autoencoders").exists() or not any((tmp_path / "cache" / "autoencoders").iterdir())
    assert not (tmp_path / "bad" / "run" / "checkpoints").exists()


def test_a_failed_training_publishes_nothing(tmp_path, monkeypatch):
    """A crash while the autoencoder trains leaves no cache entry (a later run would otherwise reuse it)."""
    import diffexp.autoencoder.training as training
    from diffexp.latent_auto import use_auto_autoencoder

    def crash(run):
        Path(run.cfg.paths.output_dir, "checkpoints").mkdir(parents=True)
        Path(run.cfg.paths.output_dir, "checkpoints", "last.ckpt").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(training, "fit_autoencoder", crash)
    cfg = _cfg(tmp_path, "crash")
    with pytest.raises(RuntimeError, match="killed"):
        use_auto_autoencoder(cfg, _pixels(cfg))
    assert list((tmp_path / "cache" / "autoencoders").iterdir()) == []


def test_an_abandoned_temporary_folder_is_removed(tmp_path):
    from diffexp.atomic import clean_partial_dirs, temporary_path

    final = tmp_path / "abc"
    dead = temporary_path(final)
    dead = dead.with_name(dead.name.replace(f".{__import__('os').getpid()}.", ".999999999."))
    (dead / "checkpoints").mkdir(parents=True)
    live = temporary_path(tmp_path / "def")
    live.mkdir()
    assert clean_partial_dirs(tmp_path) == [dead] and live.is_dir() and not dead.exists()


def test_flat_and_nested_overrides_are_the_same(tmp_path):
    from diffexp.latent_auto import autoencoder_overrides

    flat = compose("train", ["latent_train={trainer.max_steps: 5, autoencoder: kl_f4_small}"], tmp_path)
    nested = compose("train", ["+latent_train.trainer.max_steps=5", "+latent_train.autoencoder=kl_f4_small"], tmp_path)
    assert autoencoder_overrides(flat) == autoencoder_overrides(nested) == [
        ("trainer.max_steps", "trainer.max_steps=5"), ("autoencoder", "autoencoder='kl_f4_small'")]
    with open_dict(flat):
        flat.latent_train = {"trainer.max_time": "00:00:04:00", "autoencoder.model.ch_mult": [1, 2, 2]}
    assert [o for _, o in autoencoder_overrides(flat)] == ["trainer.max_time='00:00:04:00'",
                                                          "autoencoder.model.ch_mult=[1,2,2]"]


def test_publishing_keeps_the_folder_that_was_there_first(tmp_path):
    from diffexp.atomic import publish_dir, temporary_path

    final = tmp_path / "abc"
    mine = temporary_path(final)
    mine.mkdir()
    (mine / "mine").write_text("1")
    assert publish_dir(mine, final) is True and (final / "mine").is_file() and not mine.exists()
    theirs = temporary_path(final)
    theirs.mkdir()
    (theirs / "theirs").write_text("2")
    assert publish_dir(theirs, final) is False and not theirs.exists() and sorted(p.name for p in final.iterdir()) == ["mine"]


def test_a_signal_while_the_autoencoder_trains_publishes_nothing(tmp_path, monkeypatch):
    """SIGTERM (a preempted job) stops the autoencoder early with a last.ckpt saved: not a finished
    autoencoder, so nothing is cached and the run exits with 128 + signal."""
    import signal

    import diffexp.autoencoder.training as training
    from diffexp.latent_auto import use_auto_autoencoder

    def stopped(run):
        Path(run.cfg.paths.output_dir, "checkpoints").mkdir(parents=True)
        Path(run.cfg.paths.output_dir, "checkpoints", "last.ckpt").write_bytes(b"early")
        next(cb for cb in run.callbacks if hasattr(cb, "received")).received = signal.SIGTERM
        return {"global_step": 1, "train_seconds": 0.0, "latent_shape": [2, 7, 7]}

    monkeypatch.setattr(training, "fit_autoencoder", stopped)
    cfg = _cfg(tmp_path, "sigterm")
    with pytest.raises(SystemExit) as info:
        use_auto_autoencoder(cfg, _pixels(cfg))
    assert info.value.code == 128 + signal.SIGTERM
    assert list((tmp_path / "cache" / "autoencoders").iterdir()) == []


def test_a_latent_auto_run_resumes_on_the_same_cached_autoencoder(auto_runs):
    from diffexp.cli.train import train

    root, first, _, _, _, mtime = auto_runs
    ckpt = root / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = _cfg(root, "resumed", extra=[f"ckpt_path={ckpt}", "trainer.max_steps=4"])
    metrics = train(resumed)  # the autoencoder hash is a compatibility key: same cache entry, so it may continue
    assert metrics["global_step"] == 4 and resumed.latent_autoencoder.auto.reused is True
    assert resumed.latent_autoencoder.hash == first.latent_autoencoder.hash
    assert Path(resumed.latent).stat().st_mtime_ns == mtime
