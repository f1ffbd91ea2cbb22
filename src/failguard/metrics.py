"""Evaluation metrics (METHOD.md §7). Positive = failed rollout.

- TPR, TNR, balanced accuracy ½(TPR + TNR); the realised false-alarm rate FAR = 1 - TNR.
- Detection time DT_i = (first alarm index) / (T_max - 1), T_max the longest rollout of the
  evaluated set; DT = mean over detected failures (1.0 if none).
- TWA = ½ [ (1/N_fail) Σ_{detected failures} (1 - DT_i) + TNR ].
- Lead time: steps from the first alarm to the end of a detected failed rollout (mean).
- ROC-AUC of the per-rollout maximum fused ratio (threshold-free).
Everything overall and per (outcome × group).

**Without the clock.** A rollout that outlasts every calibration success is unusual for that
reason alone, and part of what any detector catches may be just that. :func:`remove_clock`
drops every alarm at or after step L, the length of the longest calibration success, and
:func:`evaluate` reports the metrics both ways (``report.no_clock``), so that a gain is not
only "this took longer than any success".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .exceptions import ConfigError, RolloutError
from .streaming import RolloutResult, require_alarms
from .types import Rollout, Trace

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = [
    "EvaluationReport",
    "alpha_sweep",
    "evaluate",
    "evaluate_results",
    "metrics_from_traces",
    "remove_clock",
    "resolve_id_groups",
]


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return None if (isinstance(x, float) and math.isnan(x)) else x


def resolve_id_groups(
    id_groups: Iterable[str | None] | str | None,
    traces: Sequence[Any],
    calibration_groups: Sequence[str] = (),
) -> list[str | None] | None:
    """The in-distribution groups that ``far_id`` counts, or an error that says what to pass.

    Parameters
    ----------
    id_groups : iterable of str, "auto" or None
        ``None``: no ``far_id``. A list: those groups, at least one of which must label a
        success among ``traces``. ``"auto"``: the detector's calibration groups if known
        (calibration rollouts are in distribution); else ``"id"`` if a success has it; else
        the one group (or no group) that every success has.
    traces : sequence of Trace (or anything with ``success`` and ``group``)
    calibration_groups : sequence of str
        ``detector.calibration_groups_``.

    Raises
    ------
    ValueError
        When ``"auto"`` cannot tell, or no success belongs to the given groups.

    Examples
    --------
    >>> from types import SimpleNamespace as T
    >>> ts = [T(success=True, group="nominal"), T(success=False, group="nominal")]
    >>> resolve_id_groups("auto", ts)
    ['nominal']
    >>> resolve_id_groups("auto", ts + [T(success=True, group="id")])
    ['id']
    """
    if id_groups is None:
        return None
    present = {t.group for t in traces if t.success}
    if isinstance(id_groups, str) and id_groups == "auto":
        if calibration_groups:
            return [*calibration_groups]
        if "id" in present:
            return ["id"]
        if len(present) <= 1:
            return list(present) or ["id"]
        raise ConfigError(
            f"evaluate: cannot tell which groups are in distribution: the successes have "
            f"groups {sorted(present, key=str)} and the detector does not know its calibration "
            "groups. Pass id_groups=[...] (CLI: --id-groups), or id_groups=None to skip "
            "far_id."
        )
    groups: list[str | None] = [id_groups] if isinstance(id_groups, str) else list(id_groups)
    if present and not present & set(groups):
        raise ConfigError(
            f"evaluate: no success belongs to id_groups={groups}; the successes have groups "
            f"{sorted(present, key=str)}. Name the in-distribution ones (CLI: --id-groups)."
        )
    return groups


def metrics_from_traces(
    traces: Sequence[Trace],
    t_max: int | None = None,
    id_groups: Iterable[str | None] | str | None = None,
) -> dict[str, Any]:
    """Metrics of a set of traces whose ``success`` is known.

    Parameters
    ----------
    traces : sequence of Trace
    t_max : int, optional
        Length used to normalise detection times; default the longest trace.
    id_groups : sequence of str or "auto", optional
        Groups that are in distribution. Adds ``far_id``: the alarm rate on successes of
        those groups, the rate that the conformal guarantee bounds. (``far`` counts every
        success, benign out-of-distribution ones included.) See :func:`resolve_id_groups`.

    Returns
    -------
    dict
        Counts, rates and times. ``detection_time`` is the mean over the ``n_detected``
        detected failures (1.0, METHOD's convention, when none is detected; read it with
        ``n_detected``). Rates whose denominator is empty are NaN: TPR, balanced accuracy,
        TWA and ROC-AUC need failures; TNR, FAR, balanced accuracy, TWA and ROC-AUC need
        successes.

    Examples
    --------
    >>> import numpy as np
    >>> from failguard.types import Trace
    >>> def tr(alarm, success):
    ...     a = np.array(alarm, dtype=bool)
    ...     return Trace({}, {}, {}, {}, a.astype(float) * 2, a, success)
    >>> m = metrics_from_traces([tr([0, 0, 1, 1, 1], False), tr([0, 0, 0, 0, 0], True)])
    >>> m["tpr"], m["tnr"], m["detection_time"], m["twa"]
    (1.0, 1.0, 0.5, 0.75)
    """
    known = [t for t in traces if t.success is not None]
    if isinstance(id_groups, str):
        id_groups = resolve_id_groups(id_groups, known)
    if t_max is None:
        t_max = max((len(t) for t in known), default=1)
    fails = [t for t in known if not t.success]
    succs = [t for t in known if t.success]
    detected = [t for t in fails if t.predicted_failure]
    tpr = len(detected) / len(fails) if fails else math.nan
    tnr = sum(not t.predicted_failure for t in succs) / len(succs) if succs else math.nan
    dts = [t.first_alarm / max(t_max - 1, 1) for t in detected]  # type: ignore[operator]
    dt = float(np.mean(dts)) if dts else 1.0
    twa_fail = sum(1.0 - d for d in dts) / len(fails) if fails else math.nan
    if fails and succs:
        twa = 0.5 * (twa_fail + tnr)
        bal = 0.5 * (tpr + tnr)
    else:
        twa = bal = math.nan
    leads = [len(t) - 1 - t.first_alarm for t in detected]  # type: ignore[operator]
    id_succs = [t for t in succs if id_groups is not None and t.group in id_groups]
    far_id = sum(t.predicted_failure for t in id_succs) / len(id_succs) if id_succs else math.nan
    auc = math.nan
    if fails and succs:
        from sklearn.metrics import roc_auc_score

        y = [0] * len(succs) + [1] * len(fails)
        s = [float(t.fused.max()) for t in succs] + [float(t.fused.max()) for t in fails]
        auc = float(roc_auc_score(y, s))
    return {
        "n_success": len(succs),
        "n_failure": len(fails),
        "n_detected": len(detected),
        "tpr": tpr,
        "tnr": tnr,
        "far": 1.0 - tnr if succs else math.nan,
        "far_id": far_id,
        "balanced_accuracy": bal,
        "detection_time": dt,
        "twa": twa,
        "lead_time_steps": float(np.mean(leads)) if leads else math.nan,
        "roc_auc": auc,
    }


def remove_clock(traces: Sequence[Trace], horizon: int) -> list[Trace]:
    """The traces with every alarm at step ``horizon`` or later removed.

    With ``horizon`` the length of the longest calibration success, what remains is what a
    detector saw *before* a rollout outlasted every success ("without the clock"). The fused
    ratio past the horizon is capped at its largest value before it, so the ROC-AUC of the
    per-rollout maximum is clock-free too; raw, windowed and threshold curves are unchanged.

    Parameters
    ----------
    traces : sequence of Trace
    horizon : int >= 1

    Examples
    --------
    >>> import numpy as np
    >>> from failguard.types import Trace
    >>> f = np.array([0.5, 0.8, 1.5, 2.0])
    >>> late = remove_clock([Trace({}, {}, {}, {}, f, f > 1, False)], horizon=2)[0]
    >>> late.predicted_failure, late.fused.tolist()
    (False, [0.5, 0.8, 0.8, 0.8])
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ConfigError(f"horizon must be an int >= 1. Got {horizon!r} instead.")
    out = []
    for tr in traces:
        if len(tr) <= horizon:
            out.append(tr)
            continue
        before = float(np.max(tr.fused[:horizon]))
        fused = tr.fused.copy()
        fused[horizon:] = np.minimum(fused[horizon:], before)
        alarm = tr.alarm.copy()
        alarm[horizon:] = False
        out.append(
            Trace(
                tr.scores, tr.windowed, tr.thresholds, tr.ratios, fused, alarm, tr.success,
                tr.group,
            )
        )  # fmt: skip
    return out


