"""Deploy a detector: ``failguard export`` (ONNX) and ``health`` (is the calibration still
valid for new successful rollouts?)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..exceptions import DependencyError
from ._args import AddParser, _add_engine, _add_seen_option, _unit_float
from ._common import (
    EXIT_OK,
    EXIT_RECALIBRATE,
    EXIT_TOO_FEW,
    _load_detector,
    _refuse_seen,
    _successes,
    emit,
)
from ._engine import _gather


def cmd_export(args: argparse.Namespace) -> int:
    det = _load_detector(args.detector)
    try:  # onnx is imported when the graph is built, so the export itself is inside
        from ..exporters import export_onnx

        out = export_onnx(det, args.output)
    except ImportError as err:
        raise DependencyError(
            f"ONNX export is not available ({err}). Install it with "
            "`pip install failguard[export]`."
        ) from err
    emit(f"exported the monitor to {out if out is not None else args.output}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from ..health import health_from_results

    det = _load_detector(args.detector)
    det.spec()  # raises NotFittedError unless calibrated
    results = _gather(args, det)
    ok = _successes(results, args.logs, "the health check")
    if len(ok) < len(results):
        emit(
            f"using the {len(ok)} successful of {len(results)} rollouts: the health check "
            f"reads successes only ({len(results) - len(ok)} failed ones skipped)"
        )
    _refuse_seen(det, ok, args.logs, args.allow_seen)
    result = health_from_results(det, ok, confidence=args.confidence)
    result.message = result.message.replace(
        "Run detector.calibrate(new_successes) (`failguard calibrate DETECTOR NEW_LOGS`)",
        f"Run `failguard calibrate {args.detector} {args.logs} -o NEW_DIR`",
    )
    emit(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    if result.needs_recalibration:
        return EXIT_RECALIBRATE
    return EXIT_TOO_FEW if result.status == "too_few" else EXIT_OK


def add_export(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard export`` subcommand and its options."""
    p = add(
        "export",
        "export the monitor to ONNX",
        "Export the whole monitor step (scores, windows, thresholds, fusion) as one ONNX "
        "graph for failguard.runtime.OnnxMonitor. Needs `pip install failguard[export]`.",
    )
    p.add_argument("detector", help="detector directory")
    p.add_argument("-o", "--output", default="monitor.onnx", help="ONNX file to write")
    return p


def add_health(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard health`` subcommand and its options."""
    p = add(
        "health",
        "are new successful rollouts still consistent with the calibration?",
        "Compare newly logged successful rollouts with the calibration: their alarm rate "
        "with a Clopper-Pearson interval against alpha, and a rank test of their episode "
        "statistics against the calibration statistics. Exit code 4 means: recalibrate "
        "(`failguard calibrate DETECTOR NEW_LOGS -o NEW_DIR`); 5: too few to tell, record "
        "more; 0: fine. Failed rollouts in LOGS are skipped.",
    )
    p.add_argument("detector", help="detector directory")
    p.add_argument("logs", help="new successful rollouts (not used to fit or calibrate)")
    p.add_argument(
        "--confidence",
        type=_unit_float,
        default=0.95,
        help="confidence of the interval and the tests",
    )
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    _add_seen_option(p)
    _add_engine(p)
    return p
