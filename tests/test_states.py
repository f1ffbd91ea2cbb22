"""The optional per-step physical state (Rollout.states) and Movement(source="states")."""

from __future__ import annotations

import numpy as np
import pytest

from failguard import (
    Deviation,
    FailureDetector,
    Movement,
    Recorder,
    Rollout,
    RolloutError,
    read_rollouts,
)
from failguard.calibration.selection import default_candidates, pseudo_failures
from failguard.synthetic import make_rollouts
from failguard.windows import window_scores


@pytest.fixture(scope="module")
def sets():
    fit = make_rollouts(8, seed=40, length=40, states=True)
    cal = make_rollouts(40, seed=41, length=40, states=True)
    test = make_rollouts(10, seed=42, length=40, states=True) + make_rollouts(
        4, "stuck", seed=43, length=40, states=True
    )
    return fit, cal, test


def test_rollout_states_are_validated():
    emb = np.zeros((5, 2))
    r = Rollout(emb, states=np.ones((5, 3)))
    assert r.states is not None and r.states.dtype == np.float32 and "S=3" in repr(r)
    assert set(r.arrays()) == {"embeddings", "states"}
    with pytest.raises(RolloutError, match=r"'states' must have 2 dimensions \(T, S\)"):
        Rollout(emb, states=np.ones(5))
    with pytest.raises(RolloutError, match="disagree on the number of steps"):
        Rollout(emb, states=np.ones((4, 3)))
    with pytest.raises(RolloutError, match="NaN or inf"):
        Rollout(emb, states=np.full((5, 3), np.nan))


def test_recorder_round_trips_states(tmp_path):
    rec = Recorder(tmp_path)
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(6, 3)).astype(np.float32)
    rec.start(group="id")
    for t in range(6):
        rec.step(embedding=np.full(4, t, np.float32), state=pos[t])
    rec.end(success=True)
    rec.start()
    rec.step(embedding=np.zeros(4), state=pos[0])
    with pytest.raises(RolloutError, match="every step must record the same fields"):
        rec.step(embedding=np.zeros(4))
    (back,) = read_rollouts(tmp_path)
    np.testing.assert_array_equal(back.states, pos)


def test_state_movement_needs_states_and_sees_a_stuck_robot(sets):
    fit, cal, test = sets
    with pytest.raises(RolloutError, match=r"reads \['states'\], but rollout 0"):
        Movement(source="states").fit(make_rollouts(2, seed=0, length=20))
    with pytest.raises(ValueError, match="'source' parameter of Movement"):
        Movement(source="position")
    score = Deviation(Movement(lag=5, source="states"), side="low").fit(fit)
    assert score.requires == ("states",) and score.name == "state_movement_low"
    horizon = max(len(r) for r in cal)  # only steps at which some success still ran
    ok = [window_scores(score.score(r), 5)[:horizon].max() for r in cal]
    stuck = [window_scores(score.score(r), 5)[:horizon].max() for r in test if not r.success]
    assert min(stuck) > max(ok)


def test_state_movement_streams_like_batch_and_saves(sets, tmp_path):
    from test_detector import assert_stream_matches_batch

    fit, cal, test = sets
    scores = [Deviation(Movement(lag=3, source="states"), side="low"), Movement(lag=2)]
    det = FailureDetector(scores=scores, windows=4, combine="or", alpha=0.2)
    det.fit(fit, progress=False).calibrate(cal)
    assert set(det.requires) == {"embeddings", "states"}
    monitor = det.monitor()
    with pytest.raises(RolloutError, match="needs 'state', which was not given"):
        monitor.step(embedding=test[0].embeddings[0])
    for r in test[::3]:
        trace = det.score(r)
        mon = det.monitor()
        got = [mon.step(embedding=r.embeddings[t], state=r.states[t]) for t in range(len(r))]
        assert [v.alarm for v in got] == trace.alarm.tolist()
        for n in det.names:
            np.testing.assert_allclose([v.scores[n] for v in got], trace.scores[n], rtol=1e-6)
    assert_stream_matches_batch(det, test[::3])
    det.save(tmp_path / "d")
    loaded = FailureDetector.load(tmp_path / "d")
    assert loaded.scores[0].inner.source == "states"
    for r in test[-2:]:
        np.testing.assert_array_equal(det.score(r).fused, loaded.score(r).fused)


@pytest.mark.onnx
def test_state_movement_onnx_parity(sets, tmp_path):
    from failguard.exporters import export_onnx
    from failguard.runtime import OnnxMonitor
    from test_onnx import assert_batch_parity, assert_stream_parity

    fit, cal, test = sets
    scores = [Deviation(Movement(lag=3, source="states"), side="low"), Movement(lag=2)]
    det = FailureDetector(scores=scores, windows=4, combine="or", alpha=0.2)
    det.fit(fit, progress=False).calibrate(cal)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "s.onnx"))
    assert assert_stream_parity(det, mon, test[::3])["steps"] > 100
    assert_batch_parity(det, mon, test)
    with pytest.raises(RolloutError, match="needs 'state'"):
        mon.reset()
        mon.step(embedding=test[0].embeddings[0])


def test_select_freezes_states_and_offers_a_state_leg(sets):
    fit, _, _ = sets
    pseudo = pseudo_failures(fit[:2], np.random.default_rng(0))
    frozen = [p for _, p in pseudo if p.group == "synthetic-freeze"]
    for p in frozen:
        assert p.states is not None
        onset = int(np.argmax(np.all(p.states == p.states[-1], axis=1)))
        assert np.all(p.states[onset:] == p.states[-1])
    names = {n for d in default_candidates(fit[0], windows=(5,)) for n in d.names}
    assert "state_movement_low" in names
    assert "state_movement_low" not in {
        n for d in default_candidates(make_rollouts(1, seed=0)[0], windows=(5,)) for n in d.names
    }
