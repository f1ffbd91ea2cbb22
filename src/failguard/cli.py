"""The ``failguard`` command line: fit, calibrate, evaluate, export, report, plan, health.

It works on rollout log directories (``*.safetensors`` files written by
:class:`failguard.Recorder` or :func:`failguard.write_rollout`) and on detector directories
(``config.json`` + ``model.safetensors``, written by :meth:`FailureDetector.save`).

Exit codes
----------
0  success (``health``: the calibration still holds)
1  bad input: missing or empty paths, unlabelled logs, too few rollouts for alpha, a detector
   that does not match the logs, or any other failguard error (one-line message on stderr)
2  bad command line (argparse usage error)
3  an optional dependency is missing (``export`` needs failguard[export], ``report`` needs
   failguard[plots])
4  ``health`` only: the new successful rollouts are no longer consistent with the
   calibration; recalibrate (``failguard calibrate``)
5  ``health`` only: too few new successful rollouts to conclude anything; record more
130 interrupted (Ctrl-C)

Examples
--------
>>> code = main(["plan", "--alpha", "0.05"])  # doctest: +ELLIPSIS
P(a new successful rollout alarms) <= 0.05 with 'constant' thresholds needs 19 successful ...
>>> code
0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__

__all__ = ["EXIT_DEPENDENCY", "EXIT_INPUT", "EXIT_OK", "EXIT_RECALIBRATE", "EXIT_TOO_FEW", "main"]

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY = 3
EXIT_RECALIBRATE = 4
EXIT_TOO_FEW = 5
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing input problem; the message says what to do."""


class DependencyError(Exception):
    """An optional dependency is missing."""


# ---------------------------------------------------------------------------- helpers
def _read_logs(directory: str, what: str = "rollout logs") -> list[Any]:
    from .logs import read_rollouts

    d = Path(directory)
    if not d.exists():
        raise CliError(f"{d}: no such directory ({what}). Check the path.")
    if not d.is_dir():
        raise CliError(f"{d}: is a file; pass the directory that holds the *.safetensors logs.")
    return read_rollouts(d)


def _require_labels(rollouts: Sequence[Any], directory: str, purpose: str) -> None:
    unlabelled = [i for i, r in enumerate(rollouts) if r.success is None]
    if unlabelled:
        raise CliError(
            f"{directory}: {len(unlabelled)} of {len(rollouts)} rollouts have no success label "
            f"(first: #{unlabelled[0]}); {purpose} needs labels. Record them with "
            "Recorder.end(success=True/False) or end_episode(success=...)."
        )


def _successes(rollouts: Sequence[Any], directory: str, purpose: str) -> list[Any]:
    _require_labels(rollouts, directory, purpose)
    ok = [r for r in rollouts if r.success]
    if not ok:
        raise CliError(f"{directory}: no successful rollouts; {purpose} needs successful ones.")
    return ok


def _load_detector(directory: str) -> Any:
    from .detector import FailureDetector

    d = Path(directory)
    if not d.is_dir():
        raise CliError(
            f"{d}: no such detector directory. Create one with `failguard fit LOGS -o {d}`."
        )
    return FailureDetector.load(d)


def check_compatible(detector: Any, rollouts: Sequence[Any], directory: str) -> None:
    """Raise :class:`CliError` if the logs lack a field the detector reads or differ in shape."""
    for s in detector.scores:
        for field, shape in (s.input_shapes_ or {}).items():
            for i, r in enumerate(rollouts):
                arr = getattr(r, field)
                if arr is None:
                    raise CliError(
                        f"{directory}: rollout #{i} has no '{field}', which the detector's "
                        f"{s.name!r} score reads. Use logs recorded with that field."
                    )
                got = tuple(arr.shape[1:])
                if got != tuple(shape):
                    kind = "embedding size" if field == "embeddings" else f"'{field}' shape"
                    raise CliError(
                        f"{directory}: rollout #{i} has per-step {kind} {got}, but the detector "
                        f"was fitted on {tuple(shape)}. Use logs of the same policy, or refit "
                        "with `failguard fit`."
                    )


def _parse_floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values or any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be in (0, 1); got {text!r}")
    return values


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from err
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in the range (0, 1); got {v:g}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from err
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {v}")
    return v


