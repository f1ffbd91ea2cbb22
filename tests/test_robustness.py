"""Threads, fuzzing of every loader and step, and the CLI on bad input (issue 13, items 5 and 7)."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failguard import (
    ArtifactError,
    ConcurrentUseError,
    FailguardError,
    FailureDetector,
    NonFiniteScoreError,
    RolloutError,
    read_rollouts,
)
from failguard.logs import write_rollout

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class _Blocking:
    """An array-like whose conversion waits until released: it holds a thread inside step."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value
        self.entered = threading.Event()
        self.release = threading.Event()

    def __array__(self, dtype=None, copy=None):
        self.entered.set()
        self.release.wait(10)
        return self.value


def _concurrent_use(mon, e, a) -> None:
    block = _Blocking(e)
    out: list = []
    worker = threading.Thread(
        target=lambda: out.append(mon.step(embedding=block, action_samples=a))
    )
    worker.start()
    assert block.entered.wait(10)
    with pytest.raises(ConcurrentUseError, match="one"):
        mon.step(embedding=e, action_samples=a)
    with pytest.raises(ConcurrentUseError):
        mon.reset()
    block.release.set()
    worker.join(10)
    assert [v.step for v in out] == [0]
    assert mon.step(embedding=e, action_samples=a).step == 1  # the state is intact


def test_monitor_refuses_concurrent_use(detector, test_set):
    r = test_set[0]
    _concurrent_use(detector.monitor(), r.embeddings[0], r.action_samples[0])


@pytest.mark.onnx
def test_onnx_monitor_refuses_concurrent_use(detector, test_set, tmp_path):
    pytest.importorskip("onnx")
    from failguard.exporters import export_onnx
    from failguard.runtime import OnnxMonitor

    mon = OnnxMonitor(export_onnx(detector, tmp_path / "m.onnx"))
    r = test_set[0]
    _concurrent_use(mon, r.embeddings[0], r.action_samples[0])


def test_threads_sharing_a_monitor_never_duplicate_steps(detector, test_set):
    """Before: two threads on one Monitor produced duplicated step indices, silently."""
    mon = detector.monitor()
    r = test_set[0]
    steps: list[int] = []
    refused = [0]

    def run() -> None:
        for t in range(60):
            try:
                steps.append(
                    mon.step(
                        embedding=r.embeddings[t % len(r)],
                        action_samples=r.action_samples[t % len(r)],
                    ).step
                )
            except ConcurrentUseError:
                refused[0] += 1

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(steps) == list(range(len(steps)))  # every accepted step once, none lost
    assert len(steps) + refused[0] == 240


# ---------------------------------------------------------------------- fuzzing
_FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)
_ANY = st.one_of(
    st.floats(width=32),
    st.sampled_from([1e20, -1e20, 3e38, -3e38, 1e-45, 0.0]),
)


@given(values=st.lists(_ANY, min_size=32, max_size=32), scale=st.sampled_from([1.0, 1e10, 1e30]))
@FUZZ
def test_monitor_step_fuzz_never_quiet_on_garbage(detector, values, scale):
    mon = detector.monitor()
    e = np.asarray(values, dtype=np.float64) * scale
    a = np.zeros((32, 8, 3))
    try:
        v = mon.step(embedding=e, action_samples=a)
    except RolloutError:  # NaN/inf input, float32 overflow, or a non-finite score
        assert mon.t == 0
    else:
        assert np.isfinite(v.fused_ratio) and v.status == "ok"


@pytest.mark.onnx
@given(values=st.lists(_ANY, min_size=32, max_size=32), scale=st.sampled_from([1.0, 1e10, 1e30]))
@FUZZ
def test_onnx_step_fuzz(onnx_monitor, values, scale):
    mon = onnx_monitor
    mon.reset()
    e = np.asarray(values, dtype=np.float64) * scale
    a = np.zeros((32, 8, 3), dtype=np.float32)
    try:
        v = mon.step(embedding=e, action_samples=a)
    except RolloutError:
        assert mon.t == 0 and not any(np.isnan(s).any() for s in mon._state.values())
    else:
        assert np.isfinite(v.fused_ratio) and v.status == "ok" and mon.t == 1


