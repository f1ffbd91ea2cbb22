"""Export a calibrated detector to ONNX and run it on a "robot" that has no torch.

Part 1 (the workstation, with torch): fit and calibrate FIPER on synthetic successful
rollouts, export the whole monitor step to ``monitor.onnx``, and record a few new rollouts
(successes, benign OOD successes and failures) to disk with :class:`failguard.Recorder`,
as a robot's logger would.

Part 2 (the robot): a fresh Python process in which ``import torch`` is made to fail. It
reads the recorded rollouts with :mod:`failguard.logs` (numpy + safetensors) and replays them
through :class:`failguard.runtime.OnnxMonitor` (numpy + onnxruntime), one step at a time and
then all robots at once with ``step_batch``. Part 1 then checks that the robot raised the
same alarms as the torch detector.

    python examples/03_export_onnx.py [--out DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def robot(out: Path) -> None:
    """Part 2: runs with torch blocked; prints a JSON summary on its last line."""
    import importlib.abc

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name.split(".")[0] == "torch":
                raise ImportError("this robot has no torch")
            return None

    sys.meta_path.insert(0, NoTorch())

    import numpy as np

    from failguard.logs import read_rollouts
    from failguard.runtime import OnnxMonitor

    rollouts = read_rollouts(out / "rollouts")
    monitor = OnnxMonitor(out / "monitor.onnx")
    print(f"[robot] {monitor!r}")
    print(
        f"[robot] calibrated on {monitor.metadata['n_calibration']} successes, "
        f"alpha={monitor.metadata['alpha']} ({monitor.metadata['guarantee']})"
    )
    first_alarms: list[int | None] = []
    for r in rollouts:
        monitor.reset()
        first = None
        for t in range(len(r)):
            v = monitor.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
            if v.alarm and first is None:
                first = t
                print(f"[robot] {r.group}/{'ok' if r.success else 'FAIL'}: {v}")
        first_alarms.append(first)

    # the same rollouts, all robots in one call per step (shorter ones repeat their last step)
    n, longest = len(rollouts), max(len(r) for r in rollouts)
    monitor.reset_batch(n)
    batch_alarm = np.zeros(n, dtype=bool)
    for t in range(longest):
        idx = [min(t, len(r) - 1) for r in rollouts]
        out_t = monitor.step_batch(
            embedding=np.stack([r.embeddings[i] for r, i in zip(rollouts, idx, strict=True)]),
            action_samples=np.stack(
                [r.action_samples[i] for r, i in zip(rollouts, idx, strict=True)]
            ),
        )
        live = np.array([t < len(r) for r in rollouts])
        batch_alarm |= out_t.alarm & live
    torch_loaded = "torch" in sys.modules
    print(
        json.dumps(
            {
                "first_alarms": first_alarms,
                "batch_alarm": batch_alarm.tolist(),
                "torch_loaded": torch_loaded,
            }
        )
    )


def workstation(out: Path, tiny: bool) -> None:
    """Part 1: fit, calibrate, export, record; then run part 2 and compare."""
    import failguard as fg
    from failguard.exporters import export_onnx
    from failguard.synthetic import make_rollouts

    n = 20 if tiny else 40
    kw = {"length": 60 if tiny else 100}
    detector = fg.FailureDetector(
        [fg.RNDScore(max_epochs=5 if tiny else 50), fg.ActionChunkEntropy()], alpha=0.1
    )
    detector.fit(make_rollouts(n // 2, seed=0, **kw), progress=False)
    detector.calibrate(make_rollouts(n + 14, seed=1, **kw))
    path = export_onnx(detector, out / "monitor.onnx")
    print(f"[workstation] exported {detector.names} to {path} ({path.stat().st_size:,} bytes)")

    # record new rollouts step by step, as the robot's logger would
    recorder = fg.Recorder(out / "rollouts")
    new = (
        make_rollouts(3, seed=7, **kw)
        + make_rollouts(2, kind="ood_benign", seed=8, **kw)
        + make_rollouts(3, kind="failure", seed=9, **kw)
    )
    for r in new:
        recorder.start(group=r.group)
        for t in range(len(r)):
            recorder.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
        recorder.end(success=r.success)
    expected = [tr.first_alarm for tr in detector.traces(fg.read_rollouts(out / "rollouts"))]

    proc = subprocess.run(
        [sys.executable, __file__, "--robot", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise SystemExit(f"robot process failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["torch_loaded"]
    assert result["first_alarms"] == expected, (result["first_alarms"], expected)
    assert result["batch_alarm"] == [a is not None for a in expected]
    print(f"[workstation] robot and torch detector agree: first alarms {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where to write files")
    parser.add_argument("--tiny", action="store_true", help="small and fast (CI)")
    parser.add_argument("--robot", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.robot is not None:
        robot(args.robot)
        return
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        workstation(args.out, args.tiny)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workstation(Path(tmp), args.tiny)


if __name__ == "__main__":
    main()
