"""MonitorSpec: a calibrated detector compiled into a frozen, torch-free description of its step.

A spec holds everything the monitor step needs besides the scores themselves: the indicator
names, their windows and window kind, the fusion rule, the (G, L) threshold table of each
indicator (row 0 pooled, then one row per Mondrian group, in sorted order; past its end a
row repeats its last value), the calibrated profiles and episode statistics behind them (for
p-values and the health check), the input shapes, the policy for non-finite scores, and the
calibration facts (alpha, guarantee, rollout counts).

It is compiled from a calibrated detector (:meth:`FailureDetector.spec`), run by the step
kernel (:mod:`failguard.core.kernel`), serialised to JSON (:meth:`MonitorSpec.to_json`,
exact: floats round-trip bit for bit), and written into the ONNX model's metadata, from
which :class:`failguard.runtime.OnnxMonitor` reads it back. Reading one validates every
key, type and range before anything is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..exceptions import ArtifactError, ConfigError, NotFittedError
from ..windows import WINDOW_KINDS
from .kernel import fusion_rank

__all__ = [
    "MAX_TABLE_LENGTH",
    "MAX_WINDOW",
    "SPEC_VERSION",
    "MonitorSpec",
    "ScoreSpec",
    "compile_spec",
    "inputs_read",
]

#: Version of the spec's JSON layout.
SPEC_VERSION = 1
#: Longest window; a window is O(w) state per robot, so absurd values are refused up front.
MAX_WINDOW = 100_000
#: Longest threshold table (one entry per policy step).
MAX_TABLE_LENGTH = 10_000_000
#: Most indicators one monitor may hold.
MAX_SCORES = 64
#: Largest size of one axis of a per-step input.
MAX_INPUT_DIM = 10**7
#: Largest number of values in one per-step input.
MAX_INPUT_SIZE = 10**8
#: The per-step inputs a score may read (``Rollout`` fields).
INPUT_FIELDS = ("embeddings", "action_samples", "action_logits", "action_ids", "states")
NONFINITE_POLICIES = ("raise", "alarm")
#: Calibration facts carried along (informative; the step does not read them), with types.
FACTS: dict[str, type] = {
    "threshold": str,
    "alpha": float,
    "guarantee": str,
    "delta": float,
    "mode": str,
    "n_fit": int,
    "n_calibration": int,
    "n_conformal": int,
}
_REQUIRED = (
    "names",
    "score_types",
    "requires",
    "input_shapes",
    "windows",
    "window_kind",
    "combine",
    "mondrian",
    "groups",
    "thresholds",
)
_OPTIONAL = ("spec_version", "score_requires", "profiles", "statistics", "nonfinite", *FACTS)
KEYS = frozenset((*_REQUIRED, *_OPTIONAL))


@dataclass(frozen=True)
class ScoreSpec:
    """One indicator: its name, score type, the inputs it reads and its window length."""

    name: str
    type: str
    requires: tuple[str, ...]
    window: int

    def state_width(self, window_kind: str) -> int:
        """Width of its window state: w raw scores, or one running total (cumulative)."""
        return 1 if window_kind == "cumulative" else self.window


def inputs_read(scores: Sequence[Any]) -> tuple[str, ...]:
    """The inputs that ``scores`` read (their ``requires``), each once, in first-use order.

    Examples
    --------
    >>> inputs_read([ScoreSpec("a", "A", ("embeddings",), 1),
    ...              ScoreSpec("b", "B", ("action_samples", "embeddings"), 1)])
    ('embeddings', 'action_samples')
    """
    out: list[str] = []
    for s in scores:
        out += [f for f in s.requires if f not in out]
    return tuple(out)


def _frozen(arr: Any) -> NDArray[np.float64]:
    out = np.array(arr, dtype=np.float64)
    out.setflags(write=False)
    return out


def _pad_rows(rows: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """(G, L) from rows of unequal length, each padded with its last value (same lookup)."""
    width = max(r.shape[0] for r in rows)
    return np.stack([np.concatenate([r, np.full(width - r.shape[0], r[-1])]) for r in rows])


@dataclass(frozen=True, eq=False)
class MonitorSpec:
    """The frozen description of one monitor step (see the module docstring).

    Parameters
    ----------
    scores : tuple of ScoreSpec
    input_shapes : mapping field -> per-step shape
    window_kind : {"sum", "mean", "cumulative"}
    combine : {"and", "or", "k-of-n"}
    thresholds : mapping name -> (G, L) float64
        Row 0 pooled, row 1 + i for ``groups[i]``; finite and positive.
    groups : tuple of str
        Mondrian groups (sorted), empty without Mondrian thresholds.
    mondrian : bool
    offsets, scales : mapping name -> (G, L') float64, optional
        The calibrated profiles a(t), b(t) > 0 (needed for p-values and the health check).
    statistics : tuple of mappings, optional
        Per row, the sorted calibration episode statistics by indicator (and ``"fused"``).
    nonfinite : {"raise", "alarm"}, default="raise"
        What a monitor does with a step whose score is NaN or inf.
    facts : mapping
        Calibration facts (alpha, guarantee, rollout counts), informative only.

    Examples
    --------
    >>> spec = MonitorSpec(
    ...     scores=(ScoreSpec("rnd", "RNDScore", ("embeddings",), 3),),
    ...     input_shapes={"embeddings": (4,)}, window_kind="sum", combine="and",
    ...     thresholds={"rnd": np.array([[2.5]])})
    >>> MonitorSpec.from_json(spec.to_json()) == spec
    True
    """

    scores: tuple[ScoreSpec, ...]
    input_shapes: Mapping[str, tuple[int, ...]]
    window_kind: str
    combine: str
    thresholds: Mapping[str, NDArray[np.float64]]
    groups: tuple[str, ...] = ()
    mondrian: bool = False
    offsets: Mapping[str, NDArray[np.float64]] | None = None
    scales: Mapping[str, NDArray[np.float64]] | None = None
    statistics: tuple[Mapping[str, NDArray[np.float64]], ...] | None = None
    nonfinite: str = "raise"
    facts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"MonitorSpec: {message}")

        def tables(
            what: str, value: Mapping[str, Any], positive: bool
        ) -> dict[str, NDArray[np.float64]]:
            if not isinstance(value, Mapping) or list(value) != self.names:
                raise bad(f"'{what}' must give a table for each of {self.names}, in order.")
            out = {}
            for n, tab in value.items():
                arr = _frozen(tab)
                if arr.ndim != 2 or arr.shape[0] != n_rows:
                    raise bad(f"the {what} of {n!r} must have {n_rows} row(s); got {arr.shape}.")
                if not 1 <= arr.shape[1] <= MAX_TABLE_LENGTH:
                    raise bad(f"the {what} of {n!r} must have 1 to {MAX_TABLE_LENGTH} columns.")
                if not np.all(np.isfinite(arr)) or (positive and not np.all(arr > 0)):
                    sign = " and positive" if positive else ""
                    raise bad(f"the {what} of {n!r} must be finite{sign}.")
                out[n] = arr
            return out

        scores = tuple(self.scores)
        if not 1 <= len(scores) <= MAX_SCORES or not all(isinstance(s, ScoreSpec) for s in scores):
            raise bad(f"'scores' must be 1 to {MAX_SCORES} ScoreSpec.")
        names = [s.name for s in scores]
        if len(set(names)) != len(names) or not all(
            isinstance(n, str) and n.isidentifier() for n in names
        ):
            raise bad(f"indicator names must be unique identifiers; got {names}.")
        object.__setattr__(self, "scores", scores)
        for s in scores:
            if not isinstance(s.type, str) or not s.requires:
                raise bad(f"score {s.name!r} needs a type name and the inputs it reads.")
            if any(f not in INPUT_FIELDS for f in s.requires):
                raise bad(f"score {s.name!r} reads {s.requires}; known inputs: {INPUT_FIELDS}.")
            w = s.window
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WINDOW:
                raise bad(f"the window of {s.name!r} must be an int in [1, {MAX_WINDOW}]; got {w}.")
        shapes: dict[str, tuple[int, ...]] = {}
        for f, shp in dict(self.input_shapes).items():
            dims = tuple(shp)
            if (
                f not in INPUT_FIELDS
                or not 1 <= len(dims) <= 4
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in dims)
                or not all(1 <= x <= MAX_INPUT_DIM for x in dims)
                or math.prod(dims) > MAX_INPUT_SIZE
            ):
                raise bad(f"input '{f}' has an invalid per-step shape {dims}.")
            shapes[f] = dims
        missing = [f for f in self.requires if f not in shapes]
        if missing:
            raise bad(f"no input shape for {missing}.")
        object.__setattr__(self, "input_shapes", shapes)
        if self.window_kind not in WINDOW_KINDS:
            raise bad(f"'window_kind' must be one of {WINDOW_KINDS}; got {self.window_kind!r}.")
        try:
            fusion_rank(self.combine, len(names))
        except (ValueError, TypeError, AttributeError) as err:
            raise bad(str(err)) from None
        if self.nonfinite not in NONFINITE_POLICIES:
            raise bad(f"'nonfinite' must be one of {NONFINITE_POLICIES}; got {self.nonfinite!r}.")
        groups = tuple(self.groups)
        if not all(isinstance(g, str) for g in groups) or list(groups) != sorted(set(groups)):
            raise bad("'groups' must be distinct strings in sorted order.")
        if not isinstance(self.mondrian, bool) or (groups and not self.mondrian):
            raise bad("'groups' are only for mondrian=True.")
        object.__setattr__(self, "groups", groups)
        n_rows = 1 + len(groups)
        object.__setattr__(self, "thresholds", tables("thresholds", self.thresholds, True))
        if (self.offsets is None) != (self.scales is None):
            raise bad("'offsets' and 'scales' go together.")
        if self.offsets is not None and self.scales is not None:
            object.__setattr__(self, "offsets", tables("offsets", self.offsets, False))
            object.__setattr__(self, "scales", tables("scales", self.scales, True))
        if self.statistics is not None:
            stats = []
            if len(self.statistics) != n_rows:
                raise bad(f"'statistics' must have one entry per threshold row ({n_rows}).")
            for entry in self.statistics:
                if not isinstance(entry, Mapping) or not set(entry) <= {*names, "fused"}:
                    raise bad(f"'statistics' entries must be keyed by {names} or 'fused'.")
                row = {k: _frozen(v) for k, v in entry.items()}
                if not all(a.ndim == 1 and np.all(np.isfinite(a)) for a in row.values()):
                    raise bad("'statistics' must be finite 1-d arrays.")
                stats.append(row)
            object.__setattr__(self, "statistics", tuple(stats))
        facts = dict(self.facts)
        for k, v in facts.items():
            kind = FACTS.get(k)
            ok = kind is not None and isinstance(v, kind) and not isinstance(v, bool)
            if kind is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok:
                raise bad(f"fact {k!r}={v!r} is unknown or of the wrong type.")
        object.__setattr__(self, "facts", facts)

    # ------------------------------------------------------------------ derived
    @property
    def names(self) -> list[str]:
        """Indicator names, in order."""
        return [s.name for s in self.scores]

    @property
    def windows(self) -> dict[str, int]:
        """Window length of each indicator."""
        return {s.name: s.window for s in self.scores}

    @property
    def requires(self) -> tuple[str, ...]:
        """The per-step inputs the scores read, in first-use order."""
        return inputs_read(self.scores)

    @property
    def state_widths(self) -> dict[str, int]:
        """Width of each indicator's window state (per robot)."""
        return {s.name: s.state_width(self.window_kind) for s in self.scores}

    @property
    def n_rows(self) -> int:
        """Threshold rows: 1 (pooled) + the Mondrian groups."""
        return 1 + len(self.groups)

    def thresholds_row(self, row: int = 0) -> dict[str, NDArray[np.float64]]:
        """γ(t) table of each indicator in threshold row ``row`` (last value repeated)."""
        return {n: self.thresholds[n][row] for n in self.names}

    def require_profiles(
        self,
    ) -> tuple[Mapping[str, NDArray[np.float64]], Mapping[str, NDArray[np.float64]]]:
        """(offsets, scales), or an error if this spec was written without them."""
        if self.offsets is None or self.scales is None or self.statistics is None:
            raise ConfigError(
                "This MonitorSpec carries no calibration profiles or statistics (it was read "
                "from a model exported before failguard stored them); compile it from the "
                "calibrated detector (detector.spec()) for p-values and health checks."
            )
        return self.offsets, self.scales

    def with_nonfinite(self, nonfinite: str) -> MonitorSpec:
        """The same spec with another policy for non-finite scores."""
        from dataclasses import replace

        return self if nonfinite == self.nonfinite else replace(self, nonfinite=nonfinite)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (exact floats); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {
            "spec_version": SPEC_VERSION,
            "names": self.names,
            "score_types": {s.name: s.type for s in self.scores},
            "score_requires": {s.name: list(s.requires) for s in self.scores},
            "requires": list(self.requires),
            "input_shapes": {f: list(v) for f, v in self.input_shapes.items()},
            "windows": self.windows,
            "window_kind": self.window_kind,
            "combine": self.combine,
            "mondrian": self.mondrian,
            "groups": list(self.groups),
            "thresholds": {n: t.tolist() for n, t in self.thresholds.items()},
            "nonfinite": self.nonfinite,
            **self.facts,
        }
        if self.offsets is not None and self.scales is not None:
            out["profiles"] = {
                n: {"offset": self.offsets[n].tolist(), "scale": self.scales[n].tolist()}
                for n in self.names
            }
        if self.statistics is not None:
            out["statistics"] = [{k: v.tolist() for k, v in r.items()} for r in self.statistics]
        return out

    def to_json(self) -> str:
        """The spec as JSON text (floats written exactly, so a round trip is bit for bit)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "MonitorSpec") -> MonitorSpec:
        """Build a spec from :meth:`to_dict` output, checking every key, type and range.

        Raises
        ------
        ArtifactError
            If a key is missing or unknown, or a value has the wrong type or range.
        """

        def bad(message: str) -> ArtifactError:
            return ArtifactError(
                f"{where}: {message} The spec is corrupt or was edited; export or compile it "
                "again from the calibrated detector."
            )

        if not isinstance(data, dict):
            raise bad("a spec must be a JSON object.")
        missing = [k for k in _REQUIRED if k not in data]
        unknown = sorted(set(data) - KEYS)
        if missing or unknown:
            raise bad(f"missing keys {missing}, unknown keys {unknown}.")
        if data.get("spec_version", SPEC_VERSION) != SPEC_VERSION:
            found = data.get("spec_version")
            raise bad(f"spec version {found!r}; this failguard reads {SPEC_VERSION}.")
        try:
            names = data["names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise bad("'names' must be a list of strings.")
            for key in ("score_types", "windows", "thresholds"):
                if not isinstance(data[key], dict) or sorted(data[key]) != sorted(names):
                    raise bad(f"'{key}' must have one entry for each of {names}.")
            given_requires = data.get("score_requires")
            if given_requires is None:  # written before specs listed each score's inputs
                given_requires = {n: list(data["requires"]) for n in names}
            if not isinstance(given_requires, dict) or sorted(given_requires) != sorted(names):
                raise bad("'score_requires' must list the inputs of each indicator.")
            scores = tuple(
                ScoreSpec(
                    n,
                    data["score_types"][n],
                    tuple(_strings(given_requires[n])),
                    data["windows"][n],
                )
                for n in names
            )
            profiles = data.get("profiles")
            offsets = scales = None
            if profiles is not None:
                if not isinstance(profiles, dict) or sorted(profiles) != sorted(names):
                    raise bad("'profiles' must have one entry for each indicator.")
                offsets = {n: _numbers(profiles[n]["offset"], 2) for n in names}
                scales = {n: _numbers(profiles[n]["scale"], 2) for n in names}
            stats = data.get("statistics")
            statistics = None
            if stats is not None:
                if not isinstance(stats, list) or not all(isinstance(r, dict) for r in stats):
                    raise bad("'statistics' must be a list of objects.")
                statistics = tuple({k: _numbers(v, 1) for k, v in r.items()} for r in stats)
            shapes = data["input_shapes"]
            if not isinstance(shapes, dict):
                raise bad("'input_shapes' must be an object.")
            spec = cls(
                scores=scores,
                input_shapes={f: tuple(_ints(v)) for f, v in shapes.items()},
                window_kind=data["window_kind"],
                combine=data["combine"],
                thresholds={n: _numbers(data["thresholds"][n], 2) for n in names},
                groups=tuple(_strings(data["groups"])),
                mondrian=data["mondrian"],
                offsets=offsets,
                scales=scales,
                statistics=statistics,
                nonfinite=data.get("nonfinite", "raise"),
                facts={k: data[k] for k in FACTS if k in data},
            )
        except ArtifactError:
            raise
        except (ConfigError, TypeError, ValueError, KeyError, IndexError) as err:
            raise bad(str(err)) from None
        if sorted(data["requires"]) != sorted(spec.requires):
            raise bad(f"'requires' {data['requires']} disagrees with the scores' inputs.")
        return spec

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "MonitorSpec") -> MonitorSpec:
        """Parse :meth:`to_json` output (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise ArtifactError(f"{where}: not valid JSON ({str(err)[:200]}).") from None
        return cls.from_dict(data, where)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MonitorSpec):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"expected a list of strings; got {str(value)[:80]}.")
    return value


