"""evaluate.py with classifier guidance (guidance=classifier guidance.scale=s classifier_ckpt=...) and the
class_accuracy metric: exact counts on crafted logits, the value equal to the argmax agreement recomputed from
the same samples, guidance kind/scale in the record, keys and summary, and one-line errors for bad inputs."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose
from diffexp.cli import evaluate as evaluate_cli
from diffexp.cli.errors import EXIT_USER_ERROR
from diffexp.cli.evaluate import evaluate
from diffexp.cli.train import train
from diffexp.cli.train_classifier import train_classifier
from diffexp.guidance.classifier import ClassifierGuidance
from diffexp.guidance.noisy_classifier import load_classifier
from diffexp.interop.pretrained import load_model
from diffexp.metrics.evaluate import compare_stats
from diffexp.metrics.selection import make_metrics_extractor
from diffexp.metrics.stats import FeatureAccumulator
from diffexp.metrics.summary import write_summary
from diffexp.validation import ConfigError

TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.dropout=0.0"]
DIGITS = ["data=digits", "data.subset=128", "data.batch_size=16", "schedule.num_timesteps=100"]
SMALL = ["extractor=random", "num_samples=16", "batch_size=8", "num_real=64", "kid_subset_size=8", "kid_subsets=5",
         "sampler=ddim", "sampler.steps=3"]


# ----------------------------------------------------------------------------------- the metric itself
def test_class_accuracy_counts_exactly_on_crafted_logits():
    acc = FeatureAccumulator(2, 3, kid_max_samples=0)
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 5, 0]])  # argmax 0 1 2 0 1
    acc.update(torch.zeros(5, 2), logits, labels=torch.tensor([0, 1, 0, 0, 2]))  # right: samples 0, 1, 3
    acc.update(torch.zeros(1, 2), torch.tensor([[0.0, 0, 9]]), labels=torch.tensor([2]))  # right
    res = acc.statistics().class_accuracy()
    assert res["class_accuracy"] == 4 / 6 and res["n_labelled"] == 6
    assert res["class_accuracy_per_class"] == [2 / 3, 1.0, 0.5]  # label 0: samples 0, 2, 3; label 2: 4 and 5
    assert res["class_accuracy_stderr"] == pytest.approx(math.sqrt((4 / 6) * (2 / 6) / 6), rel=1e-12)
    # the states are summed across DDP ranks like the other counts
    assert acc._reductions["class_correct"] is acc._reductions["class_count"]
    assert acc._reductions["class_labelled"] is acc._reductions["class_count"]
    out = compare_stats(acc.statistics(), acc.statistics(), ["class_accuracy"])
    assert out["class_accuracy"] == 4 / 6


def test_class_accuracy_without_labels_or_with_bad_labels_is_an_error():
    acc = FeatureAccumulator(2, 3, kid_max_samples=0)
    acc.update(torch.zeros(2, 2), torch.zeros(2, 3))  # no labels given
    with pytest.raises(ValueError, match="class_accuracy needs the labels"):
        compare_stats(acc.statistics(), acc.statistics(), ["class_accuracy"])
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        acc.update(torch.zeros(2, 2), torch.zeros(2, 3), labels=torch.tensor([0, 3]))


# ------------------------------------------------------------------------------------ evaluate.py, end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step unconditional and a 2-step class-conditional digits checkpoint (8x8, tiny UNet, T=100) and a
    3-step noisy classifier."""
    tmp = tmp_path_factory.mktemp("eval_guided")
    common = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "logger=none",
              "callbacks=none", "+callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
              "+callbacks.model_checkpoint.save_last=true", "print_config=false", "trainer.enable_progress_bar=false"]
    ckpts = {}
    for name, extra in (("uncond", []), ("cond", ["conditional=true"])):
        train(compose("train", DIGITS + TINY_UNET + common + extra +
                      [f"+callbacks.model_checkpoint.dirpath={tmp}/{name}/checkpoints"], tmp / name))
        ckpts[name] = tmp / name / "checkpoints" / "last.ckpt"
    clf = train_classifier(compose("train_classifier", DIGITS + ["trainer.max_steps=3", "trainer.val_check_interval=3",
                                                                 "trainer.limit_val_batches=1", "logger=none",
                                                                 "trainer.enable_progress_bar=false"], tmp / "clf"))
    return ckpts, clf["checkpoint"]


