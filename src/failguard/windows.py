"""Causal aggregation of per-step scores over time: moving sum (FIPER's default), mean, cumulative.

One functional core serves both paths: :func:`window_scores` aggregates a whole rollout,
:class:`WindowState` aggregates one step at a time, and both call the same reduction on the
same ordered values, so they agree bit for bit. The state is O(window) floats.

The moving sum at step t is η(t) = Σ_{k=max(0, t-w+1)}^{t} s(k) (fewer terms at the start);
the moving mean divides it by the number of terms; the cumulative sum is Σ_{k<=t} s(k).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .exceptions import ParameterError

__all__ = ["WINDOW_KINDS", "WindowKind", "WindowState", "window_scores", "window_update"]

WindowKind = Literal["sum", "mean", "cumulative"]
WINDOW_KINDS: tuple[str, ...] = ("sum", "mean", "cumulative")


def _check(size: int, kind: str) -> None:
    if kind not in WINDOW_KINDS:
        raise ParameterError(f"window kind must be one of {WINDOW_KINDS}; got {kind!r}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ParameterError(f"window size must be an int >= 1; got {size!r}.")


def _reduce(
    buffer: NDArray[np.float64], n_terms: NDArray[np.float64], kind: str
) -> NDArray[np.float64]:
    """Sum the columns of ``buffer`` (oldest first) left to right; the shared core of both paths."""
    acc = np.zeros(buffer.shape[0], dtype=np.float64)
    for j in range(buffer.shape[1]):
        acc = acc + buffer[:, j]
    if kind == "mean":
        return acc / n_terms
    return acc


def window_scores(scores: ArrayLike, size: int, kind: WindowKind = "sum") -> NDArray[np.float64]:
    """Aggregate a rollout's per-step scores over a causal window.

    Parameters
    ----------
    scores : array_like of shape (T,)
        Per-step scores s(0..T-1).
    size : int
        Window length w (ignored by ``"cumulative"``).
    kind : {"sum", "mean", "cumulative"}, default="sum"

    Returns
    -------
    numpy.ndarray of shape (T,), float64

    Examples
    --------
    >>> window_scores([1.0, 2.0, 3.0, 4.0], size=2)
    array([1., 3., 5., 7.])
    >>> window_scores([1.0, 2.0, 3.0, 4.0], size=2, kind="mean")
    array([1. , 1.5, 2.5, 3.5])
    >>> window_scores([1.0, 2.0, 3.0, 4.0], size=2, kind="cumulative")
    array([ 1.,  3.,  6., 10.])
    """
    _check(size, kind)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ParameterError(f"scores must have shape (T,); got {s.shape}.")
    if kind == "cumulative":
        out = np.empty_like(s)
        total = 0.0
        for t, value in enumerate(s):
            total = total + value
            out[t] = total
        return out
    padded = np.concatenate([np.zeros(size - 1), s])
    buffer = np.lib.stride_tricks.sliding_window_view(padded, size)
    n_terms = np.minimum(np.arange(1, s.shape[0] + 1), size).astype(np.float64)
    return _reduce(buffer, n_terms, kind)


def window_update(
    buffer: NDArray[np.float64], values: NDArray[np.float64], n_seen: NDArray[np.int64], kind: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One step of n windows at once: (next buffer, windowed value) of each row.

    ``buffer`` is (n, w) raw scores, oldest first (zeros before the first step), or (n, 1)
    running totals for ``"cumulative"``; ``values`` (n,) are this step's scores and
    ``n_seen`` (n,) how many steps each window has seen, this one included. The streaming
    :class:`WindowState`, :class:`failguard.Monitor` and the step kernel all call it; it
    reduces in the same order as :func:`window_scores`, so both paths agree bit for bit.

    Examples
    --------
    >>> buf, w = window_update(np.zeros((1, 2)), np.array([3.0]), np.array([1]), "mean")
    >>> buf.tolist(), w.tolist()
    ([[0.0, 3.0]], [3.0])
    """
    if kind == "cumulative":
        new = buffer + values[:, None]
        return new, new[:, 0]
    new = np.concatenate([buffer[:, 1:], values[:, None]], axis=1)
    n_terms = np.minimum(n_seen, buffer.shape[1]).astype(np.float64)
    return new, _reduce(new, n_terms, kind)


class WindowState:
    """Streaming counterpart of :func:`window_scores`: O(size) memory, one value per step.

    Examples
    --------
    >>> w = WindowState(size=2)
    >>> [w.update(x) for x in (1.0, 2.0, 3.0, 4.0)]
    [1.0, 3.0, 5.0, 7.0]
    """

    def __init__(self, size: int, kind: WindowKind = "sum") -> None:
        _check(size, kind)
        self.size = int(size)
        self.kind = kind
        self.reset()

    def reset(self) -> None:
        """Forget every past step."""
        width = 1 if self.kind == "cumulative" else self.size
        self._buffer = np.zeros((1, width), dtype=np.float64)
        self._t = 0

    @property
    def buffer(self) -> NDArray[np.float64]:
        """The last ``size`` raw scores, oldest first (zeros before the first step); the
        running total for ``"cumulative"``."""
        return self._buffer[0].copy()

    def update(self, score: float) -> float:
        """Add the score of the next step and return the windowed value at that step."""
        self._t += 1
        self._buffer, value = window_update(
            self._buffer, np.array([float(score)]), np.array([self._t]), self.kind
        )
        return float(value[0])
