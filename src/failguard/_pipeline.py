"""The functional core shared by batch scoring (FailureDetector) and streaming (Monitor).

Both paths call these functions on the same values in the same order, which is what makes
a replayed :class:`~failguard.Monitor` agree with :meth:`FailureDetector.score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .exceptions import ConfigError

__all__ = ["fuse", "fusion_rank", "parse_combine", "ratios", "threshold_at"]


def threshold_at(table: NDArray[np.float64], t: NDArray[np.int64] | int) -> NDArray[np.float64]:
    """γ(t) from a threshold table, repeating the last value past its end."""
    return table[np.minimum(t, table.shape[0] - 1)]


def ratios(windowed: NDArray[np.float64], gamma: NDArray[np.float64]) -> NDArray[np.float64]:
    """η(t) / γ(t); thresholds are floored at 1e-12 by calibration, so this is finite."""
    return windowed / gamma


def parse_combine(combine: str) -> tuple[int, int] | None:
    """(k, n) of a ``"k-of-n"`` vote, or None for ``"and"`` / ``"or"`` / anything else.

    Examples
    --------
    >>> parse_combine("2-of-3"), parse_combine("and")
    ((2, 3), None)
    """
    head, sep, tail = combine.partition("-of-")
    if not sep or not head.isdigit() or not tail.isdigit():
        return None
    return int(head), int(tail)


def fusion_rank(combine: str, n: int) -> int:
    """How many of ``n`` indicators must be above their thresholds at the same step.

    AND is n-of-n, OR is 1-of-n, ``"k-of-n"`` is k. The fused ratio is the k-th largest
    ratio, so it exceeds 1 exactly when at least k indicators do.

    Examples
    --------
    >>> fusion_rank("and", 3), fusion_rank("or", 3), fusion_rank("2-of-3", 3)
    (3, 1, 2)
    """
    if combine == "and":
        return n
    if combine == "or":
        return 1
    vote = parse_combine(combine)
    if vote is None or vote[1] != n or not 1 <= vote[0] <= n:
        raise ConfigError(
            f"combine must be 'and', 'or' or 'k-of-{n}' with 1 <= k <= {n} for {n} "
            f"indicators. Got {combine!r} instead."
        )
    return vote[0]


def fuse(values: Sequence[NDArray[np.float64]], combine: str) -> NDArray[np.float64]:
    """Fused ratio, elementwise over steps: AND = min, OR = max, k-of-n = k-th largest."""
    stacked = np.stack(list(values))
    if combine == "and":
        return stacked.min(axis=0)
    if combine == "or":
        return stacked.max(axis=0)
    n = stacked.shape[0]
    k = fusion_rank(combine, n)
    return np.sort(stacked, axis=0)[n - k]


def fired(ratio_values: Mapping[str, float]) -> tuple[str, ...]:
    """Names of the indicators above their threshold."""
    return tuple(k for k, r in ratio_values.items() if r > 1.0)
