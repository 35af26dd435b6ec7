"""train_classifier.py trains a noise-conditional classifier on x_t; sample.py guides any sampler with it
(guidance=classifier guidance.scale=s classifier_ckpt=...), also for an unconditional model; bad files and
configs are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import compose
from diffexp.cli.sample import sample
from diffexp.cli.train import train
from diffexp.cli.train_classifier import train_classifier
from diffexp.guidance.noisy_classifier import NoisyClassifier, load_classifier
from diffexp.validation import ConfigError

TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.dropout=0.0"]
DIGITS = ["data=digits", "data.subset=128", "data.batch_size=16", "schedule.num_timesteps=100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guided")
    cfg = compose("train", DIGITS + TINY_UNET + ["trainer.max_steps=2", "trainer.val_check_interval=2",
                                                 "trainer.limit_val_batches=1", "logger=none", "callbacks=none",
                                                 "+callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                                                 f"+callbacks.model_checkpoint.dirpath={tmp}/diff/checkpoints",
                                                 "+callbacks.model_checkpoint.save_last=true",
                                                 "print_config=false", "trainer.enable_progress_bar=false"], tmp / "diff")
    train(cfg)
    ccfg = compose("train_classifier", DIGITS + ["trainer.max_steps=3", "trainer.val_check_interval=3",
                                                 "trainer.limit_val_batches=1", "logger=none",
                                                 "trainer.enable_progress_bar=false"], tmp / "clf")
    metrics = train_classifier(ccfg)
    return tmp, metrics


def test_train_classifier_writes_a_loadable_checkpoint(runs):
    tmp, metrics = runs
    assert metrics["global_step"] == 3 and 0.0 <= metrics["val/acc"] <= 1.0
    net, config = load_classifier(metrics["checkpoint"])
    assert isinstance(net, NoisyClassifier) and net.num_classes == 10 and config["process"] is not None
    logits = net(torch.zeros(2, 1, 8, 8), torch.tensor([0, 99]))
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("sampler", ["sampler=ddpm", "sampler=ddim", "sampler=heun"])
def test_sample_cli_with_classifier_guidance(runs, sampler, tmp_path):
    tmp, metrics = runs
    ckpt = next((tmp / "diff").rglob("last.ckpt"))
    cfg = compose("sample", [f"ckpt_path={ckpt}", sampler, "sampler.steps=5", "num_samples=6", "guidance=classifier",
                             "guidance.scale=2", f"classifier_ckpt={metrics['checkpoint']}"], tmp_path)
    record = sample(cfg)
    data = np.load(tmp_path / "run" / "samples.npz")
    assert list(data["labels"]) == [0, 1, 2, 3, 4, 5]  # an unconditional model: labels go to the classifier only
    assert record["classifier_guidance"]["scale"] == 2.0
    assert json.loads((tmp_path / "run" / "record.json").read_text())["classifier_guidance"]["scale"] == 2.0


def test_guidance_errors(runs, tmp_path):
    tmp, metrics = runs
    ckpt = next((tmp / "diff").rglob("last.ckpt"))
    with pytest.raises(ConfigError, match="classifier_ckpt"):
        sample(compose("sample", [f"ckpt_path={ckpt}", "guidance=classifier"], tmp_path))
    with pytest.raises(ConfigError, match="classifier_ckpt=.*not a noisy-classifier checkpoint"):
        sample(compose("sample", [f"ckpt_path={ckpt}", "guidance=classifier", f"classifier_ckpt={ckpt}"], tmp_path))
    with pytest.raises(ConfigError, match="no such file"):
        load_classifier(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match=r"train_classifier: data=.*data_shape \(2,\).*labelled images"):
        train_classifier(compose("train_classifier", ["data=toy2d", "logger=none"], tmp_path))
