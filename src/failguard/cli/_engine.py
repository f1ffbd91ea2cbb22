"""Per-rollout results of a log directory, streamed in process or scored on Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..exceptions import CliError, DependencyError
from ._common import check_compatible, emit


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
    from ..exceptions import RolloutError

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
                from .. import distributed

                distributed.init(address=args.address, num_cpus=args.num_cpus)
            except ImportError as err:
                raise DependencyError(
                    f"--engine ray needs Ray Data ({err}). Install it with "
                    "`pip install failguard[ray]`, or leave --engine out to run in process."
                ) from err
            if "://" not in logs:  # the friendly mismatch message, from the first file
                from ..logs import iter_rollouts

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

            from ..logs import iter_rollouts

            if "://" in logs:
                raise CliError(f"{logs}: a URI; read it with --engine ray (failguard[ray]).")
            from ..streaming import iter_results

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
        emit(
            f"skipped {len(skipped)} unreadable rollout file(s) (--strict stops instead):",
            file=sys.stderr,
        )
        for _, message in skipped:
            emit(f"  {message}", file=sys.stderr)
    if not results:
        raise CliError(f"{logs}: no readable rollout file.")
    return results
