"""The command line's argument types, help formatter and the options several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: ``add(name, help, description)``: a new subcommand parser (see :func:`build_parser`).
AddParser = Callable[[str, str, str], argparse.ArgumentParser]


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
    from ..core.kernel import parse_combine

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


def _add_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        choices=("constant", "per_step", "band"),
        default="constant",
        help="threshold style",
    )


def _add_combine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--combine",
        type=_fusion,
        default="and",
        help="fusion rule: and, or, or k-of-n (e.g. 2-of-3: at least 2 of the 3 scores)",
    )


def _add_calibration_option(p: argparse.ArgumentParser, lead: str = "") -> None:
    p.add_argument(
        "--calibration",
        choices=("auto", "per_indicator", "joint"),
        default="auto",
        help=f"{lead}how alpha is shared between indicators (auto: joint for PAC)",
    )


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
