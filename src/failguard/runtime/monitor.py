"""OnnxMonitor: run an exported monitor step with numpy and onnxruntime only (no torch).

The graph written by :func:`failguard.exporters.export_onnx` computes one whole monitor step
for N robots at once; this class keeps the window state and the step counters between calls
and checks every input before it reaches onnxruntime, so a bad input gives a clear
:class:`~failguard.exceptions.RolloutError` (never a crash inside onnxruntime, never a silent
wrong alarm).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from .._version import SCHEMA_VERSION, __version__
from ..exceptions import ArtifactError, RolloutError
from ..types import _FIELDS, Verdict, as_step_array

__all__ = ["BatchVerdict", "OnnxMonitor"]

_METADATA_KEY = "failguard"  # same as failguard.exporters.onnx.METADATA_KEY (no import: torch)
_ARGS = {
    "embeddings": "embedding",
    "action_samples": "action_samples",
    "action_logits": "action_logits",
    "action_ids": "action_ids",
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
        ``fused_ratio > 1``.

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

    def __len__(self) -> int:
        return int(self.alarm.shape[0])

    def verdict(self, i: int) -> Verdict:
        """The :class:`~failguard.types.Verdict` of robot ``i``."""
        ratios = {k: float(v[i]) for k, v in self.ratios.items()}
        return Verdict(
            step=int(self.step[i]),
            scores={k: float(v[i]) for k, v in self.scores.items()},
            windowed={k: float(v[i]) for k, v in self.windowed.items()},
            thresholds={k: float(v[i]) for k, v in self.thresholds.items()},
            ratios=ratios,
            fused_ratio=float(self.fused_ratio[i]),
            alarm=bool(self.alarm[i]),
            fired=tuple(k for k, r in ratios.items() if r > 1.0),
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
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such file. Export a monitor with export_onnx.")
        if session_options is None:
            session_options = ort.SessionOptions()
            if intra_op_threads is not None:
                session_options.intra_op_num_threads = int(intra_op_threads)
                session_options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                session_options,
                providers=list(providers) if providers else ["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it ({err}).") from err
        meta = _read_metadata(self.session, self.path)
        self.metadata: dict[str, Any] = meta
        self.names: list[str] = list(meta["names"])
        self.requires: tuple[str, ...] = tuple(meta["requires"])
        self.groups: list[str] = list(meta["groups"])
        self.combine: str = str(meta.get("combine", "and"))
        self._shapes = {f: tuple(int(x) for x in s) for f, s in meta["input_shapes"].items()}
        self._width = {
            n: 1 if meta["window_kind"] == "cumulative" else int(meta["windows"][n])
            for n in self.names
        }
        expected = {*self.requires, "t", "group", *(f"state_{n}" for n in self.names)}
        got = {i.name for i in self.session.get_inputs()}
        if got != expected:
            raise ArtifactError(
                f"{self.path}: graph inputs {sorted(got)} do not match its metadata "
                f"{sorted(expected)}; the file is corrupt or was edited."
            )
        self._outputs = [o.name for o in self.session.get_outputs()]
        # fetch only what a step needs: the packed report, the alarm, the flag and the state
        self._fetch = ["report", "alarm", "overflow", *(f"new_state_{n}" for n in self.names)]
        missing = [o for o in self._fetch if o not in self._outputs]
        if missing:
            raise ArtifactError(f"{self.path}: the graph lacks outputs {missing}.")
        self.reset_batch(1, _warn=False)  # Mondrian users pick their group with reset(group)

    # ------------------------------------------------------------------ state
    def _group_index(self, group: str | None, warn: bool = True) -> int:
        if not self.metadata.get("mondrian"):
            return 0
        if group in self.groups:
            return 1 + self.groups.index(group)
        if warn:
            warnings.warn(
                f"No Mondrian thresholds for group {group!r} (calibrated groups: {self.groups}); "
                "using the pooled thresholds.",
                UserWarning,
                stacklevel=3,
            )
        return 0

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
            raise ValueError(f"reset_batch: n must be an int >= 1; got {n!r}.")
        if groups is not None and len(groups) != n:
            raise ValueError(f"reset_batch: got {len(groups)} groups for {n} robots.")
        self._n = int(n)
        labels: list[str | None] = list(groups) if groups is not None else [None] * self._n
        self._group_names = labels
        self._group = np.array([self._group_index(g, _warn) for g in labels], dtype=np.int64)
        self._t = np.zeros(self._n, dtype=np.int64)
        self._state = {n_: np.zeros((self._n, self._width[n_])) for n_ in self.names}
        self.last_verdict: Verdict | None = None

    def reset_robot(self, i: int, group: str | None = None) -> None:
        """Start a new rollout for robot ``i`` of the batch only."""
        if not 0 <= i < self._n:
            raise IndexError(f"reset_robot: robot {i} out of range for a batch of {self._n}.")
        self._group[i] = self._group_index(group)
        self._group_names[i] = group
        self._t[i] = 0
        for s in self._state.values():
            s[i] = 0.0

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
        row = 1 + self.groups.index(group) if group in self.groups else 0
        return {
            n: np.asarray(v[row], dtype=np.float64) for n, v in self.metadata["thresholds"].items()
        }

    # ------------------------------------------------------------------ checks
    def _feed(
        self, given: dict[str, ArrayLike | None], batched: bool, where: str
    ) -> dict[str, Any]:
        feed: dict[str, Any] = {}
        n_rows = None
        for field, arg in _ARGS.items():
            value = given[arg]
            if field not in self.requires:
                if value is not None:
                    raise RolloutError(
                        f"{where}: this monitor does not read '{arg}' (it reads "
                        f"{[_ARGS[f] for f in self.requires]}); do not pass it."
                    )
                continue
            if value is None:
                raise RolloutError(f"{where}: this monitor needs '{arg}', which was not given.")
            ndim, kind, dtype = _FIELDS[field]
            expected = self._shapes[field]
            if (
                not batched
                and type(value) is np.ndarray
                and value.dtype == dtype
                and value.shape == expected
                and (kind == "int" or np.isfinite(value).all())
            ):  # fast path for the common case: already the right array
                arr = value[None]
            else:
                arr = as_step_array(field, value, ndim if batched else ndim - 1, kind, where)
                if not batched:
                    arr = arr[None]
            if tuple(arr.shape[1:]) != expected:
                shown = tuple(arr.shape[1:])
                raise RolloutError(
                    f"{where}: '{arg}' has {'per-robot ' if batched else ''}shape {shown}, but "
                    f"the detector was fitted on {expected}."
                )
            if kind == "int" and (arr.max() >= _ID_LIMIT or arr.min() <= -_ID_LIMIT):
                raise RolloutError(
                    f"{where}: '{arg}' holds ids of magnitude 2**53 or more; the exported "
                    "entropy counts ids exactly only below that. Map ids to small integers."
                )
            if n_rows is not None and arr.shape[0] != n_rows:
                raise RolloutError(
                    f"{where}: inputs disagree on the number of robots "
                    f"({n_rows} vs {arr.shape[0]})."
                )
            n_rows = arr.shape[0]
            feed[field] = np.ascontiguousarray(arr)
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
        return feed

    def _run(self, feed: dict[str, Any], where: str) -> tuple[NDArray[np.float64], NDArray[Any]]:
        """Run one step; return the report as a (4k + 1, N) array and the alarms (N,)."""
        try:
            report, alarm, overflow, *states = self.session.run(self._fetch, feed)
        except Exception as err:  # onnxruntime raises its own exception types
            raise RolloutError(f"{where}: onnxruntime rejected the step ({err}).") from err
        if overflow.any():
            bad = np.flatnonzero(overflow).tolist()
            raise RolloutError(
                f"{where}: the action samples of robot(s) {bad} spread over more grid cells "
                "(over 2^53 in one chunk index) than the exported ACE can count exactly; the "
                "step was not applied. Check the action scale (the cell size was fitted on the "
                "actions of the rollouts given to fit)."
            )
        for n, state in zip(self.names, states, strict=True):
            self._state[n] = state
        return report.reshape(-1, self._n), alarm

    # ------------------------------------------------------------------ steps
    def step(
        self,
        embedding: ArrayLike | None = None,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
    ) -> Verdict:
        """Score one policy step of one robot and say whether to alarm.

        Parameters
        ----------
        embedding : array_like of shape (d,)
        action_samples : array_like of shape (B, H, D), if the monitor reads it
        action_logits : array_like of shape (K,), if the monitor reads it
        action_ids : array_like of shape (B,), if the monitor reads it

        Returns
        -------
        Verdict

        Raises
        ------
        RolloutError
            On a missing or unexpected input, a wrong shape or dtype, or a NaN/inf.
        """
        where = "OnnxMonitor.step"
        feed = self._feed(
            {
                "embedding": embedding,
                "action_samples": action_samples,
                "action_logits": action_logits,
                "action_ids": action_ids,
            },
            False,
            where,
        )
        report, alarm = self._run(feed, where)
        values = report[:, 0].tolist()
        parts: list[dict[str, float]] = [{}, {}, {}, {}]
        for i, n in enumerate(self.names):
            for j in range(4):
                parts[j][n] = values[4 * i + j]
        ratios = parts[3]
        verdict = Verdict(
            step=int(self._t[0]),
            scores=parts[0],
            windowed=parts[1],
            thresholds=parts[2],
            ratios=ratios,
            fused_ratio=values[-1],
            alarm=bool(alarm[0]),
            fired=tuple(k for k, r in ratios.items() if r > 1.0),
        )
        self._t = self._t + 1
        self.last_verdict = verdict
        return verdict

    def step_batch(
        self,
        embedding: ArrayLike | None = None,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
    ) -> BatchVerdict:
        """Score one policy step of each of N robots (see :meth:`reset_batch`).

        Parameters
        ----------
        embedding : array_like of shape (N, d)
        action_samples : array_like of shape (N, B, H, D), if the monitor reads it
        action_logits : array_like of shape (N, K), if the monitor reads it
        action_ids : array_like of shape (N, B), if the monitor reads it

        Returns
        -------
        BatchVerdict
            Arrays of shape (N,).
        """
        where = "OnnxMonitor.step_batch"
        feed = self._feed(
            {
                "embedding": embedding,
                "action_samples": action_samples,
                "action_logits": action_logits,
                "action_ids": action_ids,
            },
            True,
            where,
        )
        report, alarm = self._run(feed, where)
        names = self.names
        result = BatchVerdict(
            step=self._t.copy(),
            scores={n: report[4 * i] for i, n in enumerate(names)},
            windowed={n: report[4 * i + 1] for i, n in enumerate(names)},
            thresholds={n: report[4 * i + 2] for i, n in enumerate(names)},
            ratios={n: report[4 * i + 3] for i, n in enumerate(names)},
            fused_ratio=report[-1],
            alarm=alarm.astype(bool),
        )
        self._t = self._t + 1
        return result

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"OnnxMonitor({str(self.path)!r}, scores={self.names}, combine={self.combine!r}, "
            f"threshold={m.get('threshold')!r}, alpha={m.get('alpha')}, robots={self._n})"
        )
