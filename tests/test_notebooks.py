"""The notebooks under notebooks/ run top to bottom (nbclient) and are committed without outputs.

The kernel is this interpreter (``sys.executable``, i.e. the project venv): a kernelspec pointing at it is
written into a temporary JUPYTER_PATH, so a system-wide ``python3`` kernel is never picked up. The
notebooks' own asserts (closed forms, posterior moments, sample quality) fail the test like any cell error.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_forward_and_reverse.ipynb", "02_train_sample_evaluate.ipynb"]
KERNEL = "diffexp-test-venv"


def test_notebooks_present_and_stripped():
    """Both notebooks exist, are valid nbformat 4 and carry no outputs or execution counts."""
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert set(NAMES) <= set(found), found
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
        assert not dirty, f"{name}: code cells {dirty} have outputs; strip them before committing"


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernelspec running ipykernel with this interpreter, found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "diffexp venv (tests)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))  # the notebooks' temporary run directories land in tmp_path
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return KERNEL


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, venv_kernel):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=600,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    t = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error (asserts included)
    seconds = time.perf_counter() - t
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 2, f"{name}: expected plots, got {images} images"
    print(f"{name}: {seconds:.0f} s")
