"""Exceptions raised by failguard.

Every error that failguard raises on purpose derives from :class:`FailguardError`, so a
caller can catch them all at once. The message always names the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "CliError",
    "ConcurrentUseError",
    "ConfigError",
    "DependencyError",
    "DistributedError",
    "ExportError",
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


class ConfigError(FailguardError, ValueError):
    """A parameter (of a detector, a score, a wrapper or a function) has a wrong value.

    Raised when the object is built or the function called, before any work is done. Also a
    ``ValueError``, so code that caught that keeps working.

    Examples
    --------
    >>> from failguard import ConfigError, DiscreteActionEntropy
    >>> try:
    ...     DiscreteActionEntropy(source="ids")
    ... except ConfigError as err:
    ...     print(str(err).split(".")[0])
    The 'source' parameter of DiscreteActionEntropy must be 'logits' or 'samples'
    """


class ParameterError(ConfigError, TypeError):
    """A parameter has a wrong type or value: the :class:`ConfigError` that is also a
    ``TypeError``, so code that caught either keeps working. ``except ParameterError`` still
    catches every parameter error the detector raises."""


class ExportError(FailguardError, ValueError):
    """The detector cannot be exported (a score has no ONNX form, or it is not calibrated)."""


class DistributedError(FailguardError):
    """A distributed run could not give a trustworthy result (a lost or duplicated rollout)."""


class DependencyError(FailguardError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class CliError(FailguardError, ValueError):
    """A command-line input problem (a path, a missing label, a flag); the message says what
    to do."""
