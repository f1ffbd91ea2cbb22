"""Monitor (and record) any policy or agent given as plain callables.

:class:`PolicyAdapter` is the glue between a policy's inference step and failguard:

- ``embed(obs)`` returns the policy's observation embedding, shape (d,);
- ``sample(obs, n)`` returns ``n`` action chunks, shape (n, H, D) (continuous policies), or
- ``logits(obs)`` returns logits over K discrete actions, shape (K,) (discrete agents).

Each :meth:`PolicyAdapter.step` is one policy inference: it scores the step with a calibrated
:class:`~failguard.FailureDetector` (``"monitor"``), appends it to a rollout log with
:class:`~failguard.Recorder` (``"record"``), or both. Recording successful deployments is how
the calibration set for the next detector is collected; see :meth:`PolicyAdapter.end_episode`.

The adapter never acts: it only looks at the observation the policy acted on. The policy's
own actions are whatever the caller's code does with it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..logs import Recorder
from ..types import Verdict

if TYPE_CHECKING:
    from ..detector import FailureDetector
    from ..monitor import Monitor

__all__ = ["AlarmHook", "MonitoringSession", "PolicyAdapter", "check_n_samples", "to_numpy"]

AlarmHook = Callable[[Verdict], Any]
"""Signature of ``on_alarm``: called with the alarming :class:`~failguard.Verdict`."""


def to_numpy(value: Any) -> NDArray[Any]:
    """Convert a numpy array, torch tensor (any device, with grad) or nested list to numpy.

    Examples
    --------
    >>> import torch
    >>> to_numpy(torch.ones(2, requires_grad=True)).tolist()
    [1.0, 1.0]
    """
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach().cpu().numpy()
    return np.asarray(value)


def check_n_samples(detector: FailureDetector | None, n_samples: int, where: str) -> None:
    """Raise early if ``detector`` was fitted on a different number B of action samples."""
    if detector is None:
        return
    for s in detector.scores:
        shape = (s.input_shapes_ or {}).get("action_samples")
        if shape and shape[0] != n_samples:
            raise ValueError(
                f"{where}: n_samples={n_samples}, but the detector's {s.name!r} score was fitted "
                f"on {shape[0]} action samples per step. Use n_samples={shape[0]}."
            )


class MonitoringSession:
    """The stateful part every integration shares: monitor, recorder, verdicts, alarm hook.

    It receives ready-made per-step arrays (see :meth:`process`); the wrappers around it
    (:class:`PolicyAdapter`, :class:`~failguard.integrations.LeRobotPolicyWrapper`,
    :class:`~failguard.integrations.FailguardEnv`) compute those arrays from a policy.

    Parameters
    ----------
    detector : FailureDetector, optional
        A calibrated detector. Given: every step is scored (``"monitor"`` mode).
    record_dir : str or path-like, optional
        Given: every step is appended to a rollout log in this directory (``"record"`` mode),
        written by :meth:`end_episode`. Both may be given (monitor while collecting logs).
    on_alarm : callable, optional
        Called with the :class:`~failguard.Verdict` of every step that alarms.
    group : str, optional
        Default group (Mondrian thresholds and the ``group`` of recorded rollouts).

    Raises
    ------
    ValueError
        If neither ``detector`` nor ``record_dir`` is given.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> s = MonitoringSession(record_dir=tempfile.mkdtemp())
    >>> s.reset()
    >>> s.process(embedding=np.zeros(3)) is None   # record-only: no verdict
    True
    >>> s.end_episode(success=True).name
    'rollout_000000.safetensors'
    """

    def __init__(
        self,
        detector: FailureDetector | None = None,
        record_dir: str | os.PathLike[str] | None = None,
        on_alarm: AlarmHook | None = None,
        group: str | None = None,
    ) -> None:
        if detector is None and record_dir is None:
            raise ValueError(
                "Give a calibrated 'detector' (monitor mode), a 'record_dir' (record mode), "
                "or both."
            )
        self.detector = detector
        self.monitor: Monitor | None = detector.monitor(group=group) if detector else None
        self.recorder: Recorder | None = Recorder(record_dir) if record_dir is not None else None
        self.on_alarm = on_alarm
        self.group = group
        self.last_verdict: Verdict | None = None
        self.verdicts: list[Verdict] = []
        self.n_steps = 0

    @property
    def mode(self) -> str:
        """``"monitor"``, ``"record"`` or ``"monitor+record"``."""
        parts = [m for m, on in (("monitor", self.monitor), ("record", self.recorder)) if on]
        return "+".join(parts)

    @property
    def alarmed(self) -> bool:
        """Whether any step of the current episode alarmed."""
        return any(v.alarm for v in self.verdicts)

    @property
    def first_alarm(self) -> Verdict | None:
        """The first alarming verdict of the current episode, or None."""
        return next((v for v in self.verdicts if v.alarm), None)

    def reset(self, group: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Start a new episode: reset the monitor and start a new recorded rollout.

        An episode being recorded and not ended with :meth:`end_episode` is discarded (with
        a warning), since its outcome is unknown.
        """
        g = group if group is not None else self.group
        if self.monitor is not None:
            self.monitor.reset(g)
        if self.recorder is not None:
            if self.recorder.recording and self.n_steps:
                warnings.warn(
                    "Discarding an unfinished recorded episode: call end_episode(success=...) "
                    "before reset() to keep it.",
                    UserWarning,
                    stacklevel=3,
                )
            self.recorder.start(group=g, metadata=metadata)
        self.last_verdict = None
        self.verdicts = []
        self.n_steps = 0

    def process(
        self,
        embedding: ArrayLike,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
    ) -> Verdict | None:
        """Score and/or record one policy step; returns the verdict (None in record mode).

        The monitor runs first: a step it rejects is neither recorded nor counted, so the
        recording, the step count and the verdicts stay aligned.
        """
        verdict = None
        if self.monitor is not None:
            verdict = self.monitor.step(
                embedding=embedding,
                action_samples=action_samples,
                action_logits=action_logits,
                action_ids=action_ids,
            )
        if self.recorder is not None:
            if not self.recorder.recording:
                self.recorder.start(group=self.group)
            self.recorder.step(
                embedding=embedding,
                action_samples=action_samples,
                action_logits=action_logits,
                action_ids=action_ids,
            )
        self.n_steps += 1
        if verdict is None:
            return None
        self.last_verdict = verdict
        self.verdicts.append(verdict)
        if verdict.alarm and self.on_alarm is not None:
            self.on_alarm(verdict)
        return verdict

    def end_episode(
        self, success: bool | None, metadata: Mapping[str, Any] | None = None
    ) -> Path | None:
        """Finish the episode with its outcome; writes the recorded rollout (record mode).

        Returns
        -------
        pathlib.Path or None
            The rollout file written, or None when not recording (or nothing was recorded).
        """
        if self.recorder is None or not self.recorder.recording or self.n_steps == 0:
            return None
        meta = dict(metadata or {})
        if self.monitor is not None:
            first = self.first_alarm
            meta.setdefault("failguard_alarm_step", None if first is None else first.step)
        return self.recorder.end(success=success, metadata=meta)


