"""The offline evaluation CLI: per-job records with provenance, the sweep summary (table, CSV, FID-vs-NFE
plot) grouped so that incomparable numbers never share a curve, and a real Hydra multirun."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, compose
from diffexp.build import CheckpointError
from diffexp.cli.evaluate import evaluate, main, write_summary
from diffexp.cli.train import train

TINY_UNET = ["model=unet", "model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
             "model.dropout=0.0"]
SMALL = ["extractor=random", "num_samples=16", "batch_size=8", "num_real=64", "kid_subset_size=8", "kid_subsets=5",
         "nll.num_examples=8", "nll.batch_size=4"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 4-step digits checkpoint (8x8, tiny UNet, T=100)."""
    tmp = tmp_path_factory.mktemp("eval_ckpt")
    cfg = compose("train", ["data=digits", "data.subset=128", "data.batch_size=16", *TINY_UNET,
                            "schedule.num_timesteps=100", "trainer.max_steps=4", "trainer.val_check_interval=4",
                            "trainer.limit_val_batches=1", "logger=csv", "callbacks.sample.every_n_steps=0",
                            "callbacks.sample.at_end=false", "callbacks.model_checkpoint.every_n_train_steps=4",
                            "print_config=false", "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
                            "trainer.enable_model_summary=false"], tmp)
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt"


def run_eval(tmp_path, name, ckpt, overrides):
    cfg = compose("evaluate", [f"ckpt_path={ckpt}", f"paths.cache_dir={tmp_path / 'cache'}", *SMALL, *overrides],
                  tmp_path / "jobs" / name)
    return evaluate(cfg), tmp_path / "jobs" / name / "run"


def test_records_summary_and_groups(ckpt, tmp_path):
    rec_a, dir_a = run_eval(tmp_path, "a", ckpt, ["sampler=ddim", "sampler.steps=4", "metrics=[fid,kid,is,nll]"])
    rec_b, _ = run_eval(tmp_path, "b", ckpt, ["sampler=dpmpp_2m", "sampler.steps=4", "metrics=[fid,kid]"])
    rec_c, _ = run_eval(tmp_path, "c", ckpt, ["sampler=dpmpp_2m", "sampler.steps=2", "metrics=[fid,kid]"])
    saved = json.loads((dir_a / "evaluation.json").read_text())
    assert saved["sampler"] == "ddim-4" and saved["nfe"] == 4 and saved["family"] == "ddim"
    assert saved["checkpoint"] == str(ckpt.resolve()) and saved["global_step"] == 4 and saved["weights"] == "ema"
    assert saved["n_gen"] == 16 and saved["n_real"] == 64 and saved["extractor"] == "random"
    assert saved["reference"]["split"] == "test" and saved["reference"]["cache_key"].startswith("digits-test")
    assert saved["seeds"]["first"] == 0 and saved["seeds"]["last"] == 15
    assert saved["started"] and saved["finished"] and saved["seconds"] > 0
    tag = f"random-{saved['extractor_hash'][:6]}"
    for m in ("fid", "kid", "is"):
        key = f"{m}/{tag}/n16/ddpm/ddim-4/ema/ref-test-n64"
        assert math.isfinite(saved["keys"][key]) and saved["keys"][key] == saved["values"][m]
    nll = saved["nll"]
    assert nll["convention_tag"] == "discrete8bit" and "8-bit" in nll["convention"] and nll["n"] == 8
    assert nll["bpd"] > 0 and math.isfinite(nll["bpd"]) and len(nll["per_t"]) == 100
    assert saved["keys"]["nll/bpd/discrete8bit/test-n8/ema"] == nll["bpd"]
    assert (dir_a / "nll_per_t.csv").read_text().splitlines()[0] == "t,bpd"
    assert rec_b["keys"].keys() != rec_a["keys"].keys() and rec_c["nfe"] == 2
    # One comparable group: one table, one panel with two curves (ddim: 1 point, dpmpp_2m: NFE 2 and 4).
    res = write_summary(tmp_path / "jobs")
    assert res["records"] == 3 and len(res["groups"]) == 1 and not res["warnings"]
    rows = list(csv.DictReader(open(tmp_path / "jobs" / "summary.csv")))
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("ddim-4", "4"), ("dpmpp_2m-2", "2"), ("dpmpp_2m-4", "4")]
    assert all(r["n_gen"] == "16" and r["extractor_hash"] == saved["extractor_hash"] for r in rows)
    md = (tmp_path / "jobs" / "summary.md").read_text()
    assert md.count("\n## ") == 1 and "dpmpp_2m-2" in md and "discrete8bit" in md
    png = np.asarray(Image.open(tmp_path / "jobs" / "fid_vs_nfe.png"))
    assert png.ndim == 3 and png.shape[0] > 100 and png.std() > 0
    one_panel_height = png.shape[0]
    # A job at another n is not comparable: its own group, table and panel, and a warning.
    run_eval(tmp_path, "d", ckpt, ["sampler=ddim", "sampler.steps=4", "metrics=[fid]", "num_samples=12"])
    with pytest.warns(UserWarning, match="NOT comparable"):
        res = write_summary(tmp_path / "jobs")
    assert len(res["groups"]) == 2 and res["warnings"]
    md = (tmp_path / "jobs" / "summary.md").read_text()
    assert md.count("\n## ") == 2 and "n_gen=12" in md and "n_gen=16" in md and "NOT comparable" in md
    assert np.asarray(Image.open(tmp_path / "jobs" / "fid_vs_nfe.png")).shape[0] > 1.5 * one_panel_height
    # The console script's --summarize rewrites a directory's summary.
    (tmp_path / "jobs" / "summary.csv").unlink()
    argv = sys.argv
    try:
        sys.argv = ["diffexp-evaluate", "--summarize", str(tmp_path / "jobs")]
        with pytest.warns(UserWarning):
            main()
    finally:
        sys.argv = argv
    assert (tmp_path / "jobs" / "summary.csv").is_file()


