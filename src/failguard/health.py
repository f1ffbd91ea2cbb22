"""Calibration health: are newly logged successful rollouts still like the calibration set?

The conformal guarantee assumes that new successful rollouts are exchangeable with the
calibration rollouts. Robots, lighting, firmware and policies drift; when they do, the
realised false-alarm rate moves away from alpha. :func:`check_calibration` checks two things
on new successful rollouts (not used to fit or calibrate):

1. **Alarm rate.** k of n new successes alarmed. The exact (Clopper-Pearson) interval of the
   false-alarm rate is compared with alpha: if its lower end is above alpha, the detector
   raises more false alarms than it promised.
2. **Rank test.** Each new success has an episode statistic per indicator (the maximum over
   steps of its normalised windowed score, the quantity calibration thresholds); a one-sided
   Mann-Whitney test asks whether they are stochastically larger than the calibration
   statistics (``detector.calibration_.statistics``). It reacts to drift before alarms pile
   up. The p-values are Bonferroni-corrected over indicators.

If either says so, recalibrate: ``detector.calibrate(new_successes)`` (or
``failguard calibrate DETECTOR NEW_LOGS -o NEW_DETECTOR``). It reuses the fitted scores (no
retraining) and recomputes only the thresholds. New successes used for recalibration must
not be reused to check the new calibration.

Caveat: with n calibration rollouts the false-alarm rate of one calibrated detector is itself
random around alpha (about ±sqrt(alpha (1 - alpha) / n)); only the average over calibration
sets is at most alpha. The check therefore flags a rate clearly above alpha, which is what
matters in deployment, and a small excess can also come from a small calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .core import kernel
from .exceptions import CalibrationError, ConfigError
from .streaming import RolloutResult, require_alarms
from .types import Rollout

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = [
    "HealthReport",
    "check_calibration",
    "clopper_pearson",
    "episode_statistics",
    "health_from_results",
]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for a rate from k successes in n trials.

    Examples
    --------
    >>> lo, hi = clopper_pearson(0, 20)
    >>> lo, round(hi, 4)
    (0.0, 0.1684)
    >>> [round(x, 4) for x in clopper_pearson(5, 20)]
    [0.0866, 0.491]
    """
    from scipy.stats import beta

    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"need 0 <= k <= n and n >= 1; got k={k}, n={n}.")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def episode_statistics(
    detector: FailureDetector, rollouts: Sequence[Rollout]
) -> dict[str, NDArray[np.float64]]:
    """Each rollout's episode statistic per indicator (and ``"fused"`` if calibrated jointly).

    The statistic is max_t D(t), D the windowed score normalised by the indicator's
    calibrated profile: the same quantity whose calibration values are stored in
    ``detector.calibration_.statistics``. Uses the pooled calibration.
    """
    spec = detector.spec()
    keys = spec.statistics[0] if spec.statistics is not None else {}
    out: dict[str, list[float]] = {k: [] for k in keys}
    for r in rollouts:
        windowed = kernel.scan(spec, detector.raw_scores(r)).windowed
        for k, v in kernel.episode_statistics(spec, windowed).items():
            out[k].append(v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


@dataclass
class HealthReport:
    """Result of :func:`check_calibration`.

    Attributes
    ----------
    n : int
        New successful rollouts checked.
    n_alarms : int
        How many of them alarmed.
    alarm_rate : float
        ``n_alarms / n``, the realised false-alarm rate.
    interval : tuple[float, float]
        Clopper-Pearson interval of the false-alarm rate.
    alpha, confidence : float
    rank_tests : dict[str, dict]
        Per indicator: ``p_value`` (one-sided, Bonferroni-corrected), ``median_new``,
        ``median_calibration``.
    status : {"ok", "recalibrate", "too_few"}
    message : str
        What to do, in one or two sentences.
    """

    n: int
    n_alarms: int
    alarm_rate: float
    interval: tuple[float, float]
    alpha: float
    confidence: float
    rank_tests: dict[str, dict[str, float]] = field(default_factory=dict)
    status: str = "ok"
    message: str = ""

    @property
    def needs_recalibration(self) -> bool:
        """Whether the check recommends recalibrating."""
        return self.status == "recalibrate"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "n": self.n,
            "n_alarms": self.n_alarms,
            "alarm_rate": self.alarm_rate,
            "interval": list(self.interval),
            "alpha": self.alpha,
            "confidence": self.confidence,
            "rank_tests": self.rank_tests,
            "status": self.status,
            "needs_recalibration": self.needs_recalibration,
            "message": self.message,
        }

    def __str__(self) -> str:
        lo, hi = self.interval
        lines = [
            f"calibration health: {self.status.upper()}",
            f"  false alarms on new successes: {self.n_alarms}/{self.n} = {self.alarm_rate:.3f}"
            f"  ({self.confidence:.0%} CI [{lo:.3f}, {hi:.3f}], alpha = {self.alpha:g})",
        ]
        for name, t in self.rank_tests.items():
            lines.append(
                f"  {name:<8} episode statistic median new {t['median_new']:.3g} vs "
                f"calibration {t['median_calibration']:.3g}  (p = {t['p_value']:.3g})"
            )
        lines.append(f"  {self.message}")
        return "\n".join(lines)


