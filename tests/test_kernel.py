"""The one step kernel and its MonitorSpec: against a straightforward computation, and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_detector
from failguard import ArtifactError, ConfigError
from failguard.core import MonitorSpec, ScoreSpec, kernel
from failguard.synthetic import make_rollouts


def _plain(raw, windows, kind, tables, row, combine):
    """The monitor step written the obvious way: Python loops, no shared code."""
    names = list(raw)
    length = len(raw[names[0]])
    out = {"windowed": {}, "thresholds": {}, "ratios": {}, "fused": [], "alarm": []}
    for n in names:
        s = [x if np.isfinite(x) else np.inf for x in raw[n]]
        w = windows[n]
        eta = []
        for t in range(length):
            if kind == "cumulative":
                eta.append(sum(s[: t + 1]))
            else:
                part = s[max(0, t - w + 1) : t + 1]
                eta.append(sum(part) / len(part) if kind == "mean" else sum(part))
        table = tables[n][row]
        gamma = [table[t] if t < len(table) else table[-1] for t in range(length)]
        out["windowed"][n] = eta
        out["thresholds"][n] = gamma
        out["ratios"][n] = [e / g for e, g in zip(eta, gamma, strict=True)]
    k = {"and": len(names), "or": 1}.get(combine) or int(combine.split("-")[0])
    for t in range(length):
        ratios = sorted((out["ratios"][n][t] for n in names), reverse=True)
        fused = ratios[k - 1]
        bad = any(not np.isfinite(raw[n][t]) for n in names) or np.isnan(fused)
        out["fused"].append(fused)
        out["alarm"].append(bool(fused > 1.0 or bad))
    return out


def _spec(windows, kind, tables, combine, groups=()):
    scores = tuple(ScoreSpec(n, "Test", ("embeddings",), w) for n, w in windows.items())
    return MonitorSpec(
        scores=scores,
        input_shapes={"embeddings": (3,)},
        window_kind=kind,
        combine=combine,
        thresholds=tables,
        groups=tuple(groups),
        mondrian=bool(groups),
    )


@pytest.mark.parametrize("kind", ["sum", "mean", "cumulative"])
@pytest.mark.parametrize("combine", ["and", "or", "2-of-3"])
def test_kernel_matches_a_straightforward_computation(kind, combine):
    rng = np.random.default_rng(7)
    windows = {"a": 1, "b": 4, "c": 9}
    groups = ("g1", "g2")
    # rows of a (G, L) table; unequal logical lengths padded with their last value
    tables = {n: rng.uniform(0.5, 6.0, size=(3, 12)) for n in windows}
    tables["b"][:, 5:] = tables["b"][:, 4:5]
    spec = _spec(windows, kind, tables, combine, groups)
    length = 30
    raw = {n: rng.exponential(0.6, size=length) for n in windows}
    raw["c"][17] = np.nan
    raw["a"][3] = np.inf
    for row in range(3):
        want = _plain(raw, windows, kind, tables, row, combine)
        got = kernel.scan(spec, raw, row)
        for part in ("windowed", "thresholds", "ratios"):
            for n in windows:
                np.testing.assert_array_equal(getattr(got, part)[n], want[part][n])
        np.testing.assert_array_equal(got.fused, want["fused"])
        np.testing.assert_array_equal(got.alarm, want["alarm"])
        assert got.nonfinite[3] and got.nonfinite[17] and got.nonfinite.sum() == 2
    # step by step, three robots in different rows at once: bit for bit the scan
    state = kernel.init_state(spec, [2, 0, 1])
    scans = [kernel.scan(spec, raw, row) for row in (2, 0, 1)]
    for t in range(length):
        out, new = kernel.step(spec, state, {n: np.full(3, raw[n][t]) for n in windows})
        assert state.t.tolist() == [t] * 3 and new.t.tolist() == [t + 1] * 3  # pure
        state = new
        for i, ref in enumerate(scans):
            assert out.alarm[i] == ref.alarm[t]
            assert out.fused[i] == ref.fused[t] or np.isnan(ref.fused[t])
            for n in windows:
                assert out.windowed[n][i] == ref.windowed[n][t]
                assert out.thresholds[n][i] == ref.thresholds[n][t]


def test_formulas_on_hand_examples():
    assert kernel.fusion_rank("2-of-3", 3) == 2
    np.testing.assert_array_equal(
        kernel.fuse([np.array([1.0, 5.0]), np.array([2.0, 0.5]), np.array([3.0, 4.0])], "2-of-3"),
        [2.0, 4.0],
    )
    assert kernel.fired({"a": 1.0, "b": np.nan}, {"a": 0.9, "b": 0.1}) == ("b",)
    with pytest.warns(UserWarning, match="pooled"):
        assert kernel.group_row(["x"], True, "y") == 0
    stat = kernel.episode_statistic([np.array([0.1, 3.0, 0.2]), np.array([0.5, 2.0, 9.0])], "and")
    assert stat == 2.0
    a, b = kernel.split_indices(10, 3, np.random.default_rng(0))
    assert sorted([*a.tolist(), *b.tolist()]) == list(range(10)) and len(a) == 3


@pytest.fixture(scope="module")
def mondrian_detector(fit_set):
    cal = make_rollouts(30, seed=11, length=40) + make_rollouts(
        30, kind="ood_benign", seed=12, length=40
    )
    det = make_detector(threshold="band", mondrian=True, alpha=0.2)
    return det.fit(fit_set, progress=False).calibrate(cal)


@pytest.mark.filterwarnings("ignore:No Mondrian thresholds")
def test_spec_json_round_trip_is_exact(detector, mondrian_detector):
    for det in (detector, mondrian_detector):
        spec = det.spec()
        back = MonitorSpec.from_json(spec.to_json())
        assert back == spec and back.to_json() == spec.to_json()
        for n in det.names:
            assert back.thresholds[n].tobytes() == spec.thresholds[n].tobytes()
            for g in [None, *spec.groups]:
                np.testing.assert_array_equal(
                    spec.thresholds_row(kernel.group_row(spec.groups, spec.mondrian, g))[n][
                        : det.tables_for(g)[n].shape[0]
                    ],
                    det.tables_for(g)[n],
                )
        assert det.spec() is spec  # compiled once per calibration
    assert mondrian_detector.spec().groups == ("id", "ood")


def test_spec_is_frozen(detector):
    spec = detector.spec()
    with pytest.raises(AttributeError):
        spec.combine = "or"  # type: ignore[misc]
    with pytest.raises(ValueError):
        spec.thresholds["rnd"][0, 0] = 1.0


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.pop("windows"),
        lambda d: d.update(extra=1),
        lambda d: d["thresholds"]["rnd"][0].__setitem__(0, -1.0),
        lambda d: d["thresholds"]["rnd"][0].__setitem__(0, "1.0"),
        lambda d: d["thresholds"].update(rnd=[]),
        lambda d: d["windows"].update(rnd=0),
        lambda d: d["windows"].update(rnd=True),
        lambda d: d.update(window_kind="median"),
        lambda d: d.update(combine="3-of-2"),
        lambda d: d.update(names=["ace", "rnd"], requires=["embeddings"]),
        lambda d: d.update(requires=["embeddings"]),
        lambda d: d.update(groups=["x"]),
        lambda d: d.update(nonfinite="ignore"),
        lambda d: d.update(alpha="0.1"),
        lambda d: d["input_shapes"].update(embeddings=[0]),
        lambda d: d["profiles"]["ace"].update(scale=[[0.0]]),
        lambda d: d["statistics"][0].update(rnd=[float("nan")]),
        lambda d: d.update(spec_version=99),
    ],
)
def test_tampered_spec_is_refused(detector, tamper):
    data = detector.spec().to_dict()
    tamper(data)
    with pytest.raises(ArtifactError, match=r"corrupt or was edited|not valid"):
        MonitorSpec.from_json(json.dumps(data))


def test_bad_spec_json_and_bad_construction():
    with pytest.raises(ArtifactError, match="not valid JSON"):
        MonitorSpec.from_json("{")
    with pytest.raises(ConfigError, match="finite and positive"):
        _spec({"a": 2}, "sum", {"a": np.array([[0.0]])}, "and")


def test_trace_monitor_and_p_values_run_the_spec(detector, test_set):
    """Batch scoring is the kernel's scan; the Monitor is its step; p-values use its profiles."""
    spec = detector.spec()
    r = test_set[-1]
    raw = detector.raw_scores(r)
    trace = detector.score(r)
    ref = kernel.scan(spec, raw)
    np.testing.assert_array_equal(trace.fused, ref.fused)
    mon = detector.monitor()
    assert mon.spec is spec or mon.spec == spec
    p = detector.p_values(r)
    stats = kernel.episode_statistics(spec, ref.windowed)
    for k in stats:
        assert p[k][-1] == pytest.approx(
            (1 + np.sum(spec.statistics[0][k] >= stats[k])) / (spec.statistics[0][k].size + 1)
        )
