"""FailureDetector: fit scores, calibrate thresholds, score rollouts, save and load.

The phases are explicit and their order is enforced (as in MAPIE v1):

1. :meth:`FailureDetector.fit` on successful rollouts: trains RND, fits ACE cell sizes, ...
2. :meth:`FailureDetector.calibrate` on *other* successful rollouts: the thresholds. The
   scores are frozen by then, which is what the conformal guarantee needs.
3. :meth:`~FailureDetector.score`, :meth:`~FailureDetector.predict`,
   :meth:`~FailureDetector.monitor`, :func:`failguard.evaluate`, export.
"""

from __future__ import annotations

import copy
import os
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._gate import CalibrationGate, source_key
from ._gate import fingerprint as _fingerprint
from .calibration.calibrator import (
    CalibrationResult,
    CalibrationSettings,
    calibrate_thresholds,
    require_finite,
    resolve_joint,
)
from .calibration.conformal import conformal_p_values
from .config import DetectorConfig
from .core import kernel
from .core.spec import MonitorSpec, compile_spec, inputs_read
from .exceptions import (
    CalibrationError,
    NonFiniteScoreError,
    NotFittedError,
    ParameterError,
)
from .monitor import Monitor
from .scores._base import BaseScore
from .scores.entropy import ActionChunkEntropy
from .scores.rnd import RNDScore
from .types import Rollout, Trace
from .windows import window_scores

__all__ = ["FailureDetector"]


#: The one way to reuse raw scores across configurations is CachedScore (issue 10).
RAW_DEPRECATED = (
    "{where}(raw=...) is deprecated: to reuse raw scores across configurations, wrap the "
    "fitted scores in failguard.scores.CachedScore (with_params also recalibrates without "
    "rescoring)."
)


def _param_error(name: str, expected: str, value: Any) -> ParameterError:
    return ParameterError(
        f"The '{name}' parameter of FailureDetector must be {expected}. Got {value!r} instead."
    )


def _check_nonfinite(value: str) -> None:
    if value not in ("raise", "alarm"):
        raise _param_error("nonfinite", "one of ('raise', 'alarm')", value)


