"""Measure a detector on logs: ``failguard evaluate``, ``report`` and ``score``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..exceptions import CliError, DependencyError
from ._args import (
    AddParser,
    _add_engine,
    _add_id_groups_option,
    _add_seen_option,
    _parse_floats,
    _positive_int,
)
from ._common import (
    EXIT_OK,
    _load_detector,
    _read_logs,
    _refuse_seen,
    _require_labels,
    _successes,
    check_compatible,
    emit,
)
from ._engine import _gather


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def _print_sweep(sweep: Sequence[dict[str, Any]]) -> None:
    keys = ("tpr", "tnr", "balanced_accuracy", "detection_time", "twa")
    emit("alpha   " + "  ".join(f"{k:>17}" for k in keys))
    for row in sweep:
        if "error" in row:
            emit(f"{row['alpha']:<7g} {row['error']}")
            continue
        emit(f"{row['alpha']:<7g} " + "  ".join(f"{_fmt(row[k]):>17}" for k in keys))


def _sweep_detector(detector: Any, args: argparse.Namespace, quiet: bool) -> Any:
    """The detector itself with its calibration curves (re-scored from --calibration-logs)."""
    if getattr(args, "calibration_logs", None) is None:
        return None
    cal = _successes(_read_logs(args.calibration_logs), args.calibration_logs, "an alpha sweep")
    check_compatible(detector, cal, args.calibration_logs)
    return detector.calibrate(cal, progress=not quiet)


DEFAULT_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def _supported_alphas(detector: Any) -> list[float]:
    """The alphas of the default sweep that the detector's calibration set can support."""
    from dataclasses import replace

    from ..calibration.planner import plan_for_settings

    n, k = detector.n_calibration_, len(detector.scores)
    return [
        a
        for a in DEFAULT_SWEEP
        if plan_for_settings(replace(detector.settings, alpha=a), k).n_required <= n
    ]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import alpha_sweep, evaluate

    det = _load_detector(args.detector)
    if not args.alphas:  # streamed in process, or on Ray: the same per-rollout results
        from ..metrics import evaluate_results

        det.spec()  # raises NotFittedError unless calibrated
        results = _gather(args, det)
        _require_labels(results, args.logs, "evaluate")
        _refuse_seen(det, results, args.logs, args.allow_seen)
        id_groups = args.id_groups
        if id_groups == "auto" and det.calibration_groups_:
            id_groups = det.calibration_groups_
        report = evaluate_results(results, det.alpha, id_groups=id_groups)
    else:
        if args.engine == "ray":
            raise CliError("--alphas rescoring runs in process; leave --engine ray out to use it.")
        rollouts = _read_logs(args.logs)
        _require_labels(rollouts, args.logs, "evaluate")
        check_compatible(det, rollouts, args.logs)
        _refuse_seen(det, rollouts, args.logs, args.allow_seen)
        if _sweep_detector(det, args, args.quiet) is None:
            raise CliError(
                "--alphas recalibrates at each alpha and needs the calibration rollouts: pass "
                "--calibration-logs DIR (the successful rollouts the detector was calibrated on)."
            )
        report = evaluate(det, rollouts, progress=not args.quiet, id_groups=args.id_groups)
        report.sweep = alpha_sweep(det, rollouts, args.alphas, id_groups=args.id_groups)
    emit(report.table())
    if report.sweep:
        emit()
        _print_sweep(report.sweep)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        emit(f"wrote {args.json}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from ..report import write_report
    except ImportError as err:
        raise DependencyError(str(err)) from err
    det = _load_detector(args.detector)
    rollouts = _read_logs(args.logs)
    _require_labels(rollouts, args.logs, "report")
    check_compatible(det, rollouts, args.logs)
    _refuse_seen(det, rollouts, args.logs, args.allow_seen)
    swept = _sweep_detector(det, args, args.quiet) is not None
    alphas = args.alphas
    if swept and alphas is None:
        alphas = _supported_alphas(det)
        if not alphas:
            emit(
                f"note: no alpha of the default sweep can be calibrated with "
                f"{det.n_calibration_} rollouts; pass --alphas to choose others",
                file=sys.stderr,
            )
    try:
        path = write_report(
            det,
            rollouts,
            args.output,
            alphas=alphas if swept else None,
            max_traces=args.max_traces,
            title=args.title,
            source=str(args.logs),
            id_groups=args.id_groups,
        )
    except ImportError as err:
        raise DependencyError(str(err)) from err
    emit(f"wrote {path}")
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    det = _load_detector(args.detector)
    det._require_fitted()
    results = _gather(args, det, curves=args.curves)
    out = Path(args.output)
    if out.suffix == ".jsonl":
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as handle:
            for r in results:
                handle.write(json.dumps(r.to_row()) + "\n")
    else:
        try:
            from ..distributed import write_parquet

            write_parquet(results, out)
        except ImportError as err:
            raise DependencyError(
                f"Parquet output needs pyarrow ({err}); `pip install failguard[ray]`, or "
                "write JSON lines with -o RESULTS.jsonl."
            ) from err
    steps = sum(r.n_steps for r in results)
    alarms = sum(r.predicted_failure for r in results)
    what = f", {alarms} with an alarm" if det.is_calibrated else " (not calibrated: no alarms)"
    emit(f"scored {len(results)} rollouts ({steps} steps){what}; wrote {out}")
    return EXIT_OK


def add_evaluate(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard evaluate`` subcommand and its options."""
    p = add(
        "evaluate",
        "TPR, TNR, detection time, ... on labelled rollouts",
        "Evaluate a detector on labelled test rollouts (not used to fit or calibrate): "
        "overall and per-group metrics, optionally at several alphas.",
    )
    p.add_argument("detector", help="detector directory")
    p.add_argument("logs", help="labelled test rollouts (successes and failures)")
    p.add_argument(
        "--alphas",
        type=_parse_floats,
        default=None,
        help="comma-separated alphas to sweep (needs --calibration-logs)",
    )
    p.add_argument(
        "--calibration-logs",
        metavar="DIR",
        help="the detector's calibration rollouts (for --alphas)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    _add_id_groups_option(p)
    _add_seen_option(p)
    _add_engine(p)
    return p


def add_report(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard report`` subcommand and its options."""
    p = add(
        "report",
        "write a self-contained HTML report with plots",
        "Write one self-contained HTML file (images embedded): metrics table, per-group "
        "alarm rates, ROC of the per-rollout maximum fused ratio, per-rollout score traces "
        "and, with --calibration-logs, TPR/TNR/detection time against alpha. Needs "
        "`pip install failguard[plots]`.",
    )
    p.add_argument("detector", help="detector directory")
    p.add_argument("logs", help="labelled test rollouts")
    p.add_argument("-o", "--output", default="failguard_report.html", help="HTML file")
    p.add_argument(
        "--calibration-logs",
        metavar="DIR",
        help="the detector's calibration rollouts (enables the alpha sweep)",
    )
    p.add_argument(
        "--alphas",
        type=_parse_floats,
        default=None,
        help="comma-separated alphas of the sweep (default: those of "
        + ",".join(f"{a:g}" for a in DEFAULT_SWEEP)
        + " that the calibration set can support)",
    )
    p.add_argument(
        "--max-traces", type=_positive_int, default=6, help="number of per-rollout trace plots"
    )
    p.add_argument("--title", default="failguard report", help="report title")
    _add_id_groups_option(p)
    _add_seen_option(p)
    return p


def add_score(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard score`` subcommand and its options."""
    p = add(
        "score",
        "per-rollout results (first alarm, peak ratios, episode statistics) as Parquet",
        "Score every rollout of LOGS into one row each: source, steps, success, group, "
        "first alarm step, peak ratio per indicator, peak fused ratio and episode "
        "statistics. Parquet (needs pyarrow, in failguard[ray]) or, for a .jsonl output, "
        "JSON lines.",
    )
    p.add_argument("detector", help="detector directory (fitted; calibrated for alarms)")
    p.add_argument("logs", help="directory (or fsspec URI with --engine ray) of rollout logs")
    p.add_argument("-o", "--output", default="results.parquet", help="Parquet or .jsonl file")
    p.add_argument("--curves", action="store_true", help="also keep each rollout's windowed curves")
    _add_engine(p)
    return p