@pytest.fixture(scope="module")
def onnx_monitor(detector, tmp_path_factory):
    pytest.importorskip("onnx")
    from failguard.exporters import export_onnx
    from failguard.runtime import OnnxMonitor

    return OnnxMonitor(export_onnx(detector, tmp_path_factory.mktemp("fz") / "m.onnx"))


@pytest.fixture(scope="module")
def saved_dir(detector, tmp_path_factory):
    return detector.save(tmp_path_factory.mktemp("fzdet") / "det")


_JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=5),
        st.sampled_from([10**9, -1, 0, 2**31, 1e300]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    """Every (path, value) of a JSON tree."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@given(data=st.data())
@FUZZ
def test_load_fuzz_only_artifact_errors(saved_dir, tmp_path_factory, data):
    """Any edit of config.json (any key, any JSON value, or a deletion) loads or gives an
    ArtifactError; never another exception, never a huge allocation."""
    target = tmp_path_factory.mktemp("edit") / "det"
    shutil.copytree(saved_dir, target)
    cfg = json.loads((target / "config.json").read_text())
    paths = [p for p in _paths(cfg) if p]
    path = data.draw(st.sampled_from(paths))
    node = cfg
    for k in path[:-1]:
        node = node[k]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(_JSON_VALUES)
    (target / "config.json").write_text(json.dumps(cfg))
    verify = data.draw(st.booleans())
    with contextlib.suppress(ArtifactError):
        FailureDetector.load(target, verify=verify)


@given(data=st.data())
@FUZZ
def test_read_rollouts_fuzz(tmp_path_factory, data):
    """Byte flips and truncations of a rollout file: read back identical, or ArtifactError."""
    d = tmp_path_factory.mktemp("logs")
    rng = np.random.default_rng(0)
    path = write_rollout(
        __import__("failguard").Rollout(
            rng.normal(size=(6, 4)), rng.normal(size=(6, 3, 2, 1)), success=True
        ),
        d / "r0",
    )
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    else:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    path.write_bytes(bytes(raw))
    try:
        got = read_rollouts(d)
    except ArtifactError:
        return
    assert len(got) == 1 and got[0].embeddings.shape == (6, 4)


# ---------------------------------------------------------------------- the CLI
@given(data=st.data())
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_cli_fuzz_never_a_traceback(saved_dir, tmp_path_factory, data, capsys):
    """Bad detectors, bad logs, bad arguments: an exit code and a one-line error, never a
    traceback (main() returns; nothing escapes)."""
    from failguard.cli import main

    work = tmp_path_factory.mktemp("cli")
    det = work / "det"
    shutil.copytree(saved_dir, det)
    logs = work / "logs"
    logs.mkdir()
    rng = np.random.default_rng(0)
    path = write_rollout(
        __import__("failguard").Rollout(
            rng.normal(size=(6, 32)), rng.normal(size=(6, 32, 8, 3)), success=True
        ),
        logs / "r0",
    )
    victim = data.draw(st.sampled_from([det / "config.json", det / "model.safetensors", path]))
    raw = bytearray(victim.read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "junk"]))
    if how == "flip":
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 0xFF
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = bytearray(data.draw(st.binary(max_size=64)))
    victim.write_bytes(bytes(raw))
    command = data.draw(st.sampled_from(["evaluate", "health", "calibrate", "export"]))
    argv = {
        "evaluate": ["evaluate", str(det), str(logs)],
        "health": ["health", str(det), str(logs)],
        "calibrate": ["calibrate", str(det), str(logs), "-o", str(work / "new")],
        "export": ["export", str(det), "-o", str(work / "m.onnx")],
    }[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert isinstance(code, int)
    assert "Traceback" not in err


def test_every_bad_input_error_is_a_failguard_error(detector):
    mon = detector.monitor()
    torch = pytest.importorskip("torch")
    with pytest.raises(FailguardError, match="detach"):
        mon.step(embedding=torch.ones(32, requires_grad=True), action_samples=np.zeros((32, 8, 3)))
    with pytest.raises(FailguardError):
        mon.step(embedding=np.full(32, 3e38), action_samples=np.zeros((32, 8, 3)))
    assert issubclass(NonFiniteScoreError, FailguardError)
    with pytest.raises(FailguardError):
        FailureDetector.load(Path("/nonexistent/detector"))
