"""One exception hierarchy: every deliberate error is a FailguardError from exceptions.py, and
the CLI turns only those into one-line errors (a programming bug stays a traceback)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import failguard
from failguard import exceptions
from failguard.cli import EXIT_INPUT, main
from failguard.scores import SCORE_ALIASES, SCORE_NAMES, make_score
from failguard.synthetic import make_rollouts

SRC = Path(failguard.__file__).parent
# AttributeError is left out: module __getattr__ must raise it (PEP 562).
BUILTIN = (ValueError, TypeError, RuntimeError, KeyError, IndexError, Exception)


def test_every_exception_derives_from_failguard_error():
    classes = [c for _, c in inspect.getmembers(exceptions, inspect.isclass)]
    ours = [c for c in classes if c.__module__ == exceptions.__name__]
    assert set(exceptions.__all__) == {c.__name__ for c in ours}
    assert all(issubclass(c, exceptions.FailguardError) for c in ours)
    # the ValueError / TypeError a caller may have caught before keeps working
    assert issubclass(exceptions.ConfigError, ValueError)
    assert issubclass(exceptions.ParameterError, exceptions.ConfigError)
    assert issubclass(exceptions.ParameterError, TypeError)
    from failguard.cli import CliError
    from failguard.distributed import DistributedError
    from failguard.exporters import ExportError

    assert ExportError is exceptions.ExportError is failguard.ExportError
    assert DistributedError is exceptions.DistributedError
    assert CliError is exceptions.CliError


def _raised_names(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name):
                out.append((node.lineno, exc.id))
    return out


def test_src_raises_no_bare_builtin_errors():
    """Every ``raise X(...)`` in src names a FailguardError (abstract methods aside)."""
    # NotImplementedError: abstract methods, a programming error by design
    builtin = {c.__name__ for c in BUILTIN} | {"ImportError", "OSError", "AssertionError"}
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for line, name in _raised_names(path):
            if name == "AssertionError" and path.name == "testing.py":
                continue  # the contract checks fail as test assertions, as pytest expects
            if name in builtin:
                bad.append(f"{path.relative_to(SRC)}:{line}: raise {name}")
    assert not bad, "\n".join(bad)


def test_the_scan_finds_a_bare_raise(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("def f():\n    raise ValueError('no')\n")
    assert _raised_names(p) == [(2, "ValueError")]


def test_cli_catches_failguard_errors_only(monkeypatch, capsys, tmp_path):
    import failguard.cli as cli

    def failguard_error(args):
        raise exceptions.CalibrationError("too few successes; record more.")

    def bug(args):
        raise ValueError("a programming bug")

    for func in (failguard_error, bug):
        monkeypatch.setattr(cli, "cmd_plan", func)  # what `failguard plan` runs
        if func is bug:
            with pytest.raises(ValueError, match="programming bug"):
                main(["-q", "plan", "--alpha", "0.1"])
        else:
            assert main(["-q", "plan", "--alpha", "0.1"]) == EXIT_INPUT
            err = capsys.readouterr().err
            assert err.startswith("failguard plan: error: too few successes")


def _all_fields(n, seed, kind="nominal"):
    return make_rollouts(
        n, kind=kind, seed=seed, length=20, embedding_dim=6, n_samples=6, horizon=6,
        action_dim=2, n_discrete=3,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCORE_NAMES) + sorted(SCORE_ALIASES))
def test_every_score_name_builds_and_fits(name):
    fast = {"rnd": {"max_epochs": 2}, "rnd_a": {"max_epochs": 2}, "logpzo": {"epochs": 2}}
    fast |= {"progress": {"epochs": 2}, "shortfall": {"epochs": 2}}
    score = make_score(name, **fast.get(name, {}))
    assert score.name == SCORE_ALIASES.get(name, name)
    rollouts = _all_fields(6, seed=0)
    s = score.fit(rollouts).score(rollouts[0])
    assert s.shape == (len(rollouts[0].embeddings),)


def test_make_score_refuses_unknown_names_and_parameters():
    with pytest.raises(exceptions.ConfigError, match="Unknown score 'nope'"):
        make_score("nope")
    with pytest.raises(exceptions.ConfigError, match="parameter names"):
        make_score("ace", no_such_parameter=1)


@pytest.mark.parametrize("spec", ["entropy-ids", "entropy_samples,entropy,stagnation"])
def test_cli_fit_builds_every_advertised_score(spec, tmp_path):
    from failguard import FailureDetector, write_rollout

    logs = tmp_path / "logs"
    logs.mkdir()
    for i, r in enumerate(_all_fields(24, seed=1)):
        write_rollout(r, logs / f"r{i:03d}")
    out = tmp_path / "det"
    assert main(["-q", "fit", str(logs), "-o", str(out), "--alpha", "0.2", "--scores", spec]) == 0
    want = [SCORE_ALIASES.get(n, n) for n in spec.split(",")]
    assert FailureDetector.load(out).names == want
