"""failguard: calibrated run-time failure prediction for generative robot policies and agents.

Convention used everywhere in failguard: **higher means more likely to fail** -- raw scores,
windowed scores, thresholds, ratios and the ONNX monitor's outputs alike.
"""

from ._version import __version__
from .exceptions import ArtifactError, CalibrationError, FailguardError, NotFittedError, RolloutError
from .logs import Recorder, read_rollout, read_rollouts, write_rollout
from .types import Rollout, Verdict

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "FailguardError",
    "NotFittedError",
    "Recorder",
    "Rollout",
    "RolloutError",
    "Verdict",
    "__version__",
    "read_rollout",
    "read_rollouts",
    "write_rollout",
]
