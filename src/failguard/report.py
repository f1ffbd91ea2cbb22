"""A self-contained HTML report of a detector on labelled rollouts.

One file, no external resources: the plots of :mod:`failguard.plots` are embedded as
base64 PNG images. Needs matplotlib (``pip install failguard[plots]``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .metrics import alpha_sweep, evaluate

if TYPE_CHECKING:
    from .detector import FailureDetector
    from .types import Rollout, Trace

__all__ = ["build_report", "select_traces", "write_report"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d1d1f; background: #f5f5f7; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #d2d2d7; padding-bottom: 4px; }
.sub { color: #6e6e73; font-size: 13px; }
.card { background: white; border-radius: 10px; padding: 14px 18px; margin: 10px 0;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.row { display: flex; flex-wrap: wrap; gap: 14px; }
.row .card { flex: 1 1 300px; }
.traces .card { flex: 1 1 470px; max-width: calc(50% - 7px); box-sizing: border-box; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #ececf0; }
th { color: #6e6e73; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.kpis { display: flex; flex-wrap: wrap; gap: 10px; }
.kpi { background: white; border-radius: 10px; padding: 10px 16px; min-width: 120px;
       box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.kpi b { display: block; font-size: 22px; }
.kpi span { color: #6e6e73; font-size: 12px; }
img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
.note { color: #6e6e73; font-size: 12px; margin: 6px 0 0; }
"""

_METRICS = (
    ("tpr", "TPR", "failed rollouts with an alarm"),
    ("tnr", "TNR", "successful rollouts without an alarm"),
    ("far", "false-alarm rate", "1 − TNR; the guarantee bounds it by alpha on average"),
    ("balanced_accuracy", "balanced accuracy", "(TPR + TNR) / 2"),
    ("twa", "TWA", "time-weighted accuracy: earlier detections count more"),
    ("detection_time", "detection time", "first alarm / (T_max − 1), mean over caught failures"),
    ("lead_time_steps", "lead time (steps)", "steps from first alarm to the end of a failure"),
    ("roc_auc", "ROC-AUC", "of the per-rollout max fused ratio (threshold-free)"),
)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and abs(x) >= 10:
        return f"{x:.1f}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def select_traces(traces: Sequence[Trace], k: int) -> list[tuple[int, str]]:
    """Pick up to ``k`` informative rollouts: caught and missed failures, false alarms, quiet
    successes (round-robin over these categories). Returns (index, category) pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from failguard.types import Trace
    >>> def tr(alarm, ok):
    ...     a = np.array(alarm, dtype=bool)
    ...     return Trace({}, {}, {}, {}, a * 2.0, a, ok)
    >>> select_traces([tr([0, 1], False), tr([0, 0], True), tr([0, 0], False)], 2)
    [(0, 'caught failure'), (2, 'missed failure')]
    """
    cats: dict[str, list[int]] = {
        "caught failure": [],
        "missed failure": [],
        "false alarm": [],
        "quiet success": [],
    }
    for i, t in enumerate(traces):
        if t.success is False:
            cats["caught failure" if t.predicted_failure else "missed failure"].append(i)
        elif t.success:
            cats["false alarm" if t.predicted_failure else "quiet success"].append(i)
    out: list[tuple[int, str]] = []
    depth = 0
    while len(out) < k and any(len(v) > depth for v in cats.values()):
        for name, idx in cats.items():
            if len(idx) > depth and len(out) < k:
                out.append((idx[depth], name))
        depth += 1
    return out