def _ints(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"expected a list of ints; got {str(value)[:80]}.")
    return value


def _numbers(value: Any, ndim: int) -> NDArray[np.float64]:
    """A numeric array of ``ndim`` dims from JSON lists (no strings, bools or ragged rows)."""
    arr = np.array(value)
    if arr.ndim != ndim or arr.dtype.kind not in "if":
        raise ConfigError(f"expected a {ndim}-d array of numbers; got {str(value)[:80]}.")
    return arr.astype(np.float64)


# ---------------------------------------------------------------------- compile
def compile_spec(detector: Any) -> MonitorSpec:
    """Compile a calibrated :class:`~failguard.FailureDetector` into its :class:`MonitorSpec`.

    Prefer :meth:`FailureDetector.spec`, which caches the result.

    Raises
    ------
    NotFittedError
        If the detector is not calibrated.
    """
    pooled = detector.calibration_
    if pooled is None:
        raise NotFittedError(
            "Incorrect method order: this FailureDetector is not calibrated. Call 'fit' and "
            "then 'calibrate' before compiling its monitor."
        )
    groups = sorted(detector.group_calibration_) if detector.mondrian else []
    results = [pooled, *(detector.group_calibration_[g] for g in groups)]
    names = detector.names
    shapes: dict[str, tuple[int, ...]] = {}
    for s in detector.scores:
        shapes.update(s.input_shapes_ or {})

    def rows(pick: Any) -> dict[str, NDArray[np.float64]]:
        return {
            n: _pad_rows([np.asarray(pick(r, n), np.float64).reshape(-1) for r in results])
            for n in names
        }

    facts = {
        "threshold": detector.threshold,
        "alpha": detector.alpha,
        "guarantee": detector.guarantee,
        "delta": detector.delta,
        "mode": detector.mode,
        "n_fit": detector.n_fit_,
        "n_calibration": detector.n_calibration_,
        "n_conformal": pooled.n_conformal,
    }
    return MonitorSpec(
        scores=tuple(
            ScoreSpec(s.name, type(s).__name__, tuple(s.requires), int(detector.windows[s.name]))
            for s in detector.scores
        ),
        input_shapes=shapes,
        window_kind=detector.window_kind,
        combine=detector.combine,
        thresholds=rows(lambda r, n: r.tables[n]),
        groups=tuple(groups),
        mondrian=bool(detector.mondrian),
        offsets=rows(lambda r, n: r.profiles[n].offset),
        scales=rows(lambda r, n: r.profiles[n].scale),
        statistics=tuple(dict(r.statistics) for r in results),
        facts=facts,
    )
