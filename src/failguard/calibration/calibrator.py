"""From windowed score curves of successful rollouts to one threshold table per indicator.

This is where the styles (:mod:`.conformal`), the guarantees (marginal conformal or PAC via
:mod:`.risk_control`) and the fusion rule meet. It works on plain arrays: the detector
scores the rollouts, this module only sees curves.

Fusion rules over K indicators: AND (all K above threshold at the same step), OR (any one),
and ``"k-of-K"`` voting (at least k; AND is K-of-K, OR is 1-of-K). The fused ratio is the k-th
largest of the K ratios, so the alarm is "fused ratio > 1" for every rule.

Two ways to split α over several indicators, and the guarantee each gives (episode level:
P(a new successful rollout ever alarms) <= α, for exchangeable successes):

``per_indicator`` (FIPER's way)
    Each indicator gets its own h at level α_leg = k·α/K: α for AND, α/K for OR
    (Bonferroni), k·α/K for k-of-K. Why it holds: the number N of legs that ever alarm on a
    success has E[N] <= K·α_leg, and the fused alarm needs N >= k, so by Markov's inequality
    P(fused alarm) <= K·α_leg / k = α. Conservative for every rule (for AND, one leg alone
    already gives it). With ``guarantee="pac"`` each leg gets δ for AND and δ/K otherwise
    (union bound), so that P(fused false-alarm rate <= α) >= 1 - δ.
``joint`` (any rule)
    The indicators are first put on a common scale (each divided by its own (1-α)
    quantile, estimated on the profile part), then one h is conformalised on the fused
    statistic max_t fuse_k D_k(t). The fused alarm then has false-alarm rate <= α exactly
    as calibrated (split conformal on one statistic), which is tighter, so more sensitive,
    than any per-indicator rule; it costs the profile split of the calibration rollouts.

``mode="reference"`` imitates the reference code for side-by-side comparison only: numpy's
linearly interpolated quantile (no n+1) and a raw per-step quantile (a per-step, not an
episode-level, guarantee) give its constant and per-step thresholds exactly; the band has the
statistic with the sign of a *lower* band and the linear quantile, but not the reference's
deterministic split, trimming or tail rule, so its thresholds are not the reference band's.
It does not give the guarantee, and the statistical tests show it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..core.kernel import fusion_rank, split_indices
from ..exceptions import CalibrationError, ConfigError
from .conformal import (
    TINY,
    Profile,
    band_profile,
    conformal_quantile,
    constant_profile,
    episode_statistics,
    min_calibration_size,
    per_step_profile,
)
from .risk_control import min_pac_calibration_size, pac_quantile

__all__ = [
    "CalibrationResult",
    "CalibrationSettings",
    "calibrate_thresholds",
    "require_finite",
    "resolve_joint",
    "split_sizes",
]


def require_finite(x: NDArray[np.float64], name: str, rollout: str) -> None:
    """Refuse a calibration rollout whose raw ``name`` scores are not all finite.

    The one check that the in-memory and the streamed calibration both run.

    Examples
    --------
    >>> require_finite(np.array([0.1, 0.2]), "rnd", "calibration rollout 0")
    """
    if not np.all(np.isfinite(x)):
        step = int(np.flatnonzero(~np.isfinite(x))[0])
        raise CalibrationError(
            f"calibrate: {rollout} gives a non-finite {name!r} score "
            f"at step {step} (an extreme input overflowed the score); thresholds "
            "cannot be computed from it. Drop or repair that rollout."
        )


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything that decides how thresholds are computed (validated by the detector)."""

    style: str = "constant"
    alpha: float = 0.05
    combine: str = "and"
    joint: bool = False
    guarantee: str = "marginal"
    delta: float = 0.1
    split: float = 0.5
    trim: float = 0.0
    min_support: int = 1
    mode: str = "corrected"

    def needs_profile_split(self, n_indicators: int) -> bool:
        """Whether part of the rollouts must go to estimating profiles first."""
        if self.mode == "reference":
            return self.style == "band"
        return self.style != "constant" or (self.joint and n_indicators > 1)

    def level(self, n_indicators: int) -> tuple[float, float]:
        """(α, δ) used for each conformal step: k·α/K per indicator for a k-of-K rule."""
        if self.joint or self.combine == "and" or n_indicators == 1 or self.mode == "reference":
            return self.alpha, self.delta
        k = fusion_rank(self.combine, n_indicators)
        if k == n_indicators:  # "K-of-K" is AND
            return self.alpha, self.delta
        return self.alpha * k / n_indicators, self.delta / n_indicators


