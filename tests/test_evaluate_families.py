"""evaluate.py across process families: metrics=[nll_ode] (the PF-ODE likelihood) beside FID, the family in
every record, key and summary row, one table and one FID-vs-NFE plot with a curve per (family, sampler), and
the nll_ode options named when wrong."""

from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import compose
from diffexp.cli.evaluate import evaluate, write_summary
from diffexp.cli.train import train
from diffexp.validation import ConfigError

TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.dropout=0.0"]
SMALL = ["extractor=random", "num_samples=16", "batch_size=8", "num_real=64", "kid_subset_size=8", "kid_subsets=5",
         "nll_ode.num_examples=4", "nll_ode.batch_size=4", "nll_ode.rtol=1e-3", "nll_ode.atol=1e-3"]


def _train(tmp, process: list[str]):
    cfg = compose("train", ["data=digits", "data.subset=128", "data.batch_size=16", *TINY_UNET, *process,
                            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                            "logger=csv", "callbacks.sample.every_n_steps=0", "callbacks.sample.at_end=false",
                            "callbacks.model_checkpoint.every_n_train_steps=2", "print_config=false",
                            "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
                            "trainer.enable_model_summary=false"], tmp)
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """2-step 8x8 digits checkpoints of two families: ddpm (T=100) and flow."""
    return {"ddpm": _train(tmp_path_factory.mktemp("ddpm"), ["process=ddpm", "schedule.num_timesteps=100"]),
            "flow": _train(tmp_path_factory.mktemp("flow"), ["process=flow"])}


def run_eval(tmp_path, name, ckpt, overrides):
    cfg = compose("evaluate", [f"ckpt_path={ckpt}", f"paths.cache_dir={tmp_path / 'cache'}", *SMALL, *overrides],
                  tmp_path / "jobs" / name)
    return evaluate(cfg), tmp_path / "jobs" / name / "run"


def test_two_families_one_table(ckpts, tmp_path):
    records = {}
    for fam, ckpt in ckpts.items():
        for steps in (2, 4):
            metrics = "[fid,nll_ode]" if steps == 2 else "[fid]"
            records[fam, steps], _ = run_eval(tmp_path, f"{fam}-{steps}", ckpt,
                                              ["sampler=heun", f"sampler.steps={steps}", f"metrics={metrics}"])
    for fam in ckpts:
        rec = json.loads(json.dumps(records[fam, 2]))
        assert rec["process"] == fam
        ode = rec["nll_ode"]
        # 64 dimensions: Hutchinson with one Gaussian probe; 8-bit images: dequantised, offset log2(255/2).
        assert ode["divergence"] == "hutchinson" and ode["probe"] == "gaussian" and ode["num_probes"] == 1
        assert ode["convention_tag"] == "discrete8bit" and "dequantisation" in ode["convention"]
        assert ode["n"] == 4 and ode["nfe"] > 5 and math.isfinite(ode["bpd"]) and ode["process"] == fam
        assert ode["bpd"] - ode["density_bpd"] == pytest.approx(math.log2(127.5))
        key = "nll_ode/bpd/discrete8bit/test-n4/ema/hutchinson-gaussian-x1/dopri5-tol0.001"
        assert rec["keys"][key] == rec["values"]["nll_ode_bpd"] == ode["bpd"]
        assert rec["values"]["nll_ode_nfe"] == ode["nfe"]
        assert f"fid/random-{rec['extractor_hash'][:6]}/n16/{fam}/heun-2-3/ema/ref-test-n64" in rec["keys"]
    res = write_summary(tmp_path / "jobs")
    assert res["records"] == 4 and len(res["groups"]) == 1
    rows = list(csv.DictReader(open(tmp_path / "jobs" / "summary.csv")))
    assert [(r["process"], r["nfe"]) for r in rows] == [("ddpm", "3"), ("ddpm", "7"), ("flow", "3"), ("flow", "7")]
    assert [bool(r["nll_ode_bpd"]) for r in rows] == [True, False, True, False]
    assert {r["nll_ode_estimator"] for r in rows} == {"", "hutchinson-gaussian-x1/dopri5-tol0.001"}
    md = (tmp_path / "jobs" / "summary.md").read_text()
    assert "nll_ode_bpd" in md and "| flow | heun-4-7 |" in md and "PF-ODE NLL estimator/solver" in md
    assert (tmp_path / "jobs" / "fid_vs_nfe.png").stat().st_size > 1000


def test_nll_ode_alone_and_option_errors(ckpts, tmp_path):
    """metrics=[nll_ode] alone needs no sampler work; a wrong option is named by its key before any work."""
    rec, _ = run_eval(tmp_path, "alone", ckpts["flow"], ["metrics=[nll_ode]", "nll_ode.divergence=hutchinson",
                                                          "nll_ode.probe=rademacher", "nll_ode.num_probes=2"])
    assert "samples" not in rec and rec["nll_ode"]["probe"] == "rademacher" and rec["nll_ode"]["num_probes"] == 2
    for bad, name in (("nll_ode.probe=sphere", "nll_ode.probe"), ("nll_ode.method=rk4", "nll_ode.method"),
                      ("nll_ode.num_probes=0", "nll_ode.num_probes"), ("nll_ode.rtol=-1", "nll_ode.rtol")):
        with pytest.raises(ConfigError, match=name):
            run_eval(tmp_path, "bad", ckpts["flow"], ["metrics=[nll_ode]", bad])


def test_training_callback_ode_estimator(tmp_path):
    """callbacks.nll.estimator=ode on a flow model of toy 2-D data: the exact-trace PF-ODE NLL is logged under
    nll_ode keys (continuous convention, NFE beside it) at its steps and recorded with its estimator; a wrong
    ODE option stops the run before training, naming the key."""
    from diffexp.callbacks import NLLCallback

    base = ["experiment=toy2d", "process=flow", "model.hidden_dim=32", "model.num_blocks=1", "trainer.max_steps=20",
            "trainer.val_check_interval=20", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=10",
            "lr_scheduler.warmup_steps=2", "logger=csv", "callbacks=[default,nll]", "callbacks.sample.every_n_steps=0",
            "callbacks.sample.at_end=false", "callbacks.model_checkpoint.every_n_train_steps=1000",
            "callbacks.nll.every_n_steps=10", "callbacks.nll.num_examples=16", "callbacks.nll.batch_size=16",
            "callbacks.nll.ema=false", "callbacks.nll.estimator=ode", "callbacks.nll.ode.rtol=1e-3",
            "callbacks.nll.ode.atol=1e-3", "print_config=false", "~callbacks.progress_bar",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    train(compose("train", base, tmp_path))
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    key = "nll_ode/bpd/continuous/test-n16/raw/exact/dopri5-tol0.001"
    logged = {int(r["step"]): float(r[key]) for r in rows if r.get(key)}
    assert sorted(logged) == [10, 20] and all(math.isfinite(v) for v in logged.values())
    rec = json.loads((run / "nll" / "nll_ode_test-n16-raw_step0000020.json").read_text())
    assert rec["divergence"] == "exact" and rec["nfe"] > 5 and rec["convention_tag"] == "continuous"
    assert rec["bpd"] == pytest.approx(logged[20])
    with pytest.raises(ValueError, match="callbacks.nll.ode"):
        NLLCallback(estimator="ode", ode={"probe": "sphere"})
    with pytest.raises(ValueError, match="estimator"):
        NLLCallback(estimator="vlb")
