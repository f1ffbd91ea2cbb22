"""The ``failguard`` command line: happy paths, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from failguard import FailureDetector, write_rollout
from failguard.cli import EXIT_DEPENDENCY, EXIT_INPUT, EXIT_RECALIBRATE, EXIT_TOO_FEW, main
from failguard.synthetic import make_rollouts

KW = {"length": 30, "embedding_dim": 8, "n_samples": 8, "horizon": 4, "action_dim": 2}


def _write(directory, rollouts, start=0):
    directory.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rollouts):
        write_rollout(r, directory / f"r{start + i:04d}")
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train = make_rollouts(40, seed=0, **KW) + make_rollouts(4, kind="failure", seed=9, **KW)
    test = make_rollouts(10, seed=2, **KW) + make_rollouts(10, kind="failure", seed=3, **KW)
    out = {
        "root": root,
        "train": _write(root / "train", train),
        "test": _write(root / "test", test),
        "new": _write(root / "new", make_rollouts(20, seed=4, **KW)),
        "drift": _write(root / "drift", make_rollouts(20, kind="ood_benign", seed=5, **KW)),
    }
    code = main(
        [
            "-q",
            "fit",
            str(out["train"]),
            "-o",
            str(root / "det"),
            "--alpha",
            "0.1",
            "--epochs",
            "3",
            "--fit-fraction",
            "0.2",
            "--window",
            "5",
        ]
    )
    assert code == 0
    out["det"] = root / "det"
    return out


def test_fit_writes_a_loadable_detector(dirs, capsys):
    det = FailureDetector.load(dirs["det"])
    assert det.names == ["rnd", "ace"] and det.alpha == 0.1
    assert det.n_fit_ == 8 and det.n_calibration_ == 32  # failures skipped, split by rollout
    assert det.windows == {"rnd": 5, "ace": 5}


def test_evaluate_prints_metrics_and_writes_json(dirs, capsys, tmp_path):
    js = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(dirs["det"]), str(dirs["test"]), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "tpr=" in out and "fail/id" in out
    data = json.loads(js.read_text())
    assert data["overall"]["n_failure"] == 10


def test_evaluate_alpha_sweep_needs_calibration_logs(dirs, capsys):
    code = main(["-q", "evaluate", str(dirs["det"]), str(dirs["test"]), "--alphas", "0.1,0.2"])
    assert code == EXIT_INPUT
    assert "--calibration-logs" in capsys.readouterr().err


def test_calibrate_keeps_scores_and_changes_alpha(dirs, tmp_path, capsys):
    out = tmp_path / "recal"
    code = main(
        ["-q", "calibrate", str(dirs["det"]), str(dirs["new"]), "-o", str(out), "--alpha", "0.2"]
    )
    assert code == 0
    old, new = FailureDetector.load(dirs["det"]), FailureDetector.load(out)
    assert new.alpha == 0.2 and new.n_calibration_ == 20
    for a, b in zip(old.scores, new.scores, strict=True):
        ta, tb = a.get_tensors(), b.get_tensors()
        assert ta.keys() == tb.keys()
        assert all((ta[k] == tb[k]).all() for k in ta)


def test_plan_prints_the_number(capsys):
    assert main(["plan", "--alpha", "0.1", "--delta", "0.1"]) == 0
    assert "needs 22 successful calibration rollouts" in capsys.readouterr().out


def test_health_exit_codes(dirs, capsys):
    assert main(["-q", "health", str(dirs["det"]), str(dirs["new"])]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["-q", "health", str(dirs["det"]), str(dirs["drift"])]) == EXIT_RECALIBRATE
    assert "Recalibrate" in capsys.readouterr().out
    few = _write(dirs["root"] / "few", make_rollouts(5, kind="ood_benign", seed=6, **KW))
    assert main(["-q", "health", str(dirs["det"]), str(few)]) == EXIT_TOO_FEW


@pytest.mark.parametrize(
    "case",
    [
        "missing_dir",
        "empty_dir",
        "unlabelled",
        "embedding_mismatch",
        "action_mismatch",
        "no_detector",
        "too_few",
        "bad_scores",
    ],
)
def test_bad_input_gives_one_line_error(dirs, tmp_path, capsys, case):
    det = str(dirs["det"])
    if case == "missing_dir":
        argv = ["evaluate", det, str(tmp_path / "nope")]
        expect = "no such directory"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        argv = ["evaluate", det, str(tmp_path / "empty")]
        expect = "Recorder"
    elif case == "unlabelled":
        rs = [r.replace(success=None) for r in make_rollouts(3, seed=1, **KW)]
        argv = ["evaluate", det, str(_write(tmp_path / "u", rs))]
        expect = "no success label"
    elif case == "embedding_mismatch":
        rs = make_rollouts(3, seed=1, **{**KW, "embedding_dim": 12})
        argv = ["evaluate", det, str(_write(tmp_path / "e", rs))]
        expect = "embedding size (12,)"
    elif case == "action_mismatch":
        rs = make_rollouts(3, seed=1, **{**KW, "horizon": 6})
        argv = ["calibrate", det, str(_write(tmp_path / "a", rs))]
        expect = "'action_samples' shape (8, 6, 2)"
    elif case == "no_detector":
        argv = ["evaluate", str(tmp_path / "nodet"), str(dirs["test"])]
        expect = "failguard fit"
    elif case == "too_few":
        argv = [
            "fit",
            str(_write(tmp_path / "few", make_rollouts(6, seed=1, **KW))),
            "-o",
            str(tmp_path / "d"),
            "--alpha",
            "0.1",
        ]
        expect = "needs 9"
    else:
        argv = ["fit", str(dirs["train"]), "-o", str(tmp_path / "d"), "--scores", "rnd,foo"]
        expect = "unknown score 'foo'"
    assert main(["-q", *argv]) == EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"failguard {argv[0]}: error:") and "\n" not in err
    assert expect in err


def test_argparse_errors_and_help(capsys):
    assert main(["plan", "--alpha", "1.5"]) == 2
    assert "range (0, 1)" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("fit", "calibrate", "evaluate", "export", "report", "plan", "health"):
        assert cmd in text
    assert "exit codes" in text
    assert main(["fit", "--help"]) == 0
    assert "--calibration-logs" in capsys.readouterr().out


def test_report_command_writes_html(dirs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.html"
    code = main(
        ["-q", "report", str(dirs["det"]), str(dirs["test"]), "-o", str(out), "--max-traces", "2"]
    )
    assert code == 0 and out.read_text().startswith("<!DOCTYPE html>")


def test_export(dirs, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    code = main(["export", str(dirs["det"]), "-o", str(tmp_path / "m.onnx")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "m.onnx").is_file()
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if failguard[export] were missing
    code = main(["export", str(dirs["det"]), "-o", str(tmp_path / "n.onnx")])
    assert code == EXIT_DEPENDENCY
    assert "failguard[export]" in capsys.readouterr().err


def test_console_script_runs():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "failguard.cli", "plan", "--alpha", "0.05"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0 and "19" in proc.stdout
