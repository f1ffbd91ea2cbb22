"""Run the examples in every public docstring, so the documentation cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import failguard

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
OPTIONAL = {"failguard.plots", "failguard.report", "failguard.integrations.gym"}


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(failguard.__path__, "failguard.")]
    return sorted(n for n in names if not n.endswith("__main__"))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        if name in OPTIONAL or name.startswith("failguard.integrations"):
            pytest.skip(f"optional dependency missing: {err}")
        raise
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
