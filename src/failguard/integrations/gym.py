"""A gymnasium wrapper that monitors the policy acting in an environment.

Needs gymnasium: ``pip install failguard[gym]`` (or ``pip install gymnasium``).

:class:`FailguardEnv` scores each observation the policy is about to act on with a
:class:`~failguard.integrations.PolicyAdapter` (which knows how to embed the observation and
sample the policy), puts the :class:`~failguard.Verdict` into ``info["failguard"]``, resets
the monitor with the environment and can end the episode when the monitor alarms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, SupportsFloat

from ..exceptions import DependencyError, ParameterError

try:
    import gymnasium as gym
except ImportError as err:  # pragma: no cover - exercised only without gymnasium
    raise DependencyError(
        "failguard.integrations.gym needs gymnasium. Install it with "
        "`pip install failguard[gym]` (or `pip install gymnasium`)."
    ) from err

from ..types import Verdict
from .generic import PolicyAdapter

__all__ = ["FailguardEnv"]

SuccessFn = Callable[[dict[str, Any], bool, bool], "bool | None"]


class FailguardEnv(gym.Wrapper):
    """Put failguard's verdict into ``info["failguard"]``; optionally stop on alarm.

    The verdict in the ``info`` returned by :meth:`reset` and :meth:`step` is about the
    observation returned with it, i.e. the one the policy acts on next. The monitor steps
    every ``every`` environment steps (set it to the policy's number of executed actions per
    chunk so that one monitor step is one policy inference); in between, ``info["failguard"]``
    repeats the last verdict.

    Parameters
    ----------
    env : gymnasium.Env
    adapter : PolicyAdapter
        Embeds observations and samples the policy; holds the monitor (and the recorder).
    terminate_on_alarm : bool, default=False
        End the episode at the first alarm.
    alarm_signal : {"truncated", "terminated"}, default="truncated"
        How an alarm ends the episode. ``"truncated"`` (default): the episode is cut short
        by an outside monitor, not by a terminal state, so RL code keeps bootstrapping.
    every : int, default=1
        Environment steps per monitor step.
    success_fn : callable ``(info, terminated, truncated) -> bool | None``, optional
        When the episode ends, decides its success; the adapter's recorded rollout is then
        written with :meth:`PolicyAdapter.end_episode`. Without it, call
        ``env.adapter.end_episode(success=...)`` yourself.

    The environment's transition is never lost: a failure of the monitor, the recorder or
    ``success_fn`` is reported by the adapter (an ``"error"`` verdict, which alarms; see
    :class:`~failguard.integrations.MonitoringSession`) and the transition is returned. With
    the adapter's ``strict=True`` the failure is raised at the next :meth:`step` or
    :meth:`reset`, before the environment moves again.

    Examples
    --------
    >>> import gymnasium as gym, numpy as np, tempfile
    >>> from failguard.integrations import PolicyAdapter
    >>> adapter = PolicyAdapter(embed=lambda obs: obs, record_dir=tempfile.mkdtemp())
    >>> env = FailguardEnv(gym.make("CartPole-v1"), adapter,
    ...                    success_fn=lambda info, term, trunc: trunc)
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(0)
    >>> info["failguard"] is None   # record-only adapter: no verdict
    True
    """

    def __init__(
        self,
        env: gym.Env,
        adapter: PolicyAdapter,
        terminate_on_alarm: bool = False,
        alarm_signal: str = "truncated",
        every: int = 1,
        success_fn: SuccessFn | None = None,
    ) -> None:
        super().__init__(env)
        if alarm_signal not in ("truncated", "terminated"):
            raise ParameterError(
                "The 'alarm_signal' parameter must be one of ('truncated', 'terminated'). "
                f"Got {alarm_signal!r} instead."
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ParameterError(
                f"The 'every' parameter must be an int >= 1. Got {every!r} instead."
            )
        if terminate_on_alarm and adapter.monitor is None:
            raise ParameterError("terminate_on_alarm=True needs an adapter with a detector.")
        self.adapter = adapter
        self.terminate_on_alarm = terminate_on_alarm
        self.alarm_signal = alarm_signal
        self.every = every
        self.success_fn = success_fn
        self._env_steps = 0

    @property
    def last_verdict(self) -> Verdict | None:
        """The latest verdict (None before the first monitored step, or in record mode)."""
        return self.adapter.last_verdict

    def _watch(self, obs: Any) -> Verdict | None:
        if self._env_steps % self.every == 0:
            self.adapter.observe(obs)  # never raises; strict failures wait for the next call
        return self.adapter.last_verdict

    def _end_episode(self, info: dict[str, Any], terminated: bool, truncated: bool) -> None:
        if self.success_fn is None:
            return
        stopped = bool(info.get("failguard_stopped"))
        try:
            success = self.success_fn(info, terminated, truncated)
            self.adapter.end_episode(success=success, metadata={"stopped_on_alarm": stopped})
        except Exception as err:
            self.adapter.report_error(err, "FailguardEnv: success_fn / end_episode")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the environment and the monitor; ``info["failguard"]`` has the first verdict."""
        self.adapter.raise_pending()  # strict: a failure of the last step, before resetting
        obs, info = self.env.reset(seed=seed, options=options)
        group = (options or {}).get("failguard_group")
        try:
            self.adapter.reset(group=group, metadata={"seed": seed} if seed is not None else None)
        except Exception as err:
            self.adapter.report_error(err, "FailguardEnv.reset")
        self._env_steps = 0
        info = dict(info)
        info["failguard"] = self._watch(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the environment, then score the new observation.

        ``info["failguard"]`` holds the verdict (or None), ``info["failguard_stopped"]``
        is True when this step's alarm ended the episode.
        """
        self.adapter.raise_pending()  # strict: a failure of the last step, before stepping
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._env_steps += 1
        info = dict(info)
        done = terminated or truncated
        verdict = self._watch(obs) if not done else self.adapter.last_verdict
        stopped = False
        if (
            self.terminate_on_alarm
            and not done
            and verdict is not None
            and verdict.alarm
            and self._env_steps % self.every == 0
        ):
            stopped = True
            if self.alarm_signal == "terminated":
                terminated = True
            else:
                truncated = True
        info["failguard"] = verdict
        info["failguard_stopped"] = stopped
        if terminated or truncated:
            self._end_episode(info, bool(terminated), bool(truncated))
        return obs, reward, terminated, truncated, info
