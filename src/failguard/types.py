"""Plain data types: :class:`Rollout` (what a policy did), :class:`Verdict` (what the monitor says).

A *step* is one policy inference: the policy encodes its observation into an embedding and
samples a batch of action chunks (or emits logits over discrete actions). A rollout is the
sequence of those steps plus, once it is over, whether it succeeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .core.kernel import fired
from .exceptions import RolloutError

__all__ = ["Rollout", "Trace", "Verdict", "as_step_array"]

# name -> (number of dimensions, kind of dtype, numpy dtype stored)
_FIELDS: dict[str, tuple[int, str, type[np.generic]]] = {
    "embeddings": (2, "float", np.float32),
    "action_samples": (4, "float", np.float32),
    "action_logits": (2, "float", np.float32),
    "action_ids": (2, "int", np.int64),
    "executed_actions": (3, "float", np.float32),
    "states": (2, "float", np.float32),
}
_SHAPES = {
    "embeddings": "(T, d)",
    "action_samples": "(T, B, H, D)",
    "action_logits": "(T, K)",
    "action_ids": "(T, B)",
    "executed_actions": "(T, H, D)",
    "states": "(T, S)",
}


def as_step_array(
    name: str, value: ArrayLike, ndim: int, kind: str, where: str, check_finite: bool = True
) -> NDArray[Any]:
    """Convert ``value`` to a finite numpy array with ``ndim`` dimensions, or raise.

    Parameters
    ----------
    name : str
        The field name, used in the error message.
    value : array_like
        The data.
    ndim : int
        The required number of dimensions.
    kind : {"float", "int"}
        ``"float"`` accepts real numbers (ints and bools are converted); ``"int"`` accepts
        integers only.
    where : str
        Who is checking (for the message), e.g. ``"Rollout"`` or ``"Monitor.step"``.
    check_finite : bool, default=True
        Refuse NaN/inf (and values that overflow float32). ``False`` leaves that check to the
        caller (used by batched steps, which refuse one robot rather than the whole batch).

    Returns
    -------
    numpy.ndarray
        ``float32`` for ``kind="float"``, ``int64`` for ``kind="int"``.

    Raises
    ------
    RolloutError
        On a wrong number of dimensions, an empty axis, a non-numeric dtype or a NaN/inf.

    Examples
    --------
    >>> as_step_array("embeddings", [[1.0, 2.0]], 2, "float", "Rollout").dtype
    dtype('float32')
    """
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise RolloutError(f"{where}: '{name}' could not be converted to an array: {err}") from err
    except (RuntimeError, RecursionError, MemoryError) as err:  # a torch tensor with grad, ...
        raise RolloutError(
            f"{where}: '{name}' could not be converted to a numpy array ({err}). Pass a numpy "
            "array, or call .detach().cpu().numpy() on a torch tensor."
        ) from err
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise RolloutError(
            f"{where}: '{name}' must hold numbers; got dtype {arr.dtype}. "
            "Pass a numeric numpy array or tensor (call .cpu().numpy() on torch tensors)."
        )
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise RolloutError(f"{where}: '{name}' must be real-valued; got dtype {arr.dtype}.")
    if arr.ndim != ndim:
        raise RolloutError(
            f"{where}: '{name}' must have {ndim} dimensions {_SHAPES.get(name, '')}; "
            f"got shape {arr.shape}."
        )
    if arr.size == 0:
        raise RolloutError(
            f"{where}: '{name}' is empty (shape {arr.shape}); every axis needs at least one entry."
        )
    if kind == "int":
        if not np.issubdtype(arr.dtype, np.integer):
            raise RolloutError(
                f"{where}: '{name}' must hold integer action ids; got dtype {arr.dtype}."
            )
        return arr.astype(np.int64, copy=False)
    if not check_finite:
        with np.errstate(over="ignore"):
            return arr.astype(np.float32, copy=False)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise RolloutError(
            f"{where}: '{name}' contains NaN or inf (first at index {tuple(int(i) for i in bad)}). "
            "Drop or repair the step before scoring; failguard never guesses a value."
        )
    if arr.dtype == np.float32:
        return arr
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise RolloutError(f"{where}: '{name}' overflows float32 (values beyond ±3.4e38).")
    return out


@dataclass(frozen=True, eq=False)
class Rollout:
    """One episode of a policy, one entry per policy inference step.

    Parameters
    ----------
    embeddings : array_like of shape (T, d)
        The policy's observation embedding at each step (what its action head is
        conditioned on). Required by every score that watches observations.
    action_samples : array_like of shape (T, B, H, D), optional
        B action chunks of length H sampled from the policy at each step.
    action_logits : array_like of shape (T, K), optional
        Logits over K discrete actions (discrete-action agents).
    action_ids : array_like of shape (T, B), optional
        B discrete actions sampled at each step (integer ids).
    executed_actions : array_like of shape (T, H, D), optional
        The chunk actually executed at each step (kept for analysis; not scored).
    states : array_like of shape (T, S), optional
        A low-dimensional physical state at each step, such as the end-effector or body
        position, for scores that watch how the system moves rather than what the policy
        sees (``Movement(source="states")``).
    success : bool or None
        Outcome of the episode; ``None`` while unknown.
    group : str or None
        Free label such as ``"id"`` or ``"ood-friction"``; used for per-group metrics and
        for Mondrian (per-group) calibration.
    metadata : dict
        JSON-serialisable extra information (seed, task, ...).
    source : str or None
        Where the rollout was read from (set by :func:`~failguard.read_rollout`; not saved).
        Error messages name it.

    Raises
    ------
    RolloutError
        If a field has the wrong number of dimensions, is empty, is not numeric, holds
        NaN/inf, or if the fields disagree on the number of steps T.

    Examples
    --------
    >>> import numpy as np
    >>> r = Rollout(embeddings=np.zeros((5, 8)), action_samples=np.zeros((5, 4, 2, 3)),
    ...             success=True, group="id")
    >>> len(r), r.embedding_dim
    (5, 8)
    >>> Rollout(embeddings=np.zeros((5, 8)), action_samples=np.zeros((4, 4, 2, 3)))
    Traceback (most recent call last):
    ...
    failguard.exceptions.RolloutError: Rollout: fields disagree on the number of steps T: ...
    """

    embeddings: NDArray[np.float32]
    action_samples: NDArray[np.float32] | None = None
    action_logits: NDArray[np.float32] | None = None
    action_ids: NDArray[np.int64] | None = None
    executed_actions: NDArray[np.float32] | None = None
    states: NDArray[np.float32] | None = None
    success: bool | None = None
    group: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        lengths: dict[str, int] = {}
        for name, (ndim, kind, _) in _FIELDS.items():
            value = getattr(self, name)
            if value is None:
                if name == "embeddings":
                    raise RolloutError("Rollout: 'embeddings' is required (shape (T, d)).")
                continue
            arr = as_step_array(name, value, ndim, kind, "Rollout")
            if np.may_share_memory(arr, value):
                arr = arr.copy()  # own the data: later changes to the caller's array don't leak in
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
            lengths[name] = arr.shape[0]
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} has {v}" for k, v in lengths.items())
            raise RolloutError(f"Rollout: fields disagree on the number of steps T: {detail}.")
        if self.success is not None:
            if not isinstance(self.success, (bool, np.bool_)):
                raise RolloutError(
                    f"Rollout: 'success' must be True, False or None; got {self.success!r}."
                )
            object.__setattr__(self, "success", bool(self.success))
        if self.group is not None and not isinstance(self.group, str):
            raise RolloutError(f"Rollout: 'group' must be a string or None; got {self.group!r}.")
        if not isinstance(self.metadata, Mapping):
            raise RolloutError("Rollout: 'metadata' must be a dict.")
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def describe(self, index: int | None = None) -> str:
        """A short name for messages: index, source file and group, where known."""
        parts = [] if index is None else [f"rollout {index}"]
        if self.source:
            parts.append(f"({self.source})")
        if self.group is not None:
            parts.append(f"group {self.group!r}")
        return " ".join(parts) or "rollout"

    @property
    def embedding_dim(self) -> int:
        """Size d of the embedding."""
        return int(self.embeddings.shape[1])

    def arrays(self) -> dict[str, NDArray[Any]]:
        """The per-step arrays that are present, by field name."""
        return {name: getattr(self, name) for name in _FIELDS if getattr(self, name) is not None}

    def replace(self, **changes: Any) -> Rollout:
        """A copy with some fields changed (validated again)."""
        values = {name: getattr(self, name) for name in (*_FIELDS, "success", "group")}
        values["metadata"] = dict(self.metadata)
        values.update(changes)
        return Rollout(**values)

    def __repr__(self) -> str:
        parts = [f"T={len(self)}", f"d={self.embedding_dim}"]
        if self.action_samples is not None:
            parts.append(f"action_samples={tuple(self.action_samples.shape[1:])}")
        if self.action_logits is not None:
            parts.append(f"K={self.action_logits.shape[1]}")
        if self.action_ids is not None:
            parts.append(f"action_ids B={self.action_ids.shape[1]}")
        if self.states is not None:
            parts.append(f"S={self.states.shape[1]}")
        parts.append(f"success={self.success}")
        if self.group is not None:
            parts.append(f"group={self.group!r}")
        return f"Rollout({', '.join(parts)})"


@dataclass(frozen=True)
class Verdict:
    """What the monitor says after one step. Higher always means more likely to fail.

    Attributes
    ----------
    step : int
        Index t of the policy step, from 0 after ``reset``.
    scores : dict[str, float]
        Raw score s(t) of each indicator.
    windowed : dict[str, float]
        Windowed score η(t) of each indicator.
    thresholds : dict[str, float]
        Threshold γ(t) of each indicator at this step.
    ratios : dict[str, float]
        η(t) / γ(t) of each indicator; above 1 means the indicator fires.
    fused_ratio : float
        ``min`` of the ratios for AND fusion, ``max`` for OR fusion.
    alarm : bool
        ``fused_ratio > 1``.
    fired : tuple[str, ...]
        Names of the indicators whose ratio exceeds 1 at this step (or whose score was not
        finite).
    status : {"ok", "nonfinite", "error"}, default="ok"
        ``"ok"``: an ordinary verdict. ``"nonfinite"``: a score of this step was NaN or inf
        and the monitor was told to fail safe (``nonfinite="alarm"``): the step counts as an
        alarm. ``"error"``: an integration caught a monitor failure (see ``error``); the
        step was not scored, ``alarm`` is True and the numbers are NaN. Only ``"ok"``
        verdicts are ever quiet.
    error : str or None
        What went wrong, for a ``"error"`` verdict.

    Examples
    --------
    >>> v = Verdict(step=3, scores={"rnd": 0.2}, windowed={"rnd": 0.9},
    ...             thresholds={"rnd": 0.6}, ratios={"rnd": 1.5}, fused_ratio=1.5,
    ...             alarm=True, fired=("rnd",))
    >>> v.alarm, v.fired
    (True, ('rnd',))
    """

    step: int
    scores: dict[str, float]
    windowed: dict[str, float]
    thresholds: dict[str, float]
    ratios: dict[str, float]
    fused_ratio: float
    alarm: bool
    fired: tuple[str, ...]
    status: str = "ok"
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether this is an ordinary verdict (scored, finite)."""
        return self.status == "ok"

    def __str__(self) -> str:
        if self.status == "error":
            return f"step {self.step}: ALARM (monitor error: {self.error})"
        state = "ALARM" if self.alarm else "ok"
        if self.status == "nonfinite":
            state = "ALARM (non-finite score)"
        detail = ", ".join(f"{k}={v:.2f}" for k, v in self.ratios.items())
        return f"step {self.step}: {state} (fused ratio {self.fused_ratio:.2f}; {detail})"

    @classmethod
    def from_error(cls, step: int, names: Any, error: BaseException | str) -> Verdict:
        """The verdict of a step the monitor failed on: alarm, status ``"error"``, NaN numbers."""
        nan = {str(n): float("nan") for n in names}
        return cls(
            step=int(step),
            scores=dict(nan),
            windowed=dict(nan),
            thresholds=dict(nan),
            ratios=dict(nan),
            fused_ratio=float("nan"),
            alarm=True,
            fired=(),
            status="error",
            error=error if isinstance(error, str) else f"{type(error).__name__}: {error}",
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the verdict (non-finite numbers as strings)."""

        def num(v: float) -> float | str:
            return v if math.isfinite(v) else str(v)

        return {
            "step": self.step,
            "scores": {k: num(v) for k, v in self.scores.items()},
            "windowed": {k: num(v) for k, v in self.windowed.items()},
            "thresholds": {k: num(v) for k, v in self.thresholds.items()},
            "ratios": {k: num(v) for k, v in self.ratios.items()},
            "fused_ratio": num(self.fused_ratio),
            "alarm": self.alarm,
            "fired": list(self.fired),
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True)
class Trace:
    """Everything the detector computes for one rollout, step by step (batch counterpart of
    a sequence of :class:`Verdict`).

    Attributes
    ----------
    scores, windowed, thresholds, ratios : dict[str, ndarray of shape (T,)]
        Per indicator: raw score s(t), windowed η(t), threshold γ(t) and η(t)/γ(t).
    fused : ndarray of shape (T,)
        Fused ratio (min for AND, max for OR).
    alarm : ndarray of bool, shape (T,)
        ``fused > 1``, or a non-finite score at that step (scored with ``nonfinite="alarm"``).
    success, group : outcome and group of the rollout, if known.
    nonfinite : ndarray of bool, shape (T,), or None
        Steps with a non-finite score (only when scored with ``nonfinite="alarm"``).
    """

    scores: dict[str, NDArray[np.float64]]
    windowed: dict[str, NDArray[np.float64]]
    thresholds: dict[str, NDArray[np.float64]]
    ratios: dict[str, NDArray[np.float64]]
    fused: NDArray[np.float64]
    alarm: NDArray[np.bool_]
    success: bool | None = None
    group: str | None = None
    nonfinite: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return int(self.fused.shape[0])

    @property
    def first_alarm(self) -> int | None:
        """Index of the first step with an alarm, or None."""
        hits = np.flatnonzero(self.alarm)
        return int(hits[0]) if hits.size else None

    @property
    def predicted_failure(self) -> bool:
        """Whether an alarm fires at any step."""
        return bool(self.alarm.any())

    def verdict(self, t: int) -> Verdict:
        """The :class:`Verdict` of step t (what :class:`~failguard.Monitor` said there)."""
        ratios = {k: float(v[t]) for k, v in self.ratios.items()}
        scores = {k: float(v[t]) for k, v in self.scores.items()}
        return Verdict(
            step=t,
            scores=scores,
            windowed={k: float(v[t]) for k, v in self.windowed.items()},
            thresholds={k: float(v[t]) for k, v in self.thresholds.items()},
            ratios=ratios,
            fused_ratio=float(self.fused[t]),
            alarm=bool(self.alarm[t]),
            fired=fired(scores, ratios),
            status="nonfinite" if self.nonfinite is not None and self.nonfinite[t] else "ok",
        )


#: The one ``fired`` rule (:func:`failguard.core.kernel.fired`), under its older name.
fired_names = fired
