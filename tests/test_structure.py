"""The package's layering and packaging rules, checked on the source (cheap, no training):
libraries never import callbacks or CLIs, callbacks never import CLIs, nobody imports private names across
modules, every atomic write goes through diffexp.atomic, and pyproject's licence is an SPDX string."""

from __future__ import annotations

import ast
import sys

import pytest

from conftest import REPO

SRC = REPO / "src" / "diffexp"
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}  # config keys, not private attributes


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``from diffexp... import names`` / ``import diffexp...`` in a file."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffexp"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("diffexp")]
    return out


def test_libraries_never_import_callbacks_or_clis_and_callbacks_never_import_clis():
    bad = []
    for path, tree in _modules().items():
        layer = path.split("/")[0]
        for module, _ in _imports(tree):
            if layer not in ("callbacks", "cli") and module.startswith(("diffexp.callbacks", "diffexp.cli")):
                bad.append(f"{path} imports {module}")
            if layer == "callbacks" and module.startswith("diffexp.cli"):
                bad.append(f"{path} imports {module}")
            if layer == "cli" and module.startswith("diffexp.callbacks"):
                bad.append(f"{path} imports {module}")
    assert not bad, bad


def test_no_private_names_are_imported_across_modules():
    bad = [f"{path}: {name} from {module}" for path, tree in _modules().items()
           for module, names in _imports(tree) for name in names
           if name.startswith("_") and not name.startswith("__") and module != "diffexp._internals"]
    assert not bad, bad


def test_every_file_replacement_goes_through_the_atomic_helper():
    """``os.replace``/``os.rename`` appear in diffexp/atomic.py only (one fsync'd, cleaned-up way to write)."""
    users = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                users.append(path)
    assert set(users) == {"atomic.py"}, users


def test_project_license_is_an_spdx_string():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)  # a table is deprecated by setuptools (warning on install)
    requires = project["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in requires), requires  # SPDX strings need setuptools >= 77


def test_no_source_file_names_a_machine_specific_path():
    pattern = ("/work/", "/home/", "/Users/", "/tmp/pytest")
    files = [*SRC.rglob("*.py"), *(REPO / "docs").glob("*.md"), REPO / "README.md", REPO / "Makefile",
             *(REPO / "bench").glob("*.py"), *(REPO / "bench" / "results").glob("*"), *(REPO / "conf").rglob("*.yaml"),
             *(REPO / "scripts").glob("*.py"), *(REPO / "notebooks").glob("*.ipynb")]
    bad = [f"{p.relative_to(REPO)}: {s}" for p in files if p.is_file() for s in pattern if s in p.read_text()]
    assert not bad, bad


def _private_accesses() -> list[str]:
    """``obj._name`` reads/writes (and ``getattr(obj, "_name")``) of private attributes that diffexp does not
    define itself (on ``self``/``cls``, or as a function or class), outside diffexp/_internals.py."""
    trees = _modules()
    own = set()
    for tree in trees.values():
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name) \
                    and n.value.id in ("self", "cls"):
                own.add(n.attr)
            elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                own.add(n.name)
    bad = []
    for path, tree in trees.items():
        if path == "_internals.py":
            continue
        for n in ast.walk(tree):
            name = None
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
                v = n.value
                if not (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super"):
                    name = n.attr  # super()._hook(...) inside an override is fine
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "setattr", "hasattr") \
                    and len(n.args) > 1 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str):
                name = n.args[1].value if n.args[1].value.startswith("_") and not n.args[1].value.startswith("__") else None
            if name and name not in own and name not in HYDRA_KEYS:
                bad.append(f"{path}:{n.lineno}: {ast.unparse(n)[:60]}")
    return bad


def test_private_attributes_of_other_libraries_are_touched_only_in_internals():
    bad = _private_accesses()
    assert not bad, "use (or extend) diffexp._internals instead:\n" + "\n".join(bad)


def test_the_private_attributes_diffexp_relies_on_exist_in_the_installed_versions():
    from diffexp._internals import check

    assert check() == []


def test_contracts_names_only_what_exists():
    """docs/CONTRACTS.md stays current: every ``diffexp.x.y`` it names imports / exists."""
    import importlib
    import re

    missing = []
    for name in sorted(set(re.findall(r"diffexp(?:\.[A-Za-z_]\w*)+", (REPO / "docs" / "CONTRACTS.md").read_text()))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            break
        if obj is None:
            missing.append(name)
    assert not missing, missing


def test_bench_summary_writer_makes_paths_relative():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import run_all
    finally:
        sys.path.remove(str(REPO / "bench"))
    printed = f"threads=1; results: {REPO / 'bench' / 'results' / 'bench_fid_mnist.json'}"
    assert run_all.relative_paths(printed) == "threads=1; results: bench/results/bench_fid_mnist.json"


def test_bench_records_name_no_machine_paths(tmp_path, monkeypatch):
    """Results are committed: the cache folder is written as $DIFFEXP_CACHE and the checkout's paths relative."""
    monkeypatch.setenv("DIFFEXP_CACHE", str(tmp_path / "somewhere" / "cache"))
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from common import portable
    finally:
        sys.path.remove(str(REPO / "bench"))
    text = f'{{"ae": "{tmp_path}/somewhere/cache/autoencoders/x.ckpt", "out": "{REPO}/bench/results/a.json"}}'
    assert portable(text) == '{"ae": "$DIFFEXP_CACHE/autoencoders/x.ckpt", "out": "bench/results/a.json"}'
