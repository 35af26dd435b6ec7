"""bench/bench_peer.py: the whole comparison end to end (``--smoke``, slow). Its diffexp side on a conditional
latent recipe: tests/test_bench_time_to_quality.py; the confidence share: tests/test_metrics.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.slow
def test_smoke_run_scores_both_sides(tmp_path):
    pytest.importorskip("denoising_diffusion_pytorch")
    from bench_peer import mnist_root

    if mnist_root() is None:
        pytest.skip("MNIST not available (make data)")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_peer.py"), "--smoke", "--threads", "1",
                           "--out-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "bench_peer.json").read_text())
    rows = record["evaluations"]
    assert {r["who"] for r in rows} == {"peer", "diffexp"}
    for r in rows:
        assert math.isfinite(r["fid"]) and 0.0 <= r["confident"] <= 1.0 and sum(r["class_counts"]) == 64
    assert record["sides"]["peer"]["params"] == pytest.approx(0.62e6, rel=0.01)
    assert record["floor_real_train_images"]["confident"] > 0.8  # real images (0.91 with the 1-epoch classifier)
    assert "## bench_peer" in proc.stdout
