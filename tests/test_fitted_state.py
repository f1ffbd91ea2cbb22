"""Parameters and fitted state kept apart (issue 10, item 3): get_params, FittedState, views."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from conftest import make_detector
from failguard import FailureDetector
from failguard.config import DetectorConfig
from failguard.fitted import FittedState

FIELDS = [f.name for f in dataclasses.fields(DetectorConfig)]
STATE_VIEWS = {
    "calibration_": "calibration",
    "group_calibration_": "group_calibration",
    "n_fit_": "n_fit",
    "n_calibration_": "n_calibration",
    "longest_calibration_": "longest_calibration",
    "selection_": "selection",
}


def test_constructor_parameters_are_the_config_fields_in_order():
    # __init__ builds the config positionally, so the order must agree (a swap of two floats,
    # alpha and delta say, would pass validation unnoticed).
    params = list(inspect.signature(FailureDetector.__init__).parameters)
    assert params == ["self", "scores", *FIELDS]
    values = dict(
        windows={"ace": 3},
        window_kind="mean",
        combine="or",
        threshold="band",
        alpha=0.2,
        guarantee="marginal",
        delta=0.3,
        calibration="joint",
        split=0.4,
        trim=0.1,
        min_support=2,
        mondrian=True,
        mode="corrected",
        random_state=7,
    )
    assert set(values) == set(FIELDS)
    det = make_detector(**values)
    assert det.config == DetectorConfig(**values)
    for name in FIELDS:
        if name != "windows":
            assert getattr(det, name) == values[name]
    assert det.windows == {"rnd": 10, "ace": 3}


def test_every_parameter_is_a_generated_read_only_view_with_a_declared_type():
    det = make_detector(alpha=0.25)
    for name in FIELDS:
        if name == "windows":  # resolved per score name, written by hand
            continue
        assert name in FailureDetector.__annotations__, f"declare {name}'s type for mypy"
        assert isinstance(inspect.getattr_static(FailureDetector, name), property)
        assert getattr(det, name) == getattr(det.config, name)
        with pytest.raises(AttributeError, match="with_params"):
            setattr(det, name, getattr(det.config, name))
    assert det.alpha == 0.25


def test_get_params_round_trips_and_holds_parameters_only(detector):
    params = detector.get_params()
    assert list(params) == FIELDS
    rebuilt = FailureDetector(scores=detector.scores, **params)
    assert rebuilt.get_params() == params
    assert not rebuilt.fitted_state.fitted and not rebuilt.is_calibrated  # no state comes along
    # the default scores too (their names are the ones the resolved windows are keyed by)
    default = FailureDetector(windows={"ace": 4}, alpha=0.2, threshold="per_step")
    again = FailureDetector(**default.get_params())
    assert again.get_params() == default.get_params()
    assert again.windows == default.windows and again.settings == default.settings
    # fitting and calibrating leave the parameters alone (the fixture is fitted and calibrated)
    assert make_detector(alpha=0.1).get_params() == params


def test_fitted_state_is_one_object_behind_the_underscore_attributes(fit_set, cal_set):
    det = make_detector(alpha=0.2)
    assert isinstance(det.fitted_state, FittedState)
    assert not det.fitted_state.fitted and det.calibration_ is None and det.n_fit_ == 0
    det.fit(fit_set, progress=False).calibrate(cal_set)
    state = det.fitted_state
    assert state.fitted and state.n_fit == len(fit_set) and state.n_calibration == len(cal_set)
    assert state.calibration is not None and state.calibration_raw is not None
    for view, name in STATE_VIEWS.items():
        assert getattr(det, view) is getattr(state, name)
        with pytest.raises(AttributeError, match="fitted state"):
            setattr(det, view, getattr(state, name))
    assert det.thresholds_ is state.calibration.tables
    assert det.seen(fit_set[:1] + cal_set[:1]) == [0, 1]
    assert state.known_fingerprints() == state.fit_fingerprints | state.calibration_fingerprints
    # refitting replaces the fit part and drops the stale calibration, in the same object
    det.fit(cal_set[:8], progress=False)
    assert det.fitted_state is state and state.calibration is None
    assert state.calibration_raw is None and state.n_calibration == 0 and state.n_fit == 8


def test_with_params_copies_the_fit_state_and_recalibrates_from_shared_raw_scores(fit_set, cal_set):
    det = make_detector(alpha=0.2).fit(fit_set, progress=False).calibrate(cal_set)
    mine = det.fitted_state
    calibration, raw = mine.calibration, mine.calibration_raw
    other = det.with_params(alpha=0.3)
    theirs = other.fitted_state
    assert theirs is not mine and theirs.shares_scores and not mine.shares_scores
    for name in ("fit_fingerprints", "fit_keys", "calibration_fingerprints"):
        assert getattr(theirs, name) == getattr(mine, name)
        assert getattr(theirs, name) is not getattr(mine, name)  # copies, not shared sets
    assert theirs.fit_objects is not mine.fit_objects and set(theirs.fit_objects) == set(
        mine.fit_objects
    )
    assert theirs.calibration_raw is raw  # the cached raw scores are shared, never rescored
    assert theirs.calibration is not calibration and theirs.calibration is not None
    assert theirs.calibration.levels != calibration.levels  # recalibrated at alpha=0.3
    assert (theirs.n_calibration, theirs.longest_calibration) == (
        mine.n_calibration,
        mine.longest_calibration,
    )
    assert theirs.calibration_groups == mine.calibration_groups
    assert theirs.selection is None
    # the original is untouched, also when the copy refits its own (private) scores
    other.fit(cal_set[:8], progress=False)
    assert other.scores[0] is not det.scores[0] and not theirs.shares_scores
    assert det.fitted_state is mine and mine.calibration is calibration
    assert mine.n_fit == len(fit_set) and mine.calibration_raw is raw
    np.testing.assert_array_equal(det.thresholds_["rnd"], calibration.tables["rnd"])


def test_with_params_without_cached_raw_scores_gives_an_uncalibrated_copy(
    detector, cal_set, tmp_path
):
    loaded = FailureDetector.load(detector.save(tmp_path / "det"))
    assert loaded.fitted_state.calibration_raw is None and loaded.is_calibrated
    assert loaded.fitted_state.fit_fingerprints == detector.fitted_state.fit_fingerprints
    copy = loaded.with_params(alpha=0.2)
    assert copy.fitted_state.fitted and not copy.is_calibrated
    assert copy.fitted_state.n_calibration == 0 and copy.longest_calibration_ is None
    # it still remembers what the original was calibrated on (it refuses those rollouts)
    assert copy.seen(cal_set[:2]) == [0, 1]
