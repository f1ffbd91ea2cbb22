"""failguard quickstart: fit, calibrate, monitor step by step, evaluate, save and reload.

Runs on synthetic rollouts that failguard generates itself (nominal successes, benign
out-of-distribution successes, and failures whose embeddings drift and whose sampled action
chunks split into several modes). About 10 seconds on a laptop core.

    python examples/01_quickstart.py [--out DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import failguard as fg
from failguard.synthetic import make_rollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where to save the detector")
    parser.add_argument("--tiny", action="store_true", help="fewer rollouts (CI)")
    args = parser.parse_args()
    n = 20 if args.tiny else 40

    # 1. Logs of successful runs: one part fits the scores, another calibrates thresholds.
    #    (With a real policy, record them with fg.Recorder; see README.)
    fit_set = make_rollouts(n // 2, kind="nominal", seed=0)
    cal_set = make_rollouts(n, kind="nominal", seed=1)
    print(fg.plan(alpha=0.1))

    # 2. FIPER: RND on the policy's embedding AND action-chunk entropy, windowed, calibrated
    #    so that at most 10 % of successful rollouts ever raise an alarm.
    detector = fg.FailureDetector(alpha=0.1, windows=10)
    detector.fit(fit_set)
    detector.calibrate(cal_set)
    print(detector)
    print("thresholds:", {k: round(float(v[0]), 3) for k, v in detector.thresholds_.items()})

    # 3. Deploy: a Monitor watches one rollout, one policy step at a time.
    rollout = make_rollouts(1, kind="failure", seed=7)[0]
    monitor = detector.monitor()
    for t in range(len(rollout)):
        verdict = monitor.step(
            embedding=rollout.embeddings[t], action_samples=rollout.action_samples[t]
        )
        if verdict.alarm:
            print(f"ALARM at step {t}/{len(rollout)}: {verdict}")
            break
    else:
        print("no alarm on the failing rollout")

    # 4. Evaluate on held-out rollouts: successes (in and out of distribution) and failures.
    test = (
        make_rollouts(n, kind="nominal", seed=2)
        + make_rollouts(n // 2, kind="ood_benign", seed=3)
        + make_rollouts(n, kind="failure", seed=4)
    )
    report = fg.evaluate(detector, test, alphas=[0.05, 0.1, 0.2])
    print(report)

    # 5. Save (config.json + model.safetensors, no pickle), reload, check it is the same.
    out = args.out or Path(tempfile.mkdtemp()) / "detector"
    detector.save(out)
    reloaded = fg.FailureDetector.load(out)
    same = np.array_equal(reloaded.score(rollout).fused, detector.score(rollout).fused)
    print(f"saved to {out}; reloaded detector identical: {same}")

    # 6. Export the whole monitor step to one ONNX file for the edge (needs failguard[export]).
    try:
        from failguard.exporters import export_onnx
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        print(f"skipping ONNX export: {err}")
    else:
        path = export_onnx(detector, out / "monitor.onnx")
        print(f"exported ONNX monitor to {path}")
    assert same


if __name__ == "__main__":
    main()