def _make_scores(spec: str, example: Any, epochs: int | None) -> list[Any]:
    from .scores import ActionChunkEntropy, DiscreteActionEntropy, RNDScore

    if spec == "auto":
        names = ["rnd"]
        if example.action_samples is not None:
            names.append("ace")
        elif example.action_logits is not None:
            names.append("entropy")
        elif example.action_ids is not None:
            names.append("entropy-ids")
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    out: list[Any] = []
    for n in names:
        if n == "rnd":
            out.append(RNDScore(max_epochs=epochs) if epochs else RNDScore())
        elif n == "ace":
            out.append(ActionChunkEntropy())
        elif n == "entropy":
            out.append(DiscreteActionEntropy(source="logits"))
        elif n == "entropy-ids":
            out.append(DiscreteActionEntropy(source="ids"))
        else:
            raise CliError(
                f"--scores: unknown score {n!r}; choose from rnd, ace, entropy, entropy-ids "
                "(comma-separated) or auto."
            )
    for s in out:
        missing = [f for f in s.requires if getattr(example, f) is None]
        if missing:
            raise CliError(
                f"--scores: {s.name!r} reads {missing}, which the logs do not have. "
                "Choose other scores (or --scores auto)."
            )
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def _print_sweep(sweep: Sequence[dict[str, Any]]) -> None:
    keys = ("tpr", "tnr", "balanced_accuracy", "detection_time", "twa")
    print("alpha   " + "  ".join(f"{k:>17}" for k in keys))
    for row in sweep:
        if "error" in row:
            print(f"{row['alpha']:<7g} {row['error']}")
            continue
        print(f"{row['alpha']:<7g} " + "  ".join(f"{_fmt(row[k]):>17}" for k in keys))


def _sweep_detector(detector: Any, args: argparse.Namespace, quiet: bool) -> Any:
    """The detector itself with its calibration curves (re-scored from --calibration-logs)."""
    if getattr(args, "calibration_logs", None) is None:
        return None
    cal = _successes(_read_logs(args.calibration_logs), args.calibration_logs, "an alpha sweep")
    check_compatible(detector, cal, args.calibration_logs)
    return detector.calibrate(cal, progress=not quiet)


