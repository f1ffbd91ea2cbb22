"""Progress, stagnation, consistency and two-sided scores: behaviour, streaming, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_detector
from failguard import (
    ChunkConsistency,
    Deviation,
    DiscreteActionEntropy,
    FailureDetector,
    Movement,
    ProgressScore,
    Rollout,
    SlowingDown,
    evaluate,
)
from failguard.metrics import remove_clock
from failguard.scores import phase_profile
from failguard.synthetic import make_rollouts
from failguard.windows import window_scores
from test_detector import assert_stream_matches_batch


@pytest.fixture(scope="module")
def stuck_set():
    return make_rollouts(8, kind="stuck", seed=7, length=40, n_discrete=5)


def _max_windowed(score, rollouts, horizon):
    return np.array([window_scores(score.score(r), 8, "mean")[:horizon].max() for r in rollouts])


def test_stagnation_and_progress_see_a_stuck_policy(fit_set, cal_set, stuck_set):
    """Stuck-but-confident rollouts score above every success before they outlast them."""
    horizon = max(len(r) for r in cal_set)  # only steps at which some success still ran
    for score in (ProgressScore(epochs=60), Deviation(Movement(lag=5), side="low")):
        score.fit(fit_set)
        ok = _max_windowed(score, cal_set, horizon)
        stuck = _max_windowed(score, stuck_set, horizon)
        assert np.median(stuck) > np.quantile(ok, 0.9), score.name


def _agent(rng, collapse_at=None, length=40):
    logits = rng.normal(size=(length, 4))
    if collapse_at is not None:  # decisive from onset on: an agent sure of itself as it crashes
        logits[collapse_at:] *= 6.0
    return Rollout(rng.normal(size=(length, 3)), action_logits=logits, success=collapse_at is None)


def test_entropy_collapse_is_caught_by_the_low_side():
    """Plain entropy (higher = worse) misses an agent that becomes decisive; 'low'/'both' see it."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    fit = [_agent(rng) for _ in range(20)]
    test = [_agent(rng) for _ in range(30)] + [
        _agent(rng, int(c)) for c in rng.integers(10, 30, 30)
    ]
    y = [not r.success for r in test]
    aucs = {}
    for s in (
        DiscreteActionEntropy(),
        Deviation(DiscreteActionEntropy(), side="low"),
        Deviation(DiscreteActionEntropy(), side="both"),
    ):
        s.fit(fit)
        aucs[s.name] = roc_auc_score(y, [window_scores(s.score(r), 5).max() for r in test])
    assert aucs["entropy"] < 0.5 < 0.95 < aucs["entropy_low"], aucs
    assert aucs["entropy_z"] > 0.9, aucs


def test_phase_profile_and_deviation_sides():
    curves = [np.full(10, 1.0), np.full(10, 3.0), np.full(4, 2.0)]
    mu, sd = phase_profile(curves, smooth=0)  # min_support=3: ends where the short one ends
    np.testing.assert_allclose(mu, [2.0] * 4)
    np.testing.assert_allclose(sd, [np.sqrt(2 / 3)] * 4)
    mu2, sd2 = phase_profile(curves, smooth=0, min_support=2)
    assert mu2.shape == (10,) and mu2[-1] == 2.0 and sd2[-1] == 1.0
    dev = Deviation(Movement(lag=1), side="low", smooth=0)
    dev.mean_, dev.scale_ = np.array([2.0, 2.0]), np.array([0.5, 0.5])
    np.testing.assert_allclose(dev.standardise(np.array([1.0, 3.0, 2.0]), np.arange(3)), [-2, 2, 0])
    with pytest.raises(ValueError, match="'side' parameter of Deviation"):
        Deviation(Movement(), side="up")
    with pytest.raises(TypeError, match="wraps a score"):
        Deviation("entropy")  # type: ignore[arg-type]


