"""The edge runtime imports numpy and onnxruntime only: run OnnxMonitor where torch cannot load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from failguard.exporters import export_onnx

pytestmark = pytest.mark.onnx

# Runs in a fresh interpreter: any attempt to import torch (or onnx, the exporter's
# dependency) raises ImportError, so a hidden torch import anywhere fails the test.
CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "onnxscript", "safetensors"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    import numpy as np
    from failguard.runtime import OnnxMonitor
    from failguard.exceptions import RolloutError

    data = np.load(sys.argv[2])
    mon = OnnxMonitor(sys.argv[1])
    alarms, scores = [], []
    for t in range(data["embeddings"].shape[0]):
        v = mon.step(embedding=data["embeddings"][t], action_samples=data["action_samples"][t])
        alarms.append(v.alarm)
        scores.append(v.scores)
    try:
        bad = data["embeddings"][0].copy()
        bad[0] = np.nan
        mon.step(embedding=bad, action_samples=data["action_samples"][0])
        nan_error = None
    except RolloutError as err:
        nan_error = str(err)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
    print(json.dumps({"alarms": alarms, "scores": scores, "nan_error": nan_error,
                      "loaded": loaded}))
    """
)


def test_runtime_runs_without_torch(detector, test_set, tmp_path):
    path = export_onnx(detector, tmp_path / "monitor.onnx")
    r = test_set[-1]  # a failure: the alarm must fire there too
    data = tmp_path / "rollout.npz"
    np.savez(data, embeddings=r.embeddings, action_samples=r.action_samples)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert "NaN" in out["nan_error"]
    trace = detector.score(r)
    assert out["alarms"] == trace.alarm.tolist()
    assert any(out["alarms"])
    for t, s in enumerate(out["scores"]):
        for name, value in s.items():
            assert abs(value - trace.scores[name][t]) <= 1e-5 * max(1.0, abs(value))


def test_blocker_really_blocks():
    """Sanity check of the test itself: the same blocker makes `import torch` fail."""
    code = CHILD.split("import numpy as np")[0] + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "blocked" in proc.stderr
