"""Plots of traces, alpha sweeps, ROC curves and per-group alarm rates.

Needs matplotlib: ``pip install failguard[plots]``. Every function returns a
:class:`matplotlib.figure.Figure` built with the object-oriented API (no pyplot state, no
display needed), so it works headless; save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import DependencyError

try:
    from matplotlib.figure import Figure
except ImportError as err:  # pragma: no cover - exercised only without matplotlib
    raise DependencyError(
        "failguard.plots needs matplotlib. Install it with `pip install failguard[plots]` "
        "(or `pip install matplotlib`)."
    ) from err

if TYPE_CHECKING:
    from .metrics import EvaluationReport
    from .types import Trace

__all__ = ["figure_to_png", "plot_alpha_sweep", "plot_groups", "plot_roc", "plot_trace"]

_OK, _FAIL, _ALARM, _THRESH = "#2b7bba", "#d7301f", "#d7301f", "#444444"


def figure_to_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> figure_to_png(Figure(figsize=(1, 1)))[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_trace(trace: Trace, title: str | None = None, horizon: int | None = None) -> Figure:
    """Windowed score of each indicator against its threshold, and the fused ratio.

    One panel per indicator shows η(t) with γ(t) dashed and the steps where it exceeds its
    threshold shaded; the last panel shows the fused ratio with the alarm line at 1 and the
    first alarm marked.

    Parameters
    ----------
    trace : Trace
        From :meth:`FailureDetector.score`.
    title : str, optional
    horizon : int, optional
        Length of the longest calibration success (``detector.longest_calibration_``): a
        dotted line marks where the calibration data ends, past which time-varying
        thresholds repeat their last value.

    Examples
    --------
    >>> import numpy as np
    >>> from failguard.types import Trace
    >>> w = np.linspace(0, 2, 20)
    >>> tr = Trace({"rnd": w}, {"rnd": w}, {"rnd": np.ones(20)}, {"rnd": w}, w, w > 1, False)
    >>> len(plot_trace(tr).axes)
    2
    """
    names = list(trace.windowed)
    fig = Figure(figsize=(6.4, 1.5 * (len(names) + 1) + 0.4), layout="constrained")
    axes = fig.subplots(len(names) + 1, 1, sharex=True, squeeze=False)[:, 0]
    t = np.arange(len(trace))
    first = trace.first_alarm
    color = _OK if trace.success else _FAIL if trace.success is False else "#555555"
    for ax, name in zip(axes, names, strict=False):
        eta, gamma = trace.windowed[name], trace.thresholds[name]
        ax.plot(t, eta, color=color, lw=1.4, label="windowed score")
        ax.plot(t, gamma, color=_THRESH, lw=1.0, ls="--", label="threshold")
        above = eta > gamma
        if above.any():
            ax.fill_between(
                t,
                0,
                1,
                where=above,
                color=_ALARM,
                alpha=0.12,
                lw=0,
                transform=ax.get_xaxis_transform(),
                label="above threshold",
            )
        ax.set_ylabel(name)
        ax.set_ylim(0, 1.12 * max(float(np.max(eta)), float(np.max(gamma)), 1e-12))
        ax.margins(x=0)
    ax = axes[-1]
    ax.plot(t, trace.fused, color=color, lw=1.4, label="fused ratio")
    ax.axhline(1.0, color=_THRESH, lw=1.0, ls="--", label="alarm level")
    ax.set_ylim(0, max(1.25, 1.1 * float(np.max(trace.fused))))
    ax.set_ylabel("fused")
    ax.set_xlabel("policy step t")
    ax.margins(x=0)
    if horizon is not None and horizon < len(trace):
        for i, a in enumerate(axes):
            a.axvline(
                horizon - 0.5,
                color="#777777",
                ls=":",
                lw=1.2,
                label="end of calibration data" if i == 0 else None,
            )
    if first is not None:
        for a in axes:
            a.axvline(first, color=_ALARM, lw=1.2)
        ax.annotate(
            f"alarm at t={first}",
            (first, 0.0),
            xytext=(4, 4),
            textcoords="offset points",
            color=_ALARM,
            fontsize=8,
        )
    axes[0].legend(
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        fontsize=7,
        frameon=False,
        ncols=3,
        borderaxespad=0.2,
    )
    outcome = {True: "success", False: "failure", None: "unlabelled"}[trace.success]
    head = title or "rollout"
    group = f", group {trace.group}" if trace.group else ""
    verdict = "ALARM" if first is not None else "no alarm"
    fig.suptitle(f"{head}: {outcome}{group} — {verdict}", fontsize=10)
    return fig


def plot_alpha_sweep(sweep: Sequence[Mapping[str, Any]]) -> Figure:
    """TPR, TNR and detection time against alpha (from :func:`failguard.alpha_sweep`).

    The TNR is that of in-distribution successes (1 - ``far_id``) when the rows hold it, with
    the dotted line 1 - alpha: the TNR the guarantee promises for them on average. The TNR
    over every success (benign out-of-distribution ones included) is not bounded, so it gets
    no such line. The legend sits below the panels, over no curve.

    Examples
    --------
    >>> rows = [{"alpha": a, "tpr": 0.9, "tnr": 1 - a, "detection_time": 0.4}
    ...         for a in (0.05, 0.1, 0.2)]
    >>> len(plot_alpha_sweep(rows).axes)
    2
    """
    rows = [r for r in sweep if "error" not in r]
    fig = Figure(figsize=(7.5, 3.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if not rows:
        ax1.text(0.5, 0.5, "no alpha could be calibrated", ha="center", va="center")
        return fig
    a = np.array([r["alpha"] for r in rows], dtype=float)
    far_id = np.array([r.get("far_id", np.nan) for r in rows], dtype=float)
    ax1.plot(a, [r["tpr"] for r in rows], "o-", color=_FAIL, label="TPR (failures caught)")
    if np.isfinite(far_id).all():
        ax1.plot(a, 1 - far_id, "s-", color=_OK, label="TNR, in-distribution successes")
        ax1.plot(a, 1 - a, ":", color=_THRESH, label="1 − alpha (guaranteed mean)")
    else:
        ax1.plot(a, [r["tnr"] for r in rows], "s-", color=_OK, label="TNR, all successes")
    ax1.set_xlabel("alpha")
    ax1.set_ylim(-0.03, 1.03)
    fig.legend(loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    ax1.set_title("detection rates", fontsize=9)
    ax2.plot(a, [r["detection_time"] for r in rows], "o-", color="#6a51a3")
    ax2.set_xlabel("alpha")
    ax2.set_ylabel("detection time (fraction of T_max)")
    ax2.set_ylim(-0.03, 1.03)
    ax2.set_title("mean detection time (lower = earlier)", fontsize=9)
    return fig


def plot_roc(traces: Sequence[Trace]) -> Figure:
    """ROC curve of the per-rollout maximum fused ratio (failure = positive).

    Examples
    --------
    >>> import numpy as np
    >>> from failguard.types import Trace
    >>> def tr(peak, ok):
    ...     f = np.array([0.1, peak])
    ...     return Trace({}, {}, {}, {}, f, f > 1, ok)
    >>> fig = plot_roc([tr(0.5, True), tr(0.8, True), tr(1.5, False), tr(0.7, False)])
    >>> len(fig.axes)
    1
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    known = [t for t in traces if t.success is not None]
    y = np.array([0 if t.success else 1 for t in known])
    s = np.array([float(np.max(t.fused)) for t in known])
    fig = Figure(figsize=(3.8, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color=_THRESH, lw=1)
    if y.min(initial=1) == y.max(initial=0) or len(known) < 2:
        ax.text(0.5, 0.5, "needs successes and failures", ha="center", va="center")
        return fig
    fpr, tpr, thr = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    ax.step(fpr, tpr, where="post", color=_FAIL, lw=1.6, label=f"AUC = {auc:.3f}")
    finite = np.isfinite(thr)
    at_one = np.flatnonzero(finite & (thr > 1.0))
    if at_one.size:  # the operating point of the calibrated detector: ratio > 1
        i = at_one[-1]
        ax.plot(fpr[i], tpr[i], "o", color="black", ms=5, label="calibrated (ratio > 1)")
    ax.set_xlabel("false-alarm rate (1 − TNR)")
    ax.set_ylabel("TPR")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title("ROC of max fused ratio", fontsize=9)
    return fig


def plot_groups(report: EvaluationReport) -> Figure:
    """Alarm rate per (outcome, group): the TPR of failure groups, the FAR of success groups.

    Examples
    --------
    >>> from failguard.metrics import EvaluationReport
    >>> rep = EvaluationReport({}, {"success/id": {"n": 9, "alarm_rate": 0.1,
    ...                                            "detection_time": 1.0}}, 0.1)
    >>> len(plot_groups(rep).axes)
    1
    """
    items = list(report.per_group.items())
    fig = Figure(figsize=(7.5, 0.45 * max(len(items), 2) + 1.0), layout="constrained")
    ax = fig.subplots()
    if not items:
        ax.text(0.5, 0.5, "no labelled rollouts", ha="center", va="center")
        return fig
    labels = [f"{k}  (n={v['n']})" for k, v in items]
    rates = [v["alarm_rate"] for _, v in items]
    colors = [_OK if k.startswith("success") else _FAIL for k, _ in items]
    y = np.arange(len(items))[::-1]
    ax.barh(y, rates, color=colors, height=0.6)
    for yi, r in zip(y, rates, strict=False):
        ax.text(min(r + 0.01, 0.93), yi, f"{r:.2f}", va="center", fontsize=8)
    ax.axvline(report.alpha, color=_THRESH, ls=":", lw=1)
    ax.text(
        report.alpha,
        y.max() + 0.55,
        f" alpha={report.alpha:g}",
        fontsize=7,
        color=_THRESH,
        va="bottom",
    )
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, y.max() + 1.0)
    ax.set_xlabel("alarm rate (failure groups: TPR; success groups: false-alarm rate)")
    return fig
