"""Calibration health: Clopper-Pearson interval, rank test, recalibration without retraining."""

from __future__ import annotations

import numpy as np
import pytest

from failguard import ActionChunkEntropy, CalibrationError, FailureDetector, RNDScore
from failguard.health import check_calibration, clopper_pearson, episode_statistics
from failguard.synthetic import make_rollouts

KW = {"length": 30, "embedding_dim": 8, "n_samples": 8, "horizon": 4, "action_dim": 2}


@pytest.fixture(scope="module")
def det():
    d = FailureDetector(scores=[RNDScore(max_epochs=3), ActionChunkEntropy()], alpha=0.1)
    return d.fit(make_rollouts(8, seed=0, **KW), progress=False).calibrate(
        make_rollouts(30, seed=1, **KW)
    )


def test_clopper_pearson_matches_exact_binomial_tails():
    from scipy.stats import binom

    for k, n in [(0, 10), (3, 20), (7, 7), (12, 50)]:
        lo, hi = clopper_pearson(k, n, 0.9)
        if k > 0:
            assert binom.sf(k - 1, n, lo) == pytest.approx(0.05, abs=1e-6)
        else:
            assert lo == 0.0
        if k < n:
            assert binom.cdf(k, n, hi) == pytest.approx(0.05, abs=1e-6)
        else:
            assert hi == 1.0
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_episode_statistics_reproduce_the_calibration_statistics(det):
    cal = make_rollouts(30, seed=1, **KW)
    stats = episode_statistics(det, cal)
    for name, ref in det.calibration_.statistics.items():
        np.testing.assert_allclose(np.sort(stats[name]), ref, rtol=1e-5)


def test_healthy_and_drifted(det):
    ok = check_calibration(det, make_rollouts(30, seed=5, **KW))
    assert ok.status == "ok" and not ok.needs_recalibration
    assert ok.interval[0] <= ok.alarm_rate <= ok.interval[1]
    drift = check_calibration(det, make_rollouts(30, kind="ood_benign", seed=3, **KW))
    assert drift.needs_recalibration and drift.rank_tests["rnd"]["p_value"] < 0.05
    assert "calibrate" in str(drift)
    d = drift.to_dict()
    assert d["status"] == "recalibrate" and d["n"] == 30


def test_too_few_and_failed_rollouts(det):
    assert check_calibration(det, make_rollouts(4, seed=5, **KW)).status == "too_few"
    with pytest.raises(CalibrationError, match="successful"):
        check_calibration(det, make_rollouts(2, kind="failure", seed=5, **KW))


def test_recalibrating_keeps_the_fitted_scores(det):
    before = [{k: v.copy() for k, v in s.get_tensors().items()} for s in det.scores]
    old_tables = {k: v.copy() for k, v in det.thresholds_.items()}
    new = make_rollouts(30, kind="ood_benign", seed=6, **KW)
    det.calibrate(new)
    try:
        for s, b in zip(det.scores, before, strict=True):
            after = s.get_tensors()
            assert after.keys() == b.keys()
            for k in b:
                np.testing.assert_array_equal(after[k], b[k])
        assert det.thresholds_["rnd"][0] > old_tables["rnd"][0]  # thresholds did move
        later = check_calibration(det, make_rollouts(30, kind="ood_benign", seed=7, **KW))
        assert not later.needs_recalibration
    finally:
        det.calibrate(make_rollouts(30, seed=1, **KW))
