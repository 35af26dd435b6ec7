"""The package's layering and packaging rules, checked on the source (cheap, no training):
libraries never import callbacks or CLIs, callbacks never import CLIs, nobody imports private names across
modules, every atomic write goes through diffexp.atomic, and pyproject's licence is an SPDX string."""

from __future__ import annotations

import ast
import sys

import pytest

from conftest import REPO

SRC = REPO / "src" / "diffexp"


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
    files = [*SRC.rglob("*.py"), REPO / "docs" / "CONTRACTS.md", REPO / "bench" / "results" / "summary.md",
             *(REPO / "bench").glob("*.py"), *(REPO / "conf").rglob("*.yaml")]
    bad = [f"{p.relative_to(REPO)}: {s}" for p in files if p.is_file() for s in pattern if s in p.read_text()]
    assert not bad, bad
