"""The calibration phase of :class:`~failguard.FailureDetector`, from rollouts to thresholds.

The functions taking ``self`` are the detector's calibration methods (the class binds them:
``FailureDetector.calibrate`` *is* :func:`calibrate`); they read the detector's parameters
(``self.config``) and write only its :class:`~failguard.fitted.FittedState`:

- :func:`calibrate`: in memory (sequences) or streamed (iterators, through
  :mod:`failguard.streaming`), after the admission checks of :mod:`failguard._gate`;
- :func:`calibrate_from_raw` / :func:`calibrate_from_curves`: the thresholds from raw scores
  or windowed curves, changing nothing (``with_params`` recalibrates a copy with them);
- :func:`recalibrate_copy`: what ``with_params`` does to the copy it makes, and
  :func:`with_alpha`;
- :func:`seen`, :func:`calibration_plan`, :func:`needs_curves` and :func:`settings_for`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .._gate import CalibrationGate, check_nominal, fingerprint
from ..config import DetectorConfig
from ..exceptions import CalibrationError, NotFittedError
from ..types import Rollout
from ..windows import window_scores
from .calibrator import (
    CalibrationResult,
    CalibrationSettings,
    calibrate_thresholds,
    require_finite,
    resolve_joint,
)
from .planner import CalibrationPlan, plan_for_settings

if TYPE_CHECKING:
    from ..detector import FailureDetector
    from ..fitted import FittedState

__all__ = [
    "calibrate",
    "calibrate_from_curves",
    "calibrate_from_raw",
    "calibration_plan",
    "needs_curves",
    "recalibrate_copy",
    "seen",
    "settings_for",
    "with_alpha",
]


def settings_for(config: DetectorConfig) -> CalibrationSettings:
    """The calibration settings a detector's parameters imply.

    Examples
    --------
    >>> settings_for(DetectorConfig(guarantee="pac")).joint  # "auto" is joint for PAC
    True
    """
    return CalibrationSettings(
        style=config.threshold,
        alpha=config.alpha,
        combine=config.combine,
        joint=resolve_joint(config.calibration, config.guarantee),
        guarantee=config.guarantee,
        delta=config.delta,
        split=config.split,
        trim=config.trim,
        min_support=config.min_support,
        mode=config.mode,
    )


def needs_curves(config: DetectorConfig, n_scores: int) -> bool:
    """Whether calibration needs each rollout's whole windowed curve, or only its maximum.

    Constant thresholds calibrated per indicator need only max_t η(t) per rollout and
    indicator; time-varying styles and joint calibration need the curves.

    Examples
    --------
    >>> needs_curves(DetectorConfig(), 2), needs_curves(DetectorConfig(threshold="band"), 2)
    (False, True)
    """
    s = settings_for(config)
    return s.style != "constant" or (s.joint and n_scores > 1)


def calibration_plan(self: FailureDetector) -> CalibrationPlan:
    """How many successful calibration rollouts :meth:`calibrate` needs with these settings.

    The same count that :meth:`calibrate` checks (per group with ``mondrian=True``).

    Returns
    -------
    failguard.calibration.CalibrationPlan

    Examples
    --------
    >>> from failguard import FailureDetector
    >>> FailureDetector(alpha=0.1, guarantee="pac").calibration_plan().n_required
    44
    """
    return plan_for_settings(self.settings, len(self.scores), self.mondrian)


def calibrate(
    self: FailureDetector,
    rollouts: Iterable[Rollout],
    progress: bool = False,
    independent_repeats: bool = False,
) -> FailureDetector:
    """Compute thresholds from successful rollouts not used by :meth:`fit`.

    ``rollouts`` is a sequence, or an iterator such as :func:`failguard.iter_rollouts`:
    an iterator is scored one rollout at a time and only each rollout's episode
    statistic (its windowed curve for time-varying or joint calibration) is kept, so any
    number of rollouts fits in memory; the thresholds are the same bit for bit. A detector
    calibrated from an iterator keeps no raw scores (:attr:`can_recalibrate` is False).

    Parameters
    ----------
    rollouts : sequence or iterable of Rollout
        Successful rollouts, independent of those given to :meth:`fit`.
    progress : bool, default=False
    independent_repeats : bool, default=False
        Declare that calibration rollouts whose content repeats a fit rollout (or another
        calibration rollout) step for step are independent episodes that happened to
        repeat, as in small discrete worlds, and keep them. The guarantee needs the
        calibration rollouts to be independent draws from the same distribution as
        future successes (and independent of the fit set); a genuine repeat is such a
        draw, and a new success repeats a fit episode just as often, so keeping it is
        right and dropping it would bias the calibration set. A *reused* rollout (the
        same object, or the same file with the same content, also given to fit) is
        refused whatever this says.

    Raises
    ------
    NotFittedError
        If :meth:`fit` has not run.
    CalibrationError
        On failed rollouts, rollouts also used to fit, repeats (unless declared
        independent), or too few rollouts for alpha.

    Returns
    -------
    self
    """
    self._require_fitted()
    if not isinstance(rollouts, (Sequence, Rollout)):
        # An iterator (fg.iter_rollouts, a generator): stream it, one rollout in memory.
        from ..streaming import calibrate_from_results, iter_results

        results = iter_results(
            self,
            rollouts,
            curves=self.calibration_needs_curves,
            alarms=False,
            progress=progress,
        )
        return calibrate_from_results(self, results, independent_repeats)
    rollouts = check_nominal(rollouts, "calibrate")
    gate = CalibrationGate(self, independent_repeats)
    for i, r in enumerate(rollouts):
        gate.add(i, r.describe(i), fingerprint(r), r.source, r)
    raw = self.raw_scores_many(rollouts, progress)
    groups = [r.group for r in rollouts]
    # Compute everything first; the detector changes only if all of it succeeds.
    pooled, per_group = calibrate_from_raw(self, raw, groups)
    longest = max(len(r) for r in rollouts)
    self.fitted_state.set_calibration(
        pooled, per_group, raw, groups, set(gate.prints), len(rollouts), longest
    )
    return self


def recalibrate_copy(self: FailureDetector, source: FittedState) -> None:
    """Calibrate ``self`` on the rollouts ``source`` was calibrated on, from their cached raw
    scores (nothing is rescored); nothing happens when ``source`` keeps none.

    :meth:`~failguard.FailureDetector.with_params` calls it on the copy it makes, whose
    state is ``source.for_copy()``.
    """
    raw = source.calibration_raw
    if raw is None:
        return
    groups = list(source.calibration_groups)
    pooled, per_group = calibrate_from_raw(self, raw, groups)
    state = self.fitted_state
    state.set_calibration(
        pooled,
        per_group,
        raw,
        groups,
        state.calibration_fingerprints,
        source.n_calibration,
        source.longest_calibration,
    )


def with_alpha(self: FailureDetector, alpha: float) -> FailureDetector:
    """A copy recalibrated at another alpha on the same calibration rollouts (no rescoring).

    Available right after :meth:`calibrate` in the same session.

    Raises
    ------
    NotFittedError
        If the detector is not calibrated, or keeps no raw scores (loaded, or calibrated
        from an iterator).
    """
    self._require_calibrated()
    if not self.can_recalibrate:
        raise NotFittedError(
            "with_alpha needs the calibration rollouts' scores, which a loaded detector does "
            "not keep; call calibrate(rollouts) again."
        )
    return self.with_params(alpha=alpha)


def seen(self: FailureDetector, rollouts: Iterable[Rollout]) -> list[int]:
    """Indices of ``rollouts`` whose content this detector was fitted or calibrated on.

    Compares content hashes (kept in saved artifacts too). Metrics on such rollouts are
    in-sample and look better than the detector is.

    Examples
    --------
    >>> from failguard import FailureDetector
    >>> from failguard.synthetic import make_rollouts
    >>> fit_set, cal_set = make_rollouts(8, seed=0), make_rollouts(40, seed=1)
    >>> det = FailureDetector(alpha=0.1).fit(fit_set, progress=False).calibrate(cal_set)
    >>> det.seen(fit_set[:2] + make_rollouts(1, seed=9) + cal_set[:1])
    [0, 1, 3]
    """
    known = self.fitted_state.known_fingerprints()
    return [i for i, r in enumerate(rollouts) if fingerprint(r) in known]


def calibrate_from_raw(
    self: FailureDetector,
    raw: Mapping[str, Sequence[NDArray[np.float64]]],
    groups: Sequence[str | None],
) -> tuple[CalibrationResult, dict[str, CalibrationResult]]:
    """Pooled and per-group calibration from raw scores; changes nothing on the detector."""
    for name, values in raw.items():
        for i, x in enumerate(values):
            require_finite(x, name, f"calibration rollout {i}")
    windows = self.windows
    curves = {
        name: [window_scores(x, windows[name], self.window_kind) for x in values]  # type: ignore[arg-type]
        for name, values in raw.items()
    }
    return calibrate_from_curves(self, curves, groups)


def calibrate_from_curves(
    self: FailureDetector,
    curves: Mapping[str, Sequence[NDArray[np.float64]]],
    groups: Sequence[str | None],
) -> tuple[CalibrationResult, dict[str, CalibrationResult]]:
    """Pooled and per-group calibration from windowed curves; changes nothing on the detector.

    For constant thresholds calibrated per indicator, a curve may be replaced by its
    maximum alone (a length-1 array): the result is the same, bit for bit.
    """
    settings = self.settings
    rng = np.random.default_rng(self.random_state)
    pooled = calibrate_thresholds(curves, settings, rng)
    per_group: dict[str, CalibrationResult] = {}
    if self.mondrian:
        labels = sorted({g for g in groups if g is not None})
        if not labels:
            raise CalibrationError("mondrian=True needs calibration rollouts with a 'group' label.")
        for g in labels:
            idx = [i for i, gi in enumerate(groups) if gi == g]
            sub = {k: [v[i] for i in idx] for k, v in curves.items()}
            try:
                per_group[g] = calibrate_thresholds(sub, settings, rng)
            except CalibrationError as err:
                raise CalibrationError(f"group {g!r}: {err}") from err
    return pooled, per_group
