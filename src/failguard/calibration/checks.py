"""A reusable statistical check of the episode-level guarantee (in the spirit of river's checks).

:func:`false_alarm_rate` repeatedly draws a calibration set and a fresh test set of successful
rollouts' windowed curves, calibrates, and counts test rollouts that ever cross their
threshold, comparing η(t) > γ(t) directly (not through the calibrator's normalised
statistics). Use it to check a configuration against curves that look like yours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .calibrator import CalibrationSettings, calibrate_thresholds
from .conformal import extend_table

__all__ = ["FalseAlarmEstimate", "false_alarm_rate"]

CurveSampler = Callable[[np.random.Generator, int], list[NDArray[np.float64]]]


@dataclass(frozen=True)
class FalseAlarmEstimate:
    """Mean realised episode-level false-alarm rate over seeds, and its standard error."""

    far: float
    se: float
    n_seeds: int

    def within(self, alpha: float, n_se: float = 3.0) -> bool:
        """Whether the estimate is at most ``alpha + n_se`` standard errors."""
        return self.far <= alpha + n_se * self.se


def false_alarm_rate(
    settings: CalibrationSettings,
    sample_curves: CurveSampler,
    n_calibration: int,
    n_test: int = 100,
    n_seeds: int = 500,
) -> FalseAlarmEstimate:
    """Estimate E[P(a fresh success alarms)] for one indicator under ``settings``.

    Parameters
    ----------
    settings : CalibrationSettings
    sample_curves : callable (rng, n) -> list of (T_i,) arrays
        Draws windowed curves of successful rollouts, e.g.
        :func:`failguard.synthetic.make_score_curves`.
    n_calibration, n_test : int
        Rollouts per seed for calibration and for measuring the rate.
    n_seeds : int

    Examples
    --------
    >>> from failguard.synthetic import make_score_curves
    >>> est = false_alarm_rate(CalibrationSettings(alpha=0.2), make_score_curves, 20,
    ...                        n_test=50, n_seeds=50)
    >>> est.within(0.2)
    True
    """
    rates = []
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        cal = sample_curves(rng, n_calibration)
        test = sample_curves(rng, n_test)
        table = calibrate_thresholds({"s": cal}, settings, rng).tables["s"]
        rates.append(np.mean([np.any(c > extend_table(table, c.shape[0])) for c in test]))
    arr = np.asarray(rates)
    return FalseAlarmEstimate(
        float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(n_seeds)), n_seeds
    )