@dataclass
class CalibrationResult:
    """Thresholds and the facts behind them.

    Attributes
    ----------
    tables : dict[str, ndarray]
        γ(t) for t = 0 … L-1 per indicator (L = 1 for constant); last value repeated.
    statistics : dict[str, ndarray]
        Sorted episode statistics S_i of the conformal rollouts, per indicator and, for
        joint calibration, under ``"fused"``; used for conformal p-values.
    profiles : dict[str, Profile]
        The (rescaled) profile of each indicator; D(t) = profile.normalise(η).
    levels : dict[str, float]
        h per indicator (in the profile's normalised units).
    n_profile, n_conformal : int
        Rollouts used for the profiles and for the conformal step.
    """

    tables: dict[str, NDArray[np.float64]]
    statistics: dict[str, NDArray[np.float64]]
    profiles: dict[str, Profile]
    levels: dict[str, float]
    n_profile: int
    n_conformal: int
    notes: list[str] = field(default_factory=list)


def split_sizes(n: int, split: float) -> tuple[int, int]:
    """(profile part, conformal part) sizes for n rollouts; both at least 1 when n >= 2."""
    n1 = min(max(1, round(split * n)), n - 1) if n >= 2 else 0
    return n1, n - n1


def resolve_joint(calibration: str, guarantee: str) -> bool:
    """Whether ``calibration`` ("auto", "per_indicator", "joint") calibrates jointly.

    ``"auto"`` is joint for the PAC guarantee and per indicator otherwise. The detector and
    :func:`~failguard.calibration.plan` both decide it here.
    """
    return calibration == "joint" or (calibration == "auto" and guarantee == "pac")


def _needed(settings: CalibrationSettings, n_indicators: int) -> int:
    """Fewest calibration rollouts that can give the requested guarantee.

    The one count both :func:`calibrate_thresholds` (which refuses fewer) and
    :func:`~failguard.calibration.plan` report.
    """
    if settings.mode == "reference":
        # The reference code checks nothing (its quantiles run on any n), and reproducing it
        # means reproducing that too; it still needs two rollouts to split for its band.
        return 1 + (settings.style == "band")
    alpha, delta = settings.level(n_indicators)
    n2 = (
        min_pac_calibration_size(alpha, delta)
        if settings.guarantee == "pac"
        else min_calibration_size(alpha)
    )
    if not settings.needs_profile_split(n_indicators):
        return n2
    n = n2 + 1
    while split_sizes(n, settings.split)[1] < n2:
        n += 1
    return n


def _level(
    stats: NDArray[np.float64], settings: CalibrationSettings, alpha: float, delta: float
) -> float:
    if settings.guarantee == "pac":
        return pac_quantile(stats, alpha, delta)
    return conformal_quantile(stats, alpha)


def _reference(
    curves: Mapping[str, Sequence[NDArray[np.float64]]],
    settings: CalibrationSettings,
    first: NDArray[np.int64],
    second: NDArray[np.int64],
) -> CalibrationResult:
    """The reference code's thresholds (no n+1, raw per-step quantile, lower-band sign).

    Constant and per-step: exactly the reference's. Band: its sign and quantile, on a random
    split and failguard's band profile (not the reference's split, trim or tail rule).

    Its episode statistics use other signs and quantiles than the corrected ones, so
    conformal p-values and the health check do not apply: the result keeps no statistics.
    Out of scope (failguard refuses them in every mode): RND trained on the calibration
    rollouts, train/validation splits by step, failed rollouts in the calibration set.
    """
    q = 1.0 - settings.alpha
    tables, profiles, levels = {}, {}, {}
    n1 = n2 = len(first) + len(second)
    for name, cs in curves.items():
        if settings.style == "constant":
            s = np.array([c.max() for c in cs])
            h = float(np.quantile(s, q))
            profile = constant_profile()
        elif settings.style == "per_step":
            stack = np.full((len(cs), max(c.shape[0] for c in cs)), np.nan)
            for i, c in enumerate(cs):
                stack[i, : c.shape[0]] = c
            profile = Profile(np.zeros(1), np.maximum(np.nanquantile(stack, q, axis=0), TINY))
            h = 1.0
        else:
            n1, n2 = len(first), len(second)
            part1 = [cs[i] for i in first]
            part2 = [cs[i] for i in second]
            profile = band_profile(part1, settings.trim)
            # The reference's statistic: max_t (μ(t) - η(t)) / σ(t), a *lower* band.
            s = np.array([np.max(-profile.normalise(c)) for c in part2])
            h = float(np.quantile(s, q))
        tables[name] = profile.thresholds(h)
        profiles[name] = profile
        levels[name] = h
    return CalibrationResult(tables, {}, profiles, levels, n1, n2, ["reference mode: no guarantee"])