def test_progress_score_modes_and_validation(fit_set):
    with pytest.raises(ValueError, match="'mode' parameter of ProgressScore"):
        ProgressScore(mode="eta")
    p = ProgressScore(mode="shortfall", lag=4, epochs=5).fit(fit_set)
    s = p.score(fit_set[0])
    assert s.shape == (len(fit_set[0]),) and s.min() >= 0 and p.context == 4
    assert ProgressScore(epochs=5).context == 0
    assert ProgressScore(mode="shortfall", lag=4, history=3).context == 7
    with pytest.raises(ValueError, match="'history' parameter"):
        ProgressScore(history=-1)


def test_movement_and_consistency_values():
    line = np.outer(np.arange(6.0), np.ones(2)).astype(np.float32)
    m = Movement(lag=2).fit([Rollout(line, success=True)])
    step = 1.0 / line[:, 0].std()
    np.testing.assert_allclose(
        m.score(Rollout(line)), [0, step, 2 * step, 2 * step, 2 * step, 2 * step]
    )
    # chunks that shift exactly by the executed horizon agree perfectly on their overlap
    t, b, h, e = 5, 4, 6, 2
    traj = np.arange(t * e + h, dtype=np.float32)
    a = np.stack([np.broadcast_to(traj[i * e : i * e + h], (b, h)) for i in range(t)])[..., None]
    c = ChunkConsistency(exec_horizon=e).fit([Rollout(np.zeros((t, 1)), action_samples=a)])
    np.testing.assert_allclose(c.score(Rollout(np.zeros((t, 1)), action_samples=a)), 0.0)
    jumpy = a.copy()
    jumpy[3] += 1.0
    got = c.score(Rollout(np.zeros((t, 1)), action_samples=jumpy))
    assert got[3] > 0 and got[4] > 0 and got[1] == got[2] == 0


def _new_scores():
    return [
        ProgressScore(epochs=5),
        ProgressScore(mode="shortfall", lag=3, epochs=5),
        ProgressScore(history=2, epochs=5, name="progress_h2"),
        Deviation(Movement(lag=3), side="low"),
        SlowingDown(window=6, statistic="variance"),
        Deviation(SlowingDown(window=5), side="both", name="ews_ac_z"),
        ChunkConsistency(exec_horizon=3),
        Deviation(DiscreteActionEntropy(), side="low"),
    ]


def test_new_scores_stream_like_batch(fit_set, cal_set, test_set, stuck_set):
    det = make_detector(scores=_new_scores(), alpha=0.2, combine="or", windows=4)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::4] + stuck_set[:2])
    exact = [ChunkConsistency(exec_horizon=3), Deviation(Movement(lag=3), side="both")]
    det = make_detector(scores=exact, alpha=0.2, combine="or", windows=4, threshold="per_step")
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::4] + stuck_set[:2], exact_raw=True)


def test_new_scores_save_and_load_bit_exact(tmp_path, fit_set, cal_set, stuck_set):
    det = make_detector(scores=_new_scores(), alpha=0.2, combine="or")
    det.fit(fit_set, progress=False).calibrate(cal_set)
    det.save(tmp_path / "d")
    loaded = FailureDetector.load(tmp_path / "d")
    assert loaded.longest_calibration_ == det.longest_calibration_ == max(map(len, cal_set))
    for r in stuck_set[:2] + cal_set[:2]:
        a, b = det.score(r), loaded.score(r)
        for n in det.names:
            np.testing.assert_array_equal(a.scores[n], b.scores[n])
    assert repr(loaded.scores[3]).startswith("Deviation(Movement(")
    assert loaded.scores[2].history == 2 and loaded.scores[2].context == 2


def test_remove_clock_and_no_clock_report(fit_set, cal_set, stuck_set):
    """Alarms after the longest calibration success are what 'the clock' catches."""
    det = make_detector(scores=[ProgressScore(epochs=30)], alpha=0.1, windows=3)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    horizon = det.longest_calibration_
    test = make_rollouts(10, seed=2, length=40, n_discrete=5) + stuck_set
    report = evaluate(det, test)
    assert report.horizon == horizon
    clockless = remove_clock(det.traces(test), horizon)
    for tr in clockless:
        assert tr.first_alarm is None or tr.first_alarm < horizon
    assert report.no_clock["tpr"] == np.mean([t.predicted_failure for t in clockless[10:]])
    assert report.no_clock["tpr"] <= report.overall["tpr"]
    assert "no_clock" in report.to_dict()
    with pytest.raises(ValueError, match="horizon"):
        remove_clock(det.traces(test[:1]), 0)


