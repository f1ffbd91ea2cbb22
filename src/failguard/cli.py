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
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .core.kernel import split_indices
from .exceptions import CliError, DependencyError, FailguardError

__all__ = ["EXIT_DEPENDENCY", "EXIT_INPUT", "EXIT_OK", "EXIT_RECALIBRATE", "EXIT_TOO_FEW", "main"]

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY = 3
EXIT_RECALIBRATE = 4
EXIT_TOO_FEW = 5
EXIT_INTERRUPTED = 130


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


def _check_output_dir(
    output: str, logs: Sequence[str | None], force: bool, what: str = "the detector"
) -> Path:
    """Refuse an output directory that is a file, a log directory or (without --force) an
    existing detector; checked before anything is read or trained."""
    from ._artifact import CONFIG_FILE, WEIGHTS_FILE

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise CliError(
            f"-o {out}: is a file; pass a directory for {what} (it will hold {CONFIG_FILE} "
            f"and {WEIGHTS_FILE})."
        )
    for d in logs:
        if d is not None and Path(d).resolve() == out.resolve():
            raise CliError(
                f"-o {out}: is the log directory {d}; {what}'s {WEIGHTS_FILE} would be read "
                "as a rollout log next time. Write it to another directory."
            )
    if out.is_dir():
        logs_inside = [p.name for p in out.glob("*.safetensors") if p.name != WEIGHTS_FILE]
        if logs_inside:
            raise CliError(
                f"-o {out}: holds rollout logs ({logs_inside[0]}, ...); write {what} to "
                "another directory."
            )
        if ((out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists()) and not force:
            raise CliError(
                f"-o {out}: already holds a detector. Pass -o NEW_DIR to keep it, or --force "
                "to overwrite it."
            )
    return out


def _refuse_seen(detector: Any, rollouts: Sequence[Any], directory: str, allow: bool) -> None:
    """Refuse logs the detector was fitted or calibrated on (content hashes), unless allowed."""
    if rollouts and hasattr(rollouts[0], "fingerprint"):  # per-rollout results
        known = detector.fitted_state.known_fingerprints()
        seen = [i for i, r in enumerate(rollouts) if r.fingerprint in known]
    else:
        seen = detector.seen(rollouts)
    if not seen:
        return
    what = (
        f"{directory}: {len(seen)} of {len(rollouts)} rollouts (first: #{seen[0]}) have the "
        "same content as rollouts this detector was fitted or calibrated on"
    )
    if not allow:
        raise CliError(
            f"{what}; numbers on them are in-sample and look better than the detector is. "
            "Use held-out logs, or pass --allow-seen if they are independent episodes that "
            "repeated step for step."
        )
    print(f"failguard: warning: {what} (--allow-seen).", file=sys.stderr)
    warnings.filterwarnings("ignore", message=".*fitted or calibrated on")  # said once


# Library messages name Python calls; on the command line, name the options instead.
_CLI_WORDING = (
    ("failguard.calibration.plan() tells the numbers.", "`failguard plan` tells the numbers."),
    ("independent_repeats=True (CLI: --independent-repeats)", "--independent-repeats"),
    ("use threshold='constant'", "use --threshold constant"),
    ("use calibration='per_indicator'", "use --calibration per_indicator"),
    ("guarantee='pac'", "--guarantee pac"),
    ("raise alpha", "raise --alpha"),
    ("raise max_epochs (CLI: --epochs)", "raise --epochs"),
    ("mondrian=True needs", "--mondrian needs"),
)


def cli_wording(message: str) -> str:
    """A library message with its Python calls replaced by the matching CLI options.

    Examples
    --------
    >>> cli_wording("Record more, or raise alpha. failguard.calibration.plan() tells the numbers.")
    'Record more, or raise --alpha. `failguard plan` tells the numbers.'
    """
    for py, cli in _CLI_WORDING:
        message = message.replace(py, cli)
    return message


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


def _fusion(text: str) -> str:
    from .core.kernel import parse_combine

    if text in ("and", "or") or parse_combine(text) is not None:
        return text
    raise argparse.ArgumentTypeError(
        f"expected 'and', 'or' or 'k-of-n' (at least k of the n scores), got {text!r}"
    )


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from err
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {v}")
    return v


def _make_scores(spec: str, example: Any, epochs: int | None) -> list[Any]:
    from .scores import SCORE_ALIASES, SCORE_NAMES, make_score

    if spec == "auto":
        names = ["rnd"]
        if example.action_samples is not None:
            names.append("ace")
        elif example.action_logits is not None:
            names.append("entropy")
        elif example.action_ids is not None:
            names.append("entropy_samples")
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    out: list[Any] = []
    for n in names:
        if SCORE_ALIASES.get(n, n) not in SCORE_NAMES:
            raise CliError(
                f"--scores: unknown score {n!r}; choose from {', '.join(SCORE_NAMES)} "
                "(comma-separated) or auto."
            )
        out.append(make_score(n, **({"max_epochs": epochs} if epochs and n == "rnd" else {})))
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


# ---------------------------------------------------------------------------- engines
def _check_one(detector: Any, rollout: Any, index: int, directory: str) -> None:
    """:func:`check_compatible` for one rollout of a stream (its index in the message)."""
    try:
        check_compatible(detector, [rollout], directory)
    except CliError as err:
        raise CliError(str(err).replace("rollout #0 ", f"rollout #{index} ", 1)) from None


def _gather(
    args: argparse.Namespace, detector: Any, curves: bool = False, alarms: bool = True
) -> Any:
    """Per-rollout results of LOGS, in file-name order, by the engine the user chose.

    ``inprocess`` streams the files one at a time (constant memory); ``ray`` scores them on a
    Ray cluster (failguard.distributed). Both give the same results. Unreadable files are
    skipped and listed on stderr, unless ``--strict``.
    """
    from .exceptions import RolloutError

    logs = str(args.logs)
    if "://" not in logs:
        d = Path(logs)
        if not d.exists():
            raise CliError(f"{d}: no such directory (rollout logs). Check the path.")
        if not d.is_dir():
            raise CliError(f"{d}: is a file; pass the directory that holds the *.safetensors logs.")
    strict = bool(getattr(args, "strict", False))
    try:
        if getattr(args, "engine", "inprocess") == "ray":
            try:
                from . import distributed

                distributed.init(address=args.address, num_cpus=args.num_cpus)
            except ImportError as err:
                raise DependencyError(
                    f"--engine ray needs Ray Data ({err}). Install it with "
                    "`pip install failguard[ray]`, or leave --engine out to run in process."
                ) from err
            if "://" not in logs:  # the friendly mismatch message, from the first file
                from .logs import iter_rollouts

                first = next(iter_rollouts(logs, errors=[]), None)
                if first is not None:
                    _check_one(detector, first, 0, logs)
            run = distributed.score(
                detector,
                logs,
                num_workers=args.num_cpus,
                strict=strict,
                curves=curves,
                alarms=alarms,
                progress=not args.quiet,
            )
            results, skipped = run.results, run.skipped
        else:
            import warnings

            from .logs import iter_rollouts

            if "://" in logs:
                raise CliError(f"{logs}: a URI; read it with --engine ray (failguard[ray]).")
            from .streaming import iter_results

            errors: list[tuple[str, str]] | None = None if strict else []

            def checked() -> Any:
                for i, r in enumerate(iter_rollouts(logs, errors)):
                    _check_one(detector, r, i, logs)
                    yield r

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="skipped unreadable rollout file")
                results = list(
                    iter_results(detector, checked(), curves, alarms, progress=not args.quiet)
                )
            skipped = errors or []
    except RolloutError as err:
        raise CliError(
            f"{logs}: {err} Use logs of the same policy, or refit with `failguard fit`."
        ) from err
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable rollout file(s) (--strict stops instead):",
            file=sys.stderr,
        )
        for _, message in skipped:
            print(f"  {message}", file=sys.stderr)
    if not results:
        raise CliError(f"{logs}: no readable rollout file.")
    return results