@dataclass
class EvaluationReport:
    """Metrics overall and per (outcome × group), plus an optional α sweep.

    Attributes
    ----------
    overall : dict
        See :func:`metrics_from_traces`.
    per_group : dict[str, dict]
        Keyed ``"success/<group>"`` and ``"fail/<group>"``: counts, alarm rate (the TPR of a
        fail group, the FAR of a success group) and mean detection time.
    sweep : list of dict
        One ``overall`` dict per α, with the α under ``"alpha"`` and the per-group metrics
        under ``"by_group"``.
    by_group : dict[str, dict]
        Every metric of :func:`metrics_from_traces` (balanced accuracy, TWA, ROC-AUC, ...)
        within each group, successes and failures of that group together.
    notes : list of str
        Why a metric is NaN (no failures, no successes, no in-distribution success).
    horizon : int or None
        Length of the longest calibration success (None if unknown).
    no_clock, no_clock_per_group : dict
        ``overall`` and ``per_group`` with every alarm at or after ``horizon`` removed
        (:func:`remove_clock`); empty when the horizon is unknown.
    """

    overall: dict[str, Any]
    per_group: dict[str, dict[str, Any]]
    alpha: float
    sweep: list[dict[str, Any]] = field(default_factory=list)
    horizon: int | None = None
    no_clock: dict[str, Any] = field(default_factory=dict)
    no_clock_per_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (NaN becomes None)."""

        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return dict(_nan_to_none(d))

        return {
            "alpha": self.alpha,
            "overall": clean(self.overall),
            "per_group": {k: clean(v) for k, v in self.per_group.items()},
            "sweep": [clean(s) for s in self.sweep],
            "horizon": self.horizon,
            "no_clock": clean(self.no_clock),
            "no_clock_per_group": {k: clean(v) for k, v in self.no_clock_per_group.items()},
            "by_group": {k: clean(v) for k, v in self.by_group.items()},
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """A plain-text table of the overall metrics and the per-group alarm rates."""
        o = self.overall
        lines = [f"alpha={self.alpha:g}  n_success={o['n_success']}  n_failure={o['n_failure']}"]
        keys = (
            "tpr",
            "tnr",
            "far",
            "balanced_accuracy",
            "twa",
            "detection_time",
            "lead_time_steps",
            "roc_auc",
        )
        lines.append(
            "  ".join(f"{k}={o[k]:.3f}" for k in keys)
            + f"  (detection_time over {o['n_detected']} of {o['n_failure']} failures detected)"
        )
        for g, m in self.per_group.items():
            lines.append(
                f"  {g:<24} n={m['n']:<4} alarm_rate={m['alarm_rate']:.3f} "
                f"mean_dt={m['detection_time']:.3f} (over {m['n_alarmed']} alarmed)"
            )
        if len(self.by_group) > 1:
            for g, m in self.by_group.items():
                lines.append(
                    f"  group {g:<18} balanced_accuracy={m['balanced_accuracy']:.3f} "
                    f"twa={m['twa']:.3f} roc_auc={m['roc_auc']:.3f}"
                )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _per_group(traces: Sequence[Trace], t_max: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    keys = sorted(
        {(t.success, t.group or "all") for t in traces if t.success is not None},
        key=lambda k: (not k[0], k[1]),
    )
    for success, group in keys:
        sel = [t for t in traces if t.success == success and (t.group or "all") == group]
        alarmed = [t for t in sel if t.predicted_failure]
        dts = [t.first_alarm / max(t_max - 1, 1) for t in alarmed]  # type: ignore[operator]
        out[f"{'success' if success else 'fail'}/{group}"] = {
            "n": len(sel),
            "n_alarmed": len(alarmed),
            "alarm_rate": len(alarmed) / len(sel),
            "detection_time": float(np.mean(dts)) if dts else 1.0,
        }
    return out


def _by_group(
    traces: Sequence[Trace], t_max: int, id_groups: Sequence[str | None] | None
) -> dict[str, dict[str, Any]]:
    """Every metric within each group (both outcomes of the group together)."""
    names = sorted({t.group or "all" for t in traces if t.success is not None})
    return {
        g: metrics_from_traces([t for t in traces if (t.group or "all") == g], t_max, id_groups)
        for g in names
    }


def _notes(traces: Sequence[Trace], id_groups: Sequence[str | None] | None) -> list[str]:
    """Why an overall metric is NaN, in words."""
    known = [t for t in traces if t.success is not None]
    n_fail = sum(not t.success for t in known)
    n_succ = len(known) - n_fail
    out = []
    if not n_fail:
        out.append(
            "no failed rollouts: TPR, detection time, balanced accuracy, TWA and ROC-AUC "
            "need failures (NaN)."
        )
    if not n_succ:
        out.append(
            "no successful rollouts: TNR, FAR, balanced accuracy, TWA and ROC-AUC need "
            "successes (NaN)."
        )
    if (
        n_succ
        and id_groups is not None
        and not any(t.group in id_groups for t in known if t.success)
    ):
        out.append(f"no success in id_groups={list(id_groups)}: far_id is NaN.")
    if n_fail and not any(t.predicted_failure for t in known if not t.success):
        out.append("no failure detected: detection time is 1.0 by convention (none to average).")
    return out


def evaluate(
    detector: FailureDetector,
    rollouts: Iterable[Rollout],
    alphas: Sequence[float] | None = None,
    t_max: int | None = None,
    progress: bool = False,
    id_groups: Sequence[str] | str | None = "auto",
    raw: Mapping[str, Sequence[NDArray[np.float64]]] | None = None,
    horizon: int | None = None,
) -> EvaluationReport:
    """Evaluate a calibrated detector on labelled rollouts (not used to fit or calibrate).

    Parameters
    ----------
    detector : FailureDetector
    rollouts : sequence or iterator of Rollout
        Test rollouts with ``success`` set; successes should include held-out
        in-distribution ones, whose alarm rate is the realised false-alarm rate. An iterator
        (such as :func:`failguard.iter_rollouts`) is scored one rollout at a time, in
        constant memory, with the same metrics (``alphas`` then needs a list).
    alphas : sequence of float, optional
        Also recalibrate at each α (same calibration rollouts, no rescoring) and report.
    t_max : int, optional
        Normaliser of detection times (default: longest rollout given).
    progress : bool, default=False
    id_groups : sequence of str, "auto" or None, default="auto"
        In-distribution groups; ``overall["far_id"]`` is the alarm rate on their successes.
        ``"auto"``: the detector's calibration groups (saved with it), else ``"id"``, else
        the successes' only group; it raises when it cannot tell (:func:`resolve_id_groups`).
    raw : mapping, optional
        Deprecated: wrap the fitted scores in :class:`~failguard.scores.CachedScore` to
        reuse raw scores across configurations.
    horizon : int, optional
        Step from which alarms are dropped for ``report.no_clock``; default the detector's
        ``longest_calibration_`` (the longest calibration success). Streamed rollouts (an
        iterator) always use the detector's.

    Examples
    --------
    >>> from failguard import FailureDetector
    >>> from failguard.synthetic import make_rollouts
    >>> det = FailureDetector(alpha=0.1).fit(make_rollouts(12, seed=0), progress=False)
    >>> det = det.calibrate(make_rollouts(40, seed=1))
    >>> test = make_rollouts(20, seed=2) + make_rollouts(20, kind="failure", seed=3)
    >>> report = evaluate(det, test)
    >>> report.overall["balanced_accuracy"] > 0.8
    True
    >>> report.horizon == det.longest_calibration_, "twa" in report.no_clock
    (True, True)
    """
    if raw is not None:
        from ._scoring import RAW_DEPRECATED

        warnings.warn(RAW_DEPRECATED.format(where="evaluate"), DeprecationWarning, stacklevel=2)
    if not isinstance(rollouts, Sequence):
        # An iterator (fg.iter_rollouts): stream it, one rollout in memory.
        from .streaming import iter_results

        if alphas or raw is not None:
            raise ConfigError(
                "evaluate: alphas= and raw= need the rollouts' raw scores; pass a list of "
                "rollouts, not an iterator, to use them."
            )
        detector.spec()  # raises NotFittedError unless calibrated
        if isinstance(id_groups, str) and id_groups == "auto" and detector.calibration_groups_:
            id_groups = detector.calibration_groups_
        known = detector.fitted_state.known_fingerprints()
        seen_at: list[int] = []
        count = [0]

        def watched(results: Iterable[Any]) -> Iterable[Any]:
            for i, r in enumerate(results):
                count[0] += 1
                if r.fingerprint in known:
                    seen_at.append(i)
                yield r

        report = evaluate_results(
            watched(iter_results(detector, rollouts, progress=progress)),
            detector.alpha,
            t_max,
            id_groups,
        )
        _warn_seen(seen_at, count[0])
        return report
    rollouts = list(rollouts)
    _warn_seen(detector.seen(rollouts), len(rollouts))
    if raw is None:
        raw = detector.raw_scores_many(rollouts, progress)
    traces = detector._traces(rollouts, raw)
    t_max = t_max or max(len(r) for r in rollouts)
    groups = resolve_id_groups(id_groups, traces, detector.calibration_groups_)
    report = EvaluationReport(
        metrics_from_traces(traces, t_max, groups),
        _per_group(traces, t_max),
        detector.alpha,
        by_group=_by_group(traces, t_max, groups),
        notes=_notes(traces, groups),
    )
    if horizon is None:
        horizon = getattr(detector, "longest_calibration_", None)
    if horizon is not None:
        clockless = remove_clock(traces, horizon)
        report.horizon = int(horizon)
        report.no_clock = metrics_from_traces(clockless, t_max, groups)
        report.no_clock_per_group = _per_group(clockless, t_max)
    if alphas:
        report.sweep = _sweep(detector, rollouts, alphas, t_max, groups, raw)
    return report


def _warn_seen(seen: Sequence[int], n: int) -> None:
    if seen:
        warnings.warn(
            f"evaluate: {len(seen)} of {n} rollouts (first: #{seen[0]}) have the same content "
            "as rollouts the detector was fitted or calibrated on; metrics on them are "
            "in-sample and look better than the detector is. Evaluate on held-out rollouts.",
            UserWarning,
            stacklevel=3,
        )


def alpha_sweep(
    detector: FailureDetector,
    rollouts: Sequence[Rollout],
    alphas: Sequence[float],
    t_max: int | None = None,
    id_groups: Sequence[str | None] | str | None = "auto",
    raw: Mapping[str, Sequence[NDArray[np.float64]]] | None = None,
) -> list[dict[str, Any]]:
    """Overall metrics at each α, recalibrating on the detector's calibration rollouts.

    Raw scores are computed once; only thresholds change. Each row also holds the metrics
    within each group under ``"by_group"``. An α that the calibration set cannot support
    gives ``{"alpha": a, "error": message}``. ``raw`` is deprecated (see :func:`evaluate`).
    """
    if raw is not None:
        from ._scoring import RAW_DEPRECATED

        warnings.warn(RAW_DEPRECATED.format(where="alpha_sweep"), DeprecationWarning, stacklevel=2)
    return _sweep(detector, rollouts, alphas, t_max, id_groups, raw)


def _sweep(
    detector: FailureDetector,
    rollouts: Sequence[Rollout],
    alphas: Sequence[float],
    t_max: int | None,
    id_groups: Sequence[str | None] | str | None,
    raw: Mapping[str, Sequence[NDArray[np.float64]]] | None,
) -> list[dict[str, Any]]:
    from .exceptions import CalibrationError

    rollouts = list(rollouts)
    t_max = t_max or max(len(r) for r in rollouts)
    if raw is None:
        raw = detector.raw_scores_many(rollouts)
    out = []
    for a in alphas:
        try:
            other = detector.with_alpha(a)
        except CalibrationError as err:
            out.append({"alpha": a, "error": str(err)})
            continue
        traces = other._traces(rollouts, raw)
        groups = resolve_id_groups(id_groups, traces, detector.calibration_groups_)
        out.append(
            {
                "alpha": a,
                **metrics_from_traces(traces, t_max, groups),
                "by_group": _by_group(traces, t_max, groups),
            }
        )
    return out


def evaluate_results(
    results: Iterable[RolloutResult],
    alpha: float,
    t_max: int | None = None,
    id_groups: Iterable[str] | str | None = "auto",
) -> EvaluationReport:
    """:func:`failguard.evaluate` from per-rollout results (the same numbers, bit for bit).

    Parameters
    ----------
    results : iterable of RolloutResult
        From a calibrated detector, with ``success`` known.
    alpha : float
        The detector's alpha (reported).
    t_max : int, optional
        Normaliser of detection times (default: the longest rollout).
    id_groups : iterable of str, "auto" or None, default="auto"
        As in :func:`failguard.evaluate`.
    """
    res = list(results)
    if not res:
        raise RolloutError("evaluate: no rollouts given.")
    require_alarms(res, "evaluate")
    t_max = t_max or max(r.n_steps for r in res)
    traces: Any = res  # RolloutResult has every attribute the metrics read from a Trace
    groups = resolve_id_groups(id_groups, traces)
    report = EvaluationReport(
        metrics_from_traces(traces, t_max, groups),
        _per_group(traces, t_max),
        alpha,
        by_group=_by_group(traces, t_max, groups),
        notes=_notes(traces, groups),
    )
    horizons = {r.horizon for r in res}
    if len(horizons) == 1 and None not in horizons:
        clockless: Any = [r.without_clock() for r in res]
        report.horizon = res[0].horizon
        report.no_clock = metrics_from_traces(clockless, t_max, groups)
        report.no_clock_per_group = _per_group(clockless, t_max)
    return report
