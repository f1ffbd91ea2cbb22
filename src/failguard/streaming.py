"""Fleet-sized logs in constant memory: per-rollout results, and everything computed from them.

Calibration, evaluation and the health check need only a few numbers per rollout, never its
steps. This module scores rollouts one at a time (from any iterator, such as
:func:`failguard.iter_rollouts`) into :class:`RolloutResult` records, and computes the
thresholds, the metrics and the health check from those records alone:

- :func:`iter_results` scores an iterator lazily (one rollout in memory, a progress bar);
- :func:`calibrate_from_results` computes the exact conformal order statistic (and the PAC
  and Mondrian variants) from the gathered episode statistics;
- :func:`failguard.metrics.evaluate_results` and :func:`failguard.health.health_from_results`
  give what :func:`failguard.evaluate` and :func:`failguard.health.check_calibration` give.

The results of :mod:`failguard.distributed` (Ray) are the same records, so both engines give
the same thresholds, metrics and health report, bit for bit. Memory grows with the number of
rollouts only by one small record each (the exact order statistic needs them all); for
time-varying thresholds and joint calibration the record also keeps the rollout's windowed
curve (one float per step and indicator), which those styles need.

Examples
--------
>>> from failguard import FailureDetector
>>> from failguard.synthetic import make_rollouts
>>> det = FailureDetector(alpha=0.1).fit(make_rollouts(8, seed=0), progress=False)
>>> det = det.calibrate(iter(make_rollouts(40, seed=1)))  # an iterator: streamed
>>> test = make_rollouts(10, seed=2) + make_rollouts(10, kind="failure", seed=3)
>>> results = list(iter_results(det, iter(test)))
>>> results[-1].success, results[-1].predicted_failure
(False, True)
>>> from failguard.metrics import evaluate_results
>>> evaluate_results(results, det.alpha).overall["tpr"]
1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._gate import CalibrationGate, admit, fingerprint, warn_unlabelled
from .calibration.calibrator import require_finite
from .core import kernel
from .exceptions import CalibrationError, NotFittedError, ParameterError
from .types import Rollout
from .windows import window_scores

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = [
    "RolloutResult",
    "calibrate_from_results",
    "iter_results",
    "require_alarms",
    "summarise",
]


@dataclass
class RolloutResult:
    """What failguard keeps of one scored rollout (a few numbers, not its steps).

    Attributes
    ----------
    source : str or None
        Where the rollout came from (its file), if known.
    n_steps : int
    success : bool or None
    group : str or None
    fingerprint : str
        Hash of the embeddings; calibration refuses rollouts used to fit, and duplicates.
    peak_windowed : dict[str, float]
        max_t η(t) per indicator (the episode statistic of constant thresholds).
    first_alarm : int or None
        First step with an alarm (calibrated detectors only).
    peak_ratio : dict[str, float]
        max_t η(t)/γ(t) per indicator (calibrated only).
    peak_fused : float
        max_t of the fused ratio (calibrated only; NaN otherwise).
    statistics : dict[str, float]
        Episode statistic max_t D(t) under the pooled calibration's profiles, per indicator
        and ``"fused"`` for joint calibration: what the health check compares with
        ``detector.calibration_.statistics`` (calibrated only).
    curves : dict[str, ndarray] or None
        The windowed curves η(t), kept only when calibration needs them.
    horizon : int or None
        The detector's ``longest_calibration_`` (calibrated only).
    peak_fused_early : float
        max of the fused ratio over the steps before ``horizon``: with ``first_alarm``, what
        the metrics without the clock need (:func:`failguard.metrics.remove_clock`).
    """

    source: str | None
    n_steps: int
    success: bool | None
    group: str | None
    fingerprint: str
    peak_windowed: dict[str, float]
    first_alarm: int | None = None
    peak_ratio: dict[str, float] = field(default_factory=dict)
    peak_fused: float = math.nan
    statistics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, NDArray[np.float64]] | None = None
    horizon: int | None = None
    peak_fused_early: float = math.nan

    def without_clock(self) -> RolloutResult:
        """This result with the alarms at or after ``horizon`` removed."""
        if self.horizon is None or self.n_steps <= self.horizon:
            return self
        first = self.first_alarm
        return replace(
            self,
            first_alarm=None if first is None or first >= self.horizon else first,
            peak_fused=self.peak_fused_early,
        )

    # The attributes that failguard.metrics reads from a Trace, so that the very same
    # metric code runs on results.
    @property
    def predicted_failure(self) -> bool:
        """Whether an alarm fired at any step."""
        return self.first_alarm is not None

    @property
    def fused(self) -> NDArray[np.float64]:
        """The peak fused ratio as a one-element array (``fused.max()`` as on a Trace)."""
        return np.array([self.peak_fused])

    def __len__(self) -> int:
        return self.n_steps

    def describe(self, i: int) -> str:
        """How error messages name this rollout."""
        return f"rollout {i} ({self.source})" if self.source else f"rollout {i}"

    def to_row(self) -> dict[str, Any]:
        """A flat dict (one Parquet/JSON row): ``peak_ratio_<name>``, ``statistic_<name>``, ..."""
        row: dict[str, Any] = {
            "source": self.source,
            "n_steps": self.n_steps,
            "success": self.success,
            "group": self.group,
            "fingerprint": self.fingerprint,
            "first_alarm": self.first_alarm,
            "peak_fused": self.peak_fused,
            "horizon": self.horizon,
            "peak_fused_early": self.peak_fused_early,
        }
        for prefix, values in (
            ("peak_windowed", self.peak_windowed),
            ("peak_ratio", self.peak_ratio),
            ("statistic", self.statistics),
        ):
            for k, v in values.items():
                row[f"{prefix}_{k}"] = v
        for k, c in (self.curves or {}).items():
            row[f"curve_{k}"] = c.tolist()
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RolloutResult:
        """The inverse of :meth:`to_row` (missing values may be None or NaN)."""

        def pick(prefix: str) -> dict[str, float]:
            p = prefix + "_"
            return {
                k[len(p) :]: float(v)
                for k, v in row.items()
                if k.startswith(p) and v is not None and not _isnan(v)
            }

        curves = {
            k[len("curve_") :]: np.asarray(v, dtype=np.float64)
            for k, v in row.items()
            if k.startswith("curve_") and v is not None
        }
        first = row.get("first_alarm")
        success = row.get("success")
        group = row.get("group")
        peak = row.get("peak_fused")
        horizon = row.get("horizon")
        early = row.get("peak_fused_early")
        return cls(
            source=row.get("source"),
            n_steps=int(row["n_steps"]),
            success=None if success is None or _isnan(success) else bool(success),
            group=None if group is None or _isnan(group) else str(group),
            fingerprint=str(row["fingerprint"]),
            peak_windowed=pick("peak_windowed"),
            first_alarm=None if first is None or _isnan(first) else int(first),
            peak_ratio=pick("peak_ratio"),
            peak_fused=math.nan if peak is None else float(peak),
            statistics=pick("statistic"),
            curves=curves or None,
            horizon=None if horizon is None or _isnan(horizon) else int(horizon),
            peak_fused_early=math.nan if early is None else float(early),
        )


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def summarise(
    detector: FailureDetector,
    rollout: Rollout,
    curves: bool = False,
    alarms: bool = True,
    nonfinite: str = "raise",
    index: int | None = None,
) -> RolloutResult:
    """Score one rollout into a :class:`RolloutResult`.

    Parameters
    ----------
    detector : FailureDetector
        Fitted; alarm fields are filled only if it is calibrated too.
    rollout : Rollout
    curves : bool, default=False
        Keep the windowed curves (needed to calibrate time-varying or joint thresholds).
    alarms : bool, default=True
        Fill the alarm fields when the detector is calibrated (calibration turns this off).
        Without them, a non-finite score raises :class:`~failguard.CalibrationError` (no
        threshold can be computed from it).
    nonfinite : {"raise", "alarm"}, default="raise"
        With alarm fields: see :meth:`FailureDetector.score`.
    index : int, optional
        Position of the rollout in its stream, for error messages.
    """
    detector._require_fitted()
    raw = detector.raw_scores(rollout)
    res = RolloutResult(
        source=rollout.source,
        n_steps=len(rollout),
        success=rollout.success,
        group=rollout.group,
        fingerprint=fingerprint(rollout),
        peak_windowed={},
    )
    if alarms and detector.is_calibrated:
        trace = detector._trace(raw, rollout, rollout.group, nonfinite, index)
        windowed = trace.windowed
        res.first_alarm = trace.first_alarm
        res.peak_ratio = {k: float(v.max()) for k, v in trace.ratios.items()}
        res.peak_fused = float(trace.fused.max())
        if detector.longest_calibration_ is not None:
            res.horizon = int(detector.longest_calibration_)
            res.peak_fused_early = float(trace.fused[: res.horizon].max())
        # The health check's episode statistics, under the pooled calibration (as
        # failguard.health.episode_statistics computes them).
        res.statistics = kernel.episode_statistics(detector.spec(), windowed)
    else:
        for name, x in raw.items():
            require_finite(x, name, rollout.describe(index))
        windowed = {
            n: window_scores(raw[n], detector.windows[n], detector.window_kind)  # type: ignore[arg-type]
            for n in detector.names
        }
    res.peak_windowed = {k: float(v.max()) for k, v in windowed.items()}
    if curves:
        res.curves = {k: np.asarray(v, dtype=np.float64) for k, v in windowed.items()}
    return res


def iter_results(
    detector: FailureDetector,
    rollouts: Iterable[Rollout],
    curves: bool = False,
    alarms: bool = True,
    progress: bool = False,
    nonfinite: str = "raise",
) -> Iterator[RolloutResult]:
    """Score rollouts one at a time (lazily); see :func:`summarise`.

    Parameters
    ----------
    detector : FailureDetector
    rollouts : iterable of Rollout
        Any iterable, e.g. ``failguard.iter_rollouts(path)``; only one rollout is held.
    curves, alarms : bool
        As in :func:`summarise`.
    nonfinite : {"raise", "alarm"}, default="raise"
        As in :func:`summarise`.
    progress : bool, default=False
        Show a progress bar (rollouts and steps per second) on stderr.
    """
    from tqdm.auto import tqdm

    with tqdm(disable=not progress, desc="scoring", unit=" rollouts", leave=False) as bar:
        for i, r in enumerate(rollouts):
            if not isinstance(r, Rollout):
                raise ParameterError(f"item {i} is a {type(r).__name__}, not a Rollout.")
            yield summarise(detector, r, curves, alarms, nonfinite, i)
            bar.update(1)


def calibrate_from_results(
    detector: FailureDetector,
    results: Iterable[RolloutResult],
    independent_repeats: bool = False,
) -> FailureDetector:
    """Calibrate ``detector`` from per-rollout results of successful rollouts.

    Gives exactly the thresholds :meth:`FailureDetector.calibrate` gives on the same
    rollouts, in the same order: the same checks (no failed rollout, none used to fit, no
    duplicate), the same conformal order statistic, PAC threshold or Mondrian groups.
    Results must come from :func:`summarise` (or :mod:`failguard.distributed`) on this
    detector's fitted scores, with ``curves=True`` when
    :attr:`FailureDetector.calibration_needs_curves`. ``independent_repeats`` as in
    :meth:`FailureDetector.calibrate`.

    Returns
    -------
    detector
        Calibrated in place; it keeps no raw scores (``can_recalibrate`` is False).
    """
    detector._require_fitted()
    need_curves = detector.calibration_needs_curves
    names = detector.names
    series: dict[str, list[NDArray[np.float64]]] = {n: [] for n in names}
    groups: list[str | None] = []
    gate = CalibrationGate(detector, independent_repeats)
    unknown: list[int] = []
    n = longest = 0
    for i, r in enumerate(results):
        if admit(r.success, r.describe(i), "calibrate"):
            unknown.append(i)
        gate.add(i, r.describe(i), r.fingerprint, r.source, None)
        for k in names:
            if need_curves:
                if r.curves is None or k not in r.curves:
                    raise CalibrationError(
                        f"calibrate: {r.describe(i)} has no windowed curve for {k!r}; "
                        f"{detector.threshold!r} thresholds (or joint calibration) need them. "
                        "Score with curves=True."
                    )
                series[k].append(r.curves[k])
            else:
                series[k].append(np.array([r.peak_windowed[k]]))
        groups.append(r.group)
        longest = max(longest, r.n_steps)
        n += 1
    if n == 0:
        raise CalibrationError("calibrate: no rollouts given; pass successful rollouts.")
    warn_unlabelled(unknown, "calibrate", stacklevel=3)
    pooled, per_group = detector._calibrate_from_curves(series, groups)
    detector.fitted_state.set_calibration(
        pooled, per_group, None, groups, set(gate.prints), n, longest
    )
    return detector


def require_alarms(results: list[RolloutResult], what: str) -> None:
    """Refuse results scored without thresholds (by an uncalibrated detector)."""
    for i, r in enumerate(results):
        if math.isnan(r.peak_fused):
            raise NotFittedError(
                f"{what}: {r.describe(i)} was scored by an uncalibrated detector (no alarm "
                "fields); score it with the calibrated detector."
            )


#: Moved to the modules whose reports they build; still reachable here under their old names.
_MOVED = {"evaluate_results": "failguard.metrics", "health_from_results": "failguard.health"}


def __getattr__(name: str) -> Any:
    """``failguard.streaming.evaluate_results`` / ``health_from_results``, by their old path.

    Resolved on first use, so this module imports neither :mod:`failguard.metrics` nor
    :mod:`failguard.health` (which both build on it).
    """
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'failguard.streaming' has no attribute {name!r}")
