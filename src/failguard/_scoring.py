"""Scoring rollouts with a :class:`~failguard.FailureDetector`: raw scores, traces, p-values.

The functions taking ``self`` are the detector's scoring methods (the class binds them:
``FailureDetector.score`` *is* :func:`score`). Each runs the detector's frozen
:class:`~failguard.core.MonitorSpec` through the step kernel (:func:`failguard.core.kernel.scan`)
on the raw scores, so batch scoring, the :class:`~failguard.Monitor`, the health check and the
ONNX export compute the same thing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .calibration.conformal import conformal_p_values
from .core import kernel
from .core.spec import MonitorSpec, compile_spec
from .exceptions import NonFiniteScoreError, ParameterError
from .types import Rollout, Trace

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = [
    "RAW_DEPRECATED",
    "p_values",
    "predict",
    "raw_scores",
    "raw_scores_many",
    "score",
    "spec",
    "tables_for",
    "trace",
    "traces",
]

#: The one way to reuse raw scores across configurations is CachedScore (issue 10).
RAW_DEPRECATED = (
    "{where}(raw=...) is deprecated: to reuse raw scores across configurations, wrap the "
    "fitted scores in failguard.scores.CachedScore (with_params also recalibrates without "
    "rescoring)."
)


def raw_scores(self: FailureDetector, rollout: Rollout) -> dict[str, NDArray[np.float64]]:
    """Per-step raw score of each indicator, shape (T,) each."""
    self._require_fitted()
    return {s.name: s.score(rollout) for s in self.scores}


def raw_scores_many(
    self: FailureDetector, rollouts: Sequence[Rollout], progress: bool = False
) -> dict[str, list[NDArray[np.float64]]]:
    """Raw per-step scores of many rollouts, by indicator name (batched networks).

    To evaluate several configurations without rescoring, wrap the fitted scores in
    :class:`~failguard.scores.CachedScore` instead.
    """
    self._require_fitted()
    from tqdm.auto import tqdm

    bar = tqdm(self.scores, desc="scoring", disable=not progress, leave=False)
    return {s.name: s.score_many(rollouts) for s in bar}


def spec(self: FailureDetector) -> MonitorSpec:
    """The calibrated monitor step as a frozen, torch-free :class:`~failguard.core.MonitorSpec`.

    Batch scoring, :class:`~failguard.Monitor`, the health check, p-values and the ONNX
    export all run this spec (through :mod:`failguard.core.kernel`). Compiled once per
    calibration and cached.

    Raises
    ------
    NotFittedError
        If the detector is not calibrated yet.
    """
    key = (self._require_calibrated(), self.group_calibration_)  # the config is frozen
    cached = self._spec_cache
    if cached is None or cached[0] is not key[0] or cached[1] is not key[1]:
        cached = self._spec_cache = (*key, compile_spec(self))
    return cached[2]


def tables_for(self: FailureDetector, group: str | None = None) -> dict[str, NDArray[np.float64]]:
    """Threshold tables to use for a rollout of ``group`` (Mondrian aware)."""
    spec = self.spec()
    return spec.thresholds_row(kernel.group_row(spec.groups, spec.mondrian, group))


def check_nonfinite(value: str) -> None:
    """Refuse a ``nonfinite`` argument other than "raise" or "alarm"."""
    if value not in ("raise", "alarm"):
        raise ParameterError(
            "The 'nonfinite' parameter of FailureDetector must be one of ('raise', 'alarm'). "
            f"Got {value!r} instead."
        )


def trace(
    self: FailureDetector,
    raw: dict[str, NDArray[np.float64]],
    rollout: Rollout,
    group: str | None,
    nonfinite: str = "raise",
    index: int | None = None,
) -> Trace:
    """The :class:`~failguard.Trace` of ``rollout`` from its raw scores (the kernel's scan).

    With ``nonfinite="raise"`` a non-finite raw score raises
    :class:`~failguard.NonFiniteScoreError` naming the step and the scores.
    """
    spec = self.spec()
    row = kernel.group_row(spec.groups, spec.mondrian, group)
    if nonfinite == "raise":
        bad = np.zeros(len(rollout), dtype=bool)
        for name in self.names:
            bad |= ~np.isfinite(raw[name])
        if bad.any():
            step = int(np.flatnonzero(bad)[0])
            which = [n for n in self.names if not np.isfinite(raw[n][step])]
            raise NonFiniteScoreError(
                f"{rollout.describe(index)}: step {step} gives a non-finite score for "
                f"{which} from finite inputs (an extreme input overflowed the score). Check "
                "the input's scale, or pass nonfinite='alarm' to count such steps as alarms."
            )
    out = kernel.scan(spec, raw, row)
    return Trace(
        raw,
        out.windowed,
        out.thresholds,
        out.ratios,
        out.fused,
        out.alarm,
        rollout.success,
        rollout.group,
        out.nonfinite if out.nonfinite.any() else None,
    )


def score(
    self: FailureDetector, rollout: Rollout, group: str | None = None, nonfinite: str = "raise"
) -> Trace:
    """Score one rollout step by step (what a :class:`Monitor` would have said).

    Parameters
    ----------
    rollout : Rollout
    group : str, optional
        Group for Mondrian thresholds; default ``rollout.group``.
    nonfinite : {"raise", "alarm"}, default="raise"
        A step whose score is NaN or inf raises
        :class:`~failguard.NonFiniteScoreError`, or (``"alarm"``) counts as an alarm;
        see :class:`~failguard.Monitor`.
    """
    self._require_calibrated()
    check_nonfinite(nonfinite)
    return trace(
        self,
        self.raw_scores(rollout),
        rollout,
        group if group is not None else rollout.group,
        nonfinite,
    )


def traces(
    self: FailureDetector,
    rollouts: Sequence[Rollout],
    progress: bool = False,
    raw: Mapping[str, Sequence[NDArray[np.float64]]] | None = None,
    nonfinite: str = "raise",
) -> list[Trace]:
    """:meth:`score` for many rollouts, batching the score networks.

    Parameters
    ----------
    rollouts : sequence of Rollout
    progress : bool, default=False
    raw : mapping, optional
        Deprecated: wrap the fitted scores in :class:`~failguard.scores.CachedScore` to
        reuse raw scores across configurations (the one way to do so).
    nonfinite : {"raise", "alarm"}, default="raise"
        See :meth:`score`.
    """
    if raw is not None:
        warnings.warn(
            RAW_DEPRECATED.format(where="FailureDetector.traces"),
            DeprecationWarning,
            stacklevel=2,
        )
    return traces_from_raw(self, rollouts, raw, progress, nonfinite)


def traces_from_raw(
    self: FailureDetector,
    rollouts: Sequence[Rollout],
    raw: Mapping[str, Sequence[NDArray[np.float64]]] | None,
    progress: bool = False,
    nonfinite: str = "raise",
) -> list[Trace]:
    """:func:`traces` without the deprecation warning (``raw`` computed when None)."""
    self._require_calibrated()
    check_nonfinite(nonfinite)
    rollouts = list(rollouts)
    if raw is None:
        raw = self.raw_scores_many(rollouts, progress)
    elif set(raw) != set(self.names) or any(len(v) != len(rollouts) for v in raw.values()):
        raise ParameterError(
            f"raw must hold {len(rollouts)} score arrays for each of {self.names}; "
            "compute it with raw_scores_many(rollouts)."
        )
    return [
        trace(self, {k: v[i] for k, v in raw.items()}, r, r.group, nonfinite, i)
        for i, r in enumerate(rollouts)
    ]


def predict(
    self: FailureDetector, rollouts: Iterable[Rollout], nonfinite: str = "raise"
) -> NDArray[np.bool_]:
    """Predicted failure (an alarm at any step) per rollout; ``nonfinite``: see
    :meth:`score`.

    ``rollouts`` may be an iterator (such as :func:`failguard.iter_rollouts`); it is then
    scored one rollout at a time, in constant memory.
    """
    if not isinstance(rollouts, Sequence):
        from .streaming import iter_results

        self._require_calibrated()
        check_nonfinite(nonfinite)
        results = iter_results(self, rollouts, nonfinite=nonfinite)
        return np.array([r.predicted_failure for r in results], dtype=bool)
    found = traces(self, rollouts, nonfinite=nonfinite)
    return np.array([t.predicted_failure for t in found], dtype=bool)


def p_values(
    self: FailureDetector, rollout: Rollout, group: str | None = None
) -> dict[str, NDArray[np.float64]]:
    """Conformal p-value per step, per indicator (and ``"fused"`` for joint calibration).

    p(t) is the fraction of calibration successes whose whole-rollout statistic is at
    least as extreme as this rollout's so far; small means unusual.

    Parameters
    ----------
    rollout : Rollout
    group : str, optional
        Mondrian group; default ``rollout.group``.
    """
    spec = self.spec()
    row = kernel.group_row(
        spec.groups, spec.mondrian, group if group is not None else rollout.group
    )
    if self.mode == "reference":
        raise ParameterError(
            "p_values: mode='reference' reproduces the reference thresholds, which have no "
            "conformal statistics; use mode='corrected'."
        )
    windowed = kernel.scan(spec, self.raw_scores(rollout), row).windowed
    d = kernel.normalised(spec, windowed, row)
    stats = spec.statistics[row] if spec.statistics is not None else {}
    out = {k: conformal_p_values(np.maximum.accumulate(v), stats[k]) for k, v in d.items()}
    if "fused" in stats:
        fused = kernel.fuse(list(d.values()), self.combine)
        out["fused"] = conformal_p_values(np.maximum.accumulate(fused), stats["fused"])
    return out
