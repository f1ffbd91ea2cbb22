"""Exceptions raised by failguard.

Every error that failguard raises on purpose derives from :class:`FailguardError`, so a
caller can catch them all at once. The message always names the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "ConcurrentUseError",
    "FailguardError",
    "NonFiniteScoreError",
    "NotFittedError",
    "ParameterError",
    "RolloutError",
]


class FailguardError(Exception):
    """Base class of every error that failguard raises on purpose."""


class NotFittedError(FailguardError, RuntimeError):
    """A method was called before the phase it depends on (fit, then calibrate).

    Examples
    --------
    >>> from failguard import FailureDetector, NotFittedError
    >>> try:
    ...     FailureDetector().calibrate([])
    ... except NotFittedError as err:
    ...     print(str(err).split(".")[0])
    Incorrect method order: this FailureDetector is not fitted yet
    """


class CalibrationError(FailguardError, ValueError):
    """The calibration set cannot give the requested guarantee.

    Raised for too few successful rollouts for ``alpha``, for failed rollouts in a
    calibration set, and for calibration data that does not match the fitted scores.
    """


class RolloutError(FailguardError, ValueError):
    """A rollout (or a single monitor step) has a wrong shape, dtype or non-finite value."""


class ArtifactError(FailguardError, OSError):
    """A saved detector, rollout log or ONNX monitor is missing, corrupt or incompatible."""


class NonFiniteScoreError(RolloutError):
    """A step's inputs were finite, but a score computed from them was not (NaN or inf).

    An extreme but finite input (an embedding of 1e20, say) can overflow a network. Such a
    step is refused like a NaN input: the monitor's state is left as it was. Pass
    ``nonfinite="alarm"`` to the monitor to count such a step as an alarm instead.
    """


class ConcurrentUseError(FailguardError, RuntimeError):
    """One monitor was used by two threads at once. Use one monitor per thread."""


class ParameterError(FailguardError, ValueError, TypeError):
    """A parameter has a wrong type or value (a ``ValueError`` and a ``TypeError`` too, so
    code that caught either keeps working)."""
