"""Monitor: the streaming, one-step-at-a-time face of a calibrated FailureDetector.

It calls the very same score functions, window reduction, threshold lookup and fusion as
:meth:`FailureDetector.score` (see :mod:`failguard._pipeline`), one step at a time, keeping
O(window) state. Replaying a rollout through :meth:`Monitor.step` reproduces the batch
:class:`~failguard.types.Trace`: identical windows, thresholds and alarms given the same raw
scores; raw network scores agree to float32 rounding (a matrix product of one row may round
differently from the same row inside a larger batch).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _pipeline
from .exceptions import (
    ConcurrentUseError,
    NonFiniteScoreError,
    NotFittedError,
    ParameterError,
    RolloutError,
)
from .types import _FIELDS, Verdict, as_step_array, fired_names
from .windows import WindowState

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = ["Monitor"]


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
        self, detector: FailureDetector, group: str | None = None, nonfinite: str = "raise"
    ) -> None:
        detector._require_calibrated()
        if nonfinite not in ("raise", "alarm"):
            raise ParameterError(
                "The 'nonfinite' parameter of Monitor must be one of ('raise', 'alarm'). "
                f"Got {nonfinite!r} instead."
            )
        self.detector = detector
        self.nonfinite = nonfinite
        self._fields = detector.requires
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
        self._calibration = det._require_calibrated()
        self._scores = list(det.scores)
        self._tables = det.tables_for(group)
        self._windows = {
            n: WindowState(det.windows[n], det.window_kind)  # type: ignore[arg-type]
            for n in det.names
        }
        self._history: dict[str, deque[dict[str, NDArray[Any]]]] = {
            s.name: deque(maxlen=s.context + 1) for s in self._scores
        }
        self._t = 0
        self.last_verdict: Verdict | None = None

    @property
    def t(self) -> int:
        """Index of the next step."""
        return self._t

    def _validate(self, given: dict[str, ArrayLike | None]) -> dict[str, NDArray[Any]]:
        rows: dict[str, NDArray[Any]] = {}
        for f in self._fields:
            value = given.get(f)
            if value is None:
                arg = "embedding" if f == "embeddings" else f
                raise RolloutError(
                    f"Monitor.step: this detector needs '{arg}', which was not given."
                )
            ndim, kind, _ = _FIELDS[f]
            rows[f] = as_step_array(f, value, ndim - 1, kind, "Monitor.step")
            for s in self._scores:
                shapes = s.input_shapes_ or {}
                if f in shapes and tuple(rows[f].shape) != shapes[f]:
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
    ) -> Verdict:
        """Score one policy step and say whether to alarm.

        Parameters
        ----------
        embedding : array_like of shape (d,)
        action_samples : array_like of shape (B, H, D), if a score needs it
        action_logits : array_like of shape (K,), if a score needs it
        action_ids : array_like of shape (B,), if a score needs it

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
            return self._step(embedding, action_samples, action_logits, action_ids)
        finally:
            self._lock.release()

    def _step(
        self,
        embedding: ArrayLike | None,
        action_samples: ArrayLike | None,
        action_logits: ArrayLike | None,
        action_ids: ArrayLike | None,
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
            }
        )
        # Score first, from the history plus this step, and change no state until every
        # score is known to be usable: a refused step leaves the monitor as it was.
        raw: dict[str, float] = {}
        new_rows: dict[str, dict[str, NDArray[Any]]] = {}
        for s in self._scores:
            hist = self._history[s.name]
            row = {**{f: rows[f] for f in s.requires}, "t": np.array(self._t, dtype=np.int64)}
            recent = [*list(hist)[max(0, len(hist) + 1 - (hist.maxlen or 1)) :], row]
            inputs = {f: np.stack([h[f] for h in recent]) for f in (*s.requires, "t")}
            raw[s.name] = float(s.score_steps(inputs)[-1])
            new_rows[s.name] = row
        bad = [n for n, v in raw.items() if not math.isfinite(v)]
        if bad and self.nonfinite == "raise":
            raise NonFiniteScoreError(
                f"Monitor.step: step {self._t} gives a non-finite score for {bad} "
                f"({', '.join(f'{n}={raw[n]}' for n in bad)}) from finite inputs: an extreme "
                "input overflowed the score. The step was refused and the monitor state is "
                "unchanged. Check the input's scale, or create the monitor with "
                "nonfinite='alarm' to count such steps as alarms."
            )
        for s in self._scores:
            self._history[s.name].append(new_rows[s.name])
        t = np.array([self._t])
        windowed, gammas, rat = {}, {}, {}
        ratio_rows = []
        for name in self.detector.names:
            value = raw[name] if math.isfinite(raw[name]) else math.inf
            w = np.array([self._windows[name].update(value)])
            g = _pipeline.threshold_at(self._tables[name], t)
            r = _pipeline.ratios(w, g)
            windowed[name], gammas[name], rat[name] = float(w[0]), float(g[0]), float(r[0])
            ratio_rows.append(r)
        fused = float(_pipeline.fuse(ratio_rows, self.detector.combine)[0])
        nonfinite = bool(bad) or math.isnan(fused)
        verdict = Verdict(
            step=self._t,
            scores=raw,
            windowed=windowed,
            thresholds=gammas,
            ratios=rat,
            fused_ratio=fused,
            alarm=fused > 1.0 or nonfinite,
            fired=fired_names(raw, rat),
            status="nonfinite" if nonfinite else "ok",
        )
        self._t += 1
        self.last_verdict = verdict
        return verdict
