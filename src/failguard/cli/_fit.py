"""Make a detector: ``failguard plan``, ``fit`` and ``calibrate``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.kernel import split_indices
from ..exceptions import CliError
from ._args import (
    AddParser,
    _add_calibration_option,
    _add_combine_option,
    _add_engine,
    _add_repeat_options,
    _add_threshold_option,
    _positive_int,
    _unit_float,
)
from ._common import (
    EXIT_OK,
    _check_output_dir,
    _load_detector,
    _read_logs,
    _require_labels,
    _successes,
    emit,
)
from ._engine import _gather


def cmd_plan(args: argparse.Namespace) -> int:
    from ..calibration import plan

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
    emit(result.explanation)
    return EXIT_OK


def _make_scores(spec: str, example: Any, epochs: int | None) -> list[Any]:
    from ..scores import SCORE_ALIASES, SCORE_NAMES, make_score

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

    from .._gate import REPEATS_HELP
    from .._gate import fingerprint as _fingerprint

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
    from ..detector import FailureDetector

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
        emit(f"using the {len(ok)} successful of {len(rollouts)} rollouts (failures skipped)")
    if args.validation_logs is not None:
        from ..calibration.selection import default_candidates, select

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
        emit(det.selection_.table(top=5))
    else:
        det.fit(fit_set, progress=not args.quiet)
        det.calibrate(
            cal_set, progress=not args.quiet, independent_repeats=args.independent_repeats
        )
    out = det.save(args.output)
    emit(f"fitted on {len(fit_set)} and calibrated on {len(cal_set)} successful rollouts")
    emit(f"{det}")
    emit(f"saved to {out}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.output is None and not args.force:
        raise CliError(
            f"calibrate would overwrite the detector in {args.detector}. Pass -o NEW_DIR to "
            "keep it (recommended), or --force to overwrite it."
        )
    if args.output is not None:
        _check_output_dir(args.output, [args.logs], args.force, "the recalibrated detector")
    from ..streaming import calibrate_from_results

    det = _load_detector(args.detector)
    if args.alpha is not None:
        det = det.with_params(alpha=args.alpha)  # parameters are frozen: a copy
    det._require_fitted()
    # streamed in process, or on Ray: the same per-rollout results
    results = _gather(args, det, curves=det.calibration_needs_curves, alarms=False)
    ok = _successes(results, args.logs, "calibration")
    if len(ok) < len(results):
        emit(f"using the {len(ok)} successful of {len(results)} rollouts (failures skipped)")
    calibrate_from_results(det, ok, independent_repeats=args.independent_repeats)
    out = det.save(args.output or args.detector)
    emit(
        f"recalibrated on {len(ok)} successful rollouts (scores unchanged, alpha={det.alpha:g}); "
        f"saved to {out}"
    )
    return EXIT_OK


def add_plan(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard plan`` subcommand and its options."""
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
    _add_threshold_option(p)
    p.add_argument("--n-indicators", type=_positive_int, default=2, help="number of scores")
    _add_combine_option(p)
    _add_calibration_option(p, "as for fit: ")
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
    return p


def add_fit(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard fit`` subcommand and its options."""
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
    _add_combine_option(p)
    _add_threshold_option(p)
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
    _add_calibration_option(p)
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
    return p


def add_calibrate(add: AddParser) -> argparse.ArgumentParser:
    """The ``failguard calibrate`` subcommand and its options."""
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
    return p
