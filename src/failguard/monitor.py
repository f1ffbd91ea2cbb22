"""Monitor: the streaming, one-step-at-a-time face of a calibrated FailureDetector.

It runs the detector's :class:`~failguard.core.MonitorSpec` through the step kernel
(:func:`failguard.core.kernel.step`), the very kernel that :meth:`FailureDetector.score`
scans over a whole rollout, calling the same score functions one step at a time and keeping
O(window) state. Replaying a rollout through :meth:`Monitor.step` reproduces the batch
:class:`~failguard.types.Trace`: identical windows, thresholds and alarms given the same raw
scores; raw network scores agree to float32 rounding (a matrix product of one row may round
differently from the same row inside a larger batch).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .core import kernel
from .core.spec import MonitorSpec
from .exceptions import (
    ConcurrentUseError,
    NonFiniteScoreError,
    NotFittedError,
    ParameterError,
    RolloutError,
)
from .types import _FIELDS, Verdict, as_step_array

__all__ = ["Monitor"]


class _Calibrated(Protocol):
    """What a Monitor reads from a calibrated detector (no import of the detector module)."""

    scores: Any
    calibration_: Any

    def spec(self) -> MonitorSpec: ...


class Monitor:
    """Watch one rollout as it happens; :meth:`step` after each policy inference.

    Parameters
    ----------
    detector : FailureDetector
        A calibrated detector (its scores and thresholds are shared, not copied).
    group : str, optional
        Group for Mondrian thresholds.
    nonfinite : {"raise", "alarm"}, default="raise"
        What a step whose score is NaN or inf does (finite but extreme inputs can overflow a
        network). ``"raise"``: refuse it with :class:`~failguard.NonFiniteScoreError`, like a
        NaN input, leaving the state unchanged. ``"alarm"`` (fail safe): accept it as an
        alarm with ``status="nonfinite"``; the score enters its window as +inf (so that
        indicator stays above its threshold while the step is in its window; NaN never enters
        a window).

    Notes
    -----
    A monitor holds the state of one rollout and is not thread-safe: use one monitor per
    thread (or per robot). Two threads calling :meth:`step` on one monitor at the same time
    get :class:`~failguard.ConcurrentUseError` rather than a silently corrupted state.

    Examples
    --------
    >>> from failguard import FailureDetector
    >>> from failguard.synthetic import make_rollouts
    >>> det = FailureDetector(alpha=0.1).fit(make_rollouts(12, seed=0), progress=False)
    >>> det = det.calibrate(make_rollouts(40, seed=1))
    >>> mon = det.monitor()
    >>> r = make_rollouts(1, kind="failure", seed=5)[0]
    >>> verdicts = [mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
    ...             for t in range(len(r))]
    >>> any(v.alarm for v in verdicts)
    True
    """

    def __init__(
        self, detector: _Calibrated, group: str | None = None, nonfinite: str = "raise"
    ) -> None:
        detector.spec()  # raises NotFittedError unless calibrated
        if nonfinite not in ("raise", "alarm"):
            raise ParameterError(
                "The 'nonfinite' parameter of Monitor must be one of ('raise', 'alarm'). "
                f"Got {nonfinite!r} instead."
            )
        self.detector = detector
        self.nonfinite = nonfinite
        self._lock = threading.Lock()
        self.reset(group)

    def reset(self, group: str | None = None) -> None:
        """Start a new rollout (optionally in another Mondrian group)."""
        if not self._lock.acquire(blocking=False):
            raise ConcurrentUseError(
                "Monitor.reset: another thread is using this monitor; use one monitor per thread."
            )
        try:
            self._reset(group)
        finally:
            self._lock.release()

    def _reset(self, group: str | None) -> None:
        det = self.detector
        self.group = group
        self._calibration = det.calibration_
        self.spec = det.spec().with_nonfinite(self.nonfinite)
        self._scores = list(det.scores)
        self._state = kernel.init_state(
            self.spec, [kernel.group_row(self.spec.groups, self.spec.mondrian, group)]
        )
        self._history: dict[str, deque[dict[str, NDArray[Any]]]] = {
            s.name: deque(maxlen=s.context + 1) for s in self._scores
        }
        self.last_verdict: Verdict | None = None

    @property
    def t(self) -> int:
        """Index of the next step."""
        return int(self._state.t[0])

    def _validate(self, given: dict[str, ArrayLike | None]) -> dict[str, NDArray[Any]]:
        rows: dict[str, NDArray[Any]] = {}
        shapes = self.spec.input_shapes
        for f in self.spec.requires:
            value = given.get(f)
            if value is None:
                arg = {"embeddings": "embedding", "states": "state"}.get(f, f)
                raise RolloutError(
                    f"Monitor.step: this detector needs '{arg}', which was not given."
                )
            ndim, kind, _ = _FIELDS[f]
            rows[f] = as_step_array(f, value, ndim - 1, kind, "Monitor.step")
            if tuple(rows[f].shape) != shapes[f]:
                raise RolloutError(
                    f"Monitor.step: '{f}' has shape {tuple(rows[f].shape)}, but the "
                    f"detector was fitted on {shapes[f]}."
                )
        return rows

    def step(
        self,
        embedding: ArrayLike | None = None,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
        state: ArrayLike | None = None,
    ) -> Verdict:
        """Score one policy step and say whether to alarm.

        Parameters
        ----------
        embedding : array_like of shape (d,)
        action_samples : array_like of shape (B, H, D), if a score needs it
        action_logits : array_like of shape (K,), if a score needs it
        action_ids : array_like of shape (B,), if a score needs it
        state : array_like of shape (S,), if a score needs it (``Rollout.states``)

        Returns
        -------
        Verdict

        Raises
        ------
        RolloutError
            On a missing input, a wrong shape or dtype, or a NaN/inf input.
        NonFiniteScoreError
            If a score of this step is not finite and ``nonfinite="raise"``.
        ConcurrentUseError
            If another thread is inside :meth:`step` or :meth:`reset` of this monitor.

        In every error case the monitor's state is left as it was.
        """
        if not self._lock.acquire(blocking=False):
            raise ConcurrentUseError(
                "Monitor.step: another thread is using this monitor at the same time, which "
                "would corrupt its state; use one monitor per thread."
            )
        try:
            return self._step(embedding, action_samples, action_logits, action_ids, state)
        finally:
            self._lock.release()

    def _step(
        self,
        embedding: ArrayLike | None,
        action_samples: ArrayLike | None,
        action_logits: ArrayLike | None,
        action_ids: ArrayLike | None,
        state: ArrayLike | None = None,
    ) -> Verdict:
        if self.detector.calibration_ is not self._calibration:
            raise NotFittedError(
                "Monitor.step: the detector was refit or recalibrated after this monitor was "
                "reset; call monitor.reset() (or detector.monitor()) to use the new thresholds."
            )
        rows = self._validate(
            {
                "embeddings": embedding,
                "action_samples": action_samples,
                "action_logits": action_logits,
                "action_ids": action_ids,
                "states": state,
            }
        )
        # Score first, from the history plus this step, and change no state until every
        # score is known to be usable: a refused step leaves the monitor as it was.
        t = self.t
        raw: dict[str, float] = {}
        new_rows: dict[str, dict[str, NDArray[Any]]] = {}
        for s in self._scores:
            hist = self._history[s.name]
            row = {**{f: rows[f] for f in s.requires}, "t": np.array(t, dtype=np.int64)}
            recent = [*list(hist)[max(0, len(hist) + 1 - (hist.maxlen or 1)) :], row]
            inputs = {f: np.stack([h[f] for h in recent]) for f in (*s.requires, "t")}
            raw[s.name] = float(s.score_steps(inputs)[-1])
            new_rows[s.name] = row
        bad = [n for n, v in raw.items() if not math.isfinite(v)]
        if bad and self.spec.nonfinite == "raise":
            raise NonFiniteScoreError(
                f"Monitor.step: step {t} gives a non-finite score for {bad} "
                f"({', '.join(f'{n}={raw[n]}' for n in bad)}) from finite inputs: an extreme "
                "input overflowed the score. The step was refused and the monitor state is "
                "unchanged. Check the input's scale, or create the monitor with "
                "nonfinite='alarm' to count such steps as alarms."
            )
        out, self._state = kernel.step(
            self.spec, self._state, {n: np.array([v]) for n, v in raw.items()}
        )
        for s in self._scores:
            self._history[s.name].append(new_rows[s.name])
        ratios = {n: float(v[0]) for n, v in out.ratios.items()}
        nonfinite = bool(out.nonfinite[0])
        verdict = Verdict(
            step=t,
            scores=raw,
            windowed={n: float(v[0]) for n, v in out.windowed.items()},
            thresholds={n: float(v[0]) for n, v in out.thresholds.items()},
            ratios=ratios,
            fused_ratio=float(out.fused[0]),
            alarm=bool(out.alarm[0]),
            fired=kernel.fired(raw, ratios),
            status="nonfinite" if nonfinite else "ok",
        )
        self.last_verdict = verdict
        return verdict