class PolicyAdapter(MonitoringSession):
    """Monitor any policy or agent given as callables.

    Parameters
    ----------
    embed : callable ``obs -> array (d,)``
        The policy's observation embedding (what its action head is conditioned on).
    sample : callable ``(obs, n) -> array (n, H, D)``, optional
        Draws ``n`` action chunks for ``obs`` (continuous, generative policies; read by
        :class:`~failguard.ActionChunkEntropy`).
    logits : callable ``obs -> array (K,)``, optional
        Logits over K discrete actions (discrete agents; read by
        :class:`~failguard.DiscreteActionEntropy`).
    n_samples : int, default=32
        B, the number of chunks ``sample`` draws per step (must match the detector's fit).
    detector, record_dir, on_alarm, group
        See :class:`MonitoringSession`.
    n_action_ids : int, default=0
        If > 0, also sample that many discrete action ids per step from ``softmax(logits)``
        (for ``DiscreteActionEntropy(source="ids")``), with a generator seeded by ``seed``.
    seed : int, default=0

    Examples
    --------
    >>> import numpy as np
    >>> from failguard import FailureDetector, RNDScore, ActionChunkEntropy
    >>> from failguard.synthetic import make_rollouts
    >>> kw = dict(length=30, embedding_dim=8, n_samples=8, horizon=4, action_dim=2)
    >>> det = FailureDetector(scores=[RNDScore(max_epochs=3), ActionChunkEntropy()], alpha=0.1)
    >>> det = det.fit(make_rollouts(8, seed=0, **kw), progress=False)
    >>> det = det.calibrate(make_rollouts(30, seed=1, **kw))
    >>> rng = np.random.default_rng(0)
    >>> adapter = PolicyAdapter(
    ...     embed=lambda obs: obs,
    ...     sample=lambda obs, n: rng.normal(size=(n, 4, 2)) * 0.01,
    ...     n_samples=8, detector=det)
    >>> adapter.reset()
    >>> verdict = adapter.step(np.zeros(8, dtype=np.float32))
    >>> verdict.step
    0
    """

    def __init__(
        self,
        embed: Callable[[Any], ArrayLike],
        sample: Callable[[Any, int], ArrayLike] | None = None,
        logits: Callable[[Any], ArrayLike] | None = None,
        n_samples: int = 32,
        detector: FailureDetector | None = None,
        record_dir: str | os.PathLike[str] | None = None,
        on_alarm: AlarmHook | None = None,
        group: str | None = None,
        n_action_ids: int = 0,
        seed: int = 0,
    ) -> None:
        if not callable(embed):
            raise TypeError("'embed' must be a callable obs -> embedding of shape (d,).")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"'n_samples' must be an int >= 1. Got {n_samples!r} instead.")
        if n_action_ids and logits is None:
            raise ValueError("'n_action_ids' > 0 samples ids from 'logits'; give 'logits' too.")
        super().__init__(detector=detector, record_dir=record_dir, on_alarm=on_alarm, group=group)
        self.embed = embed
        self.sample = sample
        self.logits = logits
        self.n_samples = n_samples
        self.n_action_ids = int(n_action_ids)
        self._rng = np.random.default_rng(seed)
        if sample is not None:
            check_n_samples(detector, n_samples, "PolicyAdapter")
        if detector is not None:
            given = {
                "action_samples": sample is not None,
                "action_logits": logits is not None,
                "action_ids": n_action_ids > 0,
            }
            missing = [f for f in detector.requires if f in given and not given[f]]
            if missing:
                how = {
                    "action_samples": "'sample'",
                    "action_logits": "'logits'",
                    "action_ids": "'logits' and 'n_action_ids'",
                }
                raise ValueError(
                    f"The detector reads {missing}; pass "
                    + " and ".join(how[m] for m in missing)
                    + " to PolicyAdapter."
                )

    def arrays(self, obs: Any) -> dict[str, NDArray[Any]]:
        """The per-step arrays for ``obs`` (embedding and, if configured, samples/logits)."""
        out: dict[str, NDArray[Any]] = {
            "embedding": to_numpy(self.embed(obs)).reshape(-1).astype(np.float32)
        }
        if self.sample is not None:
            chunks = to_numpy(self.sample(obs, self.n_samples)).astype(np.float32)
            if chunks.ndim == 2:  # (n, D): single-step actions are chunks of length 1
                chunks = chunks[:, None, :]
            if chunks.ndim != 3 or chunks.shape[0] != self.n_samples:
                raise ValueError(
                    f"sample(obs, {self.n_samples}) must return shape ({self.n_samples}, H, D); "
                    f"got {chunks.shape}."
                )
            out["action_samples"] = chunks
        if self.logits is not None:
            lg = to_numpy(self.logits(obs)).reshape(-1).astype(np.float32)
            out["action_logits"] = lg
            if self.n_action_ids:
                p = np.exp(lg - lg.max())
                p /= p.sum()
                out["action_ids"] = self._rng.choice(lg.shape[0], size=self.n_action_ids, p=p)
        return out

    def step(self, obs: Any) -> Verdict | None:
        """Process the observation the policy is acting on at this inference step.

        Returns
        -------
        Verdict or None
            The monitor's verdict; None in record-only mode.
        """
        return self.process(**self.arrays(obs))
