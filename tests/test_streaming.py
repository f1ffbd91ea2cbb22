"""Streaming over iterators: the same thresholds, metrics and health, one rollout in memory."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from conftest import make_detector
from failguard import ArtifactError, CalibrationError, evaluate, iter_rollouts, write_rollout
from failguard.health import check_calibration
from failguard.logs import rollout_from_bytes, rollout_to_bytes
from failguard.streaming import (
    RolloutResult,
    calibrate_from_results,
    evaluate_results,
    iter_results,
)
from failguard.synthetic import make_rollouts


def same_calibration(a, b):
    for ca, cb in [(a.calibration_, b.calibration_)] + [
        (a.group_calibration_[g], b.group_calibration_[g]) for g in a.group_calibration_
    ]:
        assert set(ca.tables) == set(cb.tables)
        for k in ca.tables:
            np.testing.assert_array_equal(ca.tables[k], cb.tables[k])
        assert set(ca.statistics) == set(cb.statistics)
        for k in ca.statistics:
            np.testing.assert_array_equal(ca.statistics[k], cb.statistics[k])
        assert ca.levels == cb.levels
        assert (ca.n_profile, ca.n_conformal) == (cb.n_profile, cb.n_conformal)
    assert sorted(a.group_calibration_) == sorted(b.group_calibration_)
    assert a.n_calibration_ == b.n_calibration_
    assert a.longest_calibration_ == b.longest_calibration_
    assert a.fitted_state.calibration_fingerprints == b.fitted_state.calibration_fingerprints


@pytest.fixture(scope="module")
def fitted(fit_set):
    return make_detector(alpha=0.1).fit(fit_set, progress=False)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"calibration": "joint"},
        {"combine": "or"},
        {"threshold": "per_step"},
        {"threshold": "band", "trim": 0.1},
        {"guarantee": "pac", "alpha": 0.2},
        {"mondrian": True, "alpha": 0.25},
        {"mode": "reference", "threshold": "band"},
    ],
)
def test_streamed_calibration_is_identical(fitted, cal_set, test_set, params):
    base = fitted.with_params(**params)
    cal = cal_set + make_rollouts(20, kind="ood_benign", seed=11, length=40, n_discrete=5)
    listed = base.with_params().calibrate(cal)
    streamed = base.with_params().calibrate(iter(cal))
    same_calibration(listed, streamed)
    assert not streamed.can_recalibrate
    np.testing.assert_array_equal(listed.predict(test_set), streamed.predict(iter(test_set)))


def test_streamed_evaluate_and_health_are_identical(detector, test_set, cal_set):
    listed = evaluate(detector, test_set).to_dict()
    streamed = evaluate(detector, iter(test_set)).to_dict()
    assert listed == streamed
    results = list(iter_results(detector, test_set))
    rows = [RolloutResult.from_row(r.to_row()) for r in results]  # a Parquet round trip
    horizon = detector.longest_calibration_
    assert evaluate_results(rows, detector.alpha).to_dict() == listed
    assert listed["no_clock"] and listed["horizon"] == horizon
    new = make_rollouts(30, seed=7, length=40, n_discrete=5)
    assert (
        check_calibration(detector, new).to_dict()
        == check_calibration(detector, iter(new)).to_dict()
    )
    with pytest.raises(ValueError, match="iterator"):
        evaluate(detector, iter(test_set), alphas=[0.1])


def test_streamed_calibration_keeps_the_checks(fitted, fit_set, cal_set):
    with pytest.raises(CalibrationError, match="also used to fit"):
        fitted.with_params().calibrate(iter(cal_set + fit_set[:1]))
    with pytest.raises(CalibrationError, match="repeats rollout 0"):
        fitted.with_params().calibrate(iter(cal_set + cal_set[:1]))
    failed = make_rollouts(1, kind="failure", seed=9, length=40, n_discrete=5)
    with pytest.raises(CalibrationError, match="failed"):
        fitted.with_params().calibrate(iter(cal_set + failed))
    with pytest.raises(CalibrationError, match="needs at least"):
        fitted.with_params(alpha=0.01).calibrate(iter(cal_set))
    # time-varying styles need curves: results without them are refused, clearly
    band = fitted.with_params(threshold="band")
    bare = list(iter_results(band, cal_set, alarms=False))
    with pytest.raises(CalibrationError, match="curves=True"):
        calibrate_from_results(band, bare)


def test_iter_rollouts_reports_corrupt_files_and_goes_on(tmp_path):
    rs = make_rollouts(5, seed=0, length=10)
    for i, r in enumerate(rs):
        write_rollout(r, tmp_path / f"r{i}")
    (tmp_path / "r2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ArtifactError, match=r"r2\.safetensors"):
        list(iter_rollouts(tmp_path))
    skipped: list[tuple[str, str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(iter_rollouts(tmp_path, errors=skipped))
    assert len(got) == 4 and [p.endswith("r2.safetensors") for p, _ in skipped] == [True]
    assert any("r2.safetensors" in str(w.message) for w in caught)


def test_bytes_round_trip_equals_file_round_trip(tmp_path):
    r = make_rollouts(1, seed=3, length=12, n_discrete=4)[0]
    path = write_rollout(r, tmp_path / "x")
    assert path.read_bytes() == rollout_to_bytes(r)
    back = rollout_from_bytes(path.read_bytes(), "x")
    np.testing.assert_array_equal(back.embeddings, r.embeddings)
    with pytest.raises(ArtifactError, match=r"^bad:"):
        rollout_from_bytes(b"garbage", "bad")


def test_streaming_memory_does_not_grow_with_steps(fitted):
    """Peak traced memory of a streamed calibration stays far below the data it streams."""

    def stream(n):
        for i in range(n):
            yield make_rollouts(1, seed=1000 + i, length=40, n_discrete=5)[0]

    one = make_rollouts(1, seed=5, length=40, n_discrete=5)[0]
    per_rollout = sum(a.nbytes for a in one.arrays().values())
    peaks = []
    for n in (40, 320):
        tracemalloc.start()
        fitted.with_params().calibrate(stream(n))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 280 more rollouts would add 280 * per_rollout bytes if rollouts were held; the records
    # add a few hundred bytes each.
    assert peaks[1] - peaks[0] < 0.1 * 280 * per_rollout, (peaks, per_rollout)
