"""Two-sided scores: deviation of any score from what successes show at the same phase.

:class:`Deviation` wraps a score s and standardises it against a per-step *profile* of
successful rollouts: z(t) = (s(t) - μ(t)) / σ(t), where μ(t) and σ(t) are the mean and the
standard deviation of s over the fit rollouts at steps near t. The score is then

=========== ===================== ==============================================
side        score                 catches
=========== ===================== ==============================================
``"high"``  max(z, 0)             s higher than successes at this phase
``"low"``   max(-z, 0)            s lower (entropy collapse, no movement)
``"both"``  \\|z\\|               either
=========== ===================== ==============================================

The profile comes from the **fit** rollouts only, so the whole score function is frozen
before calibration and the conformal guarantee holds unchanged for every side. Past the end
of the profile (the last step at which ``min_support`` fit rollouts still run) the last
value repeats, the same rule the threshold tables follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core.kernel import split_indices, table_at
from ..exceptions import ConfigError, ParameterError, RolloutError
from ..types import Rollout
from ._base import BaseScore, register_score, score_from_config, step_index

__all__ = ["SIDES", "Deviation", "phase_profile"]

SIDES = ("high", "low", "both")


def phase_profile(
    curves: Sequence[NDArray[np.float64]], smooth: int = 2, min_support: int = 3
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-step mean and standard deviation of score curves of successful rollouts.

    Parameters
    ----------
    curves : sequence of (T_i,) arrays
    smooth : int, default=2
        Values of steps t-smooth … t+smooth are pooled for step t (more data per step).
    min_support : int, default=3
        The profile ends at the last step at which this many curves (or all, if fewer) run.

    Returns
    -------
    mean, scale : ndarrays of shape (L,)
        ``scale`` is floored at 5 % of its median (and at 1e-9), so a phase where every
        success happened to agree cannot make z infinite.

    Examples
    --------
    >>> mu, sd = phase_profile([np.arange(5.0), np.arange(5.0) + 2.0], smooth=0)
    >>> mu.tolist(), sd.tolist()
    ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    if not curves:
        raise RolloutError("phase_profile: no curves given.")
    lengths = np.array([c.shape[0] for c in curves])
    need = min(max(1, min_support), len(curves))
    length = max(1, int(np.sort(lengths)[::-1][need - 1]))
    stack = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        stack[i, : min(c.shape[0], length)] = c[:length]
    mean = np.empty(length)
    scale = np.empty(length)
    for t in range(length):
        pool = stack[:, max(0, t - smooth) : t + smooth + 1]
        pool = pool[~np.isnan(pool)]
        mean[t] = pool.mean()
        scale[t] = pool.std()
    floor = max(1e-9, 0.05 * float(np.median(scale)))
    return mean, np.maximum(scale, floor)


@register_score
class Deviation(BaseScore):
    """Standardised deviation of a score from the successes' per-step profile.

    Parameters
    ----------
    inner : BaseScore
        Any score (fitted or not; it is (re)fitted on the fit rollouts).
    side : {"high", "low", "both"}, default="both"
        Which deviations count (see the module docstring).
    smooth : int, default=2
        Half-width of the pooling window of the profile, in steps.
    min_support : int, default=3
        Fit rollouts that must still run for a step to get its own profile value.
    profile_split : float in [0, 1), default=0.0
        Fraction of the fit rollouts kept out of fitting ``inner`` and used for the profile
        only. Use it for scores that learn (RND): their in-sample values are too small.
    seed : int, default=0
        Seeds the profile split.
    name : str, optional
        Default ``"<inner>_z"`` for both sides, ``"<inner>_low"`` / ``"<inner>_high"``.

    Examples
    --------
    Entropy collapse: an agent that becomes decisive as it fails.

    >>> from failguard import DiscreteActionEntropy, Rollout
    >>> rng = np.random.default_rng(0)
    >>> ok = [Rollout(rng.normal(size=(30, 2)), action_logits=rng.normal(size=(30, 4)),
    ...               success=True) for _ in range(8)]
    >>> low = Deviation(DiscreteActionEntropy(), side="low").fit(ok)
    >>> sure = np.eye(4)[np.zeros(30, int)] * 30.0
    >>> decisive = Rollout(rng.normal(size=(30, 2)), action_logits=sure)
    >>> bool(low.score(decisive).mean() > 3 * low.score(ok[0]).mean())
    True
    """

    def __init__(
        self,
        inner: BaseScore,
        side: str = "both",
        smooth: int = 2,
        min_support: int = 3,
        profile_split: float = 0.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if not isinstance(inner, BaseScore):
            raise ParameterError(f"Deviation wraps a score; got {type(inner).__name__}.")
        if side not in SIDES:
            raise ConfigError(
                f"The 'side' parameter of Deviation must be one of {SIDES}. Got {side!r} instead."
            )
        if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0:
            raise ConfigError(
                f"The 'smooth' parameter of Deviation must be an int >= 0. Got {smooth!r} instead."
            )
        if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 1:
            raise ConfigError(
                "The 'min_support' parameter of Deviation must be an int >= 1. "
                f"Got {min_support!r} instead."
            )
        if not isinstance(profile_split, (int, float)) or not 0 <= profile_split < 1:
            raise ConfigError(
                "The 'profile_split' parameter of Deviation must be a float in the range [0, 1). "
                f"Got {profile_split!r} instead."
            )
        suffix = {"both": "z", "low": "low", "high": "high"}[side]
        super().__init__(name or f"{inner.name}_{suffix}")
        self.inner = inner
        self.side = side
        self.smooth = smooth
        self.min_support = min_support
        self.profile_split = float(profile_split)
        self.seed = int(seed)
        self.requires = inner.requires
        self.mean_: NDArray[np.float64] | None = None
        self.scale_: NDArray[np.float64] | None = None

    @property
    def context(self) -> int:  # type: ignore[override]
        """History the wrapped score reads."""
        return self.inner.context

    @property
    def exportable(self) -> bool:  # type: ignore[override]
        """Exportable when the wrapped score is (the profile is a table lookup at t)."""
        return bool(getattr(self.inner, "exportable", False))

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        rollouts = list(rollouts)
        n_profile = round(self.profile_split * len(rollouts))
        if self.profile_split > 0 and not 1 <= n_profile < len(rollouts):
            raise RolloutError(
                f"Deviation: profile_split={self.profile_split} of {len(rollouts)} fit rollouts "
                "leaves one side empty; give more fit rollouts or profile_split=0."
            )
        first, rest = split_indices(len(rollouts), n_profile, np.random.default_rng(self.seed))
        own = [rollouts[i] for i in rest] if n_profile else rollouts
        held = [rollouts[i] for i in first] if n_profile else rollouts
        self.inner.fit(own, progress=progress)
        self.mean_, self.scale_ = phase_profile(
            self.inner.score_many(held), self.smooth, self.min_support
        )

    def standardise(self, values: NDArray[np.float64], t: NDArray[np.int64]) -> NDArray[np.float64]:
        """z = (s - μ(t)) / σ(t), the last profile value repeated past its end."""
        assert self.mean_ is not None and self.scale_ is not None
        return (values - table_at(self.mean_, t)) / table_at(self.scale_, t)

    def onnx_graph(self, g: Any, emit: Any) -> tuple[str, str | None]:
        """ONNX subgraph: the wrapped score's, then the profile lookup at min(t, L-1)."""
        assert self.mean_ is not None and self.scale_ is not None
        value, flag = emit(self.inner)
        idx = g.op("Min", "t", g.i64(self.mean_.shape[0] - 1))
        mean = g.op("Gather", g.const(self.mean_, np.float64, "profile_mean"), idx)
        scale = g.op("Gather", g.const(self.scale_, np.float64, "profile_scale"), idx)
        z = g.op("Div", g.op("Sub", value, mean), scale)
        if self.side == "high":
            return g.op("Relu", z), flag
        if self.side == "low":
            return g.op("Relu", g.op("Neg", z)), flag
        return g.op("Abs", z), flag

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        values = self.inner.score_steps(inputs)
        z = self.standardise(values, step_index(inputs, values.shape[0]))
        if self.side == "high":
            return np.maximum(z, 0.0)
        if self.side == "low":
            return np.maximum(-z, 0.0)
        return np.abs(z)

    # ------------------------------------------------------------------ persistence
    def _params(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "smooth": self.smooth,
            "min_support": self.min_support,
            "profile_split": self.profile_split,
            "seed": self.seed,
        }

    def get_config(self) -> dict[str, Any]:
        """As :meth:`BaseScore.get_config`, with the wrapped score's config under ``inner``."""
        config = super().get_config()
        config["params"]["inner"] = self.inner.get_config()
        return config

    def _tensors(self) -> dict[str, NDArray[Any]]:
        assert self.mean_ is not None and self.scale_ is not None
        out: dict[str, NDArray[Any]] = {"profile_mean": self.mean_, "profile_scale": self.scale_}
        for k, v in self.inner.get_tensors().items():
            out[f"inner.{k}"] = v
        return out

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, NDArray[Any]]) -> None:
        self.mean_ = np.asarray(tensors["profile_mean"], dtype=np.float64)
        self.scale_ = np.asarray(tensors["profile_scale"], dtype=np.float64)
        # the wrapped score canonicalised its own state when it was fitted

    @classmethod
    def _from_state(
        cls,
        params: dict[str, Any],
        fitted: dict[str, Any],
        tensors: Mapping[str, NDArray[Any]],
    ) -> Deviation:
        inner_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("inner.")}
        inner = score_from_config(params.pop("inner"), inner_tensors)
        obj = cls(inner, **params)
        obj.input_shapes_ = {k: tuple(v) for k, v in fitted.pop("input_shapes").items()}
        obj.mean_ = np.asarray(tensors["profile_mean"], dtype=np.float64)
        obj.scale_ = np.asarray(tensors["profile_scale"], dtype=np.float64)
        return obj

    def __repr__(self) -> str:
        return f"Deviation({self.inner!r}, side={self.side!r}, name={self.name!r})"
