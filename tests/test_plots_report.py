"""Plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import importlib
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from failguard import ActionChunkEntropy, FailureDetector, RNDScore
from failguard.plots import (
    figure_to_png,
    plot_alpha_sweep,
    plot_groups,
    plot_roc,
    plot_trace,
)
from failguard.report import build_report, select_traces, write_report
from failguard.synthetic import make_rollouts

PNG = b"\x89PNG\r\n\x1a\n"
KW = {"length": 30, "embedding_dim": 8, "n_samples": 8, "horizon": 4, "action_dim": 2}


@pytest.fixture(scope="module")
def setup():
    det = FailureDetector(scores=[RNDScore(max_epochs=3), ActionChunkEntropy()], alpha=0.1)
    det.fit(make_rollouts(8, seed=0, **KW), progress=False)
    det.calibrate(make_rollouts(30, seed=1, **KW))
    test = (
        make_rollouts(6, seed=2, **KW)
        + make_rollouts(3, kind="ood_benign", seed=3, **KW)
        + make_rollouts(6, kind="failure", seed=4, **KW)
    )
    return det, test


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        for key in ("src", "href"):
            v = a.get(key)
            if v and not v.startswith("data:") and not v.startswith("#"):
                self.external.append(v)
        if tag not in ("img", "meta", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()


def test_each_plot_renders_png(setup):
    det, test = setup
    traces = det.traces(test)
    from failguard import evaluate

    rep = evaluate(det, test, alphas=[0.1, 0.2])
    figs = [plot_trace(traces[-1]), plot_roc(traces), plot_groups(rep), plot_alpha_sweep(rep.sweep)]
    for fig in figs:
        assert figure_to_png(fig).startswith(PNG)
    # a trace has one panel per indicator plus the fused ratio, and marks the alarm
    fig = plot_trace(traces[-1])
    assert len(fig.axes) == 3
    if traces[-1].first_alarm is not None:
        assert any("alarm at t=" in t.get_text() for t in fig.axes[-1].texts)


def test_degenerate_inputs_do_not_crash(setup):
    det, test = setup
    only_ok = det.traces(test[:3])
    assert figure_to_png(plot_roc(only_ok)).startswith(PNG)
    assert figure_to_png(plot_alpha_sweep([{"alpha": 0.01, "error": "too few"}])).startswith(PNG)


def test_report_is_self_contained_and_parses(setup, tmp_path):
    det, test = setup
    path = write_report(det, test, tmp_path / "report", alphas=[0.1, 0.2, 0.3], max_traces=4)
    assert path.suffix == ".html"
    text = path.read_text()
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.stack == []  # every element closed
    assert parser.external == []  # nothing loaded from outside the file
    assert len(parser.images) == 4 + 3  # traces + groups, ROC, alpha sweep
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    for word in ("TPR", "TNR", "ROC-AUC", "fail/", "success/", "alpha"):
        assert word in text


def test_report_without_calibration_curves_explains_the_missing_sweep(setup, tmp_path):
    det, test = setup
    det.save(tmp_path / "det")
    loaded = FailureDetector.load(tmp_path / "det")
    text = build_report(loaded, test, alphas=[0.1, 0.2], max_traces=1)
    assert "--calibration-logs" in text


def test_select_traces_covers_categories(setup):
    det, test = setup
    traces = det.traces(test)
    present = {(t.success, t.predicted_failure) for t in traces}
    picks = select_traces(traces, 4)
    assert len({c for _, c in picks}) == min(len(present), 4)
    assert len(picks) == 4 and len({i for i, _ in picks}) == 4


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(setup, tmp_path):
    det, test = setup
    path = write_report(det, test, tmp_path / "r.html", max_traces=2)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tempfile.mkdtemp()}",
            f"--screenshot={shot}",
            "--window-size=1280,1600",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG)


def test_plots_name_the_extra_when_matplotlib_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.delitem(sys.modules, "failguard.plots", raising=False)
    with pytest.raises(ImportError, match=r"failguard\[plots\]"):
        importlib.import_module("failguard.plots")
    monkeypatch.undo()
    importlib.import_module("failguard.plots")
    assert np.isfinite(1.0)


# ------------------------------------------------------------ issue 11, item 9
def test_alpha_sweep_plot_legend_covers_no_curve_and_bounds_only_id_successes():
    pytest.importorskip("matplotlib")
    from failguard.plots import plot_alpha_sweep

    rows = [
        {"alpha": a, "tpr": 0.9, "tnr": 0.5, "far_id": a / 2, "detection_time": 0.4}
        for a in (0.05, 0.1, 0.2)
    ]
    fig = plot_alpha_sweep(rows)
    ax1 = fig.axes[0]
    assert ax1.get_legend() is None and fig.legends  # the legend is outside the panels
    lines = {ln.get_label(): ln for ln in ax1.get_lines()}
    np.testing.assert_allclose(
        lines["TNR, in-distribution successes"].get_ydata(), [0.975, 0.95, 0.9]
    )
    assert "1 − alpha (guaranteed mean)" in lines
    # Without far_id the TNR counts benign OOD successes too: no 1 - alpha line beside it.
    bare = plot_alpha_sweep([{k: v for k, v in r.items() if k != "far_id"} for r in rows])
    labels = [ln.get_label() for ln in bare.axes[0].get_lines()]
    assert "TNR, all successes" in labels and not any("1 − alpha" in x for x in labels)


def test_trace_plot_marks_where_calibration_data_ends():
    pytest.importorskip("matplotlib")
    from failguard.plots import plot_trace
    from failguard.types import Trace

    w = np.linspace(0, 2, 20)
    tr = Trace({"rnd": w}, {"rnd": w}, {"rnd": np.ones(20)}, {"rnd": w}, w, w > 1, False)
    fig = plot_trace(tr, horizon=12)
    marks = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "end of calibration data"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 11.5


def test_robot_benchmark_titles_are_readable():
    report = importlib.import_module("benchmarks.robot.report")  # pytest: pythonpath = ["."]
    title = report.describe_setting({"windows": {"rnd": 10, "ace": 5}, "threshold": "band"})
    assert "{" not in title and "RND-OE 10" in title
