"""Soak test: 10^6 monitor steps per engine, with resident memory and latency percentiles.

Each engine steps through synthetic rollouts (in-distribution and failing ones, episodes of
``--episode`` steps, reset between them) for ``--steps`` steps in total:

* ``onnx``: :class:`failguard.runtime.OnnxMonitor` (the exported graph, one thread);
* ``torch``: :class:`failguard.Monitor`;
* ``adapter``: :class:`failguard.integrations.PolicyAdapter` around the torch monitor (the
  long-running object that used to keep every Verdict).

Reported per engine: latency percentiles of one step (p50 / p90 / p99 / p99.9 / max, µs),
steps per second, resident memory (RSS) after warm-up and at the end and its growth, and the
largest difference between a windowed score and the same window summed afresh in numpy from
the raw scores (window sums must stay exact however long the run). Episodes 1, 98, 195, ... get
one finite but extreme embedding (3e38): the ``onnx`` and ``torch`` monitors run with
``nonfinite="alarm"`` and must count those steps as alarms, never as quiet.

Usage::

    python -m benchmarks.soak                          # 10^6 steps per engine, JSON to stdout
    python -m benchmarks.soak --steps 3000 --out r.json  # the size CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from failguard import ActionChunkEntropy, FailureDetector, RNDScore
from failguard.integrations import PolicyAdapter
from failguard.synthetic import make_rollouts

torch.set_num_threads(1)


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; else peak RSS)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(seed: int = 0) -> tuple[FailureDetector, list[Any]]:
    kw = {"length": 60}
    det = FailureDetector([RNDScore(max_epochs=2), ActionChunkEntropy()], alpha=0.1)
    with warnings.catch_warnings():  # latency and memory do not depend on training
        warnings.simplefilter("ignore", UserWarning)
        det.fit(make_rollouts(8, seed=seed, **kw), progress=False)
    det.calibrate(make_rollouts(40, seed=seed + 1, **kw))
    pool = make_rollouts(6, seed=seed + 2, **kw) + make_rollouts(
        6, kind="failure", seed=seed + 3, **kw
    )
    return det, pool


def soak(engine: str, det: FailureDetector, pool: list[Any], steps: int, episode: int) -> dict:
    window = det.windows["rnd"]
    if engine == "onnx":
        from failguard.exporters import export_onnx
        from failguard.runtime import OnnxMonitor

        path = export_onnx(det, Path(tempfile.mkdtemp()) / "monitor.onnx")
        mon: Any = OnnxMonitor(path, nonfinite="alarm")
    elif engine == "torch":
        mon = det.monitor(nonfinite="alarm")
    else:
        state: dict[str, Any] = {}
        mon = PolicyAdapter(
            embed=lambda obs: obs[0],
            sample=lambda obs, n: obs[1],
            n_samples=pool[0].action_samples.shape[1],
            detector=det,
        )
        state["adapter"] = mon
    lat = np.empty(steps, dtype=np.int64)
    rss_marks: list[tuple[int, float]] = []
    warm = max(steps // 10, 1)
    worst = 0.0
    raw: deque[float] = deque(maxlen=window)
    extreme_alarms = extremes = 0
    alarms = 0
    t_start = time.perf_counter()
    ep = 0
    t_in_ep = episode  # forces a reset at step 0
    r = pool[0]
    for i in range(steps):
        if t_in_ep >= episode:
            r = pool[ep % len(pool)]
            mon.reset()
            raw.clear()
            ep += 1
            t_in_ep = 0
        t = t_in_ep % len(r)
        e = r.embeddings[t]
        a = r.action_samples[t]
        poisoned = ep % 97 == 1 and t_in_ep == 5 and engine != "adapter"
        if poisoned:
            e = np.full_like(e, 3e38)
        t0 = time.perf_counter_ns()
        v = mon.step((e, a)) if engine == "adapter" else mon.step(embedding=e, action_samples=a)
        lat[i] = time.perf_counter_ns() - t0
        t_in_ep += 1
        alarms += bool(v.alarm)
        if poisoned:
            extremes += 1
            extreme_alarms += bool(v.alarm and v.status == "nonfinite")
        rnd = v.scores["rnd"]
        raw.append(rnd if np.isfinite(rnd) else np.inf)
        if np.isfinite(v.windowed["rnd"]):
            fresh = float(np.sum(np.asarray(raw)))
            worst = max(worst, abs(fresh - v.windowed["rnd"]) / max(abs(fresh), 1e-12))
        if i == warm or i == steps - 1 or (i % max(steps // 20, 1) == 0):
            rss_marks.append((i, rss_mib()))
    elapsed = time.perf_counter() - t_start
    us = lat / 1000.0
    after_warm = next(m for s, m in rss_marks if s >= warm)
    out = {
        "engine": engine,
        "steps": steps,
        "episodes": ep,
        "steps_per_s": steps / elapsed,
        "latency_us": {
            "p50": float(np.percentile(us, 50)),
            "p90": float(np.percentile(us, 90)),
            "p99": float(np.percentile(us, 99)),
            "p99.9": float(np.percentile(us, 99.9)),
            "max": float(us.max()),
        },
        "rss_mib": {
            "after_warmup": after_warm,
            "end": rss_marks[-1][1],
            "growth_after_warmup": rss_marks[-1][1] - after_warm,
            "samples": rss_marks,
        },
        "window_max_rel_error": worst,
        "alarm_rate": alarms / steps,
        "extreme_steps": extremes,
        "extreme_steps_alarmed": extreme_alarms,
    }
    if engine == "adapter":
        out["verdicts_kept"] = len(mon.verdicts)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--episode", type=int, default=500, help="steps between resets")
    parser.add_argument("--engines", default="onnx,torch,adapter")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    det, pool = build()
    results = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "engines": {},
    }
    for engine in args.engines.split(","):
        res = soak(engine, det, pool, args.steps, args.episode)
        results["engines"][engine] = res
        lat = res["latency_us"]
        print(
            f"{engine:8s} {args.steps} steps  {res['steps_per_s']:9.0f} steps/s  "
            f"p50 {lat['p50']:7.1f}  p99 {lat['p99']:7.1f}  p99.9 {lat['p99.9']:8.1f}  "
            f"max {lat['max']:9.1f} µs  RSS {res['rss_mib']['after_warmup']:.1f} -> "
            f"{res['rss_mib']['end']:.1f} MiB  window err {res['window_max_rel_error']:.1e}  "
            f"extremes alarmed {res['extreme_steps_alarmed']}/{res['extreme_steps']}",
            flush=True,
        )
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