def _far_cases():
    cheap = [
        ("movement_low", lambda: Deviation(Movement(lag=3), side="low"), "and", 40),
        ("entropy_z", lambda: Deviation(DiscreteActionEntropy(), side="both"), "and", 40),
    ]
    slow = [
        ("progress", lambda: ProgressScore(epochs=20), "and", 150),
        ("progress_shortfall", lambda: ProgressScore(mode="shortfall", epochs=20), "and", 150),
        ("ews_var_z", lambda: Deviation(SlowingDown(window=6, statistic="variance")), "and", 150),
        ("ews_ac", lambda: SlowingDown(window=6), "and", 150),
        ("consistency", lambda: ChunkConsistency(exec_horizon=3), "and", 150),
        ("movement_low", lambda: Deviation(Movement(lag=3), side="low"), "and", 150),
        ("entropy_z", lambda: Deviation(DiscreteActionEntropy(), side="both"), "and", 150),
    ]
    out = [pytest.param(*c, id=f"{c[0]}-{c[3]}") for c in cheap]
    out += [pytest.param(*c, id=f"{c[0]}-{c[3]}", marks=pytest.mark.slow) for c in slow]
    out.append(
        pytest.param(
            "fiper+movement_low",
            lambda: Deviation(Movement(lag=3), side="low"),
            "2-of-3",
            150,
            id="fiper-2of3-movement_low-150",
            marks=pytest.mark.slow,
        )
    )
    return out


@pytest.mark.parametrize(("label", "make", "combine", "n_seeds"), _far_cases())
def test_new_scores_keep_the_false_alarm_guarantee(fit_set, label, make, combine, n_seeds):
    """Realised episode FAR on fresh successes <= alpha (+3 SE) over many calibration draws.

    The scores (and their profiles) are fitted once on the fit rollouts and frozen; every seed
    draws new calibration and test successes.
    """
    from conftest import small_rnd
    from failguard import ActionChunkEntropy

    alpha = 0.2
    scores = [make()] if combine == "and" else [small_rnd(), ActionChunkEntropy(), make()]
    det = FailureDetector(scores=scores, windows=4, combine=combine, alpha=alpha)
    det.fit(fit_set, progress=False)
    fars = []
    for seed in range(n_seeds):
        cal = make_rollouts(12, seed=5000 + seed, length=40, n_discrete=5)
        test = make_rollouts(20, seed=90000 + seed, length=40, n_discrete=5)
        det.calibrate(cal)
        fars.append(float(det.predict(test).mean()))
    far, se = np.mean(fars), np.std(fars, ddof=1) / np.sqrt(n_seeds)
    assert far <= alpha + 3 * se, f"{label}: FAR {far:.3f} > {alpha} + 3 SE"
    if combine == "and":  # calibrated on exactly this statistic: not vacuous
        assert far > alpha / 3, f"{label}: FAR {far:.3f}"


@pytest.mark.onnx
def test_progress_with_history_exports_and_matches(fit_set, cal_set, test_set, tmp_path):
    """ProgressScore(history>0) keeps its past embeddings as per-robot ONNX state."""
    from failguard.exporters import export_onnx
    from failguard.runtime import OnnxMonitor
    from test_onnx import assert_batch_parity, assert_stream_parity

    scores = [
        ProgressScore(history=1, epochs=3, name="p_h1"),
        ProgressScore(mode="shortfall", lag=3, history=3, epochs=3, name="s_h3"),
    ]
    det = FailureDetector(scores=scores, windows=3, combine="or", alpha=0.2)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "p.onnx"))
    assert len(mon.metadata["score_states"]) == 3  # 1 + (3 embeddings, 3 predictions)
    assert assert_stream_parity(det, mon, test_set[::4])["steps"] > 60
    assert_batch_parity(det, mon, test_set)
