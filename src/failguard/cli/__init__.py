"""The ``failguard`` command line: fit, calibrate, evaluate, score, export, report, plan, health.

It works on rollout log directories (``*.safetensors`` files written by
:class:`failguard.Recorder` or :func:`failguard.write_rollout`) and on detector directories
(``config.json`` + ``model.safetensors``, written by :meth:`FailureDetector.save`).

Exit codes
----------
0  success (``health``: the calibration still holds)
1  bad input: missing or empty paths, unlabelled logs, too few rollouts for alpha, a detector
   that does not match the logs, an output that would overwrite a detector (without
   ``--force``) or a log directory, logs the detector was fitted or calibrated on (without
   ``--allow-seen``), or any other failguard error (one-line message on stderr)
2  bad command line (argparse usage error)
3  an optional dependency is missing (``export`` needs failguard[export], ``report`` needs
   failguard[plots])
4  ``health`` only: the new successful rollouts are no longer consistent with the
   calibration; recalibrate (``failguard calibrate DETECTOR NEW_LOGS -o NEW_DIR``). To act on
   exactly this code in POSIX sh, see :data:`RECALIBRATE_LINE`
5  ``health`` only: too few new successful rollouts to conclude anything; record more
130 interrupted (Ctrl-C)

Examples
--------
>>> code = main(["plan", "--alpha", "0.05"])  # doctest: +ELLIPSIS
P(a new successful rollout alarms) <= 0.05 with 'constant' thresholds needs 19 successful ...
>>> code
0

Layout: ``_fit`` (plan, fit, calibrate), ``_evaluate`` (evaluate, report, score), ``_deploy``
(export, health); what they share is in ``_common`` (exit codes, inputs, outputs), ``_args``
(argument types and shared options) and ``_engine`` (per-rollout results, in process or on
Ray). This module assembles the parser and runs it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..exceptions import CliError as CliError
from ..exceptions import DependencyError, FailguardError
from . import _deploy, _evaluate, _fit
from ._args import _Formatter
from ._common import (
    EXIT_DEPENDENCY,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RECALIBRATE,
    EXIT_TOO_FEW,
    EXIT_USAGE,
    cli_wording,
    emit,
)
from ._common import check_compatible as check_compatible
from ._deploy import cmd_export, cmd_health
from ._evaluate import DEFAULT_SWEEP as DEFAULT_SWEEP
from ._evaluate import _supported_alphas as _supported_alphas
from ._evaluate import cmd_evaluate, cmd_report, cmd_score
from ._fit import cmd_calibrate, cmd_fit, cmd_plan

__all__ = ["EXIT_DEPENDENCY", "EXIT_INPUT", "EXIT_OK", "EXIT_RECALIBRATE", "EXIT_TOO_FEW", "main"]


# The documented way to recalibrate only when `health` says so (exit 4): POSIX sh; exit 5
# (too few to tell), 1 (bad input) and 0 leave the detector alone. README.md shows the same
# line, and tests/test_cli.py runs it with sh.
RECALIBRATE_LINE = (
    "failguard health detector/ new/; [ $? -eq 4 ] && failguard calibrate detector/ new/ "
    "-o detector_v2/"
)

EPILOG = """\
exit codes:
  0    success (health: the calibration still holds)
  1    bad input (paths, empty or unlabelled logs, detector/log mismatch, too few rollouts,
       an output that would overwrite a detector without --force, logs already seen)
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
  RECALIBRATE_LINE
  failguard export detector/ -o monitor.onnx
""".replace("RECALIBRATE_LINE", RECALIBRATE_LINE)


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

    # the command functions are looked up here, when the parser is built: tests replace them
    for register, func in (
        (_fit.add_fit, cmd_fit),
        (_fit.add_calibrate, cmd_calibrate),
        (_evaluate.add_evaluate, cmd_evaluate),
        (_deploy.add_export, cmd_export),
        (_evaluate.add_report, cmd_report),
        (_fit.add_plan, cmd_plan),
        (_deploy.add_health, cmd_health),
        (_evaluate.add_score, cmd_score),
    ):
        register(add).set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``failguard`` command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    # Progress bars only on a terminal: piped or redirected output stays clean.
    interactive = sys.stdout.isatty() and sys.stderr.isatty()
    args.quiet = bool(getattr(args, "quiet", False)) or not interactive
    prefix = f"failguard {args.command}: error:"

    def show(message: Any, category: Any, *_: Any, **__: Any) -> None:
        text = cli_wording(" ".join(str(message).split()))
        emit(f"failguard {args.command}: warning: {text}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            return int(args.func(args))
    except DependencyError as err:
        emit(f"{prefix} {err}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except (FailguardError, OSError) as err:
        message = cli_wording(" ".join(str(err).split()))
        emit(f"{prefix} {message}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        emit("failguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
