"""The house plan holds: the domain (`medvec/`) imports and parses its command line with Dagster and the
Dagster side unimportable, and no module crosses a layer it must not know about."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGSTER_SIDE = ("dagster", "pipelines", "assets", "resources")

# Installed before anything else in a fresh interpreter: every import of a blocked top-level name fails,
# as it would where Dagster (and the Dagster side of this repository) is not installed.
BLOCKER = """
import sys

BLOCKED = {blocked!r}


class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_house_plan)", name=name)
        return None


sys.meta_path.insert(0, Unimportable())
"""

IMPORT_EVERY_MODULE = """
import importlib
import pkgutil

import medvec

failed = []
for info in pkgutil.walk_packages(medvec.__path__, "medvec."):
    if info.name == "medvec.cli.__main__":
        continue  # running it is the CLI test below
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
print("imported", sum(1 for _ in pkgutil.walk_packages(medvec.__path__, "medvec.")))
leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
print("leaked", leaked)
sys.exit(1 if failed or leaked else 0)
"""

RUN_CLI = """
from medvec.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _python(code: str, *args: str, blocked=DAGSTER_SIDE) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=set(blocked)) + code, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_every_domain_module_imports_without_dagster():
    result = _python(IMPORT_EVERY_MODULE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leaked []" in result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["normalize", "--help"], ["eval", "--help"]])
def test_domain_cli_parses_without_dagster(argv):
    result = _python(RUN_CLI, *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: medvec")


def test_dagster_commands_name_the_extra_when_the_dagster_side_is_missing():
    result = _python(RUN_CLI, "ingest", "/nowhere")
    assert result.returncode == 2
    assert "pip install 'medvec[dagster]'" in result.stderr


def test_dagster_commands_name_the_extra_when_only_dagster_is_missing():
    result = _python(RUN_CLI, "ingest", "/nowhere", blocked=("dagster",))
    assert result.returncode == 2
    assert "medvec ingest drives Dagster" in result.stderr and "pip install 'medvec[dagster]'" in result.stderr


def test_dagster_commands_extend_the_one_medvec_command():
    result = subprocess.run([sys.executable, "-m", "medvec.cli", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    for command in ("normalize", "search", "serve", "ingest", "backfill", "demo"):
        assert command in result.stdout


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package, forbidden", [
    ("medvec", {"dagster", "pipelines", "assets", "resources"}),
    ("assets", {"pipelines"}),
    ("resources", {"assets", "pipelines"}),
])
def test_no_module_imports_across_the_layers(package, forbidden):
    crossings = [f"{path.relative_to(ROOT)} imports {sorted(_imported_roots(path) & forbidden)}"
                 for path in sorted((ROOT / package).rglob("*.py")) if _imported_roots(path) & forbidden]
    assert not crossings, "\n".join(crossings)