# ---------------------------------------------------------------------------- commands
def _check_shapes(scores: Sequence[Any], example: Any, rollouts: Sequence[Any], where: str) -> None:
    """Before training: every rollout has the fields the scores read, shaped like ``example``."""
    for s in scores:
        for f in s.requires:
            want = tuple(getattr(example, f).shape[1:])
            for i, r in enumerate(rollouts):
                arr = getattr(r, f)
                if arr is None or tuple(arr.shape[1:]) != want:
                    got = "no such field" if arr is None else f"per-step shape {arr.shape[1:]}"
                    raise CliError(
                        f"{where}: rollout #{i} has {got} for '{f}', which the {s.name!r} score "
                        f"reads with per-step shape {want}. Use logs of the same policy."
                    )


def _check_calibration_set(
    det: Any, fit_set: Sequence[Any], cal_set: Sequence[Any], where: str, repeats_ok: bool
) -> None:
    """Before training: enough calibration rollouts (per group with --mondrian), none repeating
    a fit rollout unless declared independent."""
    from collections import Counter

    from ._gate import REPEATS_HELP
    from ._gate import fingerprint as _fingerprint

    needed = det.calibration_plan().n_required
    if len(cal_set) < needed:
        raise CliError(
            f"{where}: {len(cal_set)} successful calibration rollouts, but alpha={det.alpha:g}"
            + (f", delta={det.delta:g}" if det.guarantee == "pac" else "")
            + f" needs {needed} with these options (`failguard plan` tells the numbers). "
            "Record more successful rollouts or raise --alpha."
        )
    if det.mondrian:
        counts = Counter(r.group for r in cal_set if r.group is not None)
        if not counts:
            raise CliError(f"{where}: --mondrian needs calibration rollouts with a group label.")
        short = {g: c for g, c in sorted(counts.items()) if c < needed}
        if short:
            raise CliError(
                f"{where}: --mondrian calibrates each group on its own and needs {needed} "
                f"successful calibration rollouts per group; too few in {short}. Record more "
                "or drop --mondrian."
            )
    if not repeats_ok:
        fit_prints = {_fingerprint(r) for r in fit_set}
        seen: set[str] = set()
        for i, r in enumerate(cal_set):
            p = _fingerprint(r)
            if p in fit_prints or p in seen:
                raise CliError(
                    f"{where}: calibration rollout #{i} repeats "
                    + ("a fit rollout" if p in fit_prints else "another calibration rollout")
                    + f" step for step. {REPEATS_HELP}"
                )
            seen.add(p)


