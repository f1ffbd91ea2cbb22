"""The detector's parameters: one frozen, validated object, kept apart from fitted state.

:class:`DetectorConfig` holds what a user passes to :class:`~failguard.FailureDetector` (every
parameter but the scores), stored as given, in the manner of scikit-learn and LeRobot configs.
It is checked when built and cannot be changed afterwards; a detector with other parameters is
made with :meth:`FailureDetector.with_params <failguard.FailureDetector.with_params>`, which
shares the fitted scores. What fitting and calibration learn lives apart, in one
:class:`~failguard.fitted.FittedState` (``det.fitted_state``).

:func:`param_views` gives the detector a read-only attribute for every field
(``det.alpha`` is ``det.config.alpha``), generated from the fields, so a new parameter needs
no hand-written property.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, TypeVar

from .calibration.conformal import THRESHOLD_STYLES
from .core.spec import MAX_WINDOW
from .exceptions import ParameterError
from .windows import WINDOW_KINDS

__all__ = ["DetectorConfig", "param_views"]

_DEFAULT_WINDOW = 10
C = TypeVar("C", bound=type)


def _param_error(name: str, expected: str, value: Any) -> ParameterError:
    return ParameterError(
        f"The '{name}' parameter of FailureDetector must be {expected}. Got {value!r} instead."
    )


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


@dataclass(frozen=True)
class DetectorConfig:
    """Every parameter of a :class:`~failguard.FailureDetector` except its scores.

    The meaning of each field is documented on :class:`~failguard.FailureDetector`. Values
    are stored as given (numbers as Python ``int``/``float``, a ``windows`` dict read-only);
    :meth:`windows_for` resolves the windows for a list of score names.

    Raises
    ------
    ParameterError
        When a value has the wrong type or range (a :class:`~failguard.ConfigError`).

    Examples
    --------
    >>> cfg = DetectorConfig(windows={"rnd": 5}, alpha=0.1)
    >>> cfg.windows_for(["rnd", "ace"])
    {'rnd': 5, 'ace': 10}
    >>> cfg.alpha = 0.2
    Traceback (most recent call last):
    ...
    dataclasses.FrozenInstanceError: cannot assign to field 'alpha'
    """

    windows: int | Mapping[str, int] = _DEFAULT_WINDOW
    window_kind: str = "sum"
    combine: str = "and"
    threshold: str = "constant"
    alpha: float = 0.05
    guarantee: str = "marginal"
    delta: float = 0.1
    calibration: str = "auto"
    split: float = 0.5
    trim: float = 0.0
    min_support: int = 1
    mondrian: bool = False
    mode: str = "corrected"
    random_state: int = 0

    def __post_init__(self) -> None:
        windows = self.windows
        if isinstance(windows, Mapping):
            for n, w in windows.items():
                self._check_window(str(n), w)
            windows = MappingProxyType({str(n): int(w) for n, w in windows.items()})
        else:
            self._check_window(None, windows)
            windows = int(windows)
        object.__setattr__(self, "windows", windows)
        checks = (
            ("window_kind", self.window_kind, WINDOW_KINDS),
            ("threshold", self.threshold, THRESHOLD_STYLES),
            ("guarantee", self.guarantee, ("marginal", "pac")),
            ("calibration", self.calibration, ("auto", "per_indicator", "joint")),
            ("mode", self.mode, ("corrected", "reference")),
        )
        for label, choice, allowed in checks:
            if choice not in allowed:
                raise _param_error(label, f"one of {allowed}", choice)
        if not isinstance(self.combine, str):
            raise _param_error("combine", "'and', 'or' or 'k-of-n'", self.combine)
        for label in ("alpha", "delta", "split"):
            number = getattr(self, label)
            if not _is_real(number) or not 0 < number < 1:
                raise _param_error(label, "a float in the range (0, 1)", number)
            object.__setattr__(self, label, float(number))
        if not _is_int(self.min_support) or self.min_support < 1:
            raise _param_error("min_support", "an int >= 1", self.min_support)
        if not _is_real(self.trim) or not 0 <= self.trim < 1:
            raise _param_error("trim", "a float in the range [0, 1)", self.trim)
        if not _is_int(self.random_state):
            raise _param_error("random_state", "an int", self.random_state)
        object.__setattr__(self, "trim", float(self.trim))
        object.__setattr__(self, "min_support", int(self.min_support))
        object.__setattr__(self, "random_state", int(self.random_state))
        object.__setattr__(self, "mondrian", bool(self.mondrian))
        if self.mode == "reference" and self.guarantee == "pac":
            raise ParameterError(
                "mode='reference' reproduces the reference code, which has no PAC "
                "calibration; use guarantee='marginal'."
            )

    @staticmethod
    def _check_window(name: str | None, w: Any) -> None:
        if not _is_int(w) or not 1 <= int(w) <= MAX_WINDOW:
            where = "" if name is None else f" (for {name!r})"
            raise _param_error("windows", f"an int in [1, {MAX_WINDOW}]{where}", w)

    def windows_for(self, names: Sequence[str]) -> dict[str, int]:
        """The window of each score, by name (names missing from a dict get 10).

        Raises
        ------
        ParameterError
            If a ``windows`` dict names a score that is not among ``names``, or ``combine``
            is not a rule for ``len(names)`` scores.
        """
        n_legs = len(names)
        votes = tuple(f"{k}-of-{n_legs}" for k in range(1, n_legs + 1))
        if self.combine not in ("and", "or", *votes):
            raise _param_error("combine", f"one of {('and', 'or', *votes)}", self.combine)
        if isinstance(self.windows, Mapping):
            unknown = set(self.windows) - set(names)
            if unknown:
                raise _param_error(
                    "windows", f"a dict keyed by score names {list(names)}", dict(self.windows)
                )
            return {n: self.windows.get(n, _DEFAULT_WINDOW) for n in names}
        return dict.fromkeys(names, int(self.windows))

    def replace(self, **changes: Any) -> DetectorConfig:
        """A new config with some fields changed (validated again)."""
        unknown = set(changes) - set(self.as_dict())
        if unknown:
            raise ParameterError(
                f"unknown parameter(s) {sorted(unknown)}; known: {sorted(self.as_dict())}."
            )
        return DetectorConfig(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """The fields as given (``windows`` as an int or a plain dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.windows, Mapping):
            out["windows"] = dict(self.windows)
        return out


def _param_view(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(self.config, name)

    def refuse(self: Any, value: Any) -> None:
        raise AttributeError(
            f"'{name}' is a parameter, read from the frozen config: make a detector with "
            f"another value with with_params({name}=...)."
        )

    return property(get, refuse, doc=f"The ``{name}`` parameter (``config.{name}``; read-only).")


def param_views(cls: C) -> C:
    """Class decorator: a read-only property per :class:`DetectorConfig` field.

    The property ``name`` returns ``self.config.name``; assigning to it raises
    ``AttributeError`` (parameters change through ``with_params``). Fields the class defines
    itself (such as the detector's resolved ``windows``) are left alone. Declare each field's
    type in the class body for type checkers.

    Examples
    --------
    >>> @param_views
    ... class Holder:
    ...     alpha: float
    ...     def __init__(self):
    ...         self.config = DetectorConfig(alpha=0.2)
    >>> Holder().alpha
    0.2
    >>> Holder().alpha = 0.3
    Traceback (most recent call last):
    ...
    AttributeError: 'alpha' is a parameter, read from the frozen config: make a detector ...
    """
    for f in fields(DetectorConfig):
        if f.name not in vars(cls):
            setattr(cls, f.name, _param_view(f.name))
    return cls
