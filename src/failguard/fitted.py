"""What fitting and calibration learn, kept apart from the detector's parameters.

A :class:`~failguard.FailureDetector` holds its parameters in a frozen
:class:`~failguard.config.DetectorConfig` (``det.config``) and everything that
:meth:`~failguard.FailureDetector.fit` and :meth:`~failguard.FailureDetector.calibrate` learn
in one :class:`FittedState` (``det.fitted_state``). The fitted scores themselves are the
score objects (``det.scores``): a score's own state lives with it. The familiar attributes
that end with an underscore (``calibration_``, ``n_fit_``, ...) are read-only views of this
object (:class:`StateView`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

from ._gate import fingerprint, source_key
from .calibration.calibrator import CalibrationResult
from .types import Rollout

__all__ = ["FittedState", "StateView"]

T = TypeVar("T")


@dataclass(eq=False)
class FittedState:
    """Everything a :class:`~failguard.FailureDetector` has learnt, apart from its scores.

    Attributes
    ----------
    fitted : bool
        Whether the scores are fitted.
    shares_scores : bool
        The score objects are shared with the detector this one was made from by
        :meth:`~failguard.FailureDetector.with_params`: ``fit`` refits private copies.
    n_fit : int
        Number of rollouts the scores were fitted on.
    fit_fingerprints : set of str
        Content hashes of those rollouts (saved).
    fit_keys : set of (str, str)
        (content hash, hash of the source file) of those read from files (saved).
    fit_objects : WeakSet of Rollout
        The fit rollouts themselves, while they live (not saved).
    calibration : CalibrationResult or None
        The pooled calibration; None until calibrated.
    group_calibration : dict[str, CalibrationResult]
        Per-group calibrations (Mondrian).
    calibration_raw : dict[str, list of ndarray] or None
        Raw scores of the calibration rollouts, kept for recalibration without rescoring
        (None after a streamed calibration, after loading, or before calibrating).
    calibration_groups : list of (str or None)
        Group label of each calibration rollout.
    calibration_fingerprints : set of str
        Content hashes of the calibration rollouts (saved).
    n_calibration : int
        Number of calibration rollouts.
    longest_calibration : int or None
        Length of the longest calibration rollout.
    selection : object
        What :func:`failguard.select` compared and why it chose this configuration.

    Examples
    --------
    >>> from failguard import FailureDetector
    >>> from failguard.synthetic import make_rollouts
    >>> det = FailureDetector(alpha=0.1).fit(make_rollouts(8, seed=0), progress=False)
    >>> det.fitted_state.fitted, det.fitted_state.n_fit, det.fitted_state.calibration
    (True, 8, None)
    >>> det.n_fit_ is det.fitted_state.n_fit
    True
    """

    fitted: bool = False
    shares_scores: bool = False
    n_fit: int = 0
    fit_fingerprints: set[str] = field(default_factory=set)
    fit_keys: set[tuple[str, str]] = field(default_factory=set)
    fit_objects: weakref.WeakSet[Rollout] = field(default_factory=weakref.WeakSet)
    calibration: CalibrationResult | None = None
    group_calibration: dict[str, CalibrationResult] = field(default_factory=dict)
    calibration_raw: dict[str, list[NDArray[np.float64]]] | None = None
    calibration_groups: list[str | None] = field(default_factory=list)
    calibration_fingerprints: set[str] = field(default_factory=set)
    n_calibration: int = 0
    longest_calibration: int | None = None
    selection: Any = None

    def record_fit(self, rollouts: Sequence[Rollout]) -> None:
        """Record the rollouts the scores were just fitted on; drop the (stale) calibration.

        :func:`failguard.select` calls it to hand back scores it fitted once for many
        candidates.
        """
        self.fit_fingerprints = {fingerprint(r) for r in rollouts}
        self.fit_keys = {
            (fingerprint(r), k) for r in rollouts if (k := source_key(r.source)) is not None
        }
        self.fit_objects = weakref.WeakSet(rollouts)
        self.calibration_fingerprints = set()
        self.fitted = True
        self.n_fit = len(rollouts)
        self.set_calibration(None, {}, None, [], set(), 0, None)

    def set_calibration(
        self,
        pooled: CalibrationResult | None,
        per_group: Mapping[str, CalibrationResult],
        raw: dict[str, list[NDArray[np.float64]]] | None,
        groups: Sequence[str | None],
        fingerprints: set[str],
        n: int,
        longest: int | None,
    ) -> None:
        """Replace the calibration part at once (everything about it is computed first)."""
        self.calibration = pooled
        self.group_calibration = dict(per_group)
        self.calibration_raw = raw
        self.calibration_groups = list(groups)
        self.calibration_fingerprints = fingerprints
        self.n_calibration = n
        self.longest_calibration = longest

    def known_fingerprints(self) -> set[str]:
        """Content hashes of every rollout the detector was fitted or calibrated on."""
        return self.fit_fingerprints | self.calibration_fingerprints

    def for_copy(self) -> FittedState:
        """The state a :meth:`~failguard.FailureDetector.with_params` copy starts from.

        The fit part is copied (the score objects are shared, so ``shares_scores`` is set) and
        so are the calibration fingerprints; the calibration itself is not (the copy's
        parameters differ: it is recalibrated from ``calibration_raw`` when there is any).
        """
        return FittedState(
            fitted=self.fitted,
            shares_scores=True,
            n_fit=self.n_fit,
            fit_fingerprints=set(self.fit_fingerprints),
            fit_keys=set(self.fit_keys),
            fit_objects=weakref.WeakSet(self.fit_objects),
            calibration_fingerprints=set(self.calibration_fingerprints),
        )


class StateView(Generic[T]):
    """A read-only attribute ``name_`` that shows ``fitted_state.name`` (descriptor).

    Parameters
    ----------
    doc : str
        The attribute's docstring.

    Examples
    --------
    >>> class Owner:
    ...     n_fit_ = StateView[int]("Number of fit rollouts.")
    ...     def __init__(self):
    ...         self.fitted_state = FittedState(n_fit=3)
    >>> Owner().n_fit_
    3
    >>> Owner().n_fit_ = 4
    Traceback (most recent call last):
    ...
    AttributeError: 'n_fit_' is fitted state: fit or calibrate change it, not assignment.
    """

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""
        self.field = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.field = name, name.rstrip("_")

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> StateView[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> T | StateView[T]:
        if obj is None:
            return self
        value: T = getattr(obj.fitted_state, self.field)  # type: ignore[attr-defined]
        return value

    def __set__(self, obj: object, value: Any) -> None:
        raise AttributeError(
            f"{self.name!r} is fitted state: fit or calibrate change it, not assignment."
        )