class FailureDetector:
    """FIPER's failure detector: scores, causal windows, conformal thresholds and fusion.

    Parameters
    ----------
    scores : sequence of scores, optional
        Indicators, each with a unique ``name``. Default: ``[RNDScore(), ActionChunkEntropy()]``
        (FIPER). For discrete-action agents use ``[RNDScore(), DiscreteActionEntropy()]``.
    windows : int or dict[str, int], default=10
        Window length w per indicator (one int for all, or by score name; names left out of
        the dict get 10).
    window_kind : {"sum", "mean", "cumulative"}, default="sum"
        Causal aggregation; the moving sum is FIPER's.
    combine : {"and", "or", "k-of-n"}, default="and"
        AND (FIPER): alarm when every indicator exceeds its threshold at the same step; OR:
        when any does; ``"k-of-n"`` (e.g. ``"2-of-3"``, n = the number of scores): when at
        least k do. Every rule keeps P(false alarm on a success) <= alpha: per indicator
        each leg is calibrated at k·alpha/n (alpha for AND, alpha/n for OR), jointly the
        fused statistic itself is calibrated at alpha (see :mod:`failguard.calibration`).
    threshold : {"constant", "per_step", "band"}, default="constant"
        Threshold style; see :mod:`failguard.calibration`.
    alpha : float in (0, 1), default=0.05
        Bound on the probability that a new successful rollout raises an alarm.
    guarantee : {"marginal", "pac"}, default="marginal"
        ``"marginal"``: E[false-alarm rate] <= alpha (split conformal). ``"pac"``:
        P(false-alarm rate <= alpha) >= 1 - delta (Learn-then-Test through MAPIE).
    delta : float in (0, 1), default=0.1
        Only for ``guarantee="pac"``.
    calibration : {"auto", "per_indicator", "joint"}, default="auto"
        How alpha is shared between indicators. ``"auto"`` is ``"joint"`` for PAC and
        ``"per_indicator"`` otherwise (FIPER's choice).
    split : float in (0, 1), default=0.5
        Fraction of calibration rollouts that estimate time-varying profiles (or, for joint
        calibration, the indicators' common scale).
    trim : float in [0, 1), default=0.0
        Band style only: fraction of profile curves left out of the band's width.
    min_support : int, default=1
        Time-varying styles only: a threshold profile ends at the last step at which at least
        this many profile rollouts are still running; past it the last value repeats. Larger
        values keep the tail from resting on one or two unusually long rollouts. The default
        uses every step, so a rollout that outlasts every success meets the threshold of
        the longest ones; on the MetaWorld benchmark that detected timeouts well, and
        ``min_support=5`` lowered FIPER's balanced accuracy from 0.89 to 0.79
        (docs/BENCHMARKS.md). Never affects the guarantee.
    mondrian : bool, default=False
        Calibrate separately for each ``Rollout.group`` (per-group guarantee). The monitor
        then needs the group at ``reset``.
    mode : {"corrected", "reference"}, default="corrected"
        ``"reference"``, for side-by-side comparison only (no guarantee): the reference
        code's constant and per-step thresholds exactly (linear quantile without n+1; raw
        per-step quantile). Its band keeps the reference's flaws (reversed sign, linear
        quantile) but is *not* the reference band exactly: the reference splits
        deterministically (longest curve plus the first (n-1)//2), trims by a quantile of
        the curves' maximum deviation and has its own one-curve tail rule; here the split is
        random and ``trim``/``min_support`` apply.
    random_state : int, default=0
        Seeds the calibration split.

    Attributes
    ----------
    scores_ : list of fitted scores
    thresholds_ : dict[str, ndarray]
        Pooled threshold table γ(t) per indicator (last value repeated past its end).
    calibration_ : CalibrationResult
        Pooled calibration; ``group_calibration_`` holds the per-group ones (Mondrian).
    n_fit_, n_calibration_ : int
    longest_calibration_ : int or None
        Length of the longest calibration rollout: the horizon past which an alarm may only
        say "longer than any success" (see :func:`failguard.metrics.remove_clock`).

    Examples
    --------
    >>> from failguard.synthetic import make_rollouts
    >>> fit_set = make_rollouts(12, kind="nominal", seed=0)
    >>> cal_set = make_rollouts(40, kind="nominal", seed=1)
    >>> det = FailureDetector(alpha=0.1).fit(fit_set, progress=False).calibrate(cal_set)
    >>> failing = make_rollouts(5, kind="failure", seed=2)
    >>> int(det.predict(failing).sum()) >= 4
    True
    """

    def __init__(
        self,
        scores: Sequence[BaseScore] | None = None,
        windows: int | Mapping[str, int] = 10,
        window_kind: str = "sum",
        combine: str = "and",
        threshold: str = "constant",
        alpha: float = 0.05,
        guarantee: str = "marginal",
        delta: float = 0.1,
        calibration: str = "auto",
        split: float = 0.5,
        trim: float = 0.0,
        min_support: int = 1,
        mondrian: bool = False,
        mode: str = "corrected",
        random_state: int = 0,
    ) -> None:
        self.scores = list(scores) if scores is not None else [RNDScore(), ActionChunkEntropy()]
        if not self.scores:
            raise _param_error("scores", "a non-empty sequence of scores", scores)
        names = [s.name for s in self.scores]
        if len(set(names)) != len(names):
            raise ParameterError(
                f"Scores of a FailureDetector need unique names; got {names}. Pass name=... "
                "to tell two scores of the same kind apart."
            )
        #: The parameters, frozen and validated (:class:`failguard.config.DetectorConfig`).
        self.config = DetectorConfig(
            windows=windows,
            window_kind=window_kind,
            combine=combine,
            threshold=threshold,
            alpha=alpha,
            guarantee=guarantee,
            delta=delta,
            calibration=calibration,
            split=split,
            trim=trim,
            min_support=min_support,
            mondrian=mondrian,
            mode=mode,
            random_state=random_state,
        )
        self._windows = self.config.windows_for(names)
        self._fitted: bool = False
        self._shares_scores: bool = False  # set by with_params: fit must not touch the original's
        self._fit_fingerprints: set[str] = set()
        self._fit_keys: set[tuple[str, str]] = set()  # (content, source file)
        self._fit_objects: weakref.WeakSet[Rollout] = weakref.WeakSet()
        self._calibration_fingerprints: set[str] = set()
        self.calibration_: CalibrationResult | None = None
        self.group_calibration_: dict[str, CalibrationResult] = {}
        self._calibration_raw: dict[str, list[NDArray[np.float64]]] | None = None
        self._calibration_groups: list[str | None] = []
        self.n_fit_: int = 0
        self.n_calibration_: int = 0
        self.longest_calibration_: int | None = None
        #: set by failguard.select: what was compared and why this configuration won
        self.selection_: Any = None
        self._spec_cache: tuple[Any, Any, Any, MonitorSpec] | None = None

    # ------------------------------------------------------------------ parameters
    # Read-only views of self.config: change them with with_params, which validates again.
    @property
    def windows(self) -> dict[str, int]:
        """Window length per score name (resolved from ``config.windows``)."""
        return dict(self._windows)

    @property
    def window_kind(self) -> str:
        return self.config.window_kind

    @property
    def combine(self) -> str:
        return self.config.combine

    @property
    def threshold(self) -> str:
        return self.config.threshold

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def guarantee(self) -> str:
        return self.config.guarantee

    @property
    def delta(self) -> float:
        return self.config.delta

    @property
    def calibration(self) -> str:
        return self.config.calibration

    @property
    def split(self) -> float:
        return self.config.split

    @property
    def trim(self) -> float:
        return self.config.trim

    @property
    def min_support(self) -> int:
        return self.config.min_support

    @property
    def mondrian(self) -> bool:
        return self.config.mondrian

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def random_state(self) -> int:
        return self.config.random_state

    # ------------------------------------------------------------------ properties
    @property
    def names(self) -> list[str]:
        """Indicator names, in order."""
        return [s.name for s in self.scores]

    @property
    def scores_(self) -> list[BaseScore]:
        """The fitted scores (after :meth:`fit`)."""
        self._require_fitted()
        return self.scores

    @property
    def thresholds_(self) -> dict[str, NDArray[np.float64]]:
        """Pooled γ(t) table per indicator."""
        return self._require_calibrated().tables

    @property
    def settings(self) -> CalibrationSettings:
        """The calibration settings these parameters imply."""
        joint = resolve_joint(self.calibration, self.guarantee)
        return CalibrationSettings(
            style=self.threshold,
            alpha=self.alpha,
            combine=self.combine,
            joint=joint,
            guarantee=self.guarantee,
            delta=self.delta,
            split=self.split,
            trim=self.trim,
            min_support=self.min_support,
            mode=self.mode,
        )

    def calibration_plan(self) -> Any:
        """How many successful calibration rollouts :meth:`calibrate` needs with these settings.

        The same count that :meth:`calibrate` checks (per group with ``mondrian=True``).

        Returns
        -------
        failguard.calibration.CalibrationPlan

        Examples
        --------
        >>> FailureDetector(alpha=0.1, guarantee="pac").calibration_plan().n_required
        44
        """
        from .calibration.planner import plan_for_settings

        return plan_for_settings(self.settings, len(self.scores), self.mondrian)

    @property
    def calibration_groups_(self) -> list[str]:
        """Group labels of the calibration rollouts (in distribution by definition); saved.

        :func:`failguard.evaluate` takes them as its in-distribution groups by default.
        """
        return sorted({g for g in self._calibration_groups if g is not None})

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`calibrate` has run."""
        return self.calibration_ is not None

    @property
    def requires(self) -> tuple[str, ...]:
        """Rollout fields the scores read."""
        return inputs_read(self.scores)

    # ------------------------------------------------------------------ phases
    def _check_nominal(self, rollouts: Sequence[Rollout], phase: str) -> list[Rollout]:
        if isinstance(rollouts, Rollout):
            rollouts = [rollouts]
        rollouts = list(rollouts)
        if not rollouts:
            raise CalibrationError(f"{phase}: no rollouts given; pass successful rollouts.")
        unknown = []
        for i, r in enumerate(rollouts):
            if not isinstance(r, Rollout):
                raise ParameterError(f"{phase}: item {i} is a {type(r).__name__}, not a Rollout.")
            if r.success is False:
                raise CalibrationError(
                    f"{phase}: {r.describe(i)} failed (success=False). {phase} uses "
                    "successful rollouts only; drop failed ones before calling it."
                )
            if r.success is None:
                unknown.append(i)
        if unknown:
            warnings.warn(
                f"{phase}: {len(unknown)} rollout(s) have success=None (first: {unknown[0]}); "
                "they are treated as successes. Label rollouts to keep the guarantee honest.",
                UserWarning,
                stacklevel=3,
            )
        return rollouts

    def fit(self, rollouts: Sequence[Rollout], progress: bool = True) -> FailureDetector:
        """Fit every score on successful rollouts.

        Parameters
        ----------
        rollouts : sequence of Rollout
            Successful rollouts, disjoint from those later given to :meth:`calibrate`.
        progress : bool, default=True
            Show progress bars during training.

        Returns
        -------
        self
        """
        rollouts = self._check_nominal(rollouts, "fit")
        if self._shares_scores:  # a with_params copy: refit private copies, not the original's
            self.scores = [copy.deepcopy(s) for s in self.scores]
            self._shares_scores = False
        for s in self.scores:
            s.fit(rollouts, progress=progress)
        return self._record_fit(rollouts)

    def _record_fit(self, rollouts: list[Rollout]) -> FailureDetector:
        """Mark the detector fitted on ``rollouts`` (its scores already are), drop calibration.

        :func:`failguard.select` uses it to hand back scores it fitted once for many candidates.
        """
        self._fit_fingerprints = {_fingerprint(r) for r in rollouts}
        self._fit_keys = {
            (_fingerprint(r), k) for r in rollouts if (k := source_key(r.source)) is not None
        }
        self._fit_objects = weakref.WeakSet(rollouts)
        self._calibration_fingerprints = set()
        self._fitted = True
        self.n_fit_ = len(rollouts)
        self.calibration_ = None
        self.group_calibration_ = {}
        self._calibration_raw = None  # scores of the old score functions are stale now
        self._calibration_groups = []
        self.n_calibration_ = 0
        self.longest_calibration_ = None
        return self

    def calibrate(
        self,
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
            from .streaming import calibrate_from_results, iter_results

            results = iter_results(
                self,
                rollouts,
                curves=self.calibration_needs_curves,
                alarms=False,
                progress=progress,
            )
            return calibrate_from_results(self, results, independent_repeats)
        rollouts = self._check_nominal(rollouts, "calibrate")
        gate = CalibrationGate(self, independent_repeats)
        for i, r in enumerate(rollouts):
            gate.add(i, r.describe(i), _fingerprint(r), r.source, r)
        raw = self.raw_scores_many(rollouts, progress)
        groups = [r.group for r in rollouts]
        # Compute everything first; the detector changes only if all of it succeeds.
        pooled, per_group = self._calibrate_from_raw(raw, groups)
        self.calibration_ = pooled
        self.group_calibration_ = per_group
        self._calibration_raw = raw
        self._calibration_groups = groups
        self._calibration_fingerprints = set(gate.prints)
        self.n_calibration_ = len(rollouts)
        self.longest_calibration_ = max(len(r) for r in rollouts)
        return self

    def seen(self, rollouts: Iterable[Rollout]) -> list[int]:
        """Indices of ``rollouts`` whose content this detector was fitted or calibrated on.

        Compares content hashes (kept in saved artifacts too). Metrics on such rollouts are
        in-sample and look better than the detector is.

        Examples
        --------
        >>> from failguard.synthetic import make_rollouts
        >>> fit_set, cal_set = make_rollouts(8, seed=0), make_rollouts(40, seed=1)
        >>> det = FailureDetector(alpha=0.1).fit(fit_set, progress=False).calibrate(cal_set)
        >>> det.seen(fit_set[:2] + make_rollouts(1, seed=9) + cal_set[:1])
        [0, 1, 3]
        """
        known = self._fit_fingerprints | self._calibration_fingerprints
        return [i for i, r in enumerate(rollouts) if _fingerprint(r) in known]

    @property
    def calibration_needs_curves(self) -> bool:
        """Whether calibration needs each rollout's whole windowed curve, or only its maximum.

        Constant thresholds calibrated per indicator need only max_t η(t) per rollout and
        indicator; time-varying styles and joint calibration need the curves.
        """
        s = self.settings
        return s.style != "constant" or (s.joint and len(self.scores) > 1)

    @property
    def can_recalibrate(self) -> bool:
        """Whether this detector keeps its calibration rollouts' raw scores (calibrated in this
        session, not loaded), so that :meth:`with_params` can recalibrate without rescoring."""
        return self._calibration_raw is not None

    def _calibrate_from_raw(
        self,
        raw: Mapping[str, Sequence[NDArray[np.float64]]],
        groups: Sequence[str | None],
    ) -> tuple[CalibrationResult, dict[str, CalibrationResult]]:
        """Pooled and per-group calibration from raw scores; changes nothing on self."""
        for name, values in raw.items():
            for i, x in enumerate(values):
                require_finite(x, name, f"calibration rollout {i}")
        curves = {
            name: [window_scores(x, self.windows[name], self.window_kind) for x in values]  # type: ignore[arg-type]
            for name, values in raw.items()
        }
        return self._calibrate_from_curves(curves, groups)

    def _calibrate_from_curves(
        self,
        curves: Mapping[str, Sequence[NDArray[np.float64]]],
        groups: Sequence[str | None],
    ) -> tuple[CalibrationResult, dict[str, CalibrationResult]]:
        """Pooled and per-group calibration from windowed curves; changes nothing on self.

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
                raise CalibrationError(
                    "mondrian=True needs calibration rollouts with a 'group' label."
                )
            for g in labels:
                idx = [i for i, gi in enumerate(groups) if gi == g]
                sub = {k: [v[i] for i in idx] for k, v in curves.items()}
                try:
                    per_group[g] = calibrate_thresholds(sub, settings, rng)
                except CalibrationError as err:
                    raise CalibrationError(f"group {g!r}: {err}") from err
        return pooled, per_group

    def with_params(self, **params: Any) -> FailureDetector:
        """A copy with other parameters that shares this detector's fitted scores.

        Nothing is refitted. If this detector was calibrated in this session, the copy is
        recalibrated on the same rollouts from their cached raw scores (nothing is rescored);
        otherwise call :meth:`calibrate` on it. This is how to compare windows, threshold
        styles, fusion rules or alphas on a validation set cheaply.

        Parameters
        ----------
        **params
            Any constructor parameter except ``scores``.

        Examples
        --------
        >>> from failguard.synthetic import make_rollouts
        >>> det = FailureDetector(alpha=0.1).fit(make_rollouts(8, seed=0), progress=False)
        >>> det = det.calibrate(make_rollouts(40, seed=1))
        >>> band = det.with_params(threshold="band", windows=5)
        >>> band.scores[0] is det.scores[0], band.is_calibrated
        (True, True)
        """
        if "scores" in params:
            raise ParameterError(
                "with_params keeps the fitted scores; build a new FailureDetector to change them."
            )
        unknown = set(params) - set(self.get_params())
        if unknown:
            raise ParameterError(
                f"with_params got unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.get_params())}."
            )
        other = FailureDetector(scores=self.scores, **{**self.config.as_dict(), **params})
        other._shares_scores = True
        other._fitted = self._fitted
        other._fit_fingerprints = set(self._fit_fingerprints)
        other._fit_keys = set(self._fit_keys)
        other._fit_objects = weakref.WeakSet(self._fit_objects)
        other._calibration_fingerprints = set(self._calibration_fingerprints)
        other.n_fit_ = self.n_fit_
        if self._calibration_raw is not None:
            raw, groups = self._calibration_raw, list(self._calibration_groups)
            pooled, per_group = other._calibrate_from_raw(raw, groups)
            other.calibration_ = pooled
            other.group_calibration_ = per_group
            other._calibration_raw = raw
            other._calibration_groups = groups
            other.n_calibration_ = self.n_calibration_
            other.longest_calibration_ = self.longest_calibration_
        return other

    def with_alpha(self, alpha: float) -> FailureDetector:
        """A copy recalibrated at another alpha on the same calibration rollouts (no rescoring).

        Available right after :meth:`calibrate` in the same session.
        """
        self._require_calibrated()
        if not self.can_recalibrate:
            raise NotFittedError(
                "with_alpha needs the calibration rollouts' scores, which a loaded detector does "
                "not keep; call calibrate(rollouts) again."
            )
        return self.with_params(alpha=alpha)

    # ------------------------------------------------------------------ scoring
    def raw_scores(self, rollout: Rollout) -> dict[str, NDArray[np.float64]]:
        """Per-step raw score of each indicator, shape (T,) each."""
        self._require_fitted()
        return {s.name: s.score(rollout) for s in self.scores}

    def raw_scores_many(
        self, rollouts: Sequence[Rollout], progress: bool = False
    ) -> dict[str, list[NDArray[np.float64]]]:
        """Raw per-step scores of many rollouts, by indicator name (batched networks).

        To evaluate several configurations without rescoring, wrap the fitted scores in
        :class:`~failguard.scores.CachedScore` instead.
        """
        self._require_fitted()
        from tqdm.auto import tqdm

        bar = tqdm(self.scores, desc="scoring", disable=not progress, leave=False)
        return {s.name: s.score_many(rollouts) for s in bar}

    def spec(self) -> MonitorSpec:
        """The calibrated monitor step as a frozen, torch-free :class:`~failguard.core.MonitorSpec`.

        Batch scoring, :class:`~failguard.Monitor`, the health check, p-values and the ONNX
        export all run this spec (through :mod:`failguard.core.kernel`). Compiled once per
        calibration and cached.

        Raises
        ------
        NotFittedError
            If the detector is not calibrated yet.
        """
        cal = self._require_calibrated()
        params = (self.combine, self.window_kind, tuple(self.windows.items()), self.mondrian)
        cached = self._spec_cache
        if (
            cached is None
            or cached[0] is not cal
            or cached[1] is not self.group_calibration_
            or cached[2] != params
        ):
            cached = (cal, self.group_calibration_, params, compile_spec(self))
            self._spec_cache = cached
        return cached[3]

    def _row(self, group: str | None) -> int:
        """Threshold row of ``group`` (Mondrian aware; unknown groups get the pooled row)."""
        spec = self.spec()
        return kernel.group_row(spec.groups, spec.mondrian, group)

    def tables_for(self, group: str | None = None) -> dict[str, NDArray[np.float64]]:
        """Threshold tables to use for a rollout of ``group`` (Mondrian aware)."""
        return self.spec().thresholds_row(self._row(group))

    def _trace(
        self,
        raw: dict[str, NDArray[np.float64]],
        rollout: Rollout,
        group: str | None,
        nonfinite: str = "raise",
        index: int | None = None,
    ) -> Trace:
        spec = self.spec()
        row = self._row(group)
        if nonfinite == "raise":
            bad = np.zeros(len(rollout), dtype=bool)
            for name in self.names:
                bad |= ~np.isfinite(raw[name])
            if bad.any():
                step = int(np.flatnonzero(bad)[0])
                which = [n for n in self.names if not np.isfinite(raw[n][step])]
                raise NonFiniteScoreError(
                    f"{rollout.describe(index)}: step {step} gives a non-finite score for "
                    f"{which} from finite inputs (an extreme input overflowed the score). Check "
                    "the input's scale, or pass nonfinite='alarm' to count such steps as alarms."
                )
        out = kernel.scan(spec, raw, row)
        return Trace(
            raw,
            out.windowed,
            out.thresholds,
            out.ratios,
            out.fused,
            out.alarm,
            rollout.success,
            rollout.group,
            out.nonfinite if out.nonfinite.any() else None,
        )

    def score(self, rollout: Rollout, group: str | None = None, nonfinite: str = "raise") -> Trace:
        """Score one rollout step by step (what a :class:`Monitor` would have said).

        Parameters
        ----------
        rollout : Rollout
        group : str, optional
            Group for Mondrian thresholds; default ``rollout.group``.
        nonfinite : {"raise", "alarm"}, default="raise"
            A step whose score is NaN or inf raises
            :class:`~failguard.NonFiniteScoreError`, or (``"alarm"``) counts as an alarm;
            see :class:`~failguard.Monitor`.
        """
        self._require_calibrated()
        _check_nonfinite(nonfinite)
        return self._trace(
            self.raw_scores(rollout),
            rollout,
            group if group is not None else rollout.group,
            nonfinite,
        )

    def traces(
        self,
        rollouts: Sequence[Rollout],
        progress: bool = False,
        raw: Mapping[str, Sequence[NDArray[np.float64]]] | None = None,
        nonfinite: str = "raise",
    ) -> list[Trace]:
        """:meth:`score` for many rollouts, batching the score networks.

        Parameters
        ----------
        rollouts : sequence of Rollout
        progress : bool, default=False
        raw : mapping, optional
            Deprecated: wrap the fitted scores in :class:`~failguard.scores.CachedScore` to
            reuse raw scores across configurations (the one way to do so).
        nonfinite : {"raise", "alarm"}, default="raise"
            See :meth:`score`.
        """
        if raw is not None:
            warnings.warn(
                RAW_DEPRECATED.format(where="FailureDetector.traces"),
                DeprecationWarning,
                stacklevel=2,
            )
        return self._traces(rollouts, raw, progress, nonfinite)

    def _traces(
        self,
        rollouts: Sequence[Rollout],
        raw: Mapping[str, Sequence[NDArray[np.float64]]] | None,
        progress: bool = False,
        nonfinite: str = "raise",
    ) -> list[Trace]:
        self._require_calibrated()
        _check_nonfinite(nonfinite)
        rollouts = list(rollouts)
        if raw is None:
            raw = self.raw_scores_many(rollouts, progress)
        elif set(raw) != set(self.names) or any(len(v) != len(rollouts) for v in raw.values()):
            raise ParameterError(
                f"raw must hold {len(rollouts)} score arrays for each of {self.names}; "
                "compute it with raw_scores_many(rollouts)."
            )
        return [
            self._trace({k: v[i] for k, v in raw.items()}, r, r.group, nonfinite, i)
            for i, r in enumerate(rollouts)
        ]

    def predict(self, rollouts: Iterable[Rollout], nonfinite: str = "raise") -> NDArray[np.bool_]:
        """Predicted failure (an alarm at any step) per rollout; ``nonfinite``: see
        :meth:`score`.

        ``rollouts`` may be an iterator (such as :func:`failguard.iter_rollouts`); it is then
        scored one rollout at a time, in constant memory.
        """
        if not isinstance(rollouts, Sequence):
            from .streaming import iter_results

            self._require_calibrated()
            _check_nonfinite(nonfinite)
            results = iter_results(self, rollouts, nonfinite=nonfinite)
            return np.array([r.predicted_failure for r in results], dtype=bool)
        traces = self.traces(rollouts, nonfinite=nonfinite)
        return np.array([t.predicted_failure for t in traces], dtype=bool)

    def p_values(
        self, rollout: Rollout, group: str | None = None
    ) -> dict[str, NDArray[np.float64]]:
        """Conformal p-value per step, per indicator (and ``"fused"`` for joint calibration).

        p(t) is the fraction of calibration successes whose whole-rollout statistic is at
        least as extreme as this rollout's so far; small means unusual.

        Parameters
        ----------
        rollout : Rollout
        group : str, optional
            Mondrian group; default ``rollout.group``.
        """
        spec = self.spec()
        row = self._row(group if group is not None else rollout.group)
        if self.mode == "reference":
            raise ParameterError(
                "p_values: mode='reference' reproduces the reference thresholds, which have no "
                "conformal statistics; use mode='corrected'."
            )
        windowed = kernel.scan(spec, self.raw_scores(rollout), row).windowed
        d = kernel.normalised(spec, windowed, row)
        stats = spec.statistics[row] if spec.statistics is not None else {}
        out = {k: conformal_p_values(np.maximum.accumulate(v), stats[k]) for k, v in d.items()}
        if "fused" in stats:
            fused = kernel.fuse(list(d.values()), self.combine)
            out["fused"] = conformal_p_values(np.maximum.accumulate(fused), stats["fused"])
        return out

    def monitor(self, group: str | None = None, nonfinite: str = "raise") -> Monitor:
        """A streaming :class:`~failguard.Monitor` for one rollout at a time.

        ``nonfinite``: what a step with a NaN or inf score does; see :class:`~failguard.Monitor`.
        """
        return Monitor(self, group=group, nonfinite=nonfinite)

    # ------------------------------------------------------------------ checks
    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(
                "Incorrect method order: this FailureDetector is not fitted yet. Call "
                "'fit' with successful rollouts first, then 'calibrate' with other successful "
                "rollouts."
            )

    def _require_calibrated(self) -> CalibrationResult:
        self._require_fitted()
        if self.calibration_ is None:
            raise NotFittedError(
                "Incorrect method order: this FailureDetector is fitted but not calibrated. "
                "Call 'calibrate' with successful rollouts not used in 'fit'."
            )
        return self.calibration_

    # ------------------------------------------------------------------ persistence
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters other than ``scores`` (JSON-serialisable; ``windows``
        resolved per score name). ``config`` holds them as given."""
        return {**self.config.as_dict(), "windows": self.windows}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``.

        No pickle: the config is JSON, the arrays safetensors. Both are fully serialised
        before either file is written, and each is written to a temporary name and renamed
        into place. A fitted detector that is not calibrated yet can be saved too (fit on one
        machine, calibrate later); loading it gives a fitted, uncalibrated detector.
        """
        from ._artifact import save_detector

        return save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> FailureDetector:
        """Load a detector written by :meth:`save`, verifying it first.

        Before anything is built: ``config.json`` is checked against a strict schema (every
        key, type and range, with caps on sizes), and the SHA-256 stored in it is checked
        against the weights and the config. Then every threshold must be finite and
        positive and agree with the stored calibration levels, and every tensor must match
        the shape its score's config declares.

        Parameters
        ----------
        path : str or path-like
            The directory given to :meth:`save`.
        verify : bool, default=True
            Check the SHA-256 (``False`` skips hashing the weights; the other checks stay).
            Detectors saved before failguard stored checksums load with a warning.

        Raises
        ------
        ArtifactError
            If a file is missing, corrupt or edited, or the schema version is not this
            failguard's.
        """
        from ._artifact import load_detector

        return load_detector(cls, path, verify)

    def __repr__(self) -> str:
        state = "calibrated" if self.is_calibrated else "fitted" if self._fitted else "not fitted"
        return (
            f"FailureDetector(scores={self.names}, windows={self.windows}, "
            f"combine={self.combine!r}, threshold={self.threshold!r}, alpha={self.alpha}, "
            f"guarantee={self.guarantee!r}, mode={self.mode!r}) [{state}]"
        )
