"""failguard: calibrated run-time failure prediction for generative robot policies and agents.

Convention used everywhere in failguard: **higher means more likely to fail** -- raw scores,
windowed scores, thresholds, ratios and the ONNX monitor's outputs alike.

The phases, in order: :meth:`FailureDetector.fit` (successful rollouts) ->
:meth:`FailureDetector.calibrate` (other successful rollouts) -> :meth:`FailureDetector.monitor`
/ :func:`evaluate` / :func:`failguard.exporters.export_onnx`.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .exceptions import (
    ArtifactError,
    CalibrationError,
    ConcurrentUseError,
    ConfigError,
    ExportError,
    FailguardError,
    NonFiniteScoreError,
    NotFittedError,
    ParameterError,
    RolloutError,
)
from .types import Rollout, Trace, Verdict

# Names whose modules import torch are loaded on first use (PEP 562), so that the torch-free
# edge runtime (``import failguard.runtime``) never pulls torch in.
_LAZY: dict[str, str] = {
    "plan": ".calibration",
    "select": ".calibration.selection",
    "SelectionReport": ".calibration.selection",
    "candidate_grid": ".calibration.selection",
    "FailureDetector": ".detector",
    "Recorder": ".logs",
    "iter_rollouts": ".logs",
    "read_rollout": ".logs",
    "read_rollouts": ".logs",
    "write_rollout": ".logs",
    "EvaluationReport": ".metrics",
    "alpha_sweep": ".metrics",
    "evaluate": ".metrics",
    "Monitor": ".monitor",
    "ActionChunkEntropy": ".scores",
    "DiscreteActionEntropy": ".scores",
    "LogpZOScore": ".scores",
    "PCAKMeansScore": ".scores",
    "RNDActionScore": ".scores",
    "RNDScore": ".scores",
    "STACScore": ".scores",
    "ChunkConsistency": ".scores",
    "Deviation": ".scores",
    "Movement": ".scores",
    "ProgressScore": ".scores",
    "SlowingDown": ".scores",
}

if TYPE_CHECKING:
    from .calibration import plan
    from .calibration.selection import SelectionReport, candidate_grid, select
    from .detector import FailureDetector
    from .logs import Recorder, iter_rollouts, read_rollout, read_rollouts, write_rollout
    from .metrics import EvaluationReport, alpha_sweep, evaluate
    from .monitor import Monitor
    from .scores import (
        ActionChunkEntropy,
        ChunkConsistency,
        Deviation,
        DiscreteActionEntropy,
        LogpZOScore,
        Movement,
        PCAKMeansScore,
        ProgressScore,
        RNDActionScore,
        RNDScore,
        SlowingDown,
        STACScore,
    )


#: Subpackages and modules reachable as attributes (``failguard.scores``) without an import.
_SUBMODULES = frozenset(
    {
        "calibration", "cli", "detector", "exporters", "health", "integrations", "logs",
        "metrics", "monitor", "plots", "report", "runtime", "scores", "streaming", "synthetic",
        "windows", "distributed",
    }
)  # fmt: skip


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'failguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ActionChunkEntropy",
    "ArtifactError",
    "CalibrationError",
    "ChunkConsistency",
    "ConcurrentUseError",
    "ConfigError",
    "Deviation",
    "DiscreteActionEntropy",
    "EvaluationReport",
    "ExportError",
    "FailguardError",
    "FailureDetector",
    "LogpZOScore",
    "Monitor",
    "Movement",
    "NonFiniteScoreError",
    "NotFittedError",
    "PCAKMeansScore",
    "ParameterError",
    "ProgressScore",
    "RNDActionScore",
    "RNDScore",
    "Recorder",
    "Rollout",
    "RolloutError",
    "STACScore",
    "SelectionReport",
    "SlowingDown",
    "Trace",
    "Verdict",
    "__version__",
    "alpha_sweep",
    "candidate_grid",
    "evaluate",
    "iter_rollouts",
    "plan",
    "read_rollout",
    "read_rollouts",
    "select",
    "write_rollout",
]
