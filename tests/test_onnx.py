"""ONNX export: parity of OnnxMonitor with the torch Monitor, metadata, and bad inputs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx

from failguard import (
    ActionChunkEntropy,
    ArtifactError,
    DiscreteActionEntropy,
    FailureDetector,
    RNDScore,
    RolloutError,
    STACScore,
)
from failguard._version import SCHEMA_VERSION, __version__
from failguard.exporters import ExportError, export_onnx
from failguard.runtime import OnnxMonitor
from failguard.synthetic import make_rollouts

pytestmark = pytest.mark.onnx

TOL = 1e-5
FIELDS = {
    "embeddings": "embedding",
    "action_samples": "action_samples",
    "action_logits": "action_logits",
    "action_ids": "action_ids",
    "states": "state",
}


def _rollouts(seed: int, n_nom: int, n_ood: int, n_fail: int, k: int = 5) -> list:
    return (
        make_rollouts(n_nom, seed=seed, length=40, n_discrete=k)
        + make_rollouts(n_ood, kind="ood_benign", seed=seed + 1, length=40, n_discrete=k)
        + make_rollouts(n_fail, kind="failure", seed=seed + 2, length=40, n_discrete=k)
    )


def _step_args(det_requires: tuple[str, ...], r, t: int | slice) -> dict:
    return {FIELDS[f]: getattr(r, f)[t] for f in det_requires}


def assert_stream_parity(det, onnx_mon: OnnxMonitor, rollouts, group_of=None) -> dict:
    """Replay every rollout through Monitor and OnnxMonitor; compare every step."""
    worst, steps = 0.0, 0
    for r in rollouts:
        group = group_of(r) if group_of else None
        mon = det.monitor(group=group)
        onnx_mon.reset(group)
        for t in range(len(r)):
            args = _step_args(det.requires, r, t)
            ref, got = mon.step(**args), onnx_mon.step(**args)
            assert got.step == ref.step == t
            assert got.alarm == ref.alarm, (r, t, ref, got)
            assert got.fired == ref.fired
            for part in ("scores", "windowed", "thresholds", "ratios"):
                a, b = getattr(ref, part), getattr(got, part)
                assert a.keys() == b.keys()
                for k in a:
                    err = abs(a[k] - b[k]) / max(1.0, abs(a[k]))
                    worst = max(worst, err)
                    assert err <= TOL, (part, k, t, a[k], b[k])
            steps += 1
    return {"worst": worst, "steps": steps}


def assert_batch_parity(det, onnx_mon: OnnxMonitor, rollouts, groups=None) -> None:
    """step_batch over all rollouts at once against the batch traces of the detector."""
    traces = [
        det.score(r, group=None if groups is None else groups[i]) for i, r in enumerate(rollouts)
    ]
    onnx_mon.reset_batch(len(rollouts), groups)
    for t in range(max(len(r) for r in rollouts)):
        idx = [min(t, len(r) - 1) for r in rollouts]
        args = {
            FIELDS[f]: np.stack([getattr(r, f)[i] for r, i in zip(rollouts, idx, strict=True)])
            for f in det.requires
        }
        out = onnx_mon.step_batch(**args)
        for j, tr in enumerate(traces):
            if t >= len(tr):
                continue
            assert bool(out.alarm[j]) == bool(tr.alarm[t]), (j, t)
            for n in det.names:
                assert abs(out.windowed[n][j] - tr.windowed[n][t]) <= TOL * max(
                    1, tr.windowed[n][t]
                )
                assert abs(out.ratios[n][j] - tr.ratios[n][t]) <= TOL * max(1, tr.ratios[n][t])


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    path = export_onnx(detector, tmp_path_factory.mktemp("onnx") / "monitor.onnx")
    return path


# ---------------------------------------------------------------------- default config
def test_default_stream_parity(detector, exported, test_set):
    mon = OnnxMonitor(exported)
    res = assert_stream_parity(detector, mon, test_set[::2])
    assert res["steps"] > 300


def test_default_batch_parity(detector, exported, test_set):
    assert_batch_parity(detector, OnnxMonitor(exported), test_set)


def test_one_file_and_metadata(detector, exported):
    model = onnx.load(str(exported), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["failguard"])
    assert meta["schema"] == SCHEMA_VERSION and meta["failguard_version"] == __version__
    assert meta["names"] == detector.names and meta["alpha"] == detector.alpha
    assert meta["guarantee"] == "marginal" and meta["n_calibration"] == detector.n_calibration_
    for n in detector.names:
        np.testing.assert_array_equal(meta["thresholds"][n][0], detector.thresholds_[n])
    assert props["failguard.schema_version"] == str(SCHEMA_VERSION)
    mon = OnnxMonitor(exported)
    assert mon.names == detector.names and "OnnxMonitor" in repr(mon)
    np.testing.assert_array_equal(mon.thresholds_for()["rnd"], detector.thresholds_["rnd"])


def test_ace_graph_matches_python_at_paper_size(tmp_path):
    """ACE alone at B=256, H=16: the sort-based graph equals the Python ACE exactly."""
    rng = np.random.default_rng(0)
    from failguard import Rollout

    def roll(scale: float, n: int) -> list[Rollout]:
        return [
            Rollout(
                rng.normal(size=(12, 4)),
                action_samples=(rng.normal(size=(12, 256, 16, 3)) * scale).astype(np.float32),
                success=True,
            )
            for _ in range(n)
        ]

    ace = ActionChunkEntropy()
    det = FailureDetector([ace], alpha=0.2).fit(roll(1.0, 2), progress=False)
    det.calibrate(roll(1.0, 10))
    mon = OnnxMonitor(export_onnx(det, tmp_path / "ace.onnx"))
    test = roll(0.3, 1)[0].action_samples
    mon.reset_batch(12)
    out = mon.step_batch(action_samples=test)
    np.testing.assert_allclose(
        out.scores["ace"], ace.score_steps({"action_samples": test}), atol=1e-12
    )


# ---------------------------------------------------------------------- styles
STYLE_CASES = [
    ("constant", "and", "sum"),
    ("per_step", "or", "mean"),
    ("band", "and", "cumulative"),
]


def _detector(threshold: str, combine: str, kind: str, scores=None, **kw) -> FailureDetector:
    scores = scores or [RNDScore(max_epochs=2), ActionChunkEntropy()]
    return FailureDetector(
        scores=scores,
        windows={s.name: w for s, w in zip(scores, (5, 8, 3), strict=False)},
        window_kind=kind,
        combine=combine,
        threshold=threshold,
        alpha=0.2,
        **kw,
    )


@pytest.mark.parametrize(("threshold", "combine", "kind"), STYLE_CASES)
def test_style_parity(threshold, combine, kind, fit_set, cal_set, test_set, tmp_path):
    det = _detector(threshold, combine, kind).fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "m.onnx"))
    assert_stream_parity(det, mon, test_set[::4])
    assert_batch_parity(det, mon, test_set)


@pytest.mark.parametrize("source", ["logits", "samples"])
def test_discrete_parity(source, fit_set, cal_set, test_set, tmp_path):
    scores = [RNDScore(max_epochs=2), DiscreteActionEntropy(source=source)]
    det = _detector("per_step", "and", "sum", scores=scores)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "d.onnx"))
    assert mon.requires == ("embeddings", "action_logits" if source == "logits" else "action_ids")
    assert_stream_parity(det, mon, test_set[::4])
    assert_batch_parity(det, mon, test_set)
    if source == "samples":
        r = test_set[0]
        mon.reset()
        ids = r.action_ids[0].copy()
        with pytest.raises(RolloutError, match="integer"):
            mon.step(embedding=r.embeddings[0], action_ids=ids.astype(float))
        ids[0] = np.iinfo(np.int64).min
        with pytest.raises(RolloutError, match="2\\*\\*53"):
            mon.step(embedding=r.embeddings[0], action_ids=ids)


@pytest.mark.parametrize("calibration", ["per_indicator", "joint"])
def test_vote_parity(calibration, fit_set, cal_set, test_set, tmp_path):
    """k-of-n voting (the k-th largest ratio, TopK in the graph) matches Python."""
    scores = [RNDScore(max_epochs=2), ActionChunkEntropy(), DiscreteActionEntropy()]
    det = _detector("constant", "2-of-3", "sum", scores=scores, calibration=calibration)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "v.onnx"))
    assert mon.combine == "2-of-3"
    assert_stream_parity(det, mon, test_set[::4])
    assert_batch_parity(det, mon, test_set)


def test_new_scores_parity(fit_set, cal_set, test_set, tmp_path):
    """Progress (completion) and two-sided scores export; their graphs match Python."""
    from failguard import Deviation, ProgressScore

    scores = [
        ProgressScore(epochs=5),
        Deviation(ActionChunkEntropy(), side="both"),
        Deviation(DiscreteActionEntropy(), side="low"),
        Deviation(RNDScore(max_epochs=2), side="high", profile_split=0.5),
    ]
    det = FailureDetector(scores=scores, windows=4, combine="2-of-4", alpha=0.2)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "n.onnx"))
    assert_stream_parity(det, mon, test_set[::4])
    assert_batch_parity(det, mon, test_set)


def test_scores_with_history_parity(fit_set, cal_set, test_set, tmp_path):
    """Scores that read past steps export with per-score state and match Monitor.

    Stream and batch parity, and reset_robot restarting one robot's score state.
    """
    from failguard import ChunkConsistency, Deviation, Movement, ProgressScore, SlowingDown

    scores = [
        Deviation(Movement(lag=3), side="low"),
        Movement(lag=1, name="move1"),
        SlowingDown(window=4, statistic="variance"),
        Deviation(SlowingDown(window=5), side="both"),
        ChunkConsistency(exec_horizon=3, dims=[0, 2]),
        ProgressScore(mode="shortfall", lag=4, epochs=3),
    ]
    det = FailureDetector(scores=scores, windows=3, combine="or", alpha=0.2)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    path = export_onnx(det, tmp_path / "h.onnx")
    mon = OnnxMonitor(path)
    assert len(mon.metadata["score_states"]) == 6
    res = assert_stream_parity(det, mon, test_set[::3])
    assert res["steps"] > 100
    assert_batch_parity(det, mon, test_set)

    # one robot restarted mid-batch scores like a fresh monitor at its step 0, 1, ...
    rs = test_set[:3]
    mon.reset_batch(3)
    for t in range(8):
        mon.step_batch(
            embedding=np.stack([r.embeddings[t] for r in rs]),
            action_samples=np.stack([r.action_samples[t] for r in rs]),
        )
    mon.reset_robot(1)
    ref = det.monitor()
    for t in range(8, 14):
        out = mon.step_batch(
            embedding=np.stack([r.embeddings[t] for r in rs]),
            action_samples=np.stack([r.action_samples[t] for r in rs]),
        )
        want = ref.step(embedding=rs[1].embeddings[t], action_samples=rs[1].action_samples[t])
        got = out.verdict(1)
        assert got.step == want.step == t - 8 and got.alarm == want.alarm
        for name in det.names:
            assert got.scores[name] == pytest.approx(want.scores[name], rel=TOL, abs=TOL)


def test_graphs_without_score_state_still_load(exported, test_set):
    """A graph whose metadata has no 'score_states' (exported before) runs as before."""

    from failguard.exporters.onnx import METADATA_KEY

    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            assert meta.pop("score_states") == []
            meta.pop("sha256", None)  # older files had no checksum either
            prop.value = json.dumps(meta)
    old = exported.parent / "old.onnx"
    onnx.save(model, str(old))
    r = test_set[0]
    with pytest.warns(UserWarning, match="without a checksum"):
        a = OnnxMonitor(old)
    b = OnnxMonitor(exported)
    for t in range(5):
        args = {"embedding": r.embeddings[t], "action_samples": r.action_samples[t]}
        assert a.step(**args).ratios == b.step(**args).ratios


def test_mondrian_parity(fit_set, tmp_path):
    cal = _rollouts(11, 30, 30, 0)
    test = _rollouts(21, 4, 4, 6)
    det = _detector("per_step", "and", "sum", mondrian=True)
    det.fit(fit_set, progress=False).calibrate(cal)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "g.onnx"))
    assert mon.groups == ["id", "ood"]
    assert_stream_parity(det, mon, test, group_of=lambda r: r.group)
    assert_batch_parity(det, mon, test, groups=[r.group for r in test])
    with pytest.warns(UserWarning, match="pooled"):
        mon.reset("unknown")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("threshold", "combine", "kind"),
    list(
        itertools.product(
            ("constant", "per_step", "band"), ("and", "or"), ("sum", "mean", "cumulative")
        )
    ),
)
def test_all_styles_parity(threshold, combine, kind, tmp_path):
    fit = _rollouts(30, 10, 0, 0)
    cal = _rollouts(31, 40, 20, 0)
    test = _rollouts(32, 15, 10, 15)
    det = _detector(threshold, combine, kind).fit(fit, progress=False).calibrate(cal)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "m.onnx"))
    assert_stream_parity(det, mon, test)
    assert_batch_parity(det, mon, test)


# ---------------------------------------------------------------------- errors
def test_unexportable_score_named(fit_set, cal_set, tmp_path):
    det = FailureDetector([RNDScore(max_epochs=1), STACScore()], alpha=0.2)
    det.fit(fit_set[:3], progress=False)
    with pytest.raises(ExportError, match=r"stac \(STACScore\)"):
        export_onnx(det, tmp_path / "x.onnx")


def test_uncalibrated_refused(fit_set, tmp_path):
    det = FailureDetector([ActionChunkEntropy()]).fit(fit_set[:2], progress=False)
    with pytest.raises(ExportError, match="not calibrated"):
        export_onnx(det, tmp_path / "x.onnx")


def test_bad_inputs(exported, test_set):
    mon = OnnxMonitor(exported)
    r = test_set[0]
    e, a = r.embeddings[0], r.action_samples[0]
    with pytest.raises(RolloutError, match="needs 'action_samples'"):
        mon.step(embedding=e)
    with pytest.raises(RolloutError, match="does not read 'action_logits'"):
        mon.step(embedding=e, action_samples=a, action_logits=r.action_logits[0])
    with pytest.raises(RolloutError, match=r"fitted on \(32,\)"):
        mon.step(embedding=e[:5], action_samples=a)
    with pytest.raises(RolloutError, match="dimensions"):
        mon.step(embedding=e[None], action_samples=a)
    with pytest.raises(RolloutError, match="must hold numbers"):
        mon.step(embedding=np.array(["x"] * 32), action_samples=a)
    bad = e.copy()
    bad[3] = np.nan
    with pytest.raises(RolloutError, match="NaN"):
        mon.step(embedding=bad, action_samples=a)
    with pytest.raises(RolloutError, match="reset_batch"):
        mon.step_batch(embedding=np.stack([e, e]), action_samples=np.stack([a, a]))
    with pytest.raises(RolloutError, match="disagree"):
        mon.reset_batch(2)
        mon.step_batch(embedding=np.stack([e, e]), action_samples=a[None])
    # nothing above advanced the state
    mon.reset()
    assert mon.step(embedding=e, action_samples=a).step == 0


def _extreme(base: np.ndarray, far: float) -> np.ndarray:
    """Copies of one step's chunks with some samples pushed ``far`` away (finite float32)."""
    rows = []
    f = np.float32(far)
    for k in range(5):
        a = base.copy()
        if k == 0:
            a[:3] = f  # three points far away on every axis
        elif k == 1:
            a[:5, :, 0] = -f  # five far away on one axis only
        elif k == 2:
            a[0], a[1] = f, -f  # the span overflows float32: every cell is +inf
        elif k == 3:
            a[: len(a) // 2] = f * np.float32(0.5)
            a[len(a) // 2 : len(a) // 2 + 2] = f
        rows.append(a)  # k == 4: unchanged
    return np.stack(rows)


@pytest.mark.parametrize(
    ("b", "d", "kw"),
    [
        (32, 3, {}),
        (16, 1, {}),
        (8, 5, {"dims": [0, 1, 2, 4]}),
        (64, 7, {}),  # packed dense ranks need a re-rank (64^7 > 2^53)
        (256, 3, {}),
        (32, 2, {"integrate_dt": 0.1}),
    ],
)
def test_ace_exact_at_any_spread(b, d, kw, tmp_path):
    """Issue 13: every finite spread torch accepts is scored, and exactly as in Python.

    Cells far past 2^53 (and +inf cells, where the span overflows float32) are told apart
    exactly; before, the graph flagged such steps and the runtime refused them.
    """
    from failguard import Rollout

    rng = np.random.default_rng(b + d)

    def roll(n: int) -> list:
        return [
            Rollout(
                rng.normal(size=(6, 4)),
                action_samples=(rng.normal(size=(6, b, 4, d)) * 0.5).astype(np.float32),
                success=True,
            )
            for _ in range(n)
        ]

    ace = ActionChunkEntropy(**kw)
    det = FailureDetector([ace], alpha=0.3).fit(roll(2), progress=False).calibrate(roll(6))
    mon = OnnxMonitor(export_onnx(det, tmp_path / "ace.onnx"))
    base = roll(1)[0].action_samples[0]
    for far in (1e6, 1e12, 1e20, 3e38):
        batch = _extreme(base, far)
        expected = ace.score_steps({"action_samples": batch})
        mon.reset_batch(len(batch))
        out = mon.step_batch(action_samples=batch)
        assert out.status is None and not out.errors, (far, out.errors)
        np.testing.assert_allclose(out.scores["ace"], expected, rtol=0, atol=1e-12)
        mon.reset()  # one robot, through step(): the same numbers, and the step is applied
        torch_mon = det.monitor()
        for a, e in zip(batch, expected, strict=True):
            v, ref = mon.step(action_samples=a), torch_mon.step(action_samples=a)
            assert abs(v.scores["ace"] - e) <= 1e-12 and v.alarm == ref.alarm
        assert mon.t == len(batch)


def test_ace_integrated_overflow_refused_like_torch(tmp_path):
    """Velocities whose integral overflows float32: NaN in both monitors, refused by both."""
    from failguard import NonFiniteScoreError, Rollout

    rng = np.random.default_rng(0)
    rolls = [
        Rollout(
            rng.normal(size=(6, 4)),
            action_samples=rng.normal(size=(6, 16, 4, 2)).astype(np.float32),
            success=True,
        )
        for _ in range(8)
    ]
    ace = ActionChunkEntropy(integrate_dt=1.0)
    det = FailureDetector([ace], alpha=0.3).fit(rolls[:2], progress=False).calibrate(rolls[2:])
    mon = OnnxMonitor(export_onnx(det, tmp_path / "ace.onnx"))
    a = rolls[0].action_samples[0].copy()
    a[0] = np.float32(3e38)
    with pytest.raises(NonFiniteScoreError):
        det.monitor().step(action_samples=a)
    with pytest.raises(NonFiniteScoreError, match="not applied"):
        mon.step(action_samples=a)
    assert mon.t == 0
    alarm_mon = OnnxMonitor(tmp_path / "ace.onnx", nonfinite="alarm")
    v = alarm_mon.step(action_samples=a)
    assert v.alarm and v.status == "nonfinite" and np.isnan(v.scores["ace"])


def test_bad_files(exported, tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        OnnxMonitor(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="cannot load"):
        OnnxMonitor(junk)
    model = onnx.load(str(exported))
    meta = {p.key: p for p in model.metadata_props}
    info = json.loads(meta["failguard"].value)
    info["schema"] = SCHEMA_VERSION + 1
    meta["failguard"].value = json.dumps(info)
    future = tmp_path / "future.onnx"
    onnx.save(model, str(future))
    with pytest.raises(ArtifactError, match="schema version"):
        OnnxMonitor(future)
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(ArtifactError, match="not a failguard monitor"):
        OnnxMonitor(plain)


@pytest.mark.bench
def test_latency_benchmark_quick(tmp_path):
    """benchmarks/latency.py end to end at tiny size (keeps the script from rotting)."""
    from benchmarks import latency as module

    res = module.main(["--quick", "--repeats", "50", "--out", str(tmp_path / "lat.json")])
    assert (tmp_path / "lat.json").exists()
    assert res["default"]["ort_monitor_step_n1"]["p50_us"] > 0
    assert "| default" in module.table(res)


def test_named_outputs_match_report(detector, exported, test_set):
    """The per-indicator outputs and the packed 'report' the runtime reads are the same."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rs = test_set[:3]
    feed = {
        "embeddings": np.stack([r.embeddings[5] for r in rs]),
        "action_samples": np.stack([r.action_samples[5] for r in rs]),
        "t": np.full(3, 5, dtype=np.int64),
        "group": np.zeros(3, dtype=np.int64),
        **{f"state_{n}": np.full((3, detector.windows[n]), 0.5) for n in detector.names},
    }
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feed), strict=True))
    report = out["report"].reshape(-1, 3)
    for i, n in enumerate(detector.names):
        for j, part in enumerate(("score", "windowed", "threshold", "ratio")):
            np.testing.assert_array_equal(report[4 * i + j], out[f"{part}_{n}"])
    np.testing.assert_array_equal(report[-1], out["fused_ratio"])
    np.testing.assert_array_equal(out["alarm"], out["fused_ratio"] > 1)


@pytest.mark.parametrize(
    "ace_kw", [{"dims": [0, 2], "integrate_dt": 0.1}, {"dims": [1]}, {"cell_factor": 0.2}]
)
def test_ace_options_parity(ace_kw, fit_set, cal_set, test_set, tmp_path):
    """ACE with chosen dims (including D=1), velocity integration and another cell size."""
    det = _detector("constant", "or", "sum", scores=[ActionChunkEntropy(**ace_kw)])
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "a.onnx"))
    assert mon.requires == ("action_samples",)
    assert_batch_parity(det, mon, test_set)
    for r in test_set[::6]:
        mon.reset_batch(len(r))
        out = mon.step_batch(action_samples=r.action_samples)
        np.testing.assert_allclose(out.scores["ace"], det.raw_scores(r)["ace"], rtol=0, atol=1e-12)


def test_reset_one_robot_of_a_batch(exported, test_set):
    """reset_robot restarts one robot's window and step counter, leaving the others alone."""
    mon = OnnxMonitor(exported)
    rs = test_set[:3]
    mon.reset_batch(3)

    def step(t: int):
        return mon.step_batch(
            embedding=np.stack([r.embeddings[t] for r in rs]),
            action_samples=np.stack([r.action_samples[t] for r in rs]),
        )

    for t in range(6):
        before = step(t)
    mon.reset_robot(1)
    after = step(6)
    assert after.step.tolist() == [6, 0, 6]
    single = OnnxMonitor(exported)
    first = single.step(embedding=rs[1].embeddings[6], action_samples=rs[1].action_samples[6])
    got = after.verdict(1)
    assert got.step == first.step == 0 and got.alarm == first.alarm
    for name in first.scores:
        assert got.windowed[name] == pytest.approx(first.windowed[name], rel=1e-6)
    assert after.windowed["rnd"][0] > before.scores["rnd"][0]
    with pytest.raises(RolloutError, match="out of range"):
        mon.reset_robot(3)


def test_high_dimensional_actions_are_not_refused(tmp_path):
    """Bimanual-size actions (D = 14): the mixed-radix keys stay exact, no step is refused."""
    kw = {"length": 25, "action_dim": 14}
    det = FailureDetector(scores=[ActionChunkEntropy()], alpha=0.2)
    det.fit(make_rollouts(4, seed=0, **kw), progress=False)
    det.calibrate(make_rollouts(20, seed=1, **kw))
    path = export_onnx(det, tmp_path / "d14.onnx")
    test = make_rollouts(2, seed=2, **kw) + make_rollouts(2, kind="failure", seed=3, **kw)
    out = assert_stream_parity(det, OnnxMonitor(path), test)
    assert out["steps"] == sum(len(r) for r in test)


# ---------------------------------------------------------------------- thin step path
def test_thin_step_verdict_equals_a_constructed_one(exported, test_set):
    """The per-step Verdict is filled without __init__: it must equal Verdict(...) exactly."""
    import dataclasses

    from failguard.runtime.monitor import _VERDICT_FIELDS
    from failguard.types import Verdict

    assert {f.name for f in dataclasses.fields(Verdict)} == set(_VERDICT_FIELDS)
    mon, ref = OnnxMonitor(exported), OnnxMonitor(exported)
    r = test_set[1]
    for t in range(len(r)):
        e, a = r.embeddings[t], r.action_samples[t]
        v = mon.step(embedding=e, action_samples=a)  # the thin path
        # the full path: a list and a float64 copy are converted and checked first
        w = ref.step(embedding=e.tolist(), action_samples=a.astype(np.float64))
        rebuilt = Verdict(**{f: getattr(v, f) for f in _VERDICT_FIELDS})
        assert v == rebuilt == w and repr(v) == repr(rebuilt) and hash(v.fired) == hash(w.fired)
        assert v.fired == tuple(n for n in v.ratios if v.ratios[n] > 1.0)


@pytest.mark.parametrize("nonfinite", ["raise", "alarm"])
@pytest.mark.parametrize("field", ["embedding", "action_samples"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_thin_step_refuses_nonfinite_inputs(exported, test_set, field, bad, nonfinite):
    """NaN/inf inputs are found by the graph's own check (no numpy pass), then named by the
    full checks; nothing is applied, whatever the non-finite score policy."""
    mon = OnnxMonitor(exported, nonfinite=nonfinite)
    assert mon.metadata["input_checks"] == ["embeddings", "action_samples"]
    r = test_set[0]
    args = {"embedding": r.embeddings[0].copy(), "action_samples": r.action_samples[0].copy()}
    mon.step(**args)
    before = {n: s.copy() for n, s in mon._state.items()}
    args[field].reshape(-1)[3] = bad
    with pytest.raises(RolloutError, match="NaN or inf"):
        mon.step(**args)
    assert mon.t == 1
    for n, s in mon._state.items():
        np.testing.assert_array_equal(s, before[n])
    args[field].reshape(-1)[3] = 0.0
    assert mon.step(**args).step == 1


def test_thin_step_keeps_state_separate_from_inputs(exported, test_set):
    """Reusing (and overwriting) one input buffer between steps changes nothing."""
    r = test_set[2]
    mon, ref = OnnxMonitor(exported), OnnxMonitor(exported)
    e_buf = np.empty_like(r.embeddings[0])
    a_buf = np.empty_like(r.action_samples[0])
    for t in range(len(r)):
        e_buf[:] = r.embeddings[t]
        a_buf[:] = r.action_samples[t]
        v = mon.step(embedding=e_buf, action_samples=a_buf)
        w = ref.step(embedding=r.embeddings[t].copy(), action_samples=r.action_samples[t].copy())
        assert v == w


# ---------------------------------------------------------------------- reduced precision
@pytest.mark.parametrize(("weights", "rel"), [("fp16", 2e-2), ("int8", 1e-1)])
def test_reduced_precision_weights(detector, exported, test_set, tmp_path, weights, rel):
    """fp16 / int8 dense weights: a smaller, verified file; only the RND score moves, a little."""
    path = export_onnx(detector, tmp_path / f"{weights}.onnx", weights=weights)
    assert path.stat().st_size < 0.6 * exported.stat().st_size
    low, ref = OnnxMonitor(path), OnnxMonitor(exported)  # the checksum is verified on load
    assert low.metadata["weights"] == weights and "weights" not in ref.metadata
    model = onnx.load(str(path))
    kinds = {n.op_type for n in model.graph.node}
    assert ("DynamicQuantizeLinear" in kinds or "MatMulInteger" in kinds) == (weights == "int8")
    n_robots = len(test_set)
    low.reset_batch(n_robots)
    ref.reset_batch(n_robots)
    worst = 0.0
    for t in range(10):
        args = {
            FIELDS[f]: np.stack([getattr(r, f)[t] for r in test_set]) for f in detector.requires
        }
        a, b = low.step_batch(**args), ref.step_batch(**args)
        np.testing.assert_array_equal(a.scores["ace"], b.scores["ace"])
        change = np.abs(a.scores["rnd"] - b.scores["rnd"]) / np.abs(b.scores["rnd"])
        worst = max(worst, float(change.max()))
    assert 0 < worst < rel
    # a flipped byte in the (smaller) file is still caught
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError):
        OnnxMonitor(bad)


def test_reduced_precision_bad_option(detector, tmp_path):
    with pytest.raises(ExportError, match="'weights'"):
        export_onnx(detector, tmp_path / "x.onnx", weights="int4")
    ace_only = FailureDetector([ActionChunkEntropy()], alpha=0.3)
    ace_only.fit(make_rollouts(2, seed=0, length=20), progress=False)
    ace_only.calibrate(make_rollouts(8, seed=1, length=20))
    with pytest.raises(ExportError, match="no dense layer"):
        export_onnx(ace_only, tmp_path / "y.onnx", weights="int8")
