"""How many successful rollouts a calibration needs, before recording them."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigError
from .calibrator import CalibrationSettings, _needed, resolve_joint, split_sizes

__all__ = ["CalibrationPlan", "plan", "plan_for_settings"]


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
    joint: bool | None = None,
    split: float = 0.5,
    calibration: str = "auto",
    mondrian: bool = False,
    mode: str = "corrected",
) -> CalibrationPlan:
    """Fewest successful calibration rollouts that can give the guarantee.

    The count is the one :meth:`FailureDetector.calibrate` checks for the same options (both
    call one function), so what ``plan`` says is what calibration asks for.

    Parameters
    ----------
    alpha : float in (0, 1)
        Bound on the probability that a successful rollout raises an alarm.
    delta : float in (0, 1), optional
        Given: a PAC guarantee, P(false-alarm rate <= alpha) >= 1 - delta. Omitted: the
        marginal conformal guarantee.
    threshold : {"constant", "per_step", "band"}
    n_indicators : int, default=2
    combine : {"and", "or", "k-of-n"}
    joint : bool, optional
        Shorthand: True is ``calibration="joint"``, False ``calibration="per_indicator"``.
    split : float, default=0.5
        Fraction of calibration rollouts that estimate time-varying profiles (or the joint
        scale).
    calibration : {"auto", "per_indicator", "joint"}, default="auto"
        As in :class:`~failguard.FailureDetector`: ``"auto"`` is joint for PAC.
    mondrian : bool, default=False
        Per-group thresholds: every group needs this many.
    mode : {"corrected", "reference"}, default="corrected"

    Examples
    --------
    >>> plan(0.05).n_required
    19
    >>> plan(0.05, threshold="band").n_required
    37
    >>> plan(0.1, delta=0.1).n_required  # PAC calibrates jointly ("auto"): split in two
    44
    >>> plan(0.1, delta=0.1, calibration="per_indicator").n_required
    22
    """
    if joint is not None:
        calibration = "joint" if joint else "per_indicator"
    if calibration not in ("auto", "per_indicator", "joint"):
        raise ConfigError(
            "The 'calibration' parameter of plan must be one of ('auto', 'per_indicator', "
            f"'joint'). Got {calibration!r} instead."
        )
    guarantee = "marginal" if delta is None else "pac"
    settings = CalibrationSettings(
        style=threshold,
        alpha=alpha,
        combine=combine,
        joint=resolve_joint(calibration, guarantee),
        guarantee=guarantee,
        delta=0.1 if delta is None else delta,
        split=split,
        mode=mode,
    )
    return plan_for_settings(settings, n_indicators, mondrian)


def plan_for_settings(
    settings: CalibrationSettings, n_indicators: int, mondrian: bool = False
) -> CalibrationPlan:
    """:func:`plan` for ready-made settings (what a detector's parameters imply)."""
    n = _needed(settings, n_indicators)
    if settings.needs_profile_split(n_indicators):
        n1, n2 = split_sizes(n, settings.split)
    else:
        n1, n2 = 0, n
    alpha = settings.alpha
    a, d = settings.level(n_indicators)
    pac = settings.guarantee == "pac"
    what = (
        f"P(false-alarm rate <= {alpha:g}) >= {1 - settings.delta:g}"
        if pac
        else f"P(a new successful rollout alarms) <= {alpha:g}"
    )
    text = f"{what} with {settings.style!r} thresholds needs {n} successful calibration rollouts"
    if mondrian:
        text += " in every group (Mondrian: each group is calibrated on its own)"
    if settings.mode == "reference":
        text += " (mode='reference' checks nothing and gives no guarantee)"
    elif n1:
        why = (
            "the threshold's shape"
            if settings.style != "constant"
            else "the indicators' common scale (joint calibration)"
        )
        text += f" ({n1} estimate {why}, {n2} its conformal level)"
    if (a, d) != (alpha, settings.delta):
        text += f"; OR fusion of {n_indicators} indicators calibrates each at alpha={a:g}"
        if pac:
            text += f", delta={d:g}"
    text += ". They must be disjoint from the rollouts used to fit the scores."
    return CalibrationPlan(n, n1, n2, text)