def run_eval(tmp_path, name, ckpt, overrides):
    cfg = compose("evaluate", [f"ckpt_path={ckpt}", f"paths.cache_dir={tmp_path / 'cache'}", *SMALL, *overrides],
                  tmp_path / "jobs" / name)
    return evaluate(cfg), cfg


def _recomputed_accuracy(cfg, record, guidance_scale: float | None, clf_path) -> float:
    """The argmax agreement of the extractor on the same samples, drawn again outside compute_metrics."""
    module = load_model(cfg.ckpt_path, None, map_location="cpu")
    denoiser = module.denoiser(ema=True)
    if guidance_scale is not None:
        denoiser.classifier_guidance = ClassifierGuidance(load_classifier(clf_path)[0], guidance_scale)
    sampler = instantiate(cfg.sampler)
    seeds = list(range(16))
    y = torch.arange(16) % 10  # sample i is drawn for class i mod K
    x = sampler(denoiser, shape=tuple(module.data_shape), seeds=seeds, y=y, guidance_scale=cfg.guidance_scale).clamp(-1, 1)
    extractor = make_metrics_extractor(instantiate(cfg.extractor), instantiate(OmegaConf.create(module.config["data"])))
    _, logits = extractor(x)
    return float((logits.argmax(1) == y).double().mean())


def test_classifier_guided_evaluation_records_guidance_and_class_accuracy(runs, tmp_path):
    ckpts, clf = runs
    recs = {}
    for s in (0, 2):
        rec, cfg = run_eval(tmp_path, f"s{s}", ckpts["uncond"], ["guidance=classifier", f"guidance.scale={s}",
                                                                 f"classifier_ckpt={clf}", "metrics=[fid,class_accuracy,confident]"])
        recs[s] = rec
        assert rec["guidance"]["kind"] == "classifier" and rec["guidance"]["scale"] == float(s)
        assert rec["guidance"]["classifier_ckpt"] == str(clf) and rec["guidance"]["num_classes"] == 10
        acc = rec["values"]["class_accuracy"]
        assert 0.0 <= acc <= 1.0 and rec["samples"]["n_labelled"] == 16
        assert acc == pytest.approx(_recomputed_accuracy(cfg, rec, float(s), clf), abs=1e-12)
        key = f"class_accuracy/random-{rec['extractor_hash'][:6]}/n16/ddpm/ddim-3-cg{s}/ema/ref-test-n64"
        assert rec["keys"][key] == acc and "confident" in rec["values"] and "fid" in rec["values"]
    assert recs[0]["values"]["fid"] != recs[2]["values"]["fid"]  # the guidance reached the samples
    write_summary(tmp_path / "jobs")
    rows = list(csv.DictReader(open(tmp_path / "jobs" / "summary.csv")))
    assert [(r["guidance"], r["guidance_scale"]) for r in rows] == [("classifier", "0.0"), ("classifier", "2.0")]
    assert [float(r["class_accuracy"]) for r in rows] == [recs[0]["values"]["class_accuracy"],
                                                          recs[2]["values"]["class_accuracy"]]
    md = (tmp_path / "jobs" / "summary.md").read_text()
    assert "class_accuracy" in md and "| classifier | 2 |" in md