def calibrate_thresholds(
    curves: Mapping[str, Sequence[NDArray[np.float64]]],
    settings: CalibrationSettings,
    rng: np.random.Generator,
) -> CalibrationResult:
    """Compute the threshold table of every indicator from successful rollouts' curves.

    Parameters
    ----------
    curves : mapping name -> sequence of (T_i,) arrays
        Windowed scores η_i(t) of each indicator on each calibration rollout (same rollout
        order for every indicator).
    settings : CalibrationSettings
    rng : numpy.random.Generator
        Decides which rollouts estimate profiles and which the conformal level.

    Raises
    ------
    CalibrationError
        If there are too few rollouts for the requested α (and δ).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> curves = {"rnd": [rng.random(20) for _ in range(40)]}
    >>> res = calibrate_thresholds(curves, CalibrationSettings(alpha=0.1), rng)
    >>> res.tables["rnd"].shape, res.n_conformal
    ((1,), 40)
    """
    names = list(curves)
    if not names:
        raise CalibrationError("No indicator to calibrate.")
    n = len(curves[names[0]])
    if any(len(curves[k]) != n for k in names):
        raise CalibrationError("Every indicator needs one curve per calibration rollout.")
    needed = _needed(settings, len(names))
    if n < needed:
        split = settings.needs_profile_split(len(names))
        what = (
            f"{settings.style!r} thresholds"
            if settings.style != "constant"
            else "joint calibration"
        )
        extra = (
            f" ({what} use {1 - settings.split:.0%} of them for the conformal step)"
            if split
            else ""
        )
        hint = ""
        if settings.style != "constant":
            hint = " or use threshold='constant'"
        elif split:
            hint = " or use calibration='per_indicator'"
        raise CalibrationError(
            f"alpha={settings.alpha:g}"
            + (f", delta={settings.delta:g}" if settings.guarantee == "pac" else "")
            + f" needs at least {needed} successful calibration rollouts{extra}; got {n}. "
            f"Record more successful rollouts, raise alpha{hint}. "
            "failguard.calibration.plan() tells the numbers."
        )
    n1 = split_sizes(n, settings.split)[0] if settings.needs_profile_split(len(names)) else 0
    first, second = split_indices(n, n1, rng)
    if settings.mode == "reference":
        return _reference(curves, settings, first, second)

    alpha, delta = settings.level(len(names))
    n2 = n - n1
    part1 = {k: [curves[k][i] for i in first] for k in names}
    part2 = {k: [curves[k][i] for i in second] for k in names}

    profiles: dict[str, Profile] = {}
    for k in names:
        if settings.style == "constant":
            profiles[k] = constant_profile()
        elif settings.style == "per_step":
            profiles[k] = per_step_profile(part1[k], settings.alpha, settings.min_support)
        elif settings.style == "band":
            profiles[k] = band_profile(part1[k], settings.trim, settings.min_support)
        else:
            raise ConfigError(f"Unknown threshold style {settings.style!r}.")

    stats: dict[str, NDArray[np.float64]] = {}
    levels: dict[str, float] = {}
    if settings.joint and len(names) > 1:
        if settings.style == "constant":
            # Put the raw scores on a common scale; per-step and band profiles already are
            # (D is in units of a per-step quantile or of the band's half-width).
            for k in names:
                own = episode_statistics([part1[k]], [profiles[k]])
                scale = float(np.quantile(own, 1.0 - settings.alpha))
                profiles[k] = profiles[k].rescaled(max(scale, TINY))
        fused = episode_statistics(
            [part2[k] for k in names], [profiles[k] for k in names], settings.combine
        )
        h = _level(fused, settings, alpha, delta)
        stats["fused"] = np.sort(fused)
        levels = dict.fromkeys(names, h)
    for k in names:
        own = episode_statistics([part2[k]], [profiles[k]])
        stats[k] = np.sort(own)
        if k not in levels:
            levels[k] = _level(own, settings, alpha, delta)
    tables = {k: profiles[k].thresholds(levels[k]) for k in names}
    return CalibrationResult(tables, stats, profiles, levels, n1, n2)
