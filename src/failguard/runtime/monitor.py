"""OnnxMonitor: run an exported monitor step with numpy and onnxruntime only (no torch).

The graph written by :func:`failguard.exporters.export_onnx` computes one whole monitor step
for N robots at once; this class keeps the window state and the step counters between calls
and checks every input before it reaches onnxruntime, so a bad input gives a clear
:class:`~failguard.exceptions.RolloutError` (never a crash inside onnxruntime, never a silent
wrong alarm).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from .._version import SCHEMA_VERSION, __version__
from ..core import kernel
from ..core.spec import KEYS as _SPEC_KEYS
from ..core.spec import MonitorSpec
from ..exceptions import (
    ArtifactError,
    ConcurrentUseError,
    NonFiniteScoreError,
    ParameterError,
    RolloutError,
)
from ..types import _FIELDS, Verdict, as_step_array, fired_names

__all__ = ["BatchVerdict", "OnnxMonitor"]

_METADATA_KEY = "failguard"  # same as failguard.exporters.onnx.METADATA_KEY (no import: torch)
_ARGS = {
    "embeddings": "embedding",
    "action_samples": "action_samples",
    "action_logits": "action_logits",
    "action_ids": "action_ids",
    "states": "state",
}
_ID_LIMIT = 2**53  # ids are compared as exact float64 integers inside the graph


@dataclass(frozen=True)
class BatchVerdict:
    """What the monitor says after one step of N robots (arrays of shape (N,)).

    Attributes
    ----------
    step : ndarray of int64
        Step index of each robot since its reset.
    scores, windowed, thresholds, ratios : dict[str, ndarray of float64]
        Per indicator: raw score, windowed score, threshold and their ratio.
    fused_ratio : ndarray of float64
        Min (AND) or max (OR) of the ratios.
    alarm : ndarray of bool
        ``fused_ratio > 1``, or a robot whose step is not an ordinary one (see ``status``).
    status : ndarray of str, optional
        Per robot: ``"ok"``; ``"nonfinite"`` (a score was NaN or inf, counted as an alarm,
        with ``nonfinite="alarm"``); or ``"error"``: this robot's step was refused (its
        input was NaN/inf, a score was not finite with ``nonfinite="raise"``, or its action
        samples spread too far); its state was not changed and ``alarm`` is True (fail
        safe). The other robots' steps are applied as usual. ``None`` means all ``"ok"``.
    errors : dict[int, str]
        Why each refused robot (by index) was refused.

    Examples
    --------
    >>> import numpy as np
    >>> bv = BatchVerdict(step=np.array([4, 9]), scores={"rnd": np.array([0.1, 0.9])},
    ...                   windowed={"rnd": np.array([0.5, 3.0])},
    ...                   thresholds={"rnd": np.array([2.0, 2.0])},
    ...                   ratios={"rnd": np.array([0.25, 1.5])},
    ...                   fused_ratio=np.array([0.25, 1.5]), alarm=np.array([False, True]))
    >>> len(bv), bv.verdict(1).fired
    (2, ('rnd',))
    """

    step: NDArray[np.int64]
    scores: dict[str, NDArray[np.float64]]
    windowed: dict[str, NDArray[np.float64]]
    thresholds: dict[str, NDArray[np.float64]]
    ratios: dict[str, NDArray[np.float64]]
    fused_ratio: NDArray[np.float64]
    alarm: NDArray[np.bool_]
    status: NDArray[np.str_] | None = None
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.alarm.shape[0])

    @property
    def ok(self) -> NDArray[np.bool_]:
        """Per robot: whether its verdict is an ordinary one."""
        if self.status is None:
            return np.ones(len(self), dtype=bool)
        return np.asarray(self.status == "ok")

    def verdict(self, i: int) -> Verdict:
        """The :class:`~failguard.types.Verdict` of robot ``i``."""
        status = "ok" if self.status is None else str(self.status[i])
        if status == "error":
            return Verdict.from_error(int(self.step[i]), self.scores, self.errors.get(i, "error"))
        ratios = {k: float(v[i]) for k, v in self.ratios.items()}
        scores = {k: float(v[i]) for k, v in self.scores.items()}
        return Verdict(
            step=int(self.step[i]),
            scores=scores,
            windowed={k: float(v[i]) for k, v in self.windowed.items()},
            thresholds={k: float(v[i]) for k, v in self.thresholds.items()},
            ratios=ratios,
            fused_ratio=float(self.fused_ratio[i]),
            alarm=bool(self.alarm[i]),
            fired=fired_names(scores, ratios),
            status=status,
        )


def _read_metadata(session: ort.InferenceSession, path: Path) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    if _METADATA_KEY not in props:
        raise ArtifactError(
            f"{path}: not a failguard monitor (no '{_METADATA_KEY}' metadata). Export one with "
            "failguard.exporters.export_onnx(detector, path)."
        )
    try:
        meta = json.loads(props[_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: corrupt failguard metadata ({err}).") from err
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
        found = meta.get("schema") if isinstance(meta, dict) else None
        made_by = meta.get("failguard_version") if isinstance(meta, dict) else None
        raise ArtifactError(
            f"{path}: failguard schema version {found!r} (written by failguard {made_by}); this "
            f"failguard {__version__} reads version {SCHEMA_VERSION}. Export the detector again "
            "with this version."
        )
    needed = ("names", "requires", "input_shapes", "windows", "window_kind", "groups")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise ArtifactError(f"{path}: failguard metadata lacks {missing}.")
    return meta


def _verify_checksum(raw: bytes, meta: dict[str, Any], path: Path, verify: bool) -> None:
    """Check the SHA-256 written by ``serialize_with_checksum`` (hashlib only, no onnx)."""
    digest = meta.get("sha256")
    if digest is None:
        warnings.warn(
            f"{path}: exported without a checksum (before failguard stored one), so it cannot "
            "be verified. Export the detector again (failguard.exporters.export_onnx) to add "
            "one.",
            UserWarning,
            stacklevel=3,
        )
        return
    if not verify:
        return
    field = f'"sha256": "{digest}"'.encode() if isinstance(digest, str) else b""
    if not field or raw.count(field) != 1:
        raise ArtifactError(f"{path}: the checksum in its metadata is malformed; re-export it.")
    actual = hashlib.sha256(raw.replace(field, b'"sha256": "' + b"0" * 64 + b'"')).hexdigest()
    if actual != digest:
        raise ArtifactError(
            f"{path}: checksum mismatch (SHA-256 {actual[:12]}..., the metadata says "
            f"{digest[:12]}...): the file is corrupt or was edited. Export the detector again."
        )


_VERDICT_FIELDS = (
    "step",
    "scores",
    "windowed",
    "thresholds",
    "ratios",
    "fused_ratio",
    "alarm",
    "fired",
    "status",
    "error",
)
_new = object.__new__


def _ok_verdict(step: int, names: list[str], values: list[float], alarm: Any) -> Verdict:
    """The Verdict of an ordinary step (every score finite) from the packed report.

    Equal to ``Verdict(...)`` field by field (a test holds the two together); filled in one
    ``__dict__`` update instead of the frozen dataclass' ten ``object.__setattr__`` calls, as
    this runs once per monitored step.
    """
    v = _new(Verdict)
    scores = dict(zip(names, values[0::4], strict=False))
    ratios = dict(zip(names, values[3::4], strict=False))
    v.__dict__.update(
        step=step,
        scores=scores,
        windowed=dict(zip(names, values[1::4], strict=False)),
        thresholds=dict(zip(names, values[2::4], strict=False)),
        ratios=ratios,
        fused_ratio=values[-1],
        alarm=bool(alarm[0]),
        fired=kernel.fired(scores, ratios),
        status="ok",
        error=None,
    )
    return v


class OnnxMonitor:
    """Watch rollouts with an exported monitor; behaves like :class:`failguard.Monitor`.

    Needs numpy and onnxruntime only: ``import failguard.runtime`` never imports torch.

    Parameters
    ----------
    path : str or path-like
        A ``.onnx`` file written by :func:`failguard.exporters.export_onnx`.
    providers : list, optional
        onnxruntime execution providers; default ``["CPUExecutionProvider"]``.
    intra_op_threads : int, optional, default=1
        Threads per operator. One thread gives the lowest latency for one robot; pass
        ``None`` to let onnxruntime choose (better for large batches).
    session_options : onnxruntime.SessionOptions, optional
        Used as given (``intra_op_threads`` is then ignored).
    nonfinite : {"raise", "alarm"}, default="raise"
        What a step whose score is NaN or inf does; as in :class:`failguard.Monitor`.
    verify : bool, default=True
        Check the SHA-256 that :func:`~failguard.exporters.export_onnx` stored in the
        metadata against the file (graph, weights, tables and metadata). Files exported
        before failguard stored checksums load with a warning.

    Notes
    -----
    One monitor keeps the state of its robots and is not thread-safe: use one per thread.
    Concurrent calls are refused with :class:`~failguard.ConcurrentUseError`.

    Attributes
    ----------
    names : list of str
        Indicator names, in order.
    requires : tuple of str
        The per-step inputs the monitor reads (``"embeddings"``, ``"action_samples"``, ...).
    groups : list of str
        Mondrian groups with their own thresholds (empty if none).
    metadata : dict
        Calibration facts: alpha, guarantee, rollout counts, thresholds, versions.

    Examples
    --------
    >>> from failguard.runtime import OnnxMonitor
    >>> mon = OnnxMonitor("monitor.onnx")  # doctest: +SKIP
    >>> v = mon.step(embedding=e, action_samples=a)  # doctest: +SKIP
    >>> v.alarm  # doctest: +SKIP
    False
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[Any] | None = None,
        intra_op_threads: int | None = 1,
        session_options: ort.SessionOptions | None = None,
        nonfinite: str = "raise",
        verify: bool = True,
    ) -> None:
        if nonfinite not in ("raise", "alarm"):
            raise ParameterError(
                "The 'nonfinite' parameter of OnnxMonitor must be one of ('raise', 'alarm'). "
                f"Got {nonfinite!r} instead."
            )
        self.nonfinite = nonfinite
        self._lock = threading.Lock()
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such file. Export a monitor with export_onnx.")
        if session_options is None:
            session_options = ort.SessionOptions()
            if intra_op_threads is not None:
                session_options.intra_op_num_threads = int(intra_op_threads)
                session_options.inter_op_num_threads = 1
        try:
            raw = self.path.read_bytes()
        except OSError as err:
            raise ArtifactError(f"{self.path}: cannot be read ({err}).") from err
        try:  # from the bytes that are verified below, not the path (no swap in between)
            self.session = ort.InferenceSession(
                raw,
                session_options,
                providers=list(providers) if providers else ["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it ({err}).") from err
        meta = _read_metadata(self.session, self.path)
        _verify_checksum(raw, meta, self.path, verify)
        self.metadata: dict[str, Any] = meta
        #: the monitor step this model computes, read back (and validated) from its metadata
        self.spec: MonitorSpec = MonitorSpec.from_dict(
            {k: v for k, v in meta.items() if k in _SPEC_KEYS}, str(self.path)
        ).with_nonfinite(nonfinite)
        self.names: list[str] = self.spec.names
        self.requires: tuple[str, ...] = self.spec.requires
        self.groups: list[str] = list(self.spec.groups)
        self.combine: str = self.spec.combine
        self._shapes = dict(self.spec.input_shapes)
        self._width = self.spec.state_widths
        # per-score state (a lagged embedding, a trailing window, the previous chunk): absent
        # in graphs exported before scores could keep one, which then have none
        try:
            self._hist = {
                str(h["name"]): tuple(int(x) for x in h["shape"])
                for h in meta.get("score_states", [])
            }
        except (TypeError, KeyError, ValueError) as err:
            raise ArtifactError(
                f"{self.path}: its metadata 'score_states' is malformed ({err}); the file is "
                "corrupt or was edited. Export the detector again."
            ) from err
        expected = {
            *self.requires,
            "t",
            "group",
            *(f"state_{n}" for n in self.names),
            *self._hist,
        }
        got = {i.name for i in self.session.get_inputs()}
        if got != expected:
            raise ArtifactError(
                f"{self.path}: graph inputs {sorted(got)} do not match its metadata "
                f"{sorted(expected)}; the file is corrupt or was edited."
            )
        self._outputs = [o.name for o in self.session.get_outputs()]
        # the report packs the indicators in the graph's order: the metadata must name them
        # in that same order, or every Verdict would carry the wrong labels
        graph_names = [o[len("score_") :] for o in self._outputs if o.startswith("score_")]
        if graph_names != self.names:
            raise ArtifactError(
                f"{self.path}: the metadata names the indicators {self.names}, but the graph "
                f"computes {graph_names} in that order; the file is corrupt or was edited. "
                "Export the detector again."
            )
        # fetch only what a step needs: the packed report, the alarm, the flags and the state
        self._fetch = [
            "report",
            "alarm",
            "overflow",
            *(f"new_state_{n}" for n in self.names),
            *(f"new_{h}" for h in self._hist),
        ]
        missing = [o for o in self._fetch if o not in self._outputs]
        if missing:
            raise ArtifactError(f"{self.path}: the graph lacks outputs {missing}.")
        # graphs exported before failguard flagged non-finite scores have no such output; the
        # runtime then computes the flag from the report (same rule)
        self._has_nonfinite = "nonfinite" in self._outputs
        if self._has_nonfinite:
            self._fetch.append("nonfinite")
        # The thin path of step(): per argument (in step()'s order), what a well-formed value
        # looks like, checked against cached facts; anything else takes the full checks below.
        self._expect: list[tuple[str, Any, tuple[int, ...], bool] | None] = []
        for fld in _ARGS:
            if fld in self.requires:
                _, kind, dtype = _FIELDS[fld]
                self._expect.append((fld, np.dtype(dtype), self._shapes[fld], kind == "float"))
            else:
                self._expect.append(None)
        # graphs that flag NaN/inf inputs themselves (in "overflow") need no numpy pass here
        checks = meta.get("input_checks")
        in_graph = set(checks) if isinstance(checks, list) else set()
        self._absent = [i for i, e in enumerate(self._expect) if e is None]
        self._present = [
            (
                i,
                e[0],
                e[1],
                e[2],
                ("none" if e[0] in in_graph else "finite") if e[3] else "ids",
            )
            for i, e in enumerate(self._expect)
            if e is not None
        ]
        self._state_keys = [(n, f"state_{n}") for n in self.names]
        # onnxruntime's C entry point skips the Python wrapper's per-call input re-validation
        # (our inputs are checked above); the public run() where it is not there
        inner = getattr(self.session, "_sess", None)
        self._run_options = ort.RunOptions()
        self._crun = inner.run if inner is not None and hasattr(inner, "run") else None
        self.reset_batch(1, _warn=False)  # Mondrian users pick their group with reset(group)

    # ------------------------------------------------------------------ state
    def _group_index(self, group: str | None, warn: bool = True) -> int:
        return kernel.group_row(self.spec.groups, self.spec.mondrian, group, warn)

    def _enter(self, where: str) -> None:
        if not self._lock.acquire(blocking=False):
            raise ConcurrentUseError(
                f"{where}: another thread is using this monitor at the same time, which would "
                "corrupt its state; use one OnnxMonitor per thread."
            )

    def reset(self, group: str | None = None) -> None:
        """Start a new rollout of one robot (optionally in a Mondrian group)."""
        self.reset_batch(1, None if group is None else [group])

    def reset_batch(
        self, n: int, groups: Sequence[str | None] | None = None, _warn: bool = True
    ) -> None:
        """Start new rollouts of ``n`` robots at once, for :meth:`step_batch`.

        Parameters
        ----------
        n : int
            Number of robots.
        groups : sequence of str or None, optional
            Mondrian group of each robot (length ``n``).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise RolloutError(f"reset_batch: n must be an int >= 1; got {n!r}.")
        if groups is not None and len(groups) != n:
            raise RolloutError(f"reset_batch: got {len(groups)} groups for {n} robots.")
        self._enter("OnnxMonitor.reset_batch")
        try:
            self._n = int(n)
            labels: list[str | None] = list(groups) if groups is not None else [None] * self._n
            self._group_names = labels
            self._group = np.array([self._group_index(g, _warn) for g in labels], dtype=np.int64)
            self._t = np.zeros(self._n, dtype=np.int64)
            self._state = {n_: np.zeros((self._n, self._width[n_])) for n_ in self.names}
            self._hist_state = {h: np.zeros((self._n, *shp)) for h, shp in self._hist.items()}
            # the graph inputs that are not per-step arguments; kept current by _commit
            self._feed_base: dict[str, Any] = {"t": self._t, "group": self._group}
            for n_, v in self._state.items():
                self._feed_base[f"state_{n_}"] = v
            self._feed_base.update(self._hist_state)
            self.last_verdict: Verdict | None = None
        finally:
            self._lock.release()

    def reset_robot(self, i: int, group: str | None = None) -> None:
        """Start a new rollout for robot ``i`` of the batch only."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise RolloutError(f"reset_robot: the robot index must be an int; got {i!r}.")
        if not 0 <= i < self._n:
            raise RolloutError(f"reset_robot: robot {i} out of range for a batch of {self._n}.")
        self._enter("OnnxMonitor.reset_robot")
        try:
            self._group[i] = self._group_index(group)
            self._group_names[i] = group
            self._t[i] = 0
            for s in (*self._state.values(), *self._hist_state.values()):
                s[i] = 0.0
        finally:
            self._lock.release()

    @property
    def t(self) -> int:
        """Index of the next step (of robot 0 in a batch)."""
        return int(self._t[0])

    @property
    def n_robots(self) -> int:
        """Number of robots the state is kept for."""
        return self._n

    def thresholds_for(self, group: str | None = None) -> dict[str, NDArray[np.float64]]:
        """Threshold table γ(t) of each indicator for ``group`` (last value repeated)."""
        row = kernel.group_row(self.spec.groups, self.spec.mondrian, group, warn=False)
        return self.spec.thresholds_row(row)

    # ------------------------------------------------------------------ checks
    def _feed(
        self, given: dict[str, ArrayLike | None], batched: bool, where: str
    ) -> tuple[dict[str, Any], dict[int, str]]:
        """The graph's inputs, and the robots refused for a NaN/inf input (batched only; their
        rows are fed as zeros and their results discarded)."""
        feed: dict[str, Any] = {}
        refused: dict[int, str] = {}
        n_rows = None
        for fld, arg in _ARGS.items():
            value = given[arg]
            if fld not in self.requires:
                if value is not None:
                    raise RolloutError(
                        f"{where}: this monitor does not read '{arg}' (it reads "
                        f"{[_ARGS[f] for f in self.requires]}); do not pass it."
                    )
                continue
            if value is None:
                raise RolloutError(f"{where}: this monitor needs '{arg}', which was not given.")
            ndim, kind, dtype = _FIELDS[fld]
            expected = self._shapes[fld]
            if (
                not batched
                and type(value) is np.ndarray
                and value.dtype == dtype
                and value.shape == expected
                and (kind == "int" or np.isfinite(value).all())
            ):  # fast path for the common case: already the right array
                arr = value[None]
            elif batched:
                arr = as_step_array(fld, value, ndim, kind, where, check_finite=False)
            else:
                arr = as_step_array(fld, value, ndim - 1, kind, where)[None]
            if tuple(arr.shape[1:]) != expected:
                shown = tuple(arr.shape[1:])
                raise RolloutError(
                    f"{where}: '{arg}' has {'per-robot ' if batched else ''}shape {shown}, but "
                    f"the detector was fitted on {expected}."
                )
            if batched and kind == "float":
                finite = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
                if not finite.all():
                    arr = arr.copy()
                    for i in np.flatnonzero(~finite).tolist():
                        refused.setdefault(
                            i, f"'{arg}' of robot {i} contains NaN or inf (or overflows float32)"
                        )
                        arr[i] = 0.0
            if kind == "int":
                big = (arr.reshape(arr.shape[0], -1) >= _ID_LIMIT) | (
                    arr.reshape(arr.shape[0], -1) <= -_ID_LIMIT
                )
                rows_bad = big.any(axis=1)
                if rows_bad.any():
                    message = (
                        f"'{arg}' holds ids of magnitude 2**53 or more; the exported entropy "
                        "counts ids exactly only below that. Map ids to small integers."
                    )
                    if not batched:
                        raise RolloutError(f"{where}: {message}")
                    arr = arr.copy()
                    for i in np.flatnonzero(rows_bad).tolist():
                        refused.setdefault(i, message)
                        arr[i] = 0
            if n_rows is not None and arr.shape[0] != n_rows:
                raise RolloutError(
                    f"{where}: inputs disagree on the number of robots "
                    f"({n_rows} vs {arr.shape[0]})."
                )
            n_rows = arr.shape[0]
            feed[fld] = np.ascontiguousarray(arr)
        if n_rows != self._n:
            hint = "reset_batch(n)" if batched else "reset()"
            raise RolloutError(
                f"{where}: got {n_rows} robot(s), but the state is kept for {self._n}; call "
                f"{hint} first."
            )
        feed["t"] = self._t
        feed["group"] = self._group
        for n in self.names:
            feed[f"state_{n}"] = self._state[n]
        feed.update(self._hist_state)
        return feed, refused

    def _thin_feed(self, given: tuple[Any, ...]) -> dict[str, Any] | None:
        """The feed of one robot's step if every argument is exactly what the graph takes
        (a C-contiguous ndarray of the cached dtype and shape, finite, nothing extra), else
        None: the caller then runs the full checks of :meth:`_feed`, which name the problem.

        Finiteness is checked by the graph itself (its ``overflow`` flag) when it can; numpy
        calls are kept out of this path (next to onnxruntime, each costs far more than its own
        run time)."""
        if self._n != 1:
            return None
        for i in self._absent:
            if given[i] is not None:
                return None
        feed = self._feed_base
        for i, fld, dtype, shape, check in self._present:
            value = given[i]
            if (
                type(value) is not np.ndarray
                or (value.dtype is not dtype and value.dtype != dtype)
                or value.shape != shape
                or not value.flags.c_contiguous
            ):
                return None
            if check == "finite":
                if not np.isfinite(value).all():
                    return None
            elif (
                check == "ids"
                and value.size
                and (value.max() >= _ID_LIMIT or value.min() <= -_ID_LIMIT)
            ):
                return None
            feed[fld] = value[None]
        return feed

    def _run(
        self, feed: dict[str, Any], where: str, refused: dict[int, str], batched: bool
    ) -> tuple[NDArray[np.float64], NDArray[Any], NDArray[np.bool_], dict[int, str]]:
        """Run one step and apply the state of the robots whose step is accepted.

        Returns the report as a (4k + 1, N) array, the alarms (N,), the non-finite flags (N,)
        and the refused robots with the reason.
        """
        return self._apply(self._call(feed, where), where, refused, batched)

    def _call(self, feed: dict[str, Any], where: str) -> list[Any]:
        """One onnxruntime call: the fetched outputs, in ``self._fetch`` order."""
        try:
            if self._crun is not None:
                return self._crun(self._fetch, feed, self._run_options)
            return list(self.session.run(self._fetch, feed))
        except Exception as err:  # onnxruntime raises its own exception types
            raise RolloutError(f"{where}: onnxruntime rejected the step ({err}).") from err

    def _apply(
        self, outputs: list[Any], where: str, refused: dict[int, str], batched: bool
    ) -> tuple[NDArray[np.float64], NDArray[Any], NDArray[np.bool_], dict[int, str]]:
        """Apply the state of the robots whose step is accepted (see :meth:`_run`)."""
        report, alarm, overflow, *rest = outputs
        states = rest[: len(self.names)]
        hist = rest[len(self.names) : len(self.names) + len(self._hist)]
        report = report.reshape(-1, self._n)
        if self._has_nonfinite:
            nonfinite = np.asarray(rest[-1], dtype=bool)
        else:  # an older graph: the same rule, from the report
            k = len(self.names)
            nonfinite = ~np.isfinite(report[0 : 4 * k : 4]).all(axis=0) | np.isnan(report[-1])
            alarm = alarm | kernel.alarm(report[-1], nonfinite)
        refused = dict(refused)
        for i in np.flatnonzero(overflow).tolist():
            refused.setdefault(
                i,
                f"the graph cannot score robot {i}'s input exactly (monitors exported before "
                "failguard scored ACE exactly at any spread flag action samples spread over "
                "more than 2^53 grid cells; export the detector again to score such steps)",
            )
        if self.nonfinite == "raise":
            for i in np.flatnonzero(nonfinite).tolist():
                refused.setdefault(
                    i,
                    f"robot {i} gives a non-finite score from finite inputs (an extreme input "
                    "overflowed a score); create the monitor with nonfinite='alarm' to count "
                    "such steps as alarms",
                )
        if refused and not batched:
            message = next(iter(refused.values()))
            error = NonFiniteScoreError if nonfinite.any() and not overflow.any() else RolloutError
            raise error(f"{where}: {message}. The step was not applied.")
        keep = np.ones(self._n, dtype=bool)
        keep[list(refused)] = False
        for n, state in zip(self.names, states, strict=True):
            if nonfinite.any():  # older graphs let NaN into the state: +inf, as new ones do
                state = np.where(np.isnan(state), np.inf, state)
            if keep.all():
                self._state[n] = state
            else:
                self._state[n] = np.where(keep[:, None], state, self._state[n])
        for h, value in zip(self._hist, hist, strict=True):
            if keep.all():
                self._hist_state[h] = value
            else:
                mask = keep.reshape(-1, *([1] * (value.ndim - 1)))
                self._hist_state[h] = np.where(mask, value, self._hist_state[h])
        self._t = np.where(keep, self._t + 1, self._t)
        self._sync_feed_base()
        return report, alarm, nonfinite, refused

    def _sync_feed_base(self) -> None:
        base = self._feed_base
        base["t"] = self._t
        base["group"] = self._group
        for n, v in self._state.items():
            base[f"state_{n}"] = v
        base.update(self._hist_state)

    # ------------------------------------------------------------------ steps
    def step(
        self,
        embedding: ArrayLike | None = None,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
        state: ArrayLike | None = None,
    ) -> Verdict:
        """Score one policy step of one robot and say whether to alarm.

        Parameters
        ----------
        embedding : array_like of shape (d,)
        action_samples : array_like of shape (B, H, D), if the monitor reads it
        action_logits : array_like of shape (K,), if the monitor reads it
        action_ids : array_like of shape (B,), if the monitor reads it
        state : array_like of shape (S,), if the monitor reads it (``Rollout.states``)

        Returns
        -------
        Verdict

        Raises
        ------
        RolloutError
            On a missing or unexpected input, a wrong shape or dtype, or a NaN/inf. The
            state is left as it was.
        NonFiniteScoreError
            A score is NaN or inf and ``nonfinite="raise"``; the state is left as it was.
        ConcurrentUseError
            Another thread is using this monitor.
        """
        where = "OnnxMonitor.step"
        if not self._lock.acquire(blocking=False):
            self._enter(where)  # raises ConcurrentUseError
        try:
            given = (embedding, action_samples, action_logits, action_ids, state)
            feed = self._thin_feed(given)
            if feed is None:  # anything unusual: the full checks, which name the problem
                feed, refused = self._feed(
                    dict(zip(_ARGS.values(), given, strict=True)), False, where
                )
                step = int(self._t[0])
                report, alarm, nonfinite, _ = self._run(feed, where, refused, False)
                values = report[:, 0].tolist()
                is_nonfinite = bool(nonfinite[0])
            else:
                step = int(self._t[0])
                outputs = self._call(feed, where)
                if outputs[2][0]:  # a NaN/inf input, or a flagged score: the full checks
                    self._feed(dict(zip(_ARGS.values(), given, strict=True)), False, where)
                if outputs[2][0] or not self._has_nonfinite or outputs[-1][0]:
                    # flagged (or an older graph): the full rules of _apply
                    report, alarm, nonfinite, _ = self._apply(outputs, where, {}, False)
                    values = report[:, 0].tolist()
                    is_nonfinite = bool(nonfinite[0])
                else:  # the usual step: take the new state as it is
                    windows, base = self._state, self._feed_base
                    for j, (n, key) in enumerate(self._state_keys, 3):
                        windows[n] = base[key] = outputs[j]
                    hist = self._hist_state
                    for j, h in enumerate(self._hist, 3 + len(self._state_keys)):
                        hist[h] = base[h] = outputs[j]
                    # in place (the feed holds this array); an item store, not a ufunc: in a
                    # loop with onnxruntime a numpy ufunc call costs several times its own time
                    self._t[0] = step + 1
                    verdict = _ok_verdict(step, self.names, outputs[0].tolist(), outputs[1])
                    self.last_verdict = verdict
                    return verdict
        finally:
            self._lock.release()
        names = self.names
        scores = dict(zip(names, values[0::4], strict=False))
        ratios = dict(zip(names, values[3::4], strict=False))
        verdict = Verdict(
            step=step,
            scores=scores,
            windowed=dict(zip(names, values[1::4], strict=False)),
            thresholds=dict(zip(names, values[2::4], strict=False)),
            ratios=ratios,
            fused_ratio=values[-1],
            alarm=bool(alarm[0]),
            fired=fired_names(scores, ratios),
            status="nonfinite" if is_nonfinite else "ok",
        )
        self.last_verdict = verdict
        return verdict

    def step_batch(
        self,
        embedding: ArrayLike | None = None,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
        state: ArrayLike | None = None,
    ) -> BatchVerdict:
        """Score one policy step of each of N robots (see :meth:`reset_batch`).

        A problem with one robot's data (a NaN/inf input, a non-finite score with
        ``nonfinite="raise"``, action samples spread too far) refuses that robot's step only:
        its state is left as it was, its ``status`` is ``"error"`` and its ``alarm`` True (fail
        safe); the other robots are scored as usual. Problems with the batch itself (a wrong
        shape, dtype or number of robots) raise :class:`~failguard.exceptions.RolloutError`.

        Parameters
        ----------
        embedding : array_like of shape (N, d)
        action_samples : array_like of shape (N, B, H, D), if the monitor reads it
        action_logits : array_like of shape (N, K), if the monitor reads it
        action_ids : array_like of shape (N, B), if the monitor reads it
        state : array_like of shape (N, S), if the monitor reads it

        Returns
        -------
        BatchVerdict
            Arrays of shape (N,).
        """
        where = "OnnxMonitor.step_batch"
        self._enter(where)
        try:
            feed, refused = self._feed(
                {
                    "embedding": embedding,
                    "action_samples": action_samples,
                    "action_logits": action_logits,
                    "action_ids": action_ids,
                    "state": state,
                },
                True,
                where,
            )
            steps = self._t.copy()
            report, alarm, nonfinite, refused = self._run(feed, where, refused, True)
        finally:
            self._lock.release()
        names = self.names
        status = None
        alarm = alarm.astype(bool)
        if refused or nonfinite.any():
            status = np.where(nonfinite, "nonfinite", "ok").astype("<U9")
            idx = list(refused)
            status[idx] = "error"
            alarm[idx] = True
            report = report.copy()
            report[:, idx] = np.nan
        return BatchVerdict(
            step=steps,
            scores={n: report[4 * i] for i, n in enumerate(names)},
            windowed={n: report[4 * i + 1] for i, n in enumerate(names)},
            thresholds={n: report[4 * i + 2] for i, n in enumerate(names)},
            ratios={n: report[4 * i + 3] for i, n in enumerate(names)},
            fused_ratio=report[-1],
            alarm=alarm,
            status=status,
            errors={i: refused[i] for i in sorted(refused)},
        )

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"OnnxMonitor({str(self.path)!r}, scores={self.names}, combine={self.combine!r}, "
            f"threshold={m.get('threshold')!r}, alpha={m.get('alpha')}, robots={self._n})"
        )
