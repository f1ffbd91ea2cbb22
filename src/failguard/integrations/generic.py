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

import logging
import os
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..exceptions import ParameterError, RolloutError
from ..logs import Recorder
from ..types import Verdict

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..detector import FailureDetector
    from ..monitor import Monitor

__all__ = [
    "AlarmHook",
    "ErrorHook",
    "MonitoringSession",
    "PolicyAdapter",
    "SessionOptions",
    "check_chunks",
    "check_n_samples",
    "flat_float32",
    "to_numpy",
]

AlarmHook = Callable[[Verdict], Any]
"""Signature of ``on_alarm``: called with the alarming :class:`~failguard.Verdict`."""
ErrorHook = Callable[[BaseException], Any]
"""Signature of ``on_error``: called with the exception the monitor (or a hook) raised."""

logger = logging.getLogger("failguard")


class SessionOptions(TypedDict, total=False):
    """The keyword-only options of :class:`MonitoringSession` that every integration takes
    and passes on unchanged (``**options``); see :class:`MonitoringSession` for each."""

    on_error: ErrorHook | None
    strict: bool
    nonfinite: str
    keep_verdicts: int


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


def flat_float32(value: Any) -> NDArray[np.float32]:
    """A flat float32 vector (one step's embedding or logits) from numpy, torch or a list.

    Examples
    --------
    >>> flat_float32([[1, 2, 3]])
    array([1., 2., 3.], dtype=float32)
    """
    return to_numpy(value).reshape(-1).astype(np.float32)


def check_chunks(chunks: NDArray[Any], n: int, source: str) -> NDArray[np.float32]:
    """The ``n`` action chunks ``source`` returned, as float32 of shape (n, H, D).

    Raises
    ------
    RolloutError
        If ``chunks`` is not of shape (n, H, D).
    """
    if chunks.ndim != 3 or chunks.shape[0] != n:
        raise RolloutError(
            f"{source} must return shape ({n}, H, D), {n} action chunks; got {chunks.shape}."
        )
    return chunks.astype(np.float32)