def check_calibration(
    detector: FailureDetector,
    new_successes: Iterable[Rollout],
    confidence: float = 0.95,
    min_rollouts: int = 10,
) -> HealthReport:
    """Check whether new successful rollouts are still consistent with the calibration.

    Parameters
    ----------
    detector : FailureDetector
        A calibrated detector.
    new_successes : sequence or iterator of Rollout
        Successful rollouts logged since calibration (not used to fit or calibrate). An
        iterator (such as :func:`failguard.iter_rollouts`) is scored one rollout at a time,
        in constant memory, with the same result.
    confidence : float, default=0.95
        Confidence of the interval; the tests run at level ``1 - confidence``.
    min_rollouts : int, default=10
        Below this many new rollouts the status is ``"too_few"`` (nothing is concluded).

    Returns
    -------
    HealthReport

    Raises
    ------
    CalibrationError
        If a rollout is labelled as failed (the check is about successes only).

    Examples
    --------
    >>> from failguard import FailureDetector, RNDScore, ActionChunkEntropy
    >>> from failguard.synthetic import make_rollouts
    >>> det = FailureDetector(scores=[RNDScore(max_epochs=3), ActionChunkEntropy()], alpha=0.1)
    >>> det = det.fit(make_rollouts(8, seed=0, length=40), progress=False)
    >>> det = det.calibrate(make_rollouts(30, seed=1, length=40))
    >>> check_calibration(det, make_rollouts(30, seed=5, length=40)).status
    'ok'
    >>> drifted = make_rollouts(30, kind="ood_benign", seed=3, length=40)
    >>> check_calibration(det, drifted).needs_recalibration
    True
    """
    if not 0 < confidence < 1:
        raise ConfigError(
            f"The 'confidence' parameter must be a float in the range (0, 1). Got {confidence!r}."
        )
    if not isinstance(new_successes, Sequence):
        # An iterator (fg.iter_rollouts): stream it, one rollout in memory.
        from .streaming import iter_results

        detector.spec()  # raises NotFittedError unless calibrated
        results = iter_results(detector, new_successes)
        return health_from_results(detector, results, confidence, min_rollouts)
    rollouts = list(new_successes)
    failed = [i for i, r in enumerate(rollouts) if r.success is False]
    if failed:
        raise CalibrationError(
            f"check_calibration: rollout {failed[0]} failed; pass successful rollouts only."
        )
    if not rollouts:
        raise CalibrationError("check_calibration: no rollouts given.")
    detector.spec()
    n = len(rollouts)
    k = int(sum(t.predicted_failure for t in detector.traces(rollouts)))
    new_stats = episode_statistics(detector, rollouts)
    return _health_report(detector, n, k, new_stats, confidence, min_rollouts)


def _health_report(
    detector: FailureDetector,
    n: int,
    k: int,
    new_stats: dict[str, NDArray[np.float64]],
    confidence: float,
    min_rollouts: int,
) -> HealthReport:
    """The report from the alarm count and the new episode statistics (both engines)."""
    from scipy.stats import mannwhitneyu

    spec = detector.spec()
    stats_of = spec.statistics[0] if spec.statistics is not None else {}
    lo, hi = clopper_pearson(k, n, confidence)
    level = 1.0 - confidence
    tests: dict[str, dict[str, float]] = {}
    for name, stats in new_stats.items():
        ref = stats_of[name]
        p = float(mannwhitneyu(stats, ref, alternative="greater").pvalue)
        tests[name] = {
            "p_value": min(1.0, p * len(new_stats)),
            "median_new": float(np.median(stats)),
            "median_calibration": float(np.median(ref)),
        }
    shifted = [name for name, t in tests.items() if t["p_value"] < level]
    report = HealthReport(n, k, k / n, (lo, hi), detector.alpha, confidence, tests)
    if n < min_rollouts:
        report.status = "too_few"
        report.message = (
            f"Only {n} new successful rollouts; collect at least {min_rollouts} before "
            "concluding anything."
        )
    elif lo > detector.alpha or shifted:
        report.status = "recalibrate"
        why = []
        if lo > detector.alpha:
            why.append(f"the false-alarm rate is above alpha={detector.alpha:g}")
        if shifted:
            why.append(f"the episode statistics of {', '.join(shifted)} have shifted upwards")
        report.message = (
            f"Recalibrate: {' and '.join(why)}. Run detector.calibrate(new_successes) "
            "(`failguard calibrate DETECTOR NEW_LOGS`); the fitted scores are kept."
        )
    else:
        report.message = (
            "The new successes are consistent with the calibration; no action needed."
            + (
                f" (At most {math.ceil(hi * 100)}% false alarms at {confidence:.0%} confidence.)"
                if n
                else ""
            )
        )
    return report


def health_from_results(
    detector: FailureDetector,
    results: Iterable[RolloutResult],
    confidence: float = 0.95,
    min_rollouts: int = 10,
) -> HealthReport:
    """:func:`failguard.health.check_calibration` from per-rollout results of new successes."""
    spec = detector.spec()
    res = list(results)
    if not res:
        raise CalibrationError("check_calibration: no rollouts given.")
    for i, r in enumerate(res):
        if r.success is False:
            raise CalibrationError(
                f"check_calibration: {r.describe(i)} failed; pass successful rollouts only."
            )
    require_alarms(res, "check_calibration")
    k = int(sum(r.predicted_failure for r in res))
    stats = {
        name: np.asarray([r.statistics[name] for r in res], dtype=np.float64)
        for name in (spec.statistics[0] if spec.statistics is not None else {})
    }
    return _health_report(detector, len(res), k, stats, confidence, min_rollouts)
