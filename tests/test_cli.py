"""The ``failguard`` command line: happy paths, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_plan_prints_the_number_fit_asks_for(dirs, tmp_path, capsys):
    # PAC with calibration="auto" is joint: plan must count the split, as fit does.
    assert main(["plan", "--alpha", "0.1", "--delta", "0.1"]) == 0
    assert "needs 44 successful calibration rollouts" in capsys.readouterr().out
    for extra in ([], ["--combine", "or", "--threshold", "band"]):
        assert main(["plan", "--alpha", "0.1", "--delta", "0.1", *extra]) == 0
        planned = re.search(r"needs (\d+) successful", capsys.readouterr().out)
        argv = ["-q", "fit", str(dirs["train"]), "-o", str(tmp_path / "d"), "--alpha", "0.1"]
        code = main([*argv, "--guarantee", "pac", "--delta", "0.1", *extra])
        assert code == EXIT_INPUT
        asked = re.search(r"needs (\d+) with these options", capsys.readouterr().err)
        assert planned and asked and planned.group(1) == asked.group(1)


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
        argv = ["calibrate", det, str(_write(tmp_path / "a", rs)), "-o", str(tmp_path / "o")]
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


# ------------------------------------------------------------ issue 11: a new user's path
def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_calibrate_never_overwrites_a_detector_without_force(dirs, tmp_path, capsys):
    det = tmp_path / "det"
    shutil.copytree(dirs["det"], det)
    before = _files(det)
    assert main(["-q", "calibrate", str(det), str(dirs["new"])]) == EXIT_INPUT
    assert "-o NEW_DIR" in capsys.readouterr().err and _files(det) == before
    other = tmp_path / "other"
    shutil.copytree(dirs["det"], other)
    assert main(["-q", "calibrate", str(det), str(dirs["new"]), "-o", str(other)]) == EXIT_INPUT
    assert "--force" in capsys.readouterr().err and _files(other) == _files(dirs["det"])
    assert main(["-q", "calibrate", str(det), str(dirs["new"]), "-o", str(tmp_path / "v2")]) == 0
    assert _files(det) == before and (tmp_path / "v2" / "config.json").is_file()
    assert main(["-q", "calibrate", str(det), str(dirs["new"]), "--force"]) == 0
    assert FailureDetector.load(det).n_calibration_ == 20


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_documented_recalibrate_line_acts_only_on_exit_4(dirs, tmp_path, capsys):
    from failguard.cli import RECALIBRATE_LINE

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert RECALIBRATE_LINE in readme
    assert main(["--help"]) == 0
    assert RECALIBRATE_LINE in capsys.readouterr().out
    # 9 new successes: health exits 5 (too few); the line must leave the detector alone.
    cases = {
        5: make_rollouts(9, seed=4, **KW),
        4: make_rollouts(20, kind="ood_benign", seed=5, **KW),
    }
    for expected, new in cases.items():
        work = tmp_path / f"exit{expected}"
        shutil.copytree(dirs["det"], work / "detector")
        _write(work / "new", new)
        before = _files(work / "detector")
        script = (
            # The documented line verbatim; the function records each command's exit code.
            'failguard() { "$PY" -m failguard.cli -q "$@"; c=$?; echo "$1=$c"; return $c; }\n'
            + RECALIBRATE_LINE
            + "\n"
        )
        proc = subprocess.run(
            ["sh", "-c", script],
            cwd=work,
            env={**os.environ, "PY": sys.executable},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert f"health={expected}" in proc.stdout, proc.stderr
        assert ("calibrate=0" in proc.stdout) == (expected == 4)
        assert _files(work / "detector") == before
        assert (work / "detector_v2").exists() == (expected == 4), proc.stderr


def test_exit_codes_are_documented(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert main(["--help"]) == 0
    helptext = capsys.readouterr().out
    for code in ("0", "1", "2", "3", "4", "5", "130"):
        assert re.search(rf"^  {code} ", helptext, re.M), code
        assert re.search(rf"\b{code}\b", readme.split("Exit codes", 1)[1][:800]), code


def test_fit_checks_every_input_before_training(dirs, tmp_path, capsys, monkeypatch):
    calls = []
    original = FailureDetector.fit
    monkeypatch.setattr(
        FailureDetector, "fit", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    train = str(dirs["train"])
    (tmp_path / "file").write_text("x")
    few = _write(tmp_path / "few_cal", make_rollouts(5, seed=11, **KW))
    cases = {
        "is the log directory": ["-o", train],
        "is a file": ["-o", str(tmp_path / "file")],
        "already holds a detector": ["-o", str(dirs["det"])],
        "holds rollout logs": ["-o", str(dirs["test"])],
        "needs 9 with these options": ["-o", str(tmp_path / "d"), "--calibration-logs", str(few)],
        "is LOGS itself": ["-o", str(tmp_path / "d"), "--calibration-logs", train],
    }
    for expect, extra in cases.items():
        assert main(["-q", "fit", train, "--alpha", "0.1", *extra]) == EXIT_INPUT, expect
        assert expect in capsys.readouterr().err
    assert calls == []  # nothing was trained
    assert len(list(dirs["train"].glob("*.safetensors"))) == 44


def test_seen_logs_are_refused_unless_allowed(dirs, capsys):
    det, train = str(dirs["det"]), str(dirs["train"])
    for cmd in ("evaluate", "health"):
        assert main(["-q", cmd, det, train]) == EXIT_INPUT
        assert "--allow-seen" in capsys.readouterr().err
    assert main(["-q", "evaluate", det, train, "--allow-seen"]) == 0
    err = capsys.readouterr().err
    assert err.count("fitted or calibrated on") == 1 and "--allow-seen" in err
    # The artifact holds the content hashes of both sets.
    config = json.loads((dirs["det"] / "config.json").read_text())
    assert len(config["fit_fingerprints"]) == 8 and len(config["calibration_fingerprints"]) == 32


def test_help_texts_state_each_default_once(capsys):
    for cmd in ("fit", "calibrate", "evaluate", "report", "plan", "health", "export"):
        assert main([cmd, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "[0." not in text, cmd
        assert not re.search(r"default[^()]*\) \(default", text), cmd
    assert main(["report", "--help"]) == 0
    assert "0.01,0.02,0.05" in " ".join(capsys.readouterr().out.split())


def test_cli_messages_name_cli_options_not_python_calls(dirs, tmp_path, capsys):
    few = _write(tmp_path / "few", make_rollouts(6, seed=21, **KW))
    out = str(tmp_path / "o")
    assert main(["-q", "calibrate", str(dirs["det"]), str(few), "-o", out]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "`failguard plan`" in err and "plan()" not in err and "--alpha" in err
    assert main(["-q", "health", str(dirs["det"]), str(dirs["drift"])]) == EXIT_RECALIBRATE
    text = capsys.readouterr().out
    assert "detector.calibrate" not in text and f"failguard calibrate {dirs['det']}" in text


def test_health_says_it_skipped_failed_rollouts(dirs, tmp_path, capsys):
    mixed = _write(tmp_path / "mixed", make_rollouts(20, seed=4, **KW))
    _write(mixed, make_rollouts(3, kind="failure", seed=8, **KW), start=100)
    assert main(["-q", "health", str(dirs["det"]), str(mixed)]) == 0
    assert "3 failed ones skipped" in capsys.readouterr().out


def test_no_progress_bars_when_output_is_not_a_terminal(dirs, tmp_path, capsys):
    # capsys: stdout and stderr are not terminals, as when piped; no -q given.
    args = ["fit", str(dirs["train"]), "-o", str(tmp_path / "d"), "--epochs", "3"]
    assert main([*args, "--alpha", "0.1", "--fit-fraction", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "\r" not in err and "%|" not in err


def test_report_default_sweep_keeps_alphas_the_set_supports(dirs):
    from failguard.cli import DEFAULT_SWEEP, _supported_alphas

    det = FailureDetector.load(dirs["det"])  # 32 calibration rollouts
    alphas = _supported_alphas(det)
    assert alphas == [a for a in DEFAULT_SWEEP if a >= 0.05]
    for a in alphas:
        assert det.with_params(alpha=a).calibration_plan().n_required <= 32


def test_independent_repeats_option(dirs, tmp_path, capsys):
    # Copies of fit rollouts in another directory: identical content, other files.
    fit_files = FailureDetector.load(dirs["det"])
    from failguard import read_rollouts

    train = [r for r in read_rollouts(dirs["train"]) if r.success]
    fit_prints = set(json.loads((dirs["det"] / "config.json").read_text())["fit_fingerprints"])
    from failguard._gate import fingerprint as _fingerprint

    repeats = [r for r in train if _fingerprint(r) in fit_prints]
    assert len(repeats) == fit_files.n_fit_
    new = _write(tmp_path / "new", make_rollouts(25, seed=31, **KW))
    _write(new, repeats[:2], start=100)
    argv = ["-q", "calibrate", str(dirs["det"]), str(new), "-o", str(tmp_path / "v2")]
    assert main(argv) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "--independent-repeats" in err and "independent_repeats=True" not in err
    assert main([*argv, "--independent-repeats"]) == 0
    assert FailureDetector.load(tmp_path / "v2").n_calibration_ == 27


def test_fit_with_validation_logs_selects(dirs, tmp_path, capsys):
    val = _write(
        tmp_path / "val",
        make_rollouts(24, seed=20, **KW) + make_rollouts(6, kind="stuck", seed=21, **KW),
    )
    out = tmp_path / "sel"
    args = ["fit", str(dirs["train"]), "-o", str(out), "--alpha", "0.2", "--epochs", "3"]
    assert main([*args, "--validation-logs", str(val)]) == 0
    printed = capsys.readouterr().out
    assert "criterion: TWA on 6 validation failures" in printed
    det = FailureDetector.load(out)
    assert det.is_calibrated and det.alpha == 0.2
    code = main([*args, "--force", "--validation-logs", str(dirs["train"])])
    assert code == EXIT_INPUT
    assert "--validation-logs" in capsys.readouterr().err


def test_combine_accepts_k_of_n(capsys):
    # 2-of-3 per indicator: each leg at 2 * 0.05 / 3, so fewer rollouts than OR needs
    assert main(["plan", "--alpha", "0.05", "--n-indicators", "3", "--combine", "2-of-3"]) == 0
    vote = int(re.search(r"needs (\d+) successful", capsys.readouterr().out).group(1))
    assert main(["plan", "--alpha", "0.05", "--n-indicators", "3", "--combine", "or"]) == 0
    union = int(re.search(r"needs (\d+) successful", capsys.readouterr().out).group(1))
    assert vote < union
    assert main(["plan", "--alpha", "0.05", "--combine", "two"]) == 2
    assert "k-of-n" in capsys.readouterr().err
    assert main(["plan", "--alpha", "0.05", "--n-indicators", "2", "--combine", "2-of-3"]) != 0
    assert "k-of-2" in capsys.readouterr().err
