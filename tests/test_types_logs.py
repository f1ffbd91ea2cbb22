"""Rollout validation (fuzzed), Monitor.step fuzzing, and the rollout log format."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from failguard import (
    ArtifactError,
    NonFiniteScoreError,
    Recorder,
    Rollout,
    RolloutError,
    read_rollout,
    read_rollouts,
)
from failguard.logs import write_rollout

bad_values = st.sampled_from([np.nan, np.inf, -np.inf])


@given(t=st.integers(1, 6), d=st.integers(1, 5), bad=bad_values, data=st.data())
@settings(max_examples=50, deadline=None)
def test_non_finite_values_are_rejected_with_their_index(t, d, bad, data):
    emb = np.zeros((t, d), dtype=np.float32)
    i, j = data.draw(st.integers(0, t - 1)), data.draw(st.integers(0, d - 1))
    emb[i, j] = bad
    with pytest.raises(RolloutError, match=rf"NaN or inf \(first at index \({i}, {j}\)\)"):
        Rollout(emb)


@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
@settings(max_examples=60, deadline=None)
def test_wrong_shapes_are_rejected(shape):
    arr = np.zeros(shape, dtype=np.float32)
    if len(shape) == 2 and all(shape):
        assert len(Rollout(arr)) == shape[0]
    else:
        with pytest.raises(RolloutError, match="embeddings"):
            Rollout(arr)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([["a", "b"]]), "must hold numbers"),
        (np.zeros((2, 2), dtype=complex), "real-valued"),
        ([[1.0, 2.0], [3.0]], "could not be converted"),
        (np.zeros((0, 3)), "empty"),
        (np.full((2, 2), 1e39), "overflows float32"),
    ],
)
def test_bad_dtypes_and_empty(value, message):
    with pytest.raises(RolloutError, match=message):
        Rollout(value)


def test_field_consistency_and_labels():
    with pytest.raises(RolloutError, match="disagree on the number of steps"):
        Rollout(np.zeros((3, 2)), action_logits=np.zeros((4, 5)))
    with pytest.raises(RolloutError, match="integer action ids"):
        Rollout(np.zeros((3, 2)), action_ids=np.zeros((3, 4)))
    with pytest.raises(RolloutError, match="'success' must be"):
        Rollout(np.zeros((3, 2)), success="yes")  # type: ignore[arg-type]
    r = Rollout(np.zeros((3, 2)), success=np.bool_(True), group="id")
    assert r.success is True and r.embeddings.dtype == np.float32
    assert not r.embeddings.flags.writeable
    mine = np.zeros((3, 2), dtype=np.float32)
    r = Rollout(mine)
    mine[0, 0] = 5.0  # the caller's array stays writable and the rollout keeps its own copy
    assert r.embeddings[0, 0] == 0.0


@given(
    emb=hnp.arrays(
        np.float64,
        st.integers(1, 40),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
    ),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_monitor_step_fuzz(detector, emb):
    """Any embedding either is accepted (right size, finite, finite scores) or gives a
    RolloutError and leaves the monitor as it was; an accepted step is never NaN-quiet."""
    mon = detector.monitor()
    a = np.zeros((32, 8, 3))
    ok = emb.shape == (32,) and np.all(np.isfinite(emb.astype(np.float32)))
    if ok:
        try:
            v = mon.step(embedding=emb, action_samples=a)
        except NonFiniteScoreError:  # an extreme but finite input overflowed RND
            assert mon.t == 0
        else:
            assert v.step == 0 and np.isfinite(v.fused_ratio)
    else:
        with pytest.raises(RolloutError):
            mon.step(embedding=emb, action_samples=a)
        assert mon.t == 0


@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=33))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_monitor_action_shape_fuzz(detector, shape):
    mon = detector.monitor()
    if shape == (32, 8, 3):
        mon.step(embedding=np.zeros(32), action_samples=np.zeros(shape))
    else:
        with pytest.raises(RolloutError):
            mon.step(embedding=np.zeros(32), action_samples=np.zeros(shape))


def test_recorder_round_trip_and_numbering(tmp_path):
    rec = Recorder(tmp_path)
    rng = np.random.default_rng(0)
    written = []
    for k in range(3):
        rec.start(group="id", metadata={"seed": k})
        for _ in range(5):
            rec.step(
                embedding=rng.normal(size=4),
                action_samples=rng.normal(size=(6, 2, 3)),
                action_logits=rng.normal(size=3),
                action_ids=rng.integers(0, 3, size=6),
                executed_actions=rng.normal(size=(2, 3)),
            )
        written.append(rec.end(success=k != 1, metadata={"note": "x"}))
    assert [p.name for p in written] == [f"rollout_00000{i}.safetensors" for i in range(3)]
    back = read_rollouts(tmp_path)
    assert [r.success for r in back] == [True, False, True]
    assert back[0].metadata == {"seed": 0, "note": "x"}
    assert back[2].action_ids.dtype == np.int64
    rec2 = Recorder(tmp_path)  # numbering continues after existing files
    rec2.start()
    rec2.step(embedding=np.ones(4))
    assert rec2.end(success=True).name == "rollout_000003.safetensors"


def test_recorder_errors_and_crash_safety(tmp_path):
    rec = Recorder(tmp_path)
    with pytest.raises(RuntimeError, match=r"before Recorder.start"):
        rec.step(embedding=np.ones(2))
    rec.start()
    rec.step(embedding=np.ones(2), action_logits=np.ones(3))
    with pytest.raises(RolloutError, match="same fields"):
        rec.step(embedding=np.ones(2))
    with pytest.raises(RolloutError, match="NaN"):
        rec.step(embedding=[np.nan, 1.0], action_logits=np.ones(3))
    rec.discard()
    rec.start()
    rec.step(embedding=np.ones(2))
    with pytest.raises(RolloutError, match=r"shape \(3,\), but earlier steps gave \(2,\)"):
        rec.step(embedding=np.ones(3))
    rec.discard()
    rec.start()
    with pytest.raises(RolloutError, match="no steps"):
        rec.end(success=True)
    # An unfinished rollout leaves nothing behind, not even a temporary file.
    rec.start()
    rec.step(embedding=np.ones(2))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    r = Rollout(np.ones((2, 2)), success=True)
    path = write_rollout(r, tmp_path / "a")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_rollout(Rollout(np.zeros((3, 2)), success=False), tmp_path / "a")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_bad_log_files_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="no such rollout directory"):
        read_rollouts(tmp_path / "missing")
    with pytest.raises(ArtifactError, match=r"no '\*.safetensors' rollout files"):
        read_rollouts(tmp_path)
    bad = tmp_path / "rollout_000000.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ArtifactError, match=r"rollout_000000.safetensors: not a readable"):
        read_rollouts(tmp_path)
    from safetensors.numpy import save_file

    save_file({"embeddings": np.ones((2, 2), dtype=np.float32)}, str(bad))
    with pytest.raises(ArtifactError, match="missing the 'failguard' header"):
        read_rollout(bad)
    save_file(
        {"embeddings": np.full((2, 2), np.nan, dtype=np.float32)},
        str(bad),
        metadata={"failguard": '{"schema": 1, "success": true}'},
    )
    with pytest.raises(ArtifactError, match=r"invalid rollout.*NaN"):
        read_rollout(bad)
    save_file(
        {"embeddings": np.ones((2, 2), dtype=np.float32)},
        str(bad),
        metadata={"failguard": '{"schema": 7}'},
    )
    with pytest.raises(ArtifactError, match="schema version 7"):
        read_rollout(bad)
