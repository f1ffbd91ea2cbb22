"""Each score owns its export: a new score exports through its own hook, untouched exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import make_detector, small_rnd
from failguard.exporters import export_onnx
from failguard.runtime import OnnxMonitor
from failguard.scores._base import BaseScore

pytestmark = pytest.mark.onnx


class EmbeddingNorm(BaseScore):
    """A score the exporter has never heard of: mean |e| over the first k embedding dims,
    with a per-score state (the previous value), to exercise the hook's state API too."""

    exportable = True

    def __init__(self, k: int = 4, name: str = "norm") -> None:
        super().__init__(name)
        self.k = k

    def _fit(self, rollouts: Any, progress: bool) -> None:
        """Nothing to learn."""

    def _score(self, inputs: Any) -> Any:
        x = np.abs(np.asarray(inputs["embeddings"], dtype=np.float64)[:, : self.k]).mean(axis=1)
        prev = np.concatenate([x[:1], x[:-1]])  # the value one step back (itself at t = 0)
        return x + 0.5 * prev

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, None]:
        x = g.op("Cast", "embeddings", to=g.DOUBLE)
        x = g.op("Slice", x, g.i64([0]), g.i64([self.k]), g.i64([1]))
        value = g.op("ReduceMean", g.op("Abs", x), g.i64([1]), keepdims=0)
        state = g.state((1,))
        first = g.op("Equal", "t", g.i64(0))
        prev = g.op("Where", first, value, g.op("Squeeze", state, g.i64([1])))
        g.update_state(state, g.op("Unsqueeze", value, g.i64([1])))
        return g.op("Add", value, g.op("Mul", g.f64(0.5), prev)), None

    context = 1  # reads the previous step


def test_a_new_score_exports_through_its_own_hook(fit_set, cal_set, test_set, tmp_path):
    det = make_detector(scores=[small_rnd(), EmbeddingNorm()], combine="or", alpha=0.2)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = OnnxMonitor(export_onnx(det, tmp_path / "m.onnx"))
    assert mon.names == ["rnd", "norm"] and mon.spec == det.spec()
    for r in test_set[::4]:
        ref = det.monitor()
        mon.reset()
        for t in range(len(r)):
            a = ref.step(embedding=r.embeddings[t])
            b = mon.step(embedding=r.embeddings[t])
            assert a.alarm == b.alarm
            assert b.scores["norm"] == pytest.approx(a.scores["norm"], rel=1e-12)
            assert b.ratios["rnd"] == pytest.approx(a.ratios["rnd"], rel=1e-5)


def test_onnx_monitor_reads_the_spec_back(detector, tmp_path):
    mon = OnnxMonitor(export_onnx(detector, tmp_path / "m.onnx"))
    assert mon.spec == detector.spec()
    assert mon.spec.nonfinite == "raise"
    assert OnnxMonitor(mon.path, nonfinite="alarm").spec.nonfinite == "alarm"


def test_the_exporter_names_no_score_class():
    """The exporter reads scores only through their hooks: its code names no score class."""
    import ast

    import failguard.exporters
    from failguard.scores._base import _REGISTRY

    named = set()
    for path in sorted(Path(failguard.exporters.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id in _REGISTRY:
                named.add(f"{path.name}: {node.id}")
            if isinstance(node, ast.alias) and node.name in _REGISTRY:
                named.add(f"{path.name}: import {node.name}")
    assert not named, f"the exporter names score classes: {sorted(named)}"