def cmd_fit(args: argparse.Namespace) -> int:
    from .detector import FailureDetector

    # Everything is checked before any training starts.
    _check_output_dir(
        args.output, [args.logs, args.calibration_logs, args.validation_logs], args.force
    )
    if args.validation_logs is not None:
        others = [Path(p).resolve() for p in (args.logs, args.calibration_logs) if p is not None]
        if Path(args.validation_logs).resolve() in others:
            raise CliError(
                f"--validation-logs {args.validation_logs} is also LOGS or --calibration-logs; "
                "selection needs rollouts used neither to fit nor to calibrate."
            )
        if args.guarantee != "marginal" or args.mondrian:
            raise CliError(
                "--validation-logs selects among marginal, pooled detectors; drop --guarantee "
                "pac / --mondrian, or fit without --validation-logs."
            )
    if args.calibration_logs is not None and (
        Path(args.calibration_logs).resolve() == Path(args.logs).resolve()
    ):
        raise CliError(
            f"--calibration-logs {args.calibration_logs} is LOGS itself; calibration needs "
            "other successful rollouts (or leave it out to split LOGS)."
        )
    rollouts = _read_logs(args.logs)
    _require_labels(rollouts, args.logs, "fit")
    ok = [r for r in rollouts if r.success]
    if not ok:
        raise CliError(f"{args.logs}: no successful rollouts; fit needs successful ones.")
    scores = _make_scores(args.scores, ok[0], args.epochs)
    _check_shapes(scores, ok[0], ok, args.logs)
    det = FailureDetector(
        scores=scores,
        windows=args.window,
        combine=args.combine,
        threshold=args.threshold,
        alpha=args.alpha,
        guarantee=args.guarantee,
        delta=args.delta,
        calibration=args.calibration,
        mondrian=args.mondrian,
        random_state=args.seed,
    )
    if args.calibration_logs is not None:
        fit_set = ok
        cal_set = _successes(
            _read_logs(args.calibration_logs), args.calibration_logs, "calibration"
        )
        _check_shapes(scores, ok[0], cal_set, args.calibration_logs)
        where = str(args.calibration_logs)
    else:
        needed = det.calibration_plan().n_required
        n_fit = max(1, round(args.fit_fraction * len(ok)))
        fit_idx, cal_idx = split_indices(len(ok), n_fit, np.random.default_rng(args.seed))
        if len(ok) - n_fit < needed:
            raise CliError(
                f"{args.logs}: {len(ok)} successful rollouts; {n_fit} fit the scores "
                f"(--fit-fraction {args.fit_fraction:g}), leaving {len(ok) - n_fit} to "
                f"calibrate, but alpha={args.alpha:g} needs {needed} with these options "
                f"(`failguard plan` tells the numbers). Record at least {n_fit + needed} "
                "successful rollouts, raise --alpha, or pass --calibration-logs."
            )
        fit_set = [ok[i] for i in fit_idx]
        cal_set = [ok[i] for i in cal_idx]
        where = f"{args.logs} (the calibration part)"
    _check_calibration_set(det, fit_set, cal_set, where, args.independent_repeats)
    if len(ok) < len(rollouts):
        print(f"using the {len(ok)} successful of {len(rollouts)} rollouts (failures skipped)")
    if args.validation_logs is not None:
        from .calibration.selection import default_candidates, select

        val = _read_logs(args.validation_logs)
        _require_labels(val, args.validation_logs, "select")
        det = select(
            fit_set,
            cal_set,
            val,
            alpha=args.alpha,
            candidates=default_candidates(ok[0], seed=args.seed, epochs=args.epochs),
            random_state=args.seed,
            progress=not args.quiet,
        )
        print(det.selection_.table(top=5))
    else:
        det.fit(fit_set, progress=not args.quiet)
        det.calibrate(
            cal_set, progress=not args.quiet, independent_repeats=args.independent_repeats
        )
    out = det.save(args.output)
    print(f"fitted on {len(fit_set)} and calibrated on {len(cal_set)} successful rollouts")
    print(f"{det}")
    print(f"saved to {out}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.output is None and not args.force:
        raise CliError(
            f"calibrate would overwrite the detector in {args.detector}. Pass -o NEW_DIR to "
            "keep it (recommended), or --force to overwrite it."
        )
    if args.output is not None:
        _check_output_dir(args.output, [args.logs], args.force, "the recalibrated detector")
    from .streaming import calibrate_from_results

    det = _load_detector(args.detector)
    if args.alpha is not None:
        det = det.with_params(alpha=args.alpha)  # parameters are frozen: a copy
    det._require_fitted()
    # streamed in process, or on Ray: the same per-rollout results
    results = _gather(args, det, curves=det.calibration_needs_curves, alarms=False)
    ok = _successes(results, args.logs, "calibration")
    if len(ok) < len(results):
        print(f"using the {len(ok)} successful of {len(results)} rollouts (failures skipped)")
    calibrate_from_results(det, ok, independent_repeats=args.independent_repeats)
    out = det.save(args.output or args.detector)
    print(
        f"recalibrated on {len(ok)} successful rollouts (scores unchanged, alpha={det.alpha:g}); "
        f"saved to {out}"
    )
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import alpha_sweep, evaluate

    det = _load_detector(args.detector)
    if not args.alphas:  # streamed in process, or on Ray: the same per-rollout results
        from .metrics import evaluate_results

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
    print(report.table())
    if report.sweep:
        print()
        _print_sweep(report.sweep)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
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
            from .distributed import write_parquet

            write_parquet(results, out)
        except ImportError as err:
            raise DependencyError(
                f"Parquet output needs pyarrow ({err}); `pip install failguard[ray]`, or "
                "write JSON lines with -o RESULTS.jsonl."
            ) from err
    steps = sum(r.n_steps for r in results)
    alarms = sum(r.predicted_failure for r in results)
    what = f", {alarms} with an alarm" if det.is_calibrated else " (not calibrated: no alarms)"
    print(f"scored {len(results)} rollouts ({steps} steps){what}; wrote {out}")
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
    _refuse_seen(det, rollouts, args.logs, args.allow_seen)
    swept = _sweep_detector(det, args, args.quiet) is not None
    alphas = args.alphas
    if swept and alphas is None:
        alphas = _supported_alphas(det)
        if not alphas:
            print(
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
    print(f"wrote {path}")
    return EXIT_OK


DEFAULT_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def _supported_alphas(detector: Any) -> list[float]:
    """The alphas of the default sweep that the detector's calibration set can support."""
    from dataclasses import replace

    from .calibration.planner import plan_for_settings

    n, k = detector.n_calibration_, len(detector.scores)
    return [
        a
        for a in DEFAULT_SWEEP
        if plan_for_settings(replace(detector.settings, alpha=a), k).n_required <= n
    ]


def cmd_plan(args: argparse.Namespace) -> int:
    from .calibration import plan

    result = plan(
        args.alpha,
        args.delta,
        threshold=args.threshold,
        n_indicators=args.n_indicators,
        combine=args.combine,
        calibration="joint" if args.joint else args.calibration,
        split=args.split,
        mondrian=args.mondrian,
    )
    print(result.explanation)
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from .health import health_from_results

    det = _load_detector(args.detector)
    det.spec()  # raises NotFittedError unless calibrated
    results = _gather(args, det)
    ok = _successes(results, args.logs, "the health check")
    if len(ok) < len(results):
        print(
            f"using the {len(ok)} successful of {len(results)} rollouts: the health check "
            f"reads successes only ({len(results) - len(ok)} failed ones skipped)"
        )
    _refuse_seen(det, ok, args.logs, args.allow_seen)
    result = health_from_results(det, ok, confidence=args.confidence)
    result.message = result.message.replace(
        "Run detector.calibrate(new_successes) (`failguard calibrate DETECTOR NEW_LOGS`)",
        f"Run `failguard calibrate {args.detector} {args.logs} -o NEW_DIR`",
    )
    print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    if result.needs_recalibration:
        return EXIT_RECALIBRATE
    return EXIT_TOO_FEW if result.status == "too_few" else EXIT_OK


# ---------------------------------------------------------------------------- parser
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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; adds "(default: X)" once, and only where X means something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
        ):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in default)
        return f"{text} (default: {default})"


