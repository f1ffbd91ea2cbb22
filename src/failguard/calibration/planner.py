"""How many successful rollouts a calibration needs, before recording them."""

from __future__ import annotations

from dataclasses import dataclass

from .calibrator import CalibrationSettings, _needed, split_sizes

__all__ = ["CalibrationPlan", "plan"]


@dataclass(frozen=True)
class CalibrationPlan:
    """The answer of :func:`plan`.

    Attributes
    ----------
    n_required : int
        Fewest successful calibration rollouts (not counting those used to fit the scores).
    n_profile, n_conformal : int
        How ``n_required`` is split between profile estimation and the conformal step.
    explanation : str
        One paragraph for a human.
    """

    n_required: int
    n_profile: int
    n_conformal: int
    explanation: str

    def __str__(self) -> str:
        return self.explanation


def plan(
    alpha: float,
    delta: float | None = None,
    threshold: str = "constant",
    n_indicators: int = 2,
    combine: str = "and",
    joint: bool = False,
    split: float = 0.5,
) -> CalibrationPlan:
    """Fewest successful calibration rollouts that can give the guarantee.

    Parameters
    ----------
    alpha : float in (0, 1)
        Bound on the probability that a successful rollout raises an alarm.
    delta : float in (0, 1), optional
        Given: a PAC guarantee, P(false-alarm rate <= alpha) >= 1 - delta. Omitted: the
        marginal conformal guarantee.
    threshold : {"constant", "per_step", "band"}
    n_indicators : int, default=2
    combine : {"and", "or"}
    joint : bool, default=False
    split : float, default=0.5
        Fraction of calibration rollouts that estimate time-varying profiles.

    Examples
    --------
    >>> plan(0.05).n_required
    19
    >>> plan(0.05, threshold="band").n_required
    37
    >>> plan(0.1, delta=0.1).n_required
    22
    """
    settings = CalibrationSettings(
        style=threshold,
        alpha=alpha,
        combine=combine,
        joint=joint,
        guarantee="marginal" if delta is None else "pac",
        delta=0.1 if delta is None else delta,
        split=split,
    )
    n = _needed(settings, n_indicators)
    if settings.needs_profile_split(n_indicators):
        n1, n2 = split_sizes(n, split)
    else:
        n1, n2 = 0, n
    a, d = settings.level(n_indicators)
    what = (
        f"P(false-alarm rate <= {alpha:g}) >= {1 - (delta or 0):g}"
        if delta is not None
        else f"P(a new successful rollout alarms) <= {alpha:g}"
    )
    text = f"{what} with {threshold!r} thresholds needs {n} successful calibration rollouts"
    if n1:
        text += f" ({n1} estimate the threshold's shape, {n2} its conformal level)"
    if (a, d) != (alpha, settings.delta):
        text += f"; OR fusion of {n_indicators} indicators calibrates each at alpha={a:g}"
    text += ". They must be disjoint from the rollouts used to fit the scores."
    return CalibrationPlan(n, n1, n2, text)
