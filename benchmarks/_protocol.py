"""What the benchmarks share: validation selection, k-of-n rules, mean ± std and timing.

The robot and agent benchmarks follow one protocol (rollout-disjoint fit / calibration /
validation / test splits; every setting chosen on validation by TWA, ties by balanced
accuracy; test touched once). Their split functions stay with each benchmark because they
draw the split differently (the robot benchmark stratifies ID failures apart, the agent
benchmark sends an odd group's extra rollout to a random side); unifying them would change
every published number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["mean_std", "summary_us", "timed", "timed_us", "validation_key", "vote_rule"]


def _num(x: Any) -> float:
    """A metric as a number for ranking: missing or NaN ranks below every real value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return -math.inf
    return float(x)


def validation_key(metrics: Mapping[str, Any]) -> tuple[float, float]:
    """The key settings are ranked by on validation: TWA, then balanced accuracy.

    Examples
    --------
    >>> validation_key({"twa": 0.7, "balanced_accuracy": float("nan")})
    (0.7, -inf)
    """
    return (_num(metrics.get("twa")), _num(metrics.get("balanced_accuracy")))


def vote_rule(n: int, k: int | None, default: str = "and") -> str:
    """The ``combine`` of ``n`` legs that alarms when ``k`` of them fire.

    Examples
    --------
    >>> [vote_rule(3, k) for k in (None, 1, 2, 3)]
    ['and', 'or', '2-of-3', 'and']
    """
    if k is None:
        return default
    if k == n:
        return "and"
    if k == 1:
        return "or"
    return f"{k}-of-{n}"


def mean_std(values: Iterable[Any]) -> dict[str, float | None]:
    """Mean, population std (ddof=0) and count over seeds, skipping missing and NaN values.

    Examples
    --------
    >>> mean_std([0.5, None, float("nan"), 1.0])
    {'mean': 0.75, 'std': 0.25, 'n': 2}
    """
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": int(arr.size)}


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary_us(seconds: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and mean in microseconds of timings given in seconds, and their count.

    Examples
    --------
    >>> summary_us([1e-6, 2e-6, 3e-6])["p50_us"]
    2.0
    """
    us = np.asarray(seconds, dtype=float) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "repeats": int(us.size),
    }


def timed_us(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> dict[str, Any]:
    """:func:`timed`, summarised by :func:`summary_us` (p50 / p99 / mean in microseconds)."""
    return summary_us(timed(fn, repeat, warmup))
