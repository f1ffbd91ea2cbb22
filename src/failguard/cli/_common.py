"""What every ``failguard`` command shares: exit codes, reading logs and detectors, the
checks on inputs and outputs, and the CLI wording of library messages."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..exceptions import CliError


def emit(*parts: object, file: TextIO | None = None) -> None:
    """Write one line of CLI output (to stdout unless ``file`` is given), as ``print`` would.

    The CLI's one way to talk to the terminal; the library itself never prints.
    """
    stream = sys.stdout if file is None else file
    stream.write(" ".join(str(p) for p in parts) + "\n")


EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY = 3
EXIT_RECALIBRATE = 4
EXIT_TOO_FEW = 5
EXIT_INTERRUPTED = 130


def _read_logs(directory: str, what: str = "rollout logs") -> list[Any]:
    from ..logs import read_rollouts

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
    from ..detector import FailureDetector

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
    from .._artifact import CONFIG_FILE, WEIGHTS_FILE

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
    emit(f"failguard: warning: {what} (--allow-seen).", file=sys.stderr)
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
