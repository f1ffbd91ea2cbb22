"""The MetaWorld robot benchmark runs end to end at its tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_robot_benchmark_tiny(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    pytest.importorskip("matplotlib")
    out = tmp_path / "robot"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.robot.run",
            "--tiny",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    fiper = summary["b32"]["methods"]["fiper"]
    result = next(iter(fiper.values()))
    assert set(result["overall"]) >= {"twa", "balanced_accuracy", "tpr", "tnr", "far_id"}
    assert (out / "plots" / "robot_traces.png").is_file()
    assert (out / "plots" / "robot_alpha_sweep.png").is_file()
    outcomes = summary["rollout_outcomes"]["b32"]
    assert set(outcomes) == {"push", "pick-place", "door-open"}
