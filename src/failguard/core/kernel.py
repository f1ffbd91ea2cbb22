"""The one monitor step: every formula of a monitor step, written once, numpy only.

Batch scoring (:meth:`FailureDetector.score` is :func:`scan`), the streaming
:class:`~failguard.Monitor` (:func:`step`), calibration (:func:`episode_statistic`), the
health check and p-values (:func:`normalised`, :func:`episode_statistics`), the exporter (which
mirrors these formulas in ONNX, reading the same :class:`~failguard.core.MonitorSpec`) and the
edge runtime (:func:`fired`, :func:`group_row`) all call the functions here. Nothing here
knows about torch or about what a score measures.

The step, for indicators k = 1 … K with raw scores s_k(t):

=================== ================================================================
window              η_k(t) = causal sum / mean / running total of s_k (a NaN or inf
                    score enters as +inf, never NaN); :mod:`failguard.windows`
threshold           γ_k(t) = table_k[row, min(t, L - 1)] (:func:`table_at`)
ratio               r_k(t) = η_k(t) / γ_k(t)
fusion              r(t) = the k-th largest r_k(t): AND = min, OR = max (:func:`fuse`)
alarm               r(t) > 1, or a non-finite score or fused ratio (:func:`alarm`)
fired               the k with r_k(t) > 1 or a non-finite s_k(t) (:func:`fired`)
episode statistic   max_t fuse_k D_k(t), D_k = (η_k - a_k(t)) / b_k(t) (:func:`episode_statistic`)
=================== ================================================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..exceptions import ConfigError
from ..windows import window_scores, window_update

if TYPE_CHECKING:
    from .spec import MonitorSpec

__all__ = [
    "MonitorState",
    "StepResult",
    "alarm",
    "episode_statistic",
    "episode_statistics",
    "fired",
    "fuse",
    "fusion_rank",
    "group_row",
    "init_state",
    "normalised",
    "parse_combine",
    "scan",
    "split_indices",
    "step",
    "table_at",
]


# ---------------------------------------------------------------------- formulas
def table_at(
    table: NDArray[np.float64], t: NDArray[np.int64] | int, row: Any = None
) -> NDArray[np.float64]:
    """Value of a time table at step(s) t, repeating its last value past its end.

    The one threshold (and profile) lookup: γ(t) = table[min(t, L - 1)], or
    table[row, min(t, L - 1)] for a (G, L) table with one row per threshold group.

    Examples
    --------
    >>> table_at(np.array([1.0, 2.0]), np.arange(4))
    array([1., 2., 2., 2.])
    >>> table_at(np.array([[1.0, 2.0], [5.0, 6.0]]), np.array([0, 3]), row=np.array([1, 0]))
    array([5., 2.])
    """
    idx = np.minimum(t, table.shape[-1] - 1)
    return table[idx] if row is None else table[row, idx]


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
    """Fused ratio, elementwise: AND = min, OR = max, k-of-n = k-th largest.

    Examples
    --------
    >>> fuse([np.array([0.5, 2.0]), np.array([1.5, 3.0])], "and")
    array([0.5, 2. ])
    """
    stacked = np.stack(list(values))
    if combine == "and":
        return stacked.min(axis=0)
    if combine == "or":
        return stacked.max(axis=0)
    n = stacked.shape[0]
    k = fusion_rank(combine, n)
    return np.sort(stacked, axis=0)[n - k]


def alarm(fused: NDArray[np.float64], nonfinite: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The alarm rule: the fused ratio above 1, or a step that is not an ordinary one.

    ``nonfinite`` flags steps with a NaN or inf score; a NaN fused ratio counts as one too,
    so a step is never quiet because a number was not a number.

    Examples
    --------
    >>> alarm(np.array([0.5, 1.5, np.nan]), np.array([False, False, False]))
    array([False,  True,  True])
    """
    return np.asarray((fused > 1.0) | nonfinite | np.isnan(fused))


