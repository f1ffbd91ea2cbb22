"""Tiny run of the discrete-action agent benchmark (python -m benchmarks.agent.run --tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_agent_benchmark_tiny(tmp_path: Path) -> None:
    """Train (smoke) -> record rollouts -> evaluate, end to end, at CI size."""
    pytest.importorskip("Box2D", reason="needs Box2D: pip install 'failguard[agents]'")
    pytest.importorskip("gymnasium", reason="needs gymnasium: pip install 'failguard[agents]'")
    out = tmp_path / "agent"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.agent.run", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["monitor_replay_matches"]
    assert set(results["alpha"]) == {"0.1"}
    fiper = results["alpha"]["0.1"]["FIPER (RND AND entropy)"]
    for metric in ("far_id", "tpr", "balanced_accuracy", "twa", "detection_time"):
        value = fiper["test"][metric]["mean"]
        assert value is not None and 0.0 <= value <= 1.0, (metric, value)
    # every group was recorded, with its label, and the ID policy lands
    assert results["rollouts"]["id"]["success_rate"]["mean"] >= 0.8
    assert set(results["rollouts"]) == {
        "id",
        "ood-gravity",
        "ood-wind",
        "ood-engine",
        "ood-noise",
        "ood-init",
        "ood-fade",
        "ood-updraft",
    }
    assert (out / "results.md").read_text().count("| FIPER (RND AND entropy) |") >= 2
    # a recorded rollout has what the discrete monitor reads: embedding, logits, B ids
    from failguard import read_rollout

    first = sorted((out / "seed0" / "rollouts").glob("id_*.safetensors"))[0]
    r = read_rollout(first)
    assert r.group == "id" and r.success is not None
    assert r.action_logits is not None and r.action_logits.shape[1] == 4
    assert r.action_ids is not None and r.action_ids.shape[1] == 32
    assert r.embeddings.shape[1] == 64
    assert r.states is not None and r.states.shape == (len(r), 2)  # the lander's (x, y)
    # every detector's windows were chosen by fg.select on validation
    per_det = json.loads((out / "seed0" / "eval.json").read_text())["alpha"]["0.1"]
    assert (
        "state_stagnation"
        in per_det["stagnation of the position (Rollout.states) alone"]["windows"]
    )
    assert all("validation" in d.get("selection", "validation") for d in per_det.values())
    assert "2-fold cross-fitted" in per_det["FIPER (RND AND entropy)"]["selection"]