def test_langevin_without_steps_and_bad_requests(ckpt, tmp_path):
    rec, _ = run_eval(tmp_path, "l", ckpt, ["sampler=langevin", "sampler.num_levels=2", "sampler.steps_per_level=2",
                                            "metrics=[fid]"])
    assert rec["sampler"] == "langevin-2x2-5" and rec["nfe"] == 5 and rec["family"] == "langevin-2x2"
    rec, _ = run_eval(tmp_path, "h", ckpt, ["sampler=heun", "sampler.steps=2", "metrics=[fid]"])
    assert rec["sampler"] == "heun-2-3" and rec["nfe"] == 3 and rec["family"] == "heun"
    rec, _ = run_eval(tmp_path, "a", ckpt, ["sampler=adaptive", "sampler.rtol=1e-2", "sampler.atol=1e-2", "metrics=[fid]"])
    assert rec["nfe"] > 2 and rec["sampler"] == f"ode-dopri5-tol0.01-{rec['nfe']}"  # known after sampling
    with pytest.raises(ValueError, match="unknown"):
        run_eval(tmp_path, "x", ckpt, ["metrics=[fid,lpips]"])
    with pytest.raises(CheckpointError, match="not found"):
        run_eval(tmp_path, "y", tmp_path / "missing.ckpt", ["metrics=[fid]"])


def test_multirun_over_samplers_writes_records_and_summary(ckpt, tmp_path):
    """`python evaluate.py -m ... sampler=ddim,dpmpp_2m sampler.steps=4`: a record per job and, in the sweep
    directory, the summary written by the Hydra callback after the last job."""
    env = {**os.environ, "DIFFEXP_LOGS": str(tmp_path), "DIFFEXP_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "evaluate.py"), "-m", f"ckpt_path={ckpt}", "sampler=ddim,dpmpp_2m",
           "sampler.steps=4", "metrics=[fid,kid,nll]", *SMALL]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "evaluate" / "multiruns").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/evaluation.json")}
    assert {r["sampler"] for r in records.values()} == {"ddim-4", "dpmpp_2m-4"} and set(records) == {"0", "1"}
    for r in records.values():
        assert r["hydra"]["multirun"] and r["hydra"]["sweep_dir"] == str(sweep)
        assert "sampler.steps=4" in r["hydra"]["overrides"] and "nll_bpd" in r["values"]
        assert any(k.startswith("fid/random-") and "/n16/" in k for k in r["keys"])
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert sorted(r["sampler"] for r in rows) == ["ddim-4", "dpmpp_2m-4"]
    assert "summary of 2 job(s)" in proc.stdout + proc.stderr
    assert (sweep / "summary.md").is_file() and (sweep / "fid_vs_nfe.png").stat().st_size > 1000
