"""The functional core shared by batch scoring (FailureDetector) and streaming (Monitor).

Both paths call these functions on the same values in the same order, which is what makes
a replayed :class:`~failguard.Monitor` agree with :meth:`FailureDetector.score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["fuse", "ratios", "threshold_at"]


def threshold_at(table: NDArray[np.float64], t: NDArray[np.int64] | int) -> NDArray[np.float64]:
    """γ(t) from a threshold table, repeating the last value past its end."""
    return table[np.minimum(t, table.shape[0] - 1)]


def ratios(windowed: NDArray[np.float64], gamma: NDArray[np.float64]) -> NDArray[np.float64]:
    """η(t) / γ(t); thresholds are floored at 1e-12 by calibration, so this is finite."""
    return windowed / gamma


def fuse(values: Sequence[NDArray[np.float64]], combine: str) -> NDArray[np.float64]:
    """AND fusion is the min over indicators, OR the max (elementwise over steps)."""
    stacked = np.stack(list(values))
    return stacked.min(axis=0) if combine == "and" else stacked.max(axis=0)


def fired(ratio_values: Mapping[str, float]) -> tuple[str, ...]:
    """Names of the indicators above their threshold."""
    return tuple(k for k, r in ratio_values.items() if r > 1.0)
