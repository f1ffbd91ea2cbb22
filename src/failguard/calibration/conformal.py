"""Split-conformal thresholds on windowed scores of successful rollouts.

Pure numpy; nothing here knows about torch or about what a score measures.

Every threshold style is written the same way. A *profile* (offset a(t), scale b(t)) turns a
windowed score into a normalised one, D(t) = (η(t) - a(t)) / b(t), and a single number h
turns back into the threshold γ(t) = a(t) + h·b(t), so that η(t) > γ(t) ⇔ D(t) > h:

============ ============================ ===================== ======================
style        a(t)                          b(t)                  needs a profile split
============ ============================ ===================== ======================
constant     0                             1                     no
per_step     0                             per-step quantile     yes
band         mean curve μ(t)               max |η_i(t) - μ(t)|   yes
============ ============================ ===================== ======================

The calibration unit is the rollout. Its statistic is S_i = max_t D_i(t) (one number per
rollout), and h is the k-th smallest S_i with k = ⌈(n+1)(1-α)⌉. For n exchangeable
successful rollouts scored by a frozen function, a new successful rollout then alarms with
probability at most α (episode-level guarantee). When k > n no threshold can give the
guarantee and :class:`~failguard.CalibrationError` says how many rollouts are needed.
Profiles are estimated on a first part of the rollouts and h on the rest, so the profile is
frozen before h is computed.

Time-varying tables cover t = 0 … L-1, L being the length of the ``min_support``-th longest
profile rollout (the longest by default); **past L the last value is repeated**
(`extend_table`), the same rule in calibration, in Python monitoring and inside the ONNX
graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..core.kernel import episode_statistic, normalise, table_at
from ..exceptions import CalibrationError, ConfigError

__all__ = [
    "THRESHOLD_STYLES",
    "Profile",
    "band_profile",
    "conformal_p_values",
    "conformal_quantile",
    "conformal_rank",
    "constant_profile",
    "episode_statistics",
    "extend_table",
    "min_calibration_size",
    "per_step_profile",
]

THRESHOLD_STYLES = ("constant", "per_step", "band")

#: Floor of every threshold and profile scale. Scores are non-negative, so a threshold at or
#: below zero can only mean "always alarm"; flooring keeps the ratio η/γ finite.
TINY = 1e-12


def conformal_rank(n: int, alpha: float) -> int:
    """The rank k = ⌈(n+1)(1-α)⌉ of the conformal order statistic, checked against n.

    Raises
    ------
    CalibrationError
        If k > n: with n rollouts no threshold guarantees a false-alarm rate of at most α.

    Examples
    --------
    >>> conformal_rank(19, 0.05), conformal_rank(100, 0.1)
    (19, 91)
    >>> conformal_rank(10, 0.05)
    Traceback (most recent call last):
    ...
    failguard.exceptions.CalibrationError: alpha=0.05 needs at least 19 successful ...
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be a float in the range (0, 1). Got {alpha!r} instead.")
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if k > n:
        raise CalibrationError(
            f"alpha={alpha:g} needs at least {min_calibration_size(alpha)} successful "
            f"calibration rollouts for its conformal threshold; got {n}. "
            "Record more successful rollouts or raise alpha."
        )
    return max(k, 1)


def min_calibration_size(alpha: float) -> int:
    """Smallest n for which ⌈(n+1)(1-α)⌉ <= n.

    Examples
    --------
    >>> min_calibration_size(0.05), min_calibration_size(0.1), min_calibration_size(0.2)
    (19, 9, 4)
    """
    return max(1, math.ceil((1.0 - alpha) / alpha - 1e-9))


