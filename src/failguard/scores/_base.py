"""The one protocol every score follows, and the base class that implements its plumbing.

A score is fitted on successful rollouts, is then frozen, and maps a rollout to one
non-negative number per step, **higher meaning more likely to fail**. It must be *causal*:
the value at step t depends on steps t-context … t only, where ``context`` is 0 for most
scores and 1 for STAC (which compares consecutive batches). That is what lets
:class:`~failguard.Monitor` reuse the very same vectorised function one step at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ..exceptions import ConfigError, NotFittedError, RolloutError
from ..types import Rollout

__all__ = ["BaseScore", "Score", "register_score", "score_from_config", "step_index"]

S = TypeVar("S", bound="BaseScore")

_REGISTRY: dict[str, type[BaseScore]] = {}


@runtime_checkable
class Score(Protocol):
    """What :class:`~failguard.FailureDetector` needs from a score."""

    name: str
    requires: tuple[str, ...]
    context: int

    def fit(self, rollouts: Sequence[Rollout], progress: bool = ...) -> Score: ...

    def score_steps(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]: ...


def step_index(inputs: Mapping[str, NDArray[Any]], n: int) -> NDArray[np.int64]:
    """The step index t of each of the ``n`` rows given to a score.

    Batch scoring passes ``inputs["t"]`` (0 … T-1 per rollout) and :class:`~failguard.Monitor`
    the indices of the rows it keeps; scores whose value depends on the phase of the rollout
    (per-step profiles, progress) read it. Without ``"t"`` the rows are steps 0 … n-1.
    """
    t = inputs.get("t")
    if t is None:
        return np.arange(n, dtype=np.int64)
    return np.asarray(t, dtype=np.int64).reshape(n)


def register_score(cls: type[S]) -> type[S]:
    """Class decorator: make a score loadable from a saved detector by its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def score_from_config(config: Mapping[str, Any], tensors: Mapping[str, NDArray[Any]]) -> BaseScore:
    """Rebuild a fitted score from :meth:`BaseScore.get_config` and its tensors."""
    kind = config.get("type")
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown score type {kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]._from_state(dict(config["params"]), dict(config["fitted"]), tensors)


