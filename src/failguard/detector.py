"""FailureDetector: fit scores, calibrate thresholds, score rollouts, save and load.

The phases are explicit and their order is enforced (as in MAPIE v1):

1. :meth:`FailureDetector.fit` on successful rollouts: trains RND, fits ACE cell sizes, ...
2. :meth:`FailureDetector.calibrate` on *other* successful rollouts: the thresholds. The
   scores are frozen by then, which is what the conformal guarantee needs.
3. :meth:`~FailureDetector.score`, :meth:`~FailureDetector.predict`,
   :meth:`~FailureDetector.monitor`, :func:`failguard.evaluate`, export.

The class keeps the parameters (:class:`~failguard.config.DetectorConfig`) and the fitted
state (:class:`~failguard.fitted.FittedState`) apart, and binds its calibration and scoring
methods from the modules that implement them: :mod:`failguard.calibration.phase` and
:mod:`failguard._scoring`. Save and load live in :mod:`failguard._artifact`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _scoring
from ._gate import check_nominal
from ._scoring import RAW_DEPRECATED
from .calibration import phase
from .calibration.calibrator import CalibrationResult, CalibrationSettings
from .config import DetectorConfig, param_views
from .core.spec import MonitorSpec, inputs_read
from .exceptions import NotFittedError, ParameterError
from .fitted import FittedState, StateView
from .monitor import Monitor
from .scores._base import BaseScore
from .scores.entropy import ActionChunkEntropy
from .scores.rnd import RNDScore
from .types import Rollout

__all__ = ["RAW_DEPRECATED", "FailureDetector"]


@param_views
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
    config : DetectorConfig
        The parameters above (except ``scores``), frozen and validated; each is also a
        read-only attribute (``det.alpha``).
    fitted_state : FittedState
        What :meth:`fit` and :meth:`calibrate` learnt; the attributes below that end with an
        underscore are read-only views of it.
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

    # Parameters: read-only views of self.config, generated by @param_views (change them with
    # with_params, which validates again); ``windows`` is resolved per score below.
    window_kind: str
    combine: str
    threshold: str
    alpha: float
    guarantee: str
    delta: float
    calibration: str
    split: float
    trim: float
    min_support: int
    mondrian: bool
    mode: str
    random_state: int

    # Fitted state: read-only views of self.fitted_state.
    calibration_ = StateView[CalibrationResult | None]("The pooled calibration (None before).")
    group_calibration_ = StateView[dict[str, CalibrationResult]]("Per-group calibrations.")
    n_fit_ = StateView[int]("Number of rollouts the scores were fitted on.")
    n_calibration_ = StateView[int]("Number of calibration rollouts.")
    longest_calibration_ = StateView["int | None"]("Longest calibration rollout's length.")
    selection_ = StateView[Any]("Set by failguard.select: what it compared and chose.")

    # Calibration and scoring: the methods are the functions of these modules.
    calibrate = phase.calibrate
    calibration_plan = phase.calibration_plan
    seen = phase.seen
    with_alpha = phase.with_alpha
    _calibrate_from_raw = phase.calibrate_from_raw
    _calibrate_from_curves = phase.calibrate_from_curves
    raw_scores = _scoring.raw_scores
    raw_scores_many = _scoring.raw_scores_many
    spec = _scoring.spec
    tables_for = _scoring.tables_for
    score = _scoring.score
    traces = _scoring.traces
    predict = _scoring.predict
    p_values = _scoring.p_values
    _trace = _scoring.trace
    _traces = _scoring.traces_from_raw

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
            raise ParameterError(
                "The 'scores' parameter of FailureDetector must be a non-empty sequence of "
                f"scores. Got {scores!r} instead."
            )
        names = [s.name for s in self.scores]
        if len(set(names)) != len(names):
            raise ParameterError(
                f"Scores of a FailureDetector need unique names; got {names}. Pass name=... "
                "to tell two scores of the same kind apart."
            )
        #: The parameters, frozen and validated (:class:`failguard.config.DetectorConfig`).
        self.config = DetectorConfig(  # fields in the order of this signature
            windows, window_kind, combine, threshold, alpha, guarantee, delta, calibration,
            split, trim, min_support, mondrian, mode, random_state,
        )  # fmt: skip
        self._windows = self.config.windows_for(names)
        #: What fit and calibrate learnt (:class:`failguard.fitted.FittedState`).
        self.fitted_state = FittedState()
        self._spec_cache: tuple[Any, Any, MonitorSpec] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def windows(self) -> dict[str, int]:
        """Window length per score name (resolved from ``config.windows``)."""
        return dict(self._windows)

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
        return phase.settings_for(self.config)

    @property
    def calibration_groups_(self) -> list[str]:
        """Group labels of the calibration rollouts (in distribution by definition); saved.

        :func:`failguard.evaluate` takes them as its in-distribution groups by default.
        """
        return sorted({g for g in self.fitted_state.calibration_groups if g is not None})

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`calibrate` has run."""
        return self.fitted_state.calibration is not None

    @property
    def calibration_needs_curves(self) -> bool:
        """Whether calibration needs each rollout's windowed curve, or only its maximum
        (see :func:`failguard.calibration.phase.needs_curves`)."""
        return phase.needs_curves(self.config, len(self.scores))

    @property
    def can_recalibrate(self) -> bool:
        """Whether this detector keeps its calibration rollouts' raw scores (calibrated in this
        session, not loaded), so that :meth:`with_params` can recalibrate without rescoring."""
        return self.fitted_state.calibration_raw is not None

    @property
    def requires(self) -> tuple[str, ...]:
        """Rollout fields the scores read."""
        return inputs_read(self.scores)

    # ------------------------------------------------------------------ fitting
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
        rollouts = check_nominal(rollouts, "fit")
        if self.fitted_state.shares_scores:  # a with_params copy: refit private copies
            self.scores = [copy.deepcopy(s) for s in self.scores]
            self.fitted_state.shares_scores = False
        for s in self.scores:
            s.fit(rollouts, progress=progress)
        self.fitted_state.record_fit(rollouts)
        return self

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
        config = self.config.replace(**params)
        other = FailureDetector(scores=self.scores, **config.as_dict())
        other.fitted_state = self.fitted_state.for_copy()
        phase.recalibrate_copy(other, self.fitted_state)
        return other

    # ------------------------------------------------------------------ monitoring
    def monitor(self, group: str | None = None, nonfinite: str = "raise") -> Monitor:
        """A streaming :class:`~failguard.Monitor` for one rollout at a time.

        ``nonfinite``: what a step with a NaN or inf score does; see :class:`~failguard.Monitor`.
        """
        return Monitor(self, group=group, nonfinite=nonfinite)

    # ------------------------------------------------------------------ checks
    def _require_fitted(self) -> None:
        if not self.fitted_state.fitted:
            raise NotFittedError(
                "Incorrect method order: this FailureDetector is not fitted yet. Call "
                "'fit' with successful rollouts first, then 'calibrate' with other successful "
                "rollouts."
            )

    def _require_calibrated(self) -> CalibrationResult:
        self._require_fitted()
        if self.fitted_state.calibration is None:
            raise NotFittedError(
                "Incorrect method order: this FailureDetector is fitted but not calibrated. "
                "Call 'calibrate' with successful rollouts not used in 'fit'."
            )
        return self.fitted_state.calibration

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
        fitted = self.fitted_state.fitted
        state = "calibrated" if self.is_calibrated else "fitted" if fitted else "not fitted"
        return (
            f"FailureDetector(scores={self.names}, windows={self.windows}, "
            f"combine={self.combine!r}, threshold={self.threshold!r}, alpha={self.alpha}, "
            f"guarantee={self.guarantee!r}, mode={self.mode!r}) [{state}]"
        )
