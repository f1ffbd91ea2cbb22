"""No import cycles in src/: not at module level, and not through imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import failguard

ROOT = Path(failguard.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every failguard module each module imports (TYPE_CHECKING blocks left out)."""
    out: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(c)
            for n in ast.walk(tree)
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
            for c in ast.walk(n)
        }
        package = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for n in ast.walk(tree):
            if id(n) in typing_only or not isinstance(n, ast.ImportFrom):
                continue
            base = package[: len(package) - n.level + 1] if n.level else []
            name = ".".join([*base, *([n.module] if n.module else [])])
            for target in (name, *(f"{name}.{a.name}" for a in n.names)):
                # a parent package is imported before its modules anyway: not a cycle
                if target in mods and target != m and not m.startswith(target + "."):
                    out[m].add(target)
    return out


def test_no_import_cycles():
    graph = _imports(_modules())
    assert graph["failguard.detector"] >= {"failguard.monitor", "failguard.core.spec"}
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"
