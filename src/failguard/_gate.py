"""Which rollouts fit and calibration admit: successes, content fingerprints, reuse, repeats.

Shared by the in-memory calibration (:meth:`FailureDetector.calibrate`) and the streamed
one (:func:`failguard.streaming.calibrate_from_results`), so neither imports the other.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

from .exceptions import CalibrationError, ParameterError
from .types import Rollout

__all__ = [
    "REPEATS_HELP",
    "CalibrationGate",
    "admit",
    "check_nominal",
    "fingerprint",
    "source_key",
    "warn_unlabelled",
]


def check_nominal(rollouts: Sequence[Rollout] | Rollout, phase: str) -> list[Rollout]:
    """The rollouts as a list, refusing failed ones (``phase`` is "fit" or "calibrate").

    Rollouts labelled ``success=None`` are kept, with a warning.
    """
    if isinstance(rollouts, Rollout):
        rollouts = [rollouts]
    rollouts = list(rollouts)
    if not rollouts:
        raise CalibrationError(f"{phase}: no rollouts given; pass successful rollouts.")
    unknown = []
    for i, r in enumerate(rollouts):
        if not isinstance(r, Rollout):
            raise ParameterError(f"{phase}: item {i} is a {type(r).__name__}, not a Rollout.")
        if admit(r.success, r.describe(i), phase):
            unknown.append(i)
    warn_unlabelled(unknown, phase, stacklevel=4)
    return rollouts


def admit(success: bool | None, described: str, phase: str) -> bool:
    """Refuse a failed rollout; True when it is unlabelled (then kept as a success)."""
    if success is False:
        raise CalibrationError(
            f"{phase}: {described} failed (success=False). {phase} uses "
            "successful rollouts only; drop failed ones before calling it."
        )
    return success is None


def warn_unlabelled(unknown: Sequence[int], phase: str, stacklevel: int) -> None:
    """Warn once about the unlabelled rollouts ``unknown`` (indices) kept as successes."""
    if unknown:
        warnings.warn(
            f"{phase}: {len(unknown)} rollout(s) have success=None (first: {unknown[0]}); "
            "they are treated as successes. Label rollouts to keep the guarantee honest.",
            UserWarning,
            stacklevel=stacklevel,
        )


def fingerprint(r: Rollout) -> str:
    """Content hash of a rollout (its embeddings), stored in the artifact."""
    h = hashlib.sha1(r.embeddings.tobytes())
    h.update(str(r.embeddings.shape).encode())
    return h.hexdigest()


def source_key(source: str | None) -> str | None:
    """Hash of the file a rollout was read from (no local path ends up in the artifact)."""
    if source is None:
        return None
    return hashlib.sha1(os.path.realpath(source).encode()).hexdigest()


REPEATS_HELP = (
    "If they are copies, drop them. If they are independent episodes that happened to "
    "repeat step for step (small discrete worlds do), declare them so with "
    "independent_repeats=True (CLI: --independent-repeats): independent draws keep the "
    "guarantee, and dropping them would bias the calibration set toward atypical episodes."
)


class CalibrationGate:
    """Admits calibration rollouts one at a time: refuses reuse, and repeats unless declared.

    *Reuse* (always refused) is provable: the same rollout object, or the same file with the
    same content, given to fit (or twice to calibrate). A *repeat* has the same content
    (embeddings) under another object or file: refused unless ``independent_repeats``.
    """

    def __init__(self, detector: Any, independent_repeats: bool) -> None:
        self.det = detector
        self.independent = independent_repeats
        self.prints: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        self.ids: dict[int, int] = {}

    def add(self, i: int, what: str, fingerprint: str, source: str | None, obj: Any) -> None:
        state = self.det.fitted_state
        key = source_key(source)
        if (obj is not None and obj in state.fit_objects) or (
            key is not None and (fingerprint, key) in state.fit_keys
        ):
            raise CalibrationError(
                f"calibrate: {what} was also used to fit the scores (the same rollout object or "
                "file). In-sample scores are too small and void the guarantee; calibrate on "
                "other successful rollouts."
            )
        same = self.ids.get(id(obj)) if obj is not None else None
        if same is None and key is not None:
            same = self.keys.get((fingerprint, key))
        if same is not None:
            raise CalibrationError(
                f"calibrate: {what} repeats rollout {same} (the same rollout object or file). "
                "A duplicated rollout breaks the exchangeability the guarantee rests on; pass "
                "each rollout once."
            )
        if not self.independent:
            if fingerprint in state.fit_fingerprints:
                raise CalibrationError(
                    f"calibrate: {what} is identical, step for step, to a rollout used to fit "
                    "the scores. Rollouts also used to fit void the guarantee (in-sample "
                    f"scores are too small). {REPEATS_HELP}"
                )
            if fingerprint in self.prints:
                raise CalibrationError(
                    f"calibrate: {what} repeats rollout {self.prints[fingerprint]} step for "
                    "step. A duplicated rollout breaks the exchangeability the guarantee rests "
                    f"on. {REPEATS_HELP}"
                )
        self.prints.setdefault(fingerprint, i)
        if obj is not None:
            self.ids[id(obj)] = i
        if key is not None:
            self.keys[(fingerprint, key)] = i
