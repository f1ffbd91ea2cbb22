"""Reuse is refused; independent episodes that repeat step for step can be declared so."""

from __future__ import annotations

import shutil

import pytest

from conftest import make_detector
from failguard import FailureDetector, evaluate, read_rollouts, write_rollout
from failguard.exceptions import CalibrationError
from failguard.synthetic import make_rollouts


def _copy(r):
    """The same episode recorded again: identical content, another object, no file."""
    return r.replace(metadata={"episode": "again"})


@pytest.fixture(scope="module")
def fitted(fit_set):
    return make_detector(alpha=0.2).fit(fit_set, progress=False)


def test_identical_episodes_are_refused_then_accepted_when_declared(fitted, fit_set, cal_set):
    cal = [*cal_set[:20], _copy(fit_set[0]), _copy(fit_set[1])]
    with pytest.raises(CalibrationError, match="independent_repeats=True"):
        fitted.with_params().calibrate(cal)
    det = fitted.with_params().calibrate(cal, independent_repeats=True)
    assert det.n_calibration_ == 22
    # Repeats inside the calibration set too.
    with pytest.raises(CalibrationError, match=r"rollout 20 .*repeats rollout 0"):
        fitted.with_params().calibrate([*cal_set[:20], _copy(cal_set[0])])
    fitted.with_params().calibrate([*cal_set[:20], _copy(cal_set[0])], independent_repeats=True)


def test_provable_reuse_is_refused_even_when_repeats_are_declared(fitted, fit_set, cal_set):
    with pytest.raises(CalibrationError, match="same rollout object or file"):
        fitted.calibrate(cal_set[:20] + fit_set[:1], independent_repeats=True)
    with pytest.raises(CalibrationError, match="same rollout object or file"):
        fitted.calibrate(cal_set[:20] + cal_set[:1], independent_repeats=True)


def test_files_same_file_is_reuse_a_copy_is_a_repeat(tmp_path, fit_set, cal_set):
    for i, r in enumerate(fit_set):
        write_rollout(r, tmp_path / "fit" / f"r{i}")
    for i, r in enumerate(cal_set[:20]):
        write_rollout(r, tmp_path / "cal" / f"r{i}")
    det = make_detector(alpha=0.2).fit(read_rollouts(tmp_path / "fit"), progress=False)
    cal = read_rollouts(tmp_path / "cal")
    again = read_rollouts(tmp_path / "fit")[:2]  # the same files, read again
    with pytest.raises(CalibrationError, match="same rollout object or file"):
        det.calibrate(cal + again, independent_repeats=True)
    shutil.copytree(tmp_path / "fit", tmp_path / "fit_copy")
    copies = read_rollouts(tmp_path / "fit_copy")[:2]  # other files, same content
    with pytest.raises(CalibrationError, match="independent_repeats"):
        det.calibrate(cal + copies)
    det.calibrate(cal + copies, independent_repeats=True)
    # The file identities survive save/load: a loaded detector still refuses the same files.
    loaded = FailureDetector.load(det.save(tmp_path / "det"))
    with pytest.raises(CalibrationError, match="same rollout object or file"):
        loaded.calibrate(cal + read_rollouts(tmp_path / "fit")[:1], independent_repeats=True)
    loaded.calibrate(cal + copies, independent_repeats=True)


def test_evaluate_warns_on_rollouts_it_has_seen(detector, fit_set, cal_set):
    test = make_rollouts(5, seed=70, length=40, n_discrete=5)
    with pytest.warns(UserWarning, match="2 of 7 rollouts .* fitted or calibrated on"):
        evaluate(detector, [*test, fit_set[0], cal_set[3]])
    assert detector.seen([*test, fit_set[0], cal_set[3]]) == [5, 6]