def test_class_conditional_checkpoint_cfg_and_composed_guidance(runs, tmp_path):
    ckpts, clf = runs
    rec, cfg = run_eval(tmp_path, "cfg", ckpts["cond"], ["guidance_scale=2.0", "metrics=[class_accuracy]"])
    assert rec["guidance"]["kind"] == "cfg" and rec["guidance"]["scale"] == 2.0
    assert rec["values"]["class_accuracy"] == pytest.approx(_recomputed_accuracy(cfg, rec, None, clf), abs=1e-12)
    rec, cfg = run_eval(tmp_path, "both", ckpts["cond"], ["guidance_scale=2.0", "guidance=classifier", "guidance.scale=1.5",
                                                         f"classifier_ckpt={clf}", "metrics=[class_accuracy]"])
    assert rec["guidance"]["kind"] == "cfg+classifier" and rec["guidance"]["cfg_scale"] == 2.0
    assert rec["guidance"]["scale"] == 1.5
    assert rec["values"]["class_accuracy"] == pytest.approx(_recomputed_accuracy(cfg, rec, 1.5, clf), abs=1e-12)
    assert any("/ddim-3-cfg2-cg1.5/" in k for k in rec["keys"])


def test_guidance_and_class_accuracy_errors(runs, tmp_path):
    ckpts, clf = runs
    with pytest.raises(ConfigError, match="class_accuracy needs samples drawn for labels"):
        run_eval(tmp_path, "e1", ckpts["uncond"], ["metrics=[fid,class_accuracy]"])
    with pytest.raises(ConfigError, match="guidance.scale=-1"):
        run_eval(tmp_path, "e2", ckpts["uncond"], ["guidance=classifier", "guidance.scale=-1", f"classifier_ckpt={clf}"])
    with pytest.raises(ConfigError, match="extractor=random has 5 classes"):
        run_eval(tmp_path, "e3", ckpts["uncond"], ["guidance=classifier", f"classifier_ckpt={clf}", "extractor.num_classes=5",
                                                   "metrics=[class_accuracy]"])