def _add_repeat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--independent-repeats",
        action="store_true",
        help="keep calibration rollouts that repeat a fit (or another calibration) rollout "
        "step for step, declaring them independent episodes that happened to repeat (small "
        "discrete worlds); the guarantee holds for independent draws. Reused files are "
        "refused regardless",
    )


def _add_id_groups_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--id-groups",
        type=lambda text: "auto" if text == "auto" else [g.strip() for g in text.split(",")],
        default="auto",
        metavar="G1,G2",
        help="in-distribution groups, whose successes give far_id (default: the detector's "
        "calibration groups, else 'id', else the successes' only group)",
    )


def _add_seen_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-seen",
        action="store_true",
        help="go on (with a warning) when LOGS holds rollouts whose content the detector was "
        "fitted or calibrated on",
    )


def _add_engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (fleet-sized logs)")
    g.add_argument(
        "--engine",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="inprocess streams the logs one file at a time; ray scores them on a Ray "
        "cluster (needs failguard[ray]); both give identical output",
    )
    g.add_argument(
        "--address", default=None, help="Ray cluster address (default: start a local one)"
    )
    g.add_argument(
        "--num-cpus",
        type=_positive_int,
        default=None,
        help="Ray: CPUs of the local cluster and number of workers (default: all)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable rollout file (default: skip it and name it)",
    )


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
        "--validation-logs",
        metavar="DIR",
        help="labelled rollouts (successes, and failures if you have any) on which "
        "failguard.select chooses indicators, windows, threshold style and fusion among its "
        "default candidates before calibrating; --scores, --window, --combine and --threshold "
        "are then ignored",
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
        help="comma-separated names of failguard.scores.SCORE_NAMES (rnd, ace, entropy, "
        "entropy_samples = entropy-ids, stac, progress, stagnation, ...); auto = rnd plus ace "
        "or entropy, whichever the logs allow",
    )
    p.add_argument("--window", type=_positive_int, default=10, help="window length w (steps)")
    p.add_argument(
        "--combine",
        type=_fusion,
        default="and",
        help="fusion rule: and, or, or k-of-n (e.g. 2-of-3: at least 2 of the 3 scores)",
    )
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
    p.add_argument(
        "--calibration",
        choices=("auto", "per_indicator", "joint"),
        default="auto",
        help="how alpha is shared between indicators (auto: joint for PAC)",
    )
    p.add_argument("--mondrian", action="store_true", help="calibrate per rollout group")
    _add_repeat_options(p)
    p.add_argument("--force", action="store_true", help="overwrite a detector already in OUTPUT")
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
    p.add_argument(
        "-o",
        "--output",
        help="new detector directory to write (without it, --force overwrites DETECTOR)",
    )
    p.add_argument(
        "--force", action="store_true", help="allow overwriting DETECTOR (or OUTPUT) in place"
    )
    p.add_argument("--alpha", type=_unit_float, default=None, help="new alpha (default: keep)")
    _add_repeat_options(p)
    _add_engine(p)
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
    _add_id_groups_option(p)
    _add_seen_option(p)
    _add_engine(p)
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
    p.add_argument(
        "--combine",
        type=_fusion,
        default="and",
        help="fusion rule: and, or, or k-of-n (e.g. 2-of-3: at least 2 of the 3 scores)",
    )
    p.add_argument(
        "--calibration",
        choices=("auto", "per_indicator", "joint"),
        default="auto",
        help="as for fit: how alpha is shared between indicators (auto: joint for PAC)",
    )
    p.add_argument("--joint", action="store_true", help="same as --calibration joint")
    p.add_argument(
        "--mondrian", action="store_true", help="per-group thresholds: the count is per group"
    )
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
    p.set_defaults(func=cmd_health)

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
    p.set_defaults(func=cmd_score)
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
        print(f"failguard {args.command}: warning: {text}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            return int(args.func(args))
    except DependencyError as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except (FailguardError, OSError) as err:
        message = cli_wording(" ".join(str(err).split()))
        print(f"{prefix} {message}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("failguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
