"""Tiny run of the fleet benchmark (benchmarks/fleet.py --tiny): both engines, same results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fleet.py"


@pytest.mark.bench
def test_fleet_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--root",
            str(tmp_path / "fleet"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["identical_results"] == {"full": True, "side_by_side": True}
    for run in res["full"] + res["side_by_side"]:
        assert run["steps"] > 0 and run["steps_per_s"] > 0
        assert len(run["skipped"]) == 1  # the planted corrupt file, named, the others scored
    assert res["estimate_1e9"]["worker_hours_for_1e9_steps"] > 0
    assert len(res["fit_sample_sweep"]) == 3
