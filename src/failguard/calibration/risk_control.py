"""PAC thresholds: P(false-alarm rate <= α) >= 1 - δ, through MAPIE's Learn-then-Test.

The marginal conformal threshold bounds the *expected* false-alarm rate over calibration
draws. A PAC threshold bounds the false-alarm rate itself, except on a δ fraction of
calibration sets. failguard delegates the multiple testing to
``mapie.risk_control.BinaryClassificationController``:

- each calibration rollout is one sample, labelled 0 (a success);
- a candidate threshold h predicts 1 (alarm) for rollout i iff its statistic S_i >= h
  (failguard alarms on S_i > h, a subset, so the controlled rate is an upper bound);
- the risk is ``"fpr"``, tested by fixed-sequence testing from the most conservative
  candidate down, so no Bonferroni factor is paid;
- the secondary objective is explicit: among the valid thresholds, the one that alarms most
  often on the calibration set (the most sensitive one). MAPIE's default would ask for
  precision or recall, which are undefined on successes only.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from ..exceptions import CalibrationError, ConfigError

__all__ = ["min_pac_calibration_size", "pac_quantile"]


def _to_unit_interval(x: NDArray[np.float64], scale: float) -> NDArray[np.float64]:
    """A strictly increasing map of the real line into (0, 1)."""
    return np.asarray(0.5 + np.arctan(x / scale) / np.pi, dtype=np.float64)


def pac_quantile(statistics: NDArray[np.float64], alpha: float, delta: float) -> float:
    """The smallest threshold h whose false-alarm rate is <= α with probability >= 1 - δ.

    Parameters
    ----------
    statistics : array of shape (n,)
        Episode statistics S_i of the successful calibration rollouts.
    alpha : float in (0, 1)
        Target false-alarm rate.
    delta : float in (0, 1)
        Allowed probability that the realised rate exceeds α.

    Raises
    ------
    CalibrationError
        If no candidate threshold is valid: too few rollouts for (α, δ).

    Examples
    --------
    >>> s = np.random.default_rng(0).normal(size=200)
    >>> h = pac_quantile(s, alpha=0.1, delta=0.1)
    >>> bool(np.mean(s > h) <= 0.1)
    True
    """
    from mapie.risk_control import BinaryClassificationController, BinaryRisk

    s = np.asarray(statistics, dtype=np.float64)
    n = s.shape[0]
    needed = min_pac_calibration_size(alpha, delta)
    if n < needed:
        raise CalibrationError(
            f"guarantee='pac' with alpha={alpha:g}, delta={delta:g} needs at least {needed} "
            f"successful calibration rollouts; got {n}. Record more, or raise alpha or delta."
        )
    scale = float(np.median(np.abs(s - np.median(s)))) or 1.0
    center = float(np.median(s))
    # Candidates from the most conservative (no calibration alarm at all) downwards. Taking
    # them from the data is sound here: the empirical alarm rate only changes at data values
    # and is monotone in h, so this grid tests the same hypotheses as any finer fixed grid,
    # in the same order, and at worst stops one order statistic early (conservative).
    candidates = np.unique(s)[::-1]
    top = candidates[0] + scale  # alarms on no calibration rollout
    candidates = np.concatenate([[top], candidates])
    mapped = _to_unit_interval(candidates - center, scale)
    keep = np.concatenate([[True], np.diff(mapped) < 0])  # drop values that collapse in float
    candidates, mapped = candidates[keep], mapped[keep]
    p_fail = _to_unit_interval(s - center, scale)

    def predict_proba(idx: NDArray[np.float64]) -> NDArray[np.float64]:
        p = p_fail[np.asarray(idx, dtype=np.int64).ravel()]
        return np.stack([1.0 - p, p], axis=1)

    alarm_rate = BinaryRisk(
        risk_occurrence=lambda y_true, y_pred: y_pred == 1,
        risk_condition=lambda y_true, y_pred: np.repeat(True, len(y_true)),
        higher_is_better=True,
    )
    controller = BinaryClassificationController(
        predict_function=predict_proba,
        risk="fpr",
        target_level=alpha,
        confidence_level=1.0 - delta,
        best_predict_param_choice=alarm_rate,
        list_predict_params=mapped,
        fwer_method="fixed_sequence",
    )
    # MAPIE's own warnings (a non-monotone risk, say) are left to reach the user.
    controller.calibrate(np.arange(n, dtype=np.float64)[:, None], np.zeros(n, dtype=int))
    best = controller.best_predict_param
    if best is None:
        raise CalibrationError(
            f"guarantee='pac': no threshold controls the false-alarm rate at alpha={alpha:g} "
            f"with confidence {1 - delta:g} on {n} rollouts. Record more successful rollouts."
        )
    j = int(np.argmin(np.abs(mapped - float(best))))
    # MAPIE alarms on S >= candidate; failguard on S > h. Using h just below the candidate
    # would alarm more; h = candidate alarms on a subset, which keeps the bound.
    return float(candidates[j])


def min_pac_calibration_size(alpha: float, delta: float) -> int:
    """Smallest n at which a PAC threshold exists at all (zero alarms on n successes).

    With no alarm among n successes, the Learn-then-Test p-value of "rate > α" for a binary
    loss is (1-α)^n (Hoeffding's tight form and the binomial tail agree there), so a valid
    threshold needs (1-α)^n <= δ.

    Examples
    --------
    >>> min_pac_calibration_size(0.1, 0.1), min_pac_calibration_size(0.05, 0.1)
    (22, 45)
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < delta < 1.0:
        raise ConfigError(f"alpha and delta must be in (0, 1); got alpha={alpha}, delta={delta}.")
    return max(1, math.ceil(math.log(delta) / math.log(1.0 - alpha) - 1e-9))
