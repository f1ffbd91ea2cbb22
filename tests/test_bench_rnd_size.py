"""benchmarks/rnd_size.py runs end to end at toy size on the CPU (one MetaWorld task)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COLLECT = """
import dataclasses
from pathlib import Path
from benchmarks.robot import run
cfg = dataclasses.replace(run.TINY, tasks=("push",), b256_tasks=())
log = {{}}
run.stage_demos_and_policies(cfg, Path({out!r}), log)
run.stage_rollouts(cfg, Path({out!r}), log)
"""


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in the repository root, capturing its output."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.bench
def test_rnd_size_pipeline_tiny(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    robot = tmp_path / "robot"
    code = COLLECT.format(out=str(robot))
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    work = tmp_path / "work"
    script = "benchmarks.rnd_size"
    proc = _python(
        *("-m", script, "tiny", "--robot", str(robot), "--work", str(work)),
        *("--tasks", "push", "--max-epochs", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((work / "rnd_size.json").read_text())
    params = {z: result["training"][z]["parameters"] for z in ("small", "paper")}
    assert params["small"] < 100_000 < 30_000_000 < params["paper"]
    for size in ("small", "paper"):
        for method in ("rnd_oe", "fiper"):
            # every level the benchmark's tiny protocol evaluates (alpha = 0.2 at tiny size)
            per_alpha = result["summary"][size][method]
            assert per_alpha and set(per_alpha) <= {str(a) for a in result["protocol"]["alphas"]}
            for cell in per_alpha.values():
                assert 0.0 <= cell["twa"]["mean"] <= 1.0 and cell["twa"]["n_seeds"] == 1
                assert 0.0 <= cell["far_id"]["mean"] <= 1.0
    # the evaluation refuses scores of other rollouts (the order is checked)
    scores = work / "scores" / "scores_small.safetensors"
    from safetensors.numpy import load_file, save_file

    table = load_file(str(scores))
    table["push/seed0"] = table["push/seed0"][:-1]
    save_file(table, str(scores))
    proc = _python(
        *("-m", script, "evaluate", "--robot", str(robot), "--tiny"),
        *("--tasks", "push", "--scores", str(work / "scores"), "--sizes", "small"),
        *("--seeds", "0", "--out", str(tmp_path / "again.json")),
    )
    assert proc.returncode != 0 and "scores have shape" in proc.stderr