# ---------------------------------------------------------------------------- commands
def cmd_fit(args: argparse.Namespace) -> int:
    from .calibration import plan
    from .detector import FailureDetector

    rollouts = _read_logs(args.logs)
    _require_labels(rollouts, args.logs, "fit")
    ok = [r for r in rollouts if r.success]
    if not ok:
        raise CliError(f"{args.logs}: no successful rollouts; fit needs successful ones.")
    scores = _make_scores(args.scores, ok[0], args.epochs)
    if len(ok) < len(rollouts):
        print(f"using the {len(ok)} successful of {len(rollouts)} rollouts (failures skipped)")
    det = FailureDetector(
        scores=scores,
        windows=args.window,
        combine=args.combine,
        threshold=args.threshold,
        alpha=args.alpha,
        guarantee=args.guarantee,
        delta=args.delta,
        mondrian=args.mondrian,
        random_state=args.seed,
    )
    if args.calibration_logs is not None:
        fit_set = ok
        cal_set = _successes(
            _read_logs(args.calibration_logs), args.calibration_logs, "calibration"
        )
    else:
        needed = plan(
            args.alpha,
            args.delta if args.guarantee == "pac" else None,
            threshold=args.threshold,
            n_indicators=len(scores),
            combine=args.combine,
            joint=det.settings.joint,
        ).n_required
        order = np.random.default_rng(args.seed).permutation(len(ok))
        n_fit = max(1, round(args.fit_fraction * len(ok)))
        if len(ok) - n_fit < needed:
            raise CliError(
                f"{args.logs}: {len(ok)} successful rollouts; {n_fit} fit the scores "
                f"(--fit-fraction {args.fit_fraction:g}), leaving {len(ok) - n_fit} to "
                f"calibrate, but alpha={args.alpha:g} needs {needed}. Record at least "
                f"{n_fit + needed} successful rollouts, raise --alpha, or pass "
                "--calibration-logs."
            )
        fit_set = [ok[i] for i in order[:n_fit]]
        cal_set = [ok[i] for i in order[n_fit:]]
    det.fit(fit_set, progress=not args.quiet)
    if args.calibration_logs is not None:
        check_compatible(det, cal_set, args.calibration_logs)
    det.calibrate(cal_set, progress=not args.quiet)
    out = det.save(args.output)
    print(f"fitted on {len(fit_set)} and calibrated on {len(cal_set)} successful rollouts")
    print(f"{det}")
    print(f"saved to {out}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    det = _load_detector(args.detector)
    rollouts = _read_logs(args.logs)
    ok = _successes(rollouts, args.logs, "calibration")
    check_compatible(det, ok, args.logs)
    if args.alpha is not None:
        det.alpha = args.alpha
    det.calibrate(ok, progress=not args.quiet)
    out = det.save(args.output or args.detector)
    print(
        f"recalibrated on {len(ok)} successful rollouts (scores unchanged, alpha={det.alpha:g}); "
        f"saved to {out}"
    )
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import alpha_sweep, evaluate

    det = _load_detector(args.detector)
    rollouts = _read_logs(args.logs)
    _require_labels(rollouts, args.logs, "evaluate")
    check_compatible(det, rollouts, args.logs)
    if args.alphas and _sweep_detector(det, args, args.quiet) is None:
        raise CliError(
            "--alphas recalibrates at each alpha and needs the calibration rollouts: pass "
            "--calibration-logs DIR (the successful rollouts the detector was calibrated on)."
        )
    report = evaluate(det, rollouts, progress=not args.quiet)
    if args.alphas:
        report.sweep = alpha_sweep(det, rollouts, args.alphas)
    print(report.table())
    if report.sweep:
        print()
        _print_sweep(report.sweep)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    det = _load_detector(args.detector)
    try:  # onnx is imported when the graph is built, so the export itself is inside
        from .exporters import export_onnx

        out = export_onnx(det, args.output)
    except ImportError as err:
        raise DependencyError(
            f"ONNX export is not available ({err}). Install it with "
            "`pip install failguard[export]`."
        ) from err
    print(f"exported the monitor to {out if out is not None else args.output}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from .report import write_report
    except ImportError as err:
        raise DependencyError(str(err)) from err
    det = _load_detector(args.detector)
    rollouts = _read_logs(args.logs)
    _require_labels(rollouts, args.logs, "report")
    check_compatible(det, rollouts, args.logs)
    swept = _sweep_detector(det, args, args.quiet) is not None
    try:
        path = write_report(
            det,
            rollouts,
            args.output,
            alphas=args.alphas if swept else None,
            max_traces=args.max_traces,
            title=args.title,
            source=str(args.logs),
        )
    except ImportError as err:
        raise DependencyError(str(err)) from err
    print(f"wrote {path}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from .calibration import plan

    result = plan(
        args.alpha,
        args.delta,
        threshold=args.threshold,
        n_indicators=args.n_indicators,
        combine=args.combine,
        joint=args.joint,
        split=args.split,
    )
    print(result.explanation)
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from .health import check_calibration

    det = _load_detector(args.detector)
    rollouts = _read_logs(args.logs)
    ok = _successes(rollouts, args.logs, "the health check")
    check_compatible(det, ok, args.logs)
    result = check_calibration(det, ok, confidence=args.confidence)
    print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    if result.needs_recalibration:
        return EXIT_RECALIBRATE
    return EXIT_TOO_FEW if result.status == "too_few" else EXIT_OK


# ---------------------------------------------------------------------------- parser
EPILOG = """\
exit codes:
  0    success (health: the calibration still holds)
  1    bad input (paths, empty or unlabelled logs, detector/log mismatch, too few rollouts)
  2    bad command line
  3    optional dependency missing (export: failguard[export]; report: failguard[plots])
  4    health: recalibrate (new successes no longer match the calibration)
  5    health: too few new successes to tell; record more before trusting the check
  130  interrupted

typical flow:
  failguard plan --alpha 0.05
  failguard fit logs/ -o detector/ --alpha 0.05
  failguard evaluate detector/ test_logs/
  failguard report detector/ test_logs/ -o report.html
  failguard health detector/ new_success_logs/ || failguard calibrate detector/ new_success_logs/
  failguard export detector/ -o monitor.onnx
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``failguard`` command."""
    parser = argparse.ArgumentParser(
        prog="failguard",
        description=(
            "Calibrated run-time failure prediction for generative robot policies (FIPER). "
            "Works on rollout log directories (*.safetensors from failguard.Recorder) and "
            "detector directories (config.json + model.safetensors)."
        ),
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"failguard {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (they go to stderr)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, formatter_class=_Formatter)
        p.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
        )
        return p

    p = add(
        "fit",
        "fit the scores and calibrate the thresholds, save a detector",
        "Fit the scores on successful rollouts and calibrate the thresholds on other "
        "successful rollouts (split by rollout, never by step), then save the detector. "
        "Failed rollouts in LOGS are skipped; unlabelled ones are an error.",
    )
    p.add_argument("logs", help="directory of rollout logs (successful ones are used)")
    p.add_argument("-o", "--output", required=True, help="detector directory to write")
    p.add_argument(
        "--calibration-logs",
        metavar="DIR",
        help="separate successful rollouts to calibrate on (default: split LOGS)",
    )
    p.add_argument(
        "--fit-fraction",
        type=_unit_float,
        default=0.3,
        help="share of LOGS' successful rollouts that fit the scores when LOGS is split",
    )
    p.add_argument(
        "--scores",
        default="auto",
        help="comma-separated: rnd, ace, entropy (discrete, from logits), entropy-ids; "
        "auto = rnd plus ace or entropy, whichever the logs allow",
    )
    p.add_argument("--window", type=_positive_int, default=10, help="window length w (steps)")
    p.add_argument("--combine", choices=("and", "or"), default="and", help="fusion rule")
    p.add_argument(
        "--threshold",
        choices=("constant", "per_step", "band"),
        default="constant",
        help="threshold style",
    )
    p.add_argument(
        "--alpha",
        type=_unit_float,
        default=0.05,
        help="bound on the false-alarm probability of a successful rollout",
    )
    p.add_argument(
        "--guarantee",
        choices=("marginal", "pac"),
        default="marginal",
        help="marginal (conformal) or PAC (1-delta confidence)",
    )
    p.add_argument("--delta", type=_unit_float, default=0.1, help="PAC confidence parameter")
    p.add_argument("--mondrian", action="store_true", help="calibrate per rollout group")
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="max RND training epochs (default: RNDScore's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the fit/calibration split")
    p.set_defaults(func=cmd_fit)

    p = add(
        "calibrate",
        "recalibrate a saved detector on new successful rollouts",
        "Recompute the thresholds of a saved detector from new successful rollouts. The "
        "fitted scores (RND weights, ACE cells) are kept: no retraining. Use it when "
        "`failguard health` says so, or to change alpha.",
    )
    p.add_argument("detector", help="detector directory")
    p.add_argument("logs", help="successful rollouts not used to fit the detector")
    p.add_argument("-o", "--output", help="where to save (default: overwrite DETECTOR)")
    p.add_argument("--alpha", type=_unit_float, default=None, help="new alpha (default: keep)")
    p.set_defaults(func=cmd_calibrate)

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
    p.set_defaults(func=cmd_evaluate)

    p = add(
        "export",
        "export the monitor to ONNX",
        "Export the whole monitor step (scores, windows, thresholds, fusion) as one ONNX "
        "graph for failguard.runtime.OnnxMonitor. Needs `pip install failguard[export]`.",
    )
    p.add_argument("detector", help="detector directory")
    p.add_argument("-o", "--output", default="monitor.onnx", help="ONNX file to write")
    p.set_defaults(func=cmd_export)

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
        default=[0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
        help="alphas of the sweep",
    )
    p.add_argument(
        "--max-traces", type=_positive_int, default=6, help="number of per-rollout trace plots"
    )
    p.add_argument("--title", default="failguard report", help="report title")
    p.set_defaults(func=cmd_report)

    p = add(
        "plan",
        "how many successful calibration rollouts alpha (and delta) needs",
        "Print the fewest successful calibration rollouts that can give the guarantee, "
        "before recording them.",
    )
    p.add_argument("--alpha", type=_unit_float, required=True, help="target false-alarm bound")
    p.add_argument(
        "--delta",
        type=_unit_float,
        default=None,
        help="PAC: P(false-alarm rate <= alpha) >= 1 - delta (omit for marginal)",
    )
    p.add_argument(
        "--threshold",
        choices=("constant", "per_step", "band"),
        default="constant",
        help="threshold style",
    )
    p.add_argument("--n-indicators", type=_positive_int, default=2, help="number of scores")
    p.add_argument("--combine", choices=("and", "or"), default="and", help="fusion rule")
    p.add_argument("--joint", action="store_true", help="joint calibration of all indicators")
    p.add_argument(
        "--split",
        type=_unit_float,
        default=0.5,
        help="share of rollouts that estimate time-varying profiles",
    )
    p.set_defaults(func=cmd_plan)

    p = add(
        "health",
        "are new successful rollouts still consistent with the calibration?",
        "Compare newly logged successful rollouts with the calibration: their alarm rate "
        "with a Clopper-Pearson interval against alpha, and a rank test of their episode "
        "statistics against the calibration statistics. Exit code 4 means: recalibrate "
        "(`failguard calibrate DETECTOR NEW_LOGS`).",
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
    p.set_defaults(func=cmd_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``failguard`` command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.quiet = bool(getattr(args, "quiet", False))
    from .exceptions import FailguardError

    prefix = f"failguard {args.command}: error:"
    try:
        return int(args.func(args))
    except DependencyError as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except (CliError, FailguardError, ValueError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"{prefix} {message}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("failguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
