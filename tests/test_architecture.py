"""The layers of DESIGN.md hold: the import contracts in pyproject.toml pass on the package, and
they do catch the breaks they are there for (a planted circle, a planted upward import)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# run lint-imports as a module of this interpreter (the same venv that runs the tests)
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]


def lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [*LINT, "--no-cache", "--no-logo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_package(tmp: Path) -> Path:
    """The package and its contracts in a scratch directory, to plant breaks in."""
    shutil.copytree(ROOT / "nexussched", tmp / "nexussched", ignore=shutil.ignore_patterns("data"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def test_the_package_keeps_every_import_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout
    # the contracts of DESIGN.md are all declared (a dropped contract would pass silently)
    kept = r.stdout.count(" KEPT")
    assert kept >= 5, r.stdout


def test_a_planted_circle_between_service_and_modes_is_caught(tmp_path):
    pkg = copy_package(tmp_path)
    service = pkg / "nexussched" / "router" / "service.py"
    # the circle issue 14 removed: the service importing a mode that imports the dispatch interface
    service.write_text(
        service.read_text() + "\nfrom .modes.local import LocalDispatcher  # noqa: E402,F401\n"
    )
    local = pkg / "nexussched" / "router" / "modes" / "local.py"
    local.write_text(local.read_text() + "\nfrom .. import service  # noqa: E402,F401\n")
    r = lint(pkg)
    assert r.returncode == 1, r.stdout
    assert "No import circle between sibling modules" in r.stdout
    assert "BROKEN" in r.stdout
    assert "No cycles are allowed in nexussched.router." in r.stdout
    assert ".service -> .modes" in r.stdout or ".modes -> .service" in r.stdout


def test_a_circle_in_a_small_package_is_caught_and_its_removal_passes(tmp_path):
    """The acyclic contract itself, on a package of four modules: a -> b -> a breaks it."""
    pkg = tmp_path / "circ"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    for f in ("__init__.py", "a/__init__.py", "b/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "a" / "x.py").write_text("from circ.b import y\n")
    (pkg / "b" / "y.py").write_text("VALUE = 1\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = circ\n\n"
        "[importlinter:contract:acyclic]\nname = acyclic\ntype = acyclic_siblings\n"
        "ancestors = circ\n"
    )
    assert lint(tmp_path, ".importlinter").returncode == 0
    (pkg / "b" / "z.py").write_text("from circ.a import x\n")
    r = lint(tmp_path, ".importlinter")
    assert r.returncode == 1, r.stdout
    assert "No cycles are allowed in circ." in r.stdout
    assert ".b -> .a" in r.stdout  # the dependency to remove is named


def test_an_upward_import_breaks_the_layers(tmp_path):
    """perfmodel importing the simulator (a lower layer reaching up) is caught."""
    pkg = copy_package(tmp_path)
    f = pkg / "nexussched" / "perfmodel" / "__init__.py"
    f.write_text(f.read_text() + "\nfrom .. import sim  # noqa: E402,F401\n")
    r = lint(pkg)
    assert r.returncode == 1
    assert "Package layers" in r.stdout and "BROKEN" in r.stdout
    assert "nexussched.perfmodel -> nexussched.sim" in r.stdout


def test_policies_importing_aiohttp_break_their_purity(tmp_path):
    pkg = copy_package(tmp_path)
    f = pkg / "nexussched" / "router" / "policies" / "simple.py"
    f.write_text(f.read_text() + "\nimport aiohttp  # noqa: E402,F401\n")
    r = lint(pkg)
    assert r.returncode == 1
    assert "Routing policies are pure" in r.stdout and "BROKEN" in r.stdout
