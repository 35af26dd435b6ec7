"""bench/bench_peer.py: its scoring helper (fast) and the whole comparison end to end (``--smoke``, slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


class _Logits(torch.nn.Module):
    """A stand-in classifier: the 'image' is its own logits."""

    def forward(self, x):
        return x, x


def test_confidence_share_and_class_balance():
    from bench_peer import confidence

    big = 10.0  # softmax max = e^10 / (e^10 + 9) ≈ 0.9996
    logits = torch.zeros(8, 10)
    logits[:4, 3] = big           # 4 confident 3s
    logits[4:6, 7] = big          # 2 confident 7s
    logits[6, 1] = 1.0            # not confident: e / (e + 9) ≈ 0.23
    logits[7, 2] = math.log(9 * 0.9 / 0.1)  # max softmax exactly 0.9: counted as confident
    res = confidence(_Logits(), logits, threshold=0.9)
    assert res["confident"] == pytest.approx(7 / 8)
    assert res["class_counts"] == [0, 1, 1, 4, 0, 0, 0, 2, 0, 0]
    p = torch.tensor([1, 1, 4, 2]) / 8
    assert res["class_entropy"] == pytest.approx(float(-(p * p.log()).sum() / math.log(10)))


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