def conformal_quantile(values: NDArray[np.float64], alpha: float) -> float:
    """The ⌈(n+1)(1-α)⌉-th smallest of ``values`` (finite-sample conformal quantile).

    Examples
    --------
    >>> conformal_quantile(np.arange(1.0, 20.0), 0.05)
    19.0
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(v[conformal_rank(v.shape[0], alpha) - 1])


def extend_table(table: NDArray[np.float64], length: int) -> NDArray[np.float64]:
    """Values of a time table at t = 0 … length-1, repeating its last value past its end.

    Examples
    --------
    >>> extend_table(np.array([1.0, 2.0]), 4)
    array([1., 2., 2., 2.])
    """
    return table_at(table, np.arange(length))


@dataclass(frozen=True)
class Profile:
    """Offset a(t) and scale b(t) > 0 of a threshold style (tables, last value repeated)."""

    offset: NDArray[np.float64]
    scale: NDArray[np.float64]

    def normalise(self, curve: NDArray[np.float64]) -> NDArray[np.float64]:
        """D(t) = (η(t) - a(t)) / b(t) for one windowed curve."""
        return normalise(curve, self.offset, self.scale)

    def rescaled(self, factor: float) -> Profile:
        """The same profile with its scale multiplied by ``factor`` (> 0)."""
        return Profile(self.offset, self.scale * factor)

    def thresholds(self, h: float) -> NDArray[np.float64]:
        """γ(t) = a(t) + h·b(t), floored at :data:`TINY`; as long as the longer of a and b."""
        length = max(self.offset.shape[0], self.scale.shape[0])
        gamma = extend_table(self.offset, length) + h * extend_table(self.scale, length)
        return np.maximum(gamma, TINY)


def constant_profile() -> Profile:
    """a = 0, b = 1: the threshold is h itself."""
    return Profile(np.zeros(1), np.ones(1))


def _per_step_stack(
    curves: Sequence[NDArray[np.float64]], min_support: int = 1
) -> NDArray[np.float64]:
    """Stack curves of unequal length into (n, L) with NaN past each curve's end.

    Steps where fewer than ``min(min_support, n)`` curves are still running are cut off, so
    a time-varying profile never rests on one or two unusually long rollouts; past its end the
    last supported value repeats.
    """
    lengths = np.array([c.shape[0] for c in curves])
    need = min(max(1, min_support), len(curves))
    length = int(np.sort(lengths)[::-1][need - 1])  # steps with >= need curves running
    out = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        out[i, : min(c.shape[0], length)] = c[:length]
    return out


def per_step_profile(
    curves: Sequence[NDArray[np.float64]], alpha: float, min_support: int = 1
) -> Profile:
    """b(t) = the (1-α) quantile of η_i(t) over the rollouts still running at t.

    Only the *shape* of the threshold comes from here; its level h is conformalised on other
    rollouts, which is what makes the episode-level guarantee hold. Steps with fewer than
    ``min_support`` running rollouts are left out (the last supported value repeats).
    """
    stack = _per_step_stack(curves, min_support)
    q = np.nanquantile(stack, 1.0 - alpha, axis=0)
    floor = max(TINY, 1e-6 * float(np.max(np.abs(q)))) if q.size else TINY
    return Profile(np.zeros(1), np.maximum(q, floor))


def band_profile(
    curves: Sequence[NDArray[np.float64]], trim: float = 0.0, min_support: int = 1
) -> Profile:
    """Functional band (FAIL-Detect): a(t) = mean curve μ(t), b(t) = max_i |η_i(t) - μ(t)|.

    Parameters
    ----------
    curves : sequence of (T_i,) arrays
        Windowed scores of the profile rollouts.
    trim : float in [0, 1), default=0
        Fraction of the profile curves farthest from μ (by their largest deviation) left out
        of the max that defines b(t), which makes the band robust to one odd rollout.
    min_support : int, default=1
        Steps with fewer running profile rollouts are left out (the last value repeats).
        The band always needs two: one curve has no spread, and a zero width would make
        every later rollout look infinitely unusual there.
    """
    stack = _per_step_stack(curves, max(min_support, 2))
    mu = np.nanmean(stack, axis=0)
    dev = np.abs(stack - mu)
    sigma = np.nanmax(dev, axis=0)
    n_drop = math.floor(trim * stack.shape[0])
    if n_drop and stack.shape[0] - n_drop >= 1:
        worst = np.nanmax(dev, axis=1)
        keep = np.argsort(worst, kind="stable")[: stack.shape[0] - n_drop]
        kept = dev[keep]
        running = ~np.all(np.isnan(kept), axis=0)
        trimmed = np.nanmax(np.where(running, kept, 0.0), axis=0)
        # Where every curve still running was trimmed, keep the untrimmed width: a zero
        # width there would make any later rollout look infinitely unusual.
        sigma = np.where(running, trimmed, sigma)
    floor = max(TINY, 1e-6 * float(np.max(sigma, initial=0.0)), 1e-6 * float(np.max(np.abs(mu))))
    return Profile(mu, np.maximum(sigma, floor))


def episode_statistics(
    curves: Sequence[Sequence[NDArray[np.float64]]],
    profiles: Sequence[Profile],
    combine: str = "and",
) -> NDArray[np.float64]:
    """S_i = max_t fuse_k D_k,i(t) for each rollout i (min for AND, max for OR, k-th largest
    for k-of-n).

    Parameters
    ----------
    curves : sequence over indicators of sequences over rollouts of (T_i,) arrays
    profiles : one :class:`Profile` per indicator
    combine : {"and", "or", "k-of-n"}
        Only matters with more than one indicator; see :func:`failguard.core.kernel.fuse`.
    """
    n = len(curves[0])
    out = np.empty(n)
    for i in range(n):
        d = [p.normalise(c[i]) for c, p in zip(curves, profiles, strict=True)]
        out[i] = episode_statistic(d, combine)
    return out


def conformal_p_values(
    running_max: NDArray[np.float64], calibration_statistics: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Conformal p-value of a rollout's statistic so far, at each step.

    p(t) = (1 + #{i : S_i >= M(t)}) / (n + 1), with M(t) = max_{s<=t} D(s). A small p-value
    means the rollout is already more extreme than nearly every calibration success.

    Examples
    --------
    >>> conformal_p_values(np.array([0.5, 2.0, 9.0]), np.array([1.0, 2.0, 3.0]))
    array([1.  , 0.75, 0.25])
    """
    s = np.sort(np.asarray(calibration_statistics, dtype=np.float64))
    n_ge = s.shape[0] - np.searchsorted(s, running_max, side="left")
    return (1.0 + n_ge) / (s.shape[0] + 1.0)
