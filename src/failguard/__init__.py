"""failguard: calibrated run-time failure prediction for generative robot policies and agents.

Convention used everywhere in failguard: **higher means more likely to fail** -- raw scores,
windowed scores, thresholds, ratios and the ONNX monitor's outputs alike.

The phases, in order: :meth:`FailureDetector.fit` (successful rollouts) ->
:meth:`FailureDetector.calibrate` (other successful rollouts) -> :meth:`FailureDetector.monitor`
/ :func:`evaluate` / :func:`failguard.exporters.export_onnx`.
"""

from ._version import __version__
from .calibration import plan
from .detector import FailureDetector
from .exceptions import (
    ArtifactError,
    CalibrationError,
    FailguardError,
    NotFittedError,
    RolloutError,
)
from .logs import Recorder, iter_rollouts, read_rollout, read_rollouts, write_rollout
from .metrics import EvaluationReport, alpha_sweep, evaluate
from .monitor import Monitor
from .scores import (
    ActionChunkEntropy,
    DiscreteActionEntropy,
    LogpZOScore,
    PCAKMeansScore,
    RNDActionScore,
    RNDScore,
    STACScore,
)
from .types import Rollout, Trace, Verdict

__all__ = [
    "ActionChunkEntropy",
    "ArtifactError",
    "CalibrationError",
    "DiscreteActionEntropy",
    "EvaluationReport",
    "FailguardError",
    "FailureDetector",
    "LogpZOScore",
    "Monitor",
    "NotFittedError",
    "PCAKMeansScore",
    "RNDActionScore",
    "RNDScore",
    "Recorder",
    "Rollout",
    "RolloutError",
    "STACScore",
    "Trace",
    "Verdict",
    "__version__",
    "alpha_sweep",
    "evaluate",
    "iter_rollouts",
    "plan",
    "read_rollout",
    "read_rollouts",
    "write_rollout",
]