def fired(scores: Mapping[str, float], ratios: Mapping[str, float]) -> tuple[str, ...]:
    """Indicators above their threshold, or whose score is not finite (in ``ratios`` order).

    Examples
    --------
    >>> fired({"rnd": 0.1, "ace": float("nan")}, {"rnd": 1.2, "ace": 0.3})
    ('rnd', 'ace')
    """
    return tuple(k for k, r in ratios.items() if r > 1.0 or not math.isfinite(scores.get(k, 0.0)))


def group_row(groups: Sequence[str], mondrian: bool, group: str | None, warn: bool = True) -> int:
    """Row of the threshold tables for ``group``: 0 (pooled) or 1 + its Mondrian index.

    A group without its own thresholds gets the pooled row, with a warning.

    Examples
    --------
    >>> group_row(["a", "b"], True, "b"), group_row(["a", "b"], False, "b")
    (2, 0)
    """
    if not mondrian:
        return 0
    if group is not None and group in groups:
        return 1 + list(groups).index(group)
    if warn:
        warnings.warn(
            f"No Mondrian thresholds for group {group!r} (calibrated groups: "
            f"{sorted(groups)}); using the pooled thresholds.",
            UserWarning,
            stacklevel=3,
        )
    return 0


def normalise(
    windowed: NDArray[np.float64], offset: NDArray[np.float64], scale: NDArray[np.float64]
) -> NDArray[np.float64]:
    """D(t) = (η(t) - a(t)) / b(t) for one windowed curve (profiles' last values repeated)."""
    t = np.arange(windowed.shape[0])
    return (windowed - table_at(offset, t)) / table_at(scale, t)


def episode_statistic(normalised_curves: Sequence[NDArray[np.float64]], combine: str) -> float:
    """One rollout's episode statistic S = max_t fuse_k D_k(t) (what calibration ranks).

    Examples
    --------
    >>> episode_statistic([np.array([0.2, 0.9]), np.array([0.5, 0.4])], "and")
    0.4
    """
    return float(fuse(normalised_curves, combine).max())