def build_report(
    detector: FailureDetector,
    rollouts: Sequence[Rollout],
    alphas: Sequence[float] | None = None,
    max_traces: int = 6,
    title: str = "failguard report",
    source: str | None = None,
    id_groups: Sequence[str] | str | None = "auto",
) -> str:
    """The HTML text of the report.

    Parameters
    ----------
    detector : FailureDetector
        Calibrated. For the alpha sweep it must still hold its calibration curves (calibrated
        in this session; a loaded detector needs ``detector.calibrate(cal_rollouts)`` first).
    rollouts : sequence of Rollout
        Labelled test rollouts, not used to fit or calibrate.
    alphas : sequence of float, optional
        Alphas of the sweep plot.
    max_traces : int, default=6
        Number of per-rollout trace plots.
    title : str
    source : str, optional
        Where the rollouts came from (shown in the header).
    id_groups : sequence of str, "auto" or None
        In-distribution groups, as in :func:`failguard.evaluate`.

    Returns
    -------
    str
        A complete HTML document.
    """
    from .plots import figure_to_png, plot_alpha_sweep, plot_groups, plot_roc, plot_trace

    rollouts = list(rollouts)
    traces = detector.traces(rollouts)
    report = evaluate(detector, rollouts, id_groups=id_groups)
    sweep_note = ""
    if alphas:
        if detector.can_recalibrate:
            report.sweep = alpha_sweep(detector, rollouts, alphas, id_groups=id_groups)
        else:
            sweep_note = (
                "The alpha sweep needs the calibration rollouts: calibrate the detector in "
                "this session (CLI: pass --calibration-logs)."
            )
    o = report.overall
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="sub">failguard {__version__} · {now} · {len(rollouts)} rollouts'
        + (f" from <code>{html.escape(source)}</code>" if source else "")
        + " · higher scores mean more likely to fail</div>",
    ]
    # ---- headline numbers
    kpis = [
        ("TPR", o["tpr"]),
        ("TNR", o["tnr"]),
        ("balanced acc.", o["balanced_accuracy"]),
        ("detection time", o["detection_time"]),
        ("ROC-AUC", o["roc_auc"]),
    ]
    parts.append('<h2>Summary</h2><div class="kpis">')
    parts.append(
        f'<div class="kpi"><b>{o["n_failure"]} / {o["n_success"]}</b>'
        "<span>failed / successful rollouts</span></div>"
    )
    for label, value in kpis:
        parts.append(f'<div class="kpi"><b>{_fmt(value)}</b><span>{label}</span></div>')
    parts.append("</div>")
    # ---- detector
    cal = detector.calibration_
    assert cal is not None
    thr = ", ".join(
        f"{n}: {float(v[0]):.4g}" if v.shape[0] == 1 else f"{n}: {v.min():.4g}…{v.max():.4g}"
        for n, v in cal.tables.items()
    )
    rows = [
        ("indicators", ", ".join(detector.names)),
        ("windows", ", ".join(f"{k}={v}" for k, v in detector.windows.items())),
        ("fusion / threshold style", f"{detector.combine.upper()} / {detector.threshold}"),
        (
            "guarantee",
            f"{detector.guarantee}, alpha={detector.alpha:g}"
            + (f", delta={detector.delta:g}" if detector.guarantee == "pac" else ""),
        ),
        ("rollouts used to fit / calibrate", f"{detector.n_fit_} / {detector.n_calibration_}"),
        ("thresholds γ", thr),
    ]
    parts.append('<h2>Detector</h2><div class="card"><table>')
    parts += [f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows]
    parts.append("</table></div>")
    # ---- metrics
    parts.append('<h2>Metrics</h2><div class="row"><div class="card"><table>')
    parts.append("<tr><th>metric</th><th>value</th><th>meaning</th></tr>")
    for key, label, meaning in _METRICS:
        parts.append(
            f'<tr><td>{label}</td><td class="num">{_fmt(o.get(key))}</td>'
            f"<td>{html.escape(meaning)}</td></tr>"
        )
    parts.append("</table></div>")
    parts.append(
        '<div class="card"><table><tr><th>outcome / group</th><th>n</th>'
        "<th>alarm rate</th><th>mean detection time</th></tr>"
    )
    for g, m in report.per_group.items():
        parts.append(
            f'<tr><td>{html.escape(g)}</td><td class="num">{m["n"]}</td>'
            f'<td class="num">{_fmt(m["alarm_rate"])}</td>'
            f'<td class="num">{_fmt(m["detection_time"])}</td></tr>'
        )
    parts.append("</table>")
    parts.append(_img(figure_to_png(plot_groups(report)), "alarm rate per group"))
    parts.append("</div></div>")
    # ---- ROC and sweep
    parts.append('<h2>Threshold-free view and alpha</h2><div class="row">')
    parts.append(
        f'<div class="card" style="flex: 0 1 380px">'
        f"{_img(figure_to_png(plot_roc(traces)), 'ROC')}</div>"
    )
    parts.append('<div class="card">')
    if report.sweep:
        parts.append(_img(figure_to_png(plot_alpha_sweep(report.sweep)), "alpha sweep"))
        parts.append(
            "<table><tr><th>alpha</th><th>TPR</th><th>TNR</th><th>detection time</th></tr>"
        )
        for r in report.sweep:
            if "error" in r:
                parts.append(
                    f"<tr><td>{r['alpha']:g}</td><td colspan=3>{html.escape(r['error'])}</td></tr>"
                )
            else:
                parts.append(
                    f"<tr><td>{r['alpha']:g}</td><td class=num>{_fmt(r['tpr'])}</td>"
                    f"<td class=num>{_fmt(r['tnr'])}</td>"
                    f"<td class=num>{_fmt(r['detection_time'])}</td></tr>"
                )
        parts.append("</table>")
    else:
        parts.append(
            f'<p class="note">{html.escape(sweep_note or "No alpha sweep requested.")}</p>'
        )
    parts.append("</div></div>")
    # ---- traces
    picks = select_traces(traces, max_traces)
    parts.append("<h2>Rollouts</h2>")
    parts.append(
        '<p class="note">Solid: windowed score η(t); dashed: threshold γ(t); shaded: the '
        "indicator is above its threshold; red vertical line: first alarm (the fused ratio "
        "crosses 1).</p>"
    )
    parts.append('<div class="row traces">')
    for i, category in picks:
        name = str(rollouts[i].metadata.get("file", f"rollout #{i}"))
        fig = plot_trace(traces[i], title=f"#{i} {category}", horizon=detector.longest_calibration_)
        parts.append(f'<div class="card">{_img(figure_to_png(fig), name)}</div>')
    parts.append("</div></main></body></html>")
    return "\n".join(parts)


def write_report(
    detector: FailureDetector,
    rollouts: Sequence[Rollout],
    path: str | os.PathLike[str],
    alphas: Sequence[float] | None = None,
    max_traces: int = 6,
    title: str = "failguard report",
    source: str | None = None,
    id_groups: Sequence[str] | str | None = "auto",
) -> Path:
    """Write :func:`build_report` to ``path`` (one self-contained HTML file).

    Examples
    --------
    >>> import tempfile, os
    >>> from failguard import FailureDetector, RNDScore, ActionChunkEntropy
    >>> from failguard.synthetic import make_rollouts
    >>> det = FailureDetector(scores=[RNDScore(max_epochs=3), ActionChunkEntropy()], alpha=0.1)
    >>> det = det.fit(make_rollouts(8, seed=0, length=30), progress=False)
    >>> det = det.calibrate(make_rollouts(30, seed=1, length=30))
    >>> test = make_rollouts(6, seed=2, length=30) + make_rollouts(6, "failure", 3, length=30)
    >>> p = write_report(det, test, os.path.join(tempfile.mkdtemp(), "r.html"), alphas=[0.1, 0.2])
    >>> p.read_text().startswith("<!DOCTYPE html>")
    True
    """
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_name(out.name + ".html")
    text = build_report(detector, rollouts, alphas, max_traces, title, source, id_groups)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