def check_n_samples(detector: FailureDetector | None, n_samples: int, where: str) -> None:
    """Raise early if ``n_samples`` is not an int >= 1, or if ``detector`` was fitted on a
    different number B of action samples.

    Examples
    --------
    >>> check_n_samples(None, 0, "PolicyAdapter")
    Traceback (most recent call last):
    ...
    failguard.exceptions.ParameterError: 'n_samples' must be an int >= 1. Got 0 instead.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ParameterError(f"'n_samples' must be an int >= 1. Got {n_samples!r} instead.")
    if detector is None:
        return
    for s in detector.scores:
        shape = (s.input_shapes_ or {}).get("action_samples")
        if shape and shape[0] != n_samples:
            raise ParameterError(
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
    on_error : callable, optional
        Called with the exception whenever the monitor, the recorder or a hook fails.
    strict : bool, default=False
        Re-raise monitor failures. The integrations never lose or reorder an action: a
        wrapper that has already obtained the policy's action returns it, and raises the
        stored error at its next call, before the policy runs again.
    nonfinite : {"raise", "alarm"}, default="raise"
        Passed to :class:`~failguard.Monitor`. With ``"raise"``, a step with a NaN or inf
        score is a monitor failure (an ``"error"`` verdict, which alarms); with ``"alarm"``
        it is scored as an alarm (a ``"nonfinite"`` verdict) and stays in the windows.
    keep_verdicts : int, default=1000
        How many of the latest verdicts :attr:`verdicts` keeps: memory stays flat however
        long the session runs. :attr:`alarmed`, :attr:`first_alarm` and the counters cover
        the whole episode.

    The monitor never takes the policy down: a failure of the monitor (a bad or non-finite
    input, a score that raises, a non-finite score, a raising ``on_alarm`` hook) is caught,
    counted in :attr:`n_errors`, logged on the ``"failguard"`` logger, passed to
    ``on_error`` and reported as a :class:`~failguard.Verdict` with ``status="error"`` and
    ``alarm=True`` (never silently quiet). A step the monitor rejects is not recorded, so the
    recording and the monitor stay aligned.

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
        *,
        on_error: ErrorHook | None = None,
        strict: bool = False,
        nonfinite: str = "raise",
        keep_verdicts: int = 1000,
    ) -> None:
        if detector is None and record_dir is None:
            raise ParameterError(
                "Give a calibrated 'detector' (monitor mode), a 'record_dir' (record mode), "
                "or both."
            )
        if (
            isinstance(keep_verdicts, bool)
            or not isinstance(keep_verdicts, int)
            or keep_verdicts < 0
        ):
            raise ParameterError(
                f"'keep_verdicts' must be an int >= 0. Got {keep_verdicts!r} instead."
            )
        self.detector = detector
        self.monitor: Monitor | None = (
            detector.monitor(group=group, nonfinite=nonfinite) if detector else None
        )
        self.recorder: Recorder | None = Recorder(record_dir) if record_dir is not None else None
        self.on_alarm = on_alarm
        self.on_error = on_error
        self.strict = bool(strict)
        self.group = group
        self.last_verdict: Verdict | None = None
        self.verdicts: deque[Verdict] = deque(maxlen=keep_verdicts)
        self.n_steps = 0
        #: monitor, recorder or hook failures since this session was created
        self.n_errors = 0
        self.last_error: BaseException | None = None
        self.n_alarms = 0
        self._first_alarm: Verdict | None = None
        self._pending: BaseException | None = None

    @property
    def mode(self) -> str:
        """``"monitor"``, ``"record"`` or ``"monitor+record"``."""
        parts = [m for m, on in (("monitor", self.monitor), ("record", self.recorder)) if on]
        return "+".join(parts)

    @property
    def alarmed(self) -> bool:
        """Whether any step of the current episode alarmed (O(1))."""
        return self._first_alarm is not None

    @property
    def first_alarm(self) -> Verdict | None:
        """The first alarming verdict of the current episode, or None."""
        return self._first_alarm

    # ------------------------------------------------------------------ failures
    def report_error(self, err: BaseException, where: str) -> Verdict | None:
        """Count, log and report a failure of the monitoring side; never raises.

        Returns the ``"error"`` verdict of the step (None in record-only mode). With
        ``strict=True`` the error is kept for :meth:`raise_pending`.
        """
        self.n_errors += 1
        self.last_error = err
        if self.strict:
            self._pending = err
        logger.warning(
            "failguard: %s failed (%s: %s); the policy's action is unaffected and the step "
            "counts as an alarm.",
            where,
            type(err).__name__,
            err,
        )
        if self.on_error is not None:
            try:
                self.on_error(err)
            except Exception as hook_err:
                logger.error("failguard: the on_error hook raised %r; ignored.", hook_err)
        if self.monitor is None or self.detector is None:
            return None
        verdict = Verdict.from_error(self.monitor.t, self.detector.names, err)
        self._deliver(verdict)
        return verdict

    def raise_pending(self) -> None:
        """With ``strict=True``: raise a stored monitor failure (once), else do nothing."""
        err, self._pending = self._pending, None
        if err is not None:
            raise err

    def _deliver(self, verdict: Verdict) -> None:
        self.last_verdict = verdict
        self.verdicts.append(verdict)
        if verdict.alarm:
            self.n_alarms += 1
            if self._first_alarm is None:
                self._first_alarm = verdict
            if self.on_alarm is not None:
                try:
                    self.on_alarm(verdict)
                except Exception as err:
                    self.n_errors += 1
                    self.last_error = err
                    if self.strict:
                        self._pending = err
                    logger.warning("failguard: the on_alarm hook raised %r.", err)
                    if self.on_error is not None:
                        try:
                            self.on_error(err)
                        except Exception as hook_err:
                            logger.error("failguard: the on_error hook raised %r.", hook_err)

    def reset(self, group: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Start a new episode: reset the monitor and start a new recorded rollout.

        An episode being recorded and not ended with :meth:`end_episode` is discarded (with
        a warning), since its outcome is unknown.
        """
        g = group if group is not None else self.group
        if self.monitor is not None:
            try:
                self.monitor.reset(g)
            except Exception as err:  # e.g. another thread inside the monitor
                self.report_error(err, "Monitor.reset")
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
        self.verdicts.clear()
        self.n_steps = 0
        self.n_alarms = 0
        self._first_alarm = None

    def process(
        self,
        embedding: ArrayLike,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
    ) -> Verdict | None:
        """Score and/or record one policy step; returns the verdict (None in record mode).

        Never raises: a failure gives an ``"error"`` verdict (see the class docstring). The
        monitor runs first: a step it rejects is neither recorded nor counted, so the
        recording, the step count and the verdicts stay aligned.
        """
        verdict = None
        if self.monitor is not None:
            try:
                verdict = self.monitor.step(
                    embedding=embedding,
                    action_samples=action_samples,
                    action_logits=action_logits,
                    action_ids=action_ids,
                )
            except Exception as err:
                return self.report_error(err, "Monitor.step")
        if self.recorder is not None:
            try:
                if not self.recorder.recording:
                    self.recorder.start(group=self.group)
                self.recorder.step(
                    embedding=embedding,
                    action_samples=action_samples,
                    action_logits=action_logits,
                    action_ids=action_ids,
                )
            except Exception as err:
                if verdict is None:  # record-only: nothing else to report
                    return self.report_error(err, "Recorder.step")
                self.n_errors += 1  # the verdict stands; the recording lacks this step
                self.last_error = err
                logger.warning("failguard: Recorder.step failed (%r); step not recorded.", err)
        self.n_steps += 1
        if verdict is None:
            return None
        self._deliver(verdict)
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
            meta.setdefault("failguard_errors", self.n_errors)
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
    **options
        ``on_error``, ``strict``, ``nonfinite``, ``keep_verdicts``: keyword-only, see
        :class:`MonitoringSession`. A failure of ``embed``, ``sample`` or ``logits`` is a
        monitor failure too. The adapter never holds the policy's action, so with
        ``strict=True`` :meth:`step` raises at once.

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
        **options: Unpack[SessionOptions],
    ) -> None:
        if not callable(embed):
            raise ParameterError("'embed' must be a callable obs -> embedding of shape (d,).")
        check_n_samples(detector if sample is not None else None, n_samples, "PolicyAdapter")
        if n_action_ids and logits is None:
            raise ParameterError("'n_action_ids' > 0 samples ids from 'logits'; give 'logits' too.")
        super().__init__(detector, record_dir, on_alarm, group, **options)
        self.embed = embed
        self.sample = sample
        self.logits = logits
        self.n_samples = n_samples
        self.n_action_ids = int(n_action_ids)
        self._rng = np.random.default_rng(seed)
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
                raise ParameterError(
                    f"The detector reads {missing}; pass "
                    + " and ".join(how[m] for m in missing)
                    + " to PolicyAdapter."
                )

    def arrays(self, obs: Any) -> dict[str, NDArray[Any]]:
        """The per-step arrays for ``obs`` (embedding and, if configured, samples/logits)."""
        out: dict[str, NDArray[Any]] = {"embedding": flat_float32(self.embed(obs))}
        if self.sample is not None:
            n = self.n_samples
            chunks = to_numpy(self.sample(obs, n))
            if chunks.ndim == 2:  # (n, D): single-step actions are chunks of length 1
                chunks = chunks[:, None, :]
            out["action_samples"] = check_chunks(chunks, n, f"sample(obs, {n})")
        if self.logits is not None:
            lg = flat_float32(self.logits(obs))
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
            The monitor's verdict (``status="error"`` if monitoring failed); None in
            record-only mode.

        Raises
        ------
        Exception
            Only with ``strict=True``: the monitoring failure.
        """
        verdict = self.observe(obs)
        self.raise_pending()
        return verdict

    def observe(self, obs: Any) -> Verdict | None:
        """:meth:`step` that never raises, whatever ``strict`` says (failures are kept for
        :meth:`raise_pending`); what wrappers that hold an action call."""
        try:
            arrays = self.arrays(obs)
        except Exception as err:
            return self.report_error(err, "PolicyAdapter.arrays")
        return self.process(**arrays)
