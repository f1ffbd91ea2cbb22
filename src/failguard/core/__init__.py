"""The monitor step, written once: :class:`MonitorSpec` and the numpy step kernel.

numpy only (no torch): the edge runtime reads the same spec and calls the same kernel.

- :mod:`failguard.core.spec`: :class:`MonitorSpec`, compiled from a calibrated detector,
  serialised to JSON and into the ONNX metadata;
- :mod:`failguard.core.kernel`: init state, step, scan (batch scoring), fusion, the alarm
  rule, ``fired``, the Mondrian row, the threshold lookup and the episode statistic.
"""

from .kernel import (
    MonitorState,
    StepResult,
    episode_statistics,
    fired,
    fuse,
    init_state,
    scan,
    step,
)
from .spec import MonitorSpec, ScoreSpec, compile_spec

__all__ = [
    "MonitorSpec",
    "MonitorState",
    "ScoreSpec",
    "StepResult",
    "compile_spec",
    "episode_statistics",
    "fired",
    "fuse",
    "init_state",
    "scan",
    "step",
]
