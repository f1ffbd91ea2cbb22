"""Integrations: put a failguard monitor around a policy or an environment.

- :class:`PolicyAdapter`: any policy or agent given as callables (``embed``, ``sample`` or
  ``logits``).
- :class:`LeRobotPolicyWrapper`: LeRobot-style policies (``reset`` / ``select_action`` /
  ``predict_action_chunk``), monitored once per new action chunk.
- :class:`FailguardEnv`: a gymnasium wrapper that puts the verdict into ``info["failguard"]``
  and can end the episode on alarm (needs ``pip install failguard[gym]``).

Each can also record rollouts (``record_dir=...``) to collect the successful logs that
calibration needs. Modules are imported on first use, so importing this package pulls in
neither gymnasium nor the policy wrappers' dependencies.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generic import MonitoringSession, PolicyAdapter
    from .gym import FailguardEnv
    from .lerobot import LeRobotPolicyWrapper

__all__ = [
    "FailguardEnv",
    "LeRobotPolicyWrapper",
    "MonitoringSession",
    "PolicyAdapter",
]

_WHERE = {
    "FailguardEnv": ".gym",
    "LeRobotPolicyWrapper": ".lerobot",
    "MonitoringSession": ".generic",
    "PolicyAdapter": ".generic",
}


def __getattr__(name: str) -> Any:
    if name == "ToyChunkPolicy":  # deprecated here: it is a test double, not an integration
        import warnings

        warnings.warn(
            "failguard.integrations.ToyChunkPolicy moved to failguard.testing; import it "
            "from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return import_module("..testing", __name__).ToyChunkPolicy
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
