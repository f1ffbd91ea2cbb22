"""Which rollouts calibration admits: content fingerprints, reuse and repeat checks.

Shared by the in-memory calibration (:meth:`FailureDetector.calibrate`) and the streamed
one (:func:`failguard.streaming.calibrate_from_results`), so neither imports the other.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .exceptions import CalibrationError
from .types import Rollout

__all__ = ["REPEATS_HELP", "CalibrationGate", "fingerprint", "source_key"]


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
        det = self.det
        key = source_key(source)
        if (obj is not None and obj in det._fit_objects) or (
            key is not None and (fingerprint, key) in det._fit_keys
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
            if fingerprint in det._fit_fingerprints:
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
