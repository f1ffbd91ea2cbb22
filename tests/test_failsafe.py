"""Fail safe: finite but extreme inputs never silence an alarm (issue 13, item 1).

An embedding of 1e20 overflows RND to inf, 3e38 to NaN. Such a step is refused with no state
change (default), or counted as an alarm whose score enters its window as +inf
(``nonfinite="alarm"``), the same in ``Monitor``, ``FailureDetector.score`` and the ONNX graph.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from failguard import CalibrationError, NonFiniteScoreError, RolloutError

EXTREMES = (1e20, 3e38)


def _poisoned(r, t0: int, value: float):
    emb = np.array(r.embeddings)
    emb[t0] = value
    return r.replace(embeddings=emb)


def _replay(mon, r, skip_errors: bool = False):
    out = []
    for t in range(len(r)):
        try:
            out.append(mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t]))
        except NonFiniteScoreError:
            if not skip_errors:
                raise
            out.append(None)
    return out


def _failing(detector, test_set):
    """A failing test rollout whose clean replay alarms, and its first alarm."""
    for r in test_set:
        tr = detector.score(r)
        if r.success is False and tr.first_alarm is not None and tr.first_alarm > 2:
            return r, tr.first_alarm
    pytest.skip("no failing rollout alarms late enough")


@pytest.mark.parametrize("value", EXTREMES)
def test_monitor_refuses_nonfinite_score_without_state_change(detector, test_set, value):
    r, first = _failing(detector, test_set)
    t0 = first - 1
    bad = _poisoned(r, t0, value)
    clean = [v.alarm for v in _replay(detector.monitor(), r)]
    mon = detector.monitor()
    got = []
    for t in range(len(r)):
        if t == t0:
            with pytest.raises(NonFiniteScoreError, match="non-finite score"):
                mon.step(embedding=bad.embeddings[t], action_samples=bad.action_samples[t])
            assert mon.t == t0  # nothing advanced
        # the refused step is then retried with the good input: the stream is the clean one
        v = mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
        got.append(v.alarm)
        assert v.status == "ok" and math.isfinite(v.fused_ratio)
    assert got == clean


@pytest.mark.parametrize("value", EXTREMES)
def test_monitor_fail_safe_never_loses_alarms(detector, test_set, value):
    """Before the fix, one extreme step removed 9 of 10 alarms; now it adds, never removes."""
    r, first = _failing(detector, test_set)
    t0 = first - 1
    bad = _poisoned(r, t0, value)
    clean = [v.alarm for v in _replay(detector.monitor(), r)]
    verdicts = _replay(detector.monitor(nonfinite="alarm"), bad)
    v0 = verdicts[t0]
    assert v0.alarm and v0.status == "nonfinite" and "rnd" in v0.fired
    alarms = [v.alarm for v in verdicts]
    assert all(a or not c for a, c in zip(alarms, clean, strict=True))  # a superset
    assert sum(alarms) >= sum(clean) >= 1
    for v in verdicts:  # NaN never reaches a window, a ratio or the fused ratio
        assert not math.isnan(v.fused_ratio)
        assert not any(math.isnan(x) for x in v.windowed.values())
    # batch scoring says the same, step for step
    tr = detector.score(bad, nonfinite="alarm")
    assert tr.alarm.tolist() == alarms
    assert tr.nonfinite is not None and tr.nonfinite[t0]
    assert tr.verdict(t0).status == "nonfinite"
    with pytest.raises(NonFiniteScoreError, match=f"step {t0}"):
        detector.score(bad)


def test_calibrate_refuses_nonfinite_scores(detector, cal_set):
    det = detector.with_params()
    bad = [_poisoned(cal_set[0], 3, 3e38), *cal_set[1:]]
    with pytest.raises(CalibrationError, match="non-finite"):
        det.calibrate(bad)


def test_nonfinite_parameter_checked(detector):
    with pytest.raises(ValueError, match="nonfinite"):
        detector.monitor(nonfinite="ignore")
    with pytest.raises(ValueError, match="nonfinite"):
        detector.score(make_dummy(), nonfinite="skip")


def make_dummy():
    from failguard.synthetic import make_rollouts

    return make_rollouts(1, seed=0, length=5, n_discrete=5)[0]


# ---------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    pytest.importorskip("onnx")
    from failguard.exporters import export_onnx

    return export_onnx(detector, tmp_path_factory.mktemp("fs") / "monitor.onnx")


@pytest.mark.onnx
@pytest.mark.parametrize("value", EXTREMES)
def test_onnx_monitor_nonfinite(detector, exported, test_set, value):
    from failguard.runtime import OnnxMonitor

    r, first = _failing(detector, test_set)
    t0 = first - 1
    bad = _poisoned(r, t0, value)
    mon = OnnxMonitor(exported)
    for t in range(t0):
        mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
    with pytest.raises(NonFiniteScoreError):
        mon.step(embedding=bad.embeddings[t0], action_samples=bad.action_samples[t0])
    assert mon.t == t0
    safe = OnnxMonitor(exported, nonfinite="alarm")
    torch_alarms = [v.alarm for v in _replay(detector.monitor(nonfinite="alarm"), bad)]
    got = []
    for t in range(len(r)):
        v = safe.step(embedding=bad.embeddings[t], action_samples=bad.action_samples[t])
        got.append(v.alarm)
        assert not math.isnan(v.fused_ratio)
        if t == t0:
            assert v.status == "nonfinite" and v.alarm
    assert got == torch_alarms
    for state in safe._state.values():
        assert not np.isnan(state).any()


@pytest.mark.onnx
def test_onnx_step_batch_refuses_one_robot_only(exported, test_set):
    from failguard.runtime import OnnxMonitor

    r = test_set[0]
    emb = np.stack([r.embeddings[0]] * 3)
    acts = np.stack([r.action_samples[0]] * 3)
    emb[1] = np.nan  # robot 1: a NaN input
    emb[2] = 3e38  # robot 2: finite, but overflows RND
    mon = OnnxMonitor(exported)
    mon.reset_batch(3)
    bv = mon.step_batch(embedding=emb, action_samples=acts)
    assert bv.status is not None and bv.status.tolist() == ["ok", "error", "error"]
    assert bv.alarm[1] and bv.alarm[2] and bv.ok.tolist() == [True, False, False]
    assert "NaN" in bv.errors[1] and "non-finite" in bv.errors[2]
    assert mon._t.tolist() == [1, 0, 0]  # only robot 0 advanced
    assert bv.verdict(1).status == "error" and bv.verdict(1).alarm
    one = OnnxMonitor(exported)
    v = one.step(embedding=r.embeddings[0], action_samples=r.action_samples[0])
    assert bv.verdict(0).fused_ratio == pytest.approx(v.fused_ratio, rel=1e-12)
    safe = OnnxMonitor(exported, nonfinite="alarm")
    safe.reset_batch(3)
    bv = safe.step_batch(embedding=emb, action_samples=acts)
    assert bv.status is not None and bv.status.tolist() == ["ok", "error", "nonfinite"]
    assert safe._t.tolist() == [1, 0, 1]


@pytest.mark.onnx
def test_onnx_reset_robot_rejects_bool(exported, test_set):
    """numpy reads True as a mask: reset_robot(True) used to reset every robot."""
    from failguard.runtime import OnnxMonitor

    r = test_set[0]
    mon = OnnxMonitor(exported)
    mon.reset_batch(4)
    emb, acts = np.stack([r.embeddings[0]] * 4), np.stack([r.action_samples[0]] * 4)
    mon.step_batch(embedding=emb, action_samples=acts)
    with pytest.raises(RolloutError, match="int"):
        mon.reset_robot(True)  # type: ignore[arg-type]
    assert mon._t.tolist() == [1, 1, 1, 1]
    mon.reset_robot(np.int64(2))
    assert mon._t.tolist() == [1, 1, 0, 1]
