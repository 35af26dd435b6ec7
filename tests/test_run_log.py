"""A run's messages: the known-harmless warnings are filtered (and nothing else), and train.log in the run
directory holds the run's log (Lightning's messages and diffexp's)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from conftest import REPO
from diffexp.logs import KNOWN_HARMLESS, filter_known_warnings

HARMLESS_TEXTS = ("module(s) in eval mode", "isinstance(treespec, LeafSpec)", "does not have many workers")


def test_only_the_listed_warnings_are_filtered():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_warnings()
        warnings.warn("Found 135 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.", UserWarning,
                      stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "a real problem", "Found 3 module(s) in eval mode at the start of training."]  # other category: kept
    assert all(why for _, _, why in KNOWN_HARMLESS)  # every filter says why it is harmless


def test_debug_fast_run_shows_no_known_harmless_warning_and_writes_train_log(tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "debug=fast", "data=toy2d", "data.num_train=64", "data.num_val=16",
           "data.num_test=16", "data.batch_size=16", "model=mlp", "model.hidden_dim=16", "model.num_blocks=1",
           "model.time_embed_dim=16", "schedule.num_timesteps=50", "sampler.steps=3", f"paths.log_dir={tmp_path}",
           "hydra.run.dir=" + str(tmp_path / "run"), "print_config=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    shown = [t for t in HARMLESS_TEXTS if t in output]
    assert not shown, shown
    log = (tmp_path / "run" / "train.log").read_text()
    assert "`Trainer.fit` stopped: `max_steps=4` reached" in log  # Lightning's messages
    assert "run directory :" in log and "final metrics :" in log  # diffexp's messages
    assert "resolved config:" in log and "num_timesteps: 50" in log
    assert output.count("`Trainer.fit` stopped") == 1  # on the console once (not also by Lightning's own handler)
