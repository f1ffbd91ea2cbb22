"""Core benchmark: fit and calibration time, batch scoring throughput, Monitor.step latency in
torch, and the realised false-alarm rate table of the conformal guarantee.

    python -m benchmarks.core            # full size (a few minutes on 2 cores)
    python -m benchmarks.core --tiny     # CI size, checks the script only

Writes ``benchmarks/results/core.json`` (or ``--out``) and prints Markdown tables. Timings are
medians of repeated runs on the machine at hand; the machine may be shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import failguard as fg
from failguard.calibration import CalibrationSettings, false_alarm_rate
from failguard.synthetic import make_rollouts, make_score_curves

from ._protocol import timed


def bench_pipeline(n: int, length: int, repeat: int) -> dict[str, Any]:
    """Fit on n rollouts and calibrate on n others, each `length` steps; then score."""
    kw = {"length": length, "embedding_dim": 64, "n_samples": 32, "horizon": 8, "action_dim": 3}
    fit_set = make_rollouts(n, seed=0, **kw)
    cal_set = make_rollouts(n, seed=1, **kw)
    test = make_rollouts(n, seed=2, **kw)
    steps = sum(len(r) for r in test)

    fit_times, cal_times = [], []
    det = fg.FailureDetector(alpha=0.05)
    for _ in range(repeat):
        det = fg.FailureDetector(alpha=0.05)
        t0 = time.perf_counter()
        det.fit(fit_set, progress=False)
        t1 = time.perf_counter()
        det.calibrate(cal_set)
        t2 = time.perf_counter()
        fit_times.append(t1 - t0)
        cal_times.append(t2 - t1)
    rnd = det.scores[0]
    score_times = timed(lambda: det.traces(test), repeat)
    per_score = {
        s.name: steps / statistics.median(timed(lambda s=s: s.score_many(test), repeat))
        for s in det.scores
    }

    # Monitor.step, one step at a time, in torch eager.
    r = test[0]
    mon = det.monitor()
    lat = []
    for rep in range(max(1, 2000 // len(r))):
        mon.reset()
        for t in range(len(r)):
            t0 = time.perf_counter()
            mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
            lat.append(time.perf_counter() - t0)
        if rep == 0:
            lat.clear()  # warm-up
    lat_us = np.array(lat) * 1e6
    return {
        "n_fit": n,
        "n_calibration": n,
        "steps_per_rollout": length,
        "rnd_epochs_run": len(rnd.history_["val"]),  # type: ignore[attr-defined]
        "fit_s_median": statistics.median(fit_times),
        "calibrate_s_median": statistics.median(cal_times),
        "score_steps_per_s": steps / statistics.median(score_times),
        "score_steps_per_s_by_indicator": per_score,
        "monitor_step_us_p50": float(np.percentile(lat_us, 50)),
        "monitor_step_us_p99": float(np.percentile(lat_us, 99)),
    }


def bench_far(n_seeds: int, alpha: float) -> list[dict[str, Any]]:
    rows = []
    for mode, n_cal in (("corrected", 40), ("reference", 40)):
        for style in ("constant", "per_step", "band"):
            est = false_alarm_rate(
                CalibrationSettings(style=style, alpha=alpha, mode=mode),
                make_score_curves,
                n_cal,
                n_test=100,
                n_seeds=n_seeds,
            )
            rows.append(
                {
                    "mode": mode,
                    "style": style,
                    "n_calibration": n_cal,
                    "alpha": alpha,
                    "far": est.far,
                    "se": est.se,
                    "within_bound": est.within(alpha),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, length, repeat, seeds = (20, 50, 1, 20) if args.tiny else (100, 200, 3, 500)

    pipe = bench_pipeline(n, length, repeat)
    far = bench_far(seeds, 0.1)
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "failguard": fg.__version__,
        },
        "pipeline": pipe,
        "false_alarm_rate": far,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"| fit {n}×{length} | calibrate {n}×{length} | batch scoring | Monitor.step p50 | p99 |")
    print("|---|---|---|---|---|")
    print(
        f"| {pipe['fit_s_median']:.2f} s | {pipe['calibrate_s_median']:.2f} s | "
        f"{pipe['score_steps_per_s']:,.0f} steps/s | {pipe['monitor_step_us_p50']:.0f} µs | "
        f"{pipe['monitor_step_us_p99']:.0f} µs |"
    )
    print()
    print(f"| mode | style | realised FAR (α = 0.1, {seeds} seeds) | ± SE | ≤ α + 3 SE |")
    print("|---|---|---|---|---|")
    for row in far:
        print(
            f"| {row['mode']} | {row['style']} | {row['far']:.4f} | {row['se']:.4f} | "
            f"{'yes' if row['within_bound'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()