@pytest.mark.parametrize("bad", ["missing", "diffusion"])
def test_a_bad_classifier_ckpt_exits_2_with_one_line_naming_the_key(runs, tmp_path, capsys, bad):
    import sys

    ckpts, _ = runs
    path = tmp_path / "missing.ckpt" if bad == "missing" else ckpts["uncond"]
    argv = [f"ckpt_path={ckpts['uncond']}", "guidance=classifier", f"classifier_ckpt={path}",
            "metrics=[class_accuracy]", f"paths.log_dir={tmp_path}", *SMALL]
    saved, sys.argv = sys.argv, ["evaluate.py", *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            evaluate_cli.main()
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    assert exc.value.code == EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert lines[0].startswith("evaluate: error: classifier_ckpt=") and str(path) in lines[0], err
    assert len(lines) <= 2 and "Traceback" not in err + out
    assert not list(tmp_path.rglob("evaluation.json"))  # no work was done


def test_the_guidance_classifier_must_fit_the_checkpoint():
    """Its input channels match the samples' and, on a class-conditional checkpoint, its classes the checkpoint's;
    labels cycle through the checkpoint's classes, else the classifier's; the record names the kind."""
    from types import SimpleNamespace

    from diffexp.guidance.noisy_classifier import NoisyClassifier
    from diffexp.guidance.setup import check_classifier_fits, guidance_record, label_classes

    guide = ClassifierGuidance(NoisyClassifier(1, 5, channels=8), scale=3.0)
    uncond, cond = SimpleNamespace(num_classes=None, data_shape=(1, 8, 8)), SimpleNamespace(num_classes=10, data_shape=(1, 8, 8))
    check_classifier_fits(uncond, guide, "c.ckpt")
    assert label_classes(uncond, guide) == 5 and label_classes(cond, guide) == 10 and label_classes(uncond, None) is None
    with pytest.raises(ConfigError, match="classifier_ckpt=c.ckpt: the classifier has 5 classes, the class-conditional checkpoint 10"):
        check_classifier_fits(cond, guide, "c.ckpt")
    with pytest.raises(ConfigError, match=r"classifier_ckpt=c.ckpt: .*1 channel\(s\).*\(3, 8, 8\)"):
        check_classifier_fits(SimpleNamespace(num_classes=None, data_shape=(3, 8, 8)), guide, "c.ckpt")
    assert guidance_record(uncond, None, 1.0, None)["kind"] == "none"
    assert guidance_record(cond, None, 3.0, None) | {"classifier_ckpt": None} == {
        "kind": "cfg", "scale": 3.0, "cfg_scale": 3.0, "classifier_scale": None, "classifier_ckpt": None, "num_classes": 10}
    assert guidance_record(uncond, guide, 2.0, "c.ckpt")["kind"] == "classifier"  # w is ignored on an unconditional model


@pytest.mark.slow
def test_classifier_guidance_raises_the_class_accuracy_of_samples(tmp_path):
    """A digits model (400 steps) guided by a noisy classifier (400 steps), judged by the project classifier: at
    s = 0 the labels are independent of the samples, so E[acc] = 1/K exactly (balanced labels); at s = 4 the
    accuracy is far above it (measured: 0.08 at s = 0, 0.70 at s = 4 with 600-step models, n = 200)."""
    common = ["data=digits", "schedule.num_timesteps=200", "trainer.max_steps=400", "trainer.max_time=null",
              "trainer.val_check_interval=400", "trainer.limit_val_batches=1", "logger=none", "trainer.enable_progress_bar=false"]
    train(compose("train", [*common, "model=unet", "model.base_channels=16", "model.channel_mult=[1,2]",
                            "model.attention_resolutions=[4]", "callbacks.sample.every_n_steps=0",
                            "callbacks.sample.at_end=false", "print_config=false", "~callbacks.progress_bar"], tmp_path / "diff"))
    clf = train_classifier(compose("train_classifier", common, tmp_path / "clf"))["checkpoint"]
    n, acc, se = 200, {}, {}
    for s in (0, 4):
        cfg = compose("evaluate", [f"ckpt_path={tmp_path / 'diff' / 'run' / 'checkpoints' / 'last.ckpt'}", "guidance=classifier",
                                   f"guidance.scale={s}", f"classifier_ckpt={clf}", "metrics=[class_accuracy]",
                                   f"num_samples={n}", f"batch_size={n}", "sampler=ddim", "sampler.steps=20",
                                   f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / f"s{s}")
        rec = evaluate(cfg)
        acc[s], se[s] = rec["values"]["class_accuracy"], rec["values"]["class_accuracy_stderr"]
    chance_se = math.sqrt(0.1 * 0.9 / n)
    assert abs(acc[0] - 0.1) < 4 * chance_se, acc
    assert acc[4] - acc[0] > 4 * math.sqrt(chance_se**2 + se[4] ** 2), acc


def test_training_metrics_callback_reports_class_accuracy_of_a_conditional_model(tmp_path):
    """The MetricsCallback passes the labels its samples were drawn for: class_accuracy is logged under its key."""
    cfg = compose("train", [*DIGITS, *TINY_UNET, "conditional=true", "sampler=ddim", "sampler.steps=3", "trainer.max_steps=2",
                            "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "logger=none", "extractor=random",
                            "callbacks=[default,metrics]", "callbacks.sample.every_n_steps=0", "callbacks.sample.at_end=false",
                            "callbacks.metrics.metrics=[fid,class_accuracy]", "callbacks.metrics.num_samples=20",
                            "callbacks.metrics.batch_size=10", "callbacks.metrics.num_real=32", "callbacks.metrics.every_n_steps=0",
                            f"paths.cache_dir={tmp_path / 'cache'}", "print_config=false", "~callbacks.progress_bar",
                            "trainer.enable_progress_bar=false"], tmp_path)
    final = train(cfg)
    keys = [k for k in final if k.startswith("class_accuracy/random-") and "/n20/ddpm/ddim-3/" in k]
    assert len(keys) == 1 and min(abs(float(final[keys[0]]) - i / 20) for i in range(21)) < 1e-6  # a share of 20 samples