def split_indices(
    n: int, n_first: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split rollouts 0 … n-1 at random into ``n_first`` and the rest (by rollout, never by
    step): the one rollout split of fitting, calibration and selection.

    Examples
    --------
    >>> a, b = split_indices(5, 2, np.random.default_rng(0))
    >>> len(a), len(b), sorted([*a.tolist(), *b.tolist()])
    (2, 3, [0, 1, 2, 3, 4])
    """
    order = rng.permutation(n)
    return order[:n_first], order[n_first:]


# ---------------------------------------------------------------------- the step
@dataclass
class MonitorState:
    """What a monitor keeps between steps, for n robots at once.

    Attributes
    ----------
    t : ndarray of int64, shape (n,)
        Index of the next step of each robot.
    row : ndarray of int64, shape (n,)
        Threshold row of each robot (see :func:`group_row`).
    windows : dict[str, ndarray of shape (n, width)]
        Window buffers (raw scores, oldest first; running totals for ``"cumulative"``).
    """

    t: NDArray[np.int64]
    row: NDArray[np.int64]
    windows: dict[str, NDArray[np.float64]]


@dataclass(frozen=True)
class StepResult:
    """The monitor's numbers for one step of n robots, or for T steps of one rollout.

    ``windowed``, ``thresholds`` and ``ratios`` map indicator names to arrays; ``fused``,
    ``nonfinite`` (a score was NaN or inf) and ``alarm`` are arrays of the same length.
    """

    windowed: dict[str, NDArray[np.float64]]
    thresholds: dict[str, NDArray[np.float64]]
    ratios: dict[str, NDArray[np.float64]]
    fused: NDArray[np.float64]
    nonfinite: NDArray[np.bool_]
    alarm: NDArray[np.bool_]


def init_state(spec: MonitorSpec, rows: Sequence[int] | NDArray[np.int64] = (0,)) -> MonitorState:
    """The state at a reset, one robot per entry of ``rows``."""
    n = len(rows)
    return MonitorState(
        t=np.zeros(n, dtype=np.int64),
        row=np.asarray(rows, dtype=np.int64).reshape(n),
        windows={s.name: np.zeros((n, s.state_width(spec.window_kind))) for s in spec.scores},
    )


def _finish(
    spec: MonitorSpec,
    raw: Mapping[str, NDArray[np.float64]],
    windowed: dict[str, NDArray[np.float64]],
    row: NDArray[np.int64] | int,
    t: NDArray[np.int64],
) -> StepResult:
    """Thresholds, ratios, fusion and the alarm from the windowed scores."""
    gammas, ratios = {}, {}
    for name in spec.names:
        gammas[name] = table_at(spec.thresholds[name], t, row)
        ratios[name] = windowed[name] / gammas[name]
    fused = fuse(list(ratios.values()), spec.combine)
    bad = np.zeros(fused.shape, dtype=bool)
    for name in spec.names:
        bad |= ~np.isfinite(raw[name])
    nonfinite = bad | np.isnan(fused)
    return StepResult(windowed, gammas, ratios, fused, nonfinite, alarm(fused, nonfinite))


def _safe(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """A NaN or inf score enters its window as +inf, never NaN."""
    return np.where(np.isfinite(values), values, np.inf)


def step(
    spec: MonitorSpec, state: MonitorState, raw: Mapping[str, NDArray[np.float64]]
) -> tuple[StepResult, MonitorState]:
    """One monitor step of n robots: the result and the next state (``state`` is unchanged).

    Parameters
    ----------
    spec : MonitorSpec
    state : MonitorState
        From :func:`init_state` or the previous step.
    raw : mapping name -> (n,) float64
        This step's raw score of each indicator.
    """
    windows, windowed = {}, {}
    seen = state.t + 1
    for s in spec.scores:
        windows[s.name], windowed[s.name] = window_update(
            state.windows[s.name],
            _safe(np.asarray(raw[s.name], dtype=np.float64)),
            seen,
            spec.window_kind,
        )
    result = _finish(spec, raw, windowed, state.row, state.t)
    return result, MonitorState(seen, state.row.copy(), windows)


def scan(spec: MonitorSpec, raw: Mapping[str, NDArray[np.float64]], row: int = 0) -> StepResult:
    """The whole rollout at once: :func:`step` replayed from a reset, vectorised over t.

    Bit for bit what :func:`step` gives step by step (the same window reduction, lookup,
    fusion and alarm rule).
    """
    t = np.arange(np.asarray(raw[spec.names[0]]).shape[0])
    windowed = {
        s.name: window_scores(
            _safe(np.asarray(raw[s.name], dtype=np.float64)),
            s.window,
            spec.window_kind,  # type: ignore[arg-type]
        )
        for s in spec.scores
    }
    return _finish(spec, raw, windowed, row, t)


# ---------------------------------------------------------------------- statistics
def normalised(
    spec: MonitorSpec, windowed: Mapping[str, NDArray[np.float64]], row: int = 0
) -> dict[str, NDArray[np.float64]]:
    """D_k(t) of each indicator under the calibrated profiles of threshold row ``row``."""
    offsets, scales = spec.require_profiles()
    return {n: normalise(windowed[n], offsets[n][row], scales[n][row]) for n in spec.names}


def episode_statistics(
    spec: MonitorSpec, windowed: Mapping[str, NDArray[np.float64]], row: int = 0
) -> dict[str, float]:
    """A rollout's episode statistic for every key the calibration keeps statistics of.

    Per indicator max_t D_k(t), and ``"fused"`` (max_t fuse_k D_k(t)) for joint calibration:
    the quantities whose calibration values are ``spec.statistics[row]``.
    """
    d = normalised(spec, windowed, row)
    keys = spec.statistics[row] if spec.statistics is not None else {}
    out = {n: float(np.max(d[n])) for n in spec.names if n in keys}
    if "fused" in keys:
        out["fused"] = episode_statistic(list(d.values()), spec.combine)
    return out
