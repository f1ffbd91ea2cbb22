"""The soak benchmark runs at a small size: memory flat, window sums exact, extremes alarm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_soak_small(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--steps",
            "4000",
            "--episode",
            "200",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())["engines"]
    assert set(res) == {"onnx", "torch", "adapter"}
    for name, r in res.items():
        assert r["window_max_rel_error"] < 1e-12, name
        assert r["rss_mib"]["growth_after_warmup"] < 25.0, name
        assert r["latency_us"]["p50"] > 0
    for name in ("onnx", "torch"):
        assert res[name]["extreme_steps"] >= 1
        assert res[name]["extreme_steps_alarmed"] == res[name]["extreme_steps"]
    assert res["adapter"]["verdicts_kept"] <= 1000