class BaseScore:
    """Plumbing shared by the built-in scores: input checks, batching, persistence.

    Subclasses set ``requires`` (the :class:`~failguard.Rollout` fields they read) and
    ``context``, and implement ``_fit``, ``_score`` and, for persistence, ``_params`` /
    ``_fitted`` / ``_tensors`` / ``_restore``.
    """

    requires: tuple[str, ...] = ("embeddings",)
    context: ClassVar[int] = 0
    exportable: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"score name must be a Python identifier; got {name!r}.")
        self.name = name
        self.input_shapes_: dict[str, tuple[int, ...]] | None = None

    # ------------------------------------------------------------------ public API
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.input_shapes_ is not None

    def fit(self: S, rollouts: Sequence[Rollout], progress: bool = False) -> S:
        """Fit on successful rollouts (the detector checks they are successful).

        Returns
        -------
        self
        """
        if not rollouts:
            raise RolloutError(f"{type(self).__name__}.fit: no rollouts given.")
        for i, r in enumerate(rollouts):
            missing = [f for f in self.requires if getattr(r, f) is None]
            if missing:
                raise RolloutError(
                    f"{type(self).__name__} reads {missing}, but {r.describe(i)} has none. "
                    "Record those fields, or drop this score."
                )
        shapes = {f: tuple(getattr(rollouts[0], f).shape[1:]) for f in self.requires}
        for i, r in enumerate(rollouts):
            for f in self.requires:
                if tuple(getattr(r, f).shape[1:]) != shapes[f]:
                    raise RolloutError(
                        f"{type(self).__name__}.fit: {r.describe(i)} has {f} of per-step shape "
                        f"{tuple(getattr(r, f).shape[1:])}, rollout 0 has {shapes[f]}."
                    )
        self._fit(rollouts, progress)
        self.input_shapes_ = shapes
        self._canonicalise()
        return self

    def _canonicalise(self) -> None:
        """Replace the fitted state by exactly what a save/load round trip would give.

        Libraries hand back arrays in whatever memory order suits them (scikit-learn 1.9
        returns a Fortran-ordered ``PCA.components_``); a matrix product over a Fortran and a
        C-ordered copy of the same matrix can round differently. Restoring the fitted state from
        C-ordered copies of its tensors and a JSON round trip of its metadata makes the fitted
        score and a loaded one compute bit-identically, whatever a library returned.
        """
        fitted = json.loads(json.dumps(self._fitted()))
        tensors = {k: np.ascontiguousarray(v).copy() for k, v in self._tensors().items()}
        self._restore(fitted, tensors)

    def score(self, rollout: Rollout) -> NDArray[np.float64]:
        """Per-step scores of one rollout, shape (T,)."""
        return self.score_steps(self._inputs_of(rollout))

    def score_many(self, rollouts: Sequence[Rollout]) -> list[NDArray[np.float64]]:
        """Per-step scores of several rollouts, computed in one batch where possible."""
        if not rollouts:
            return []
        self._check_fitted()
        for i, r in enumerate(rollouts):  # name the offending rollout before batching
            try:
                self._check_inputs(self._inputs_of(r))
            except RolloutError as err:
                raise RolloutError(f"{r.describe(i)}: {err}") from None
        if self.context:
            return [self.score(r) for r in rollouts]
        lengths = [len(r) for r in rollouts]
        joined = {
            f: np.concatenate([getattr(r, f) for r in rollouts], axis=0) for f in self.requires
        }
        joined["t"] = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        flat = self.score_steps(joined)
        return np.split(flat, np.cumsum(lengths)[:-1])

    def score_steps(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Scores for consecutive steps given as arrays with a leading time axis.

        ``inputs`` maps each field of ``requires`` to an array of shape (T, ...), and optionally
        ``"t"`` to the (T,) step indices of those rows (see :func:`step_index`). The result at
        t uses rows t-context … t only.
        """
        self._check_fitted()
        self._check_inputs(inputs)
        out = np.asarray(self._score(inputs), dtype=np.float64)
        return out

    def _check_inputs(self, inputs: Mapping[str, NDArray[Any]]) -> None:
        assert self.input_shapes_ is not None
        for f in self.requires:
            if f not in inputs or inputs[f] is None:
                raise RolloutError(f"{self.name}: needs '{f}', which was not given.")
            got = tuple(np.shape(inputs[f])[1:])
            if got != self.input_shapes_[f]:
                raise RolloutError(
                    f"{self.name}: '{f}' has per-step shape {got}, but this score was fitted "
                    f"on {self.input_shapes_[f]}."
                )

    # ------------------------------------------------------------------ persistence
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description: type, constructor parameters and fitted scalars."""
        self._check_fitted()
        return {
            "type": type(self).__name__,
            "params": {"name": self.name, **self._params()},
            "fitted": {
                "input_shapes": {k: list(v) for k, v in (self.input_shapes_ or {}).items()},
                **self._fitted(),
            },
        }

    def get_tensors(self) -> dict[str, NDArray[Any]]:
        """The fitted arrays (weights, cell sizes, ...) by name."""
        self._check_fitted()
        return self._tensors()

    @classmethod
    def _from_state(
        cls: type[S],
        params: dict[str, Any],
        fitted: dict[str, Any],
        tensors: Mapping[str, NDArray[Any]],
    ) -> S:
        obj = cls(**params)
        obj.input_shapes_ = {k: tuple(v) for k, v in fitted.pop("input_shapes").items()}
        obj._restore(fitted, tensors)
        return obj

    # ------------------------------------------------------------------ for subclasses
    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        raise NotImplementedError

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def _fitted(self) -> dict[str, Any]:
        return {}

    def _tensors(self) -> dict[str, NDArray[Any]]:
        return {}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        """Set fitted state from :meth:`_fitted` and :meth:`_tensors` output."""

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call 'fit' with successful "
                "rollouts before scoring."
            )

    def _inputs_of(self, rollout: Rollout) -> dict[str, NDArray[Any]]:
        out = {}
        for f in self.requires:
            value = getattr(rollout, f)
            if value is None:
                raise RolloutError(
                    f"{self.name}: the rollout has no '{f}', which this score reads."
                )
            out[f] = value
        out["t"] = np.arange(len(rollout), dtype=np.int64)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}(name={self.name!r}{', ' if params else ''}{params})"
