"""Rollout logs: record a rollout a step at a time and read a directory of them back.

Format (pickle-free, documented in ``docs/FORMATS.md``): one rollout is one
`safetensors <https://github.com/huggingface/safetensors>`_ file. Its tensors are the
per-step arrays of :class:`~failguard.Rollout` under their field names (``embeddings``,
``action_samples``, ``action_logits``, ``action_ids``, ``executed_actions``); its header
metadata holds one key, ``"failguard"``, a JSON object with ``schema``, ``success``,
``group`` and ``metadata``. Files are written to a temporary name and renamed into place,
so a crash never leaves a half-written rollout under a final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._version import SCHEMA_VERSION
from .exceptions import ArtifactError, RolloutError
from .types import _FIELDS, Rollout, as_step_array

__all__ = [
    "Recorder",
    "iter_rollouts",
    "read_rollout",
    "read_rollouts",
    "rollout_files",
    "rollout_from_bytes",
    "rollout_to_bytes",
    "write_rollout",
]

SUFFIX = ".safetensors"


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rollout(rollout: Rollout, path: str | os.PathLike[str]) -> Path:
    """Write one rollout to ``path`` atomically (suffix ``.safetensors`` is added if missing).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from failguard import Rollout
    >>> d = tempfile.mkdtemp()
    >>> p = write_rollout(Rollout(np.ones((3, 2)), success=True), os.path.join(d, "r0"))
    >>> read_rollout(p).success
    True
    """
    target = Path(path)
    if target.suffix != SUFFIX:
        target = target.with_name(target.name + SUFFIX)
    _atomic_write_bytes(target, rollout_to_bytes(rollout))
    return target


def rollout_to_bytes(rollout: Rollout) -> bytes:
    """The bytes :func:`write_rollout` would write for ``rollout`` (for bulk writers and stores).

    Examples
    --------
    >>> import numpy as np
    >>> from failguard import Rollout
    >>> raw = rollout_to_bytes(Rollout(np.ones((3, 2)), success=True))
    >>> rollout_from_bytes(raw, "r0").success
    True
    """
    from safetensors.numpy import save

    header = {
        "schema": SCHEMA_VERSION,
        "success": rollout.success,
        "group": rollout.group,
        "metadata": dict(rollout.metadata),
    }
    try:
        meta = json.dumps(header)
    except TypeError as err:
        raise RolloutError(f"Rollout metadata must be JSON-serialisable: {err}") from err
    tensors = {k: np.ascontiguousarray(v) for k, v in rollout.arrays().items()}
    return bytes(save(tensors, metadata={"failguard": meta}))


def read_rollout(path: str | os.PathLike[str]) -> Rollout:
    """Read one rollout written by :func:`write_rollout` or :class:`Recorder`.

    Raises
    ------
    ArtifactError
        If the file is missing, is not a safetensors file, lacks the failguard header, has an
        unknown schema version, or holds invalid arrays. The message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such rollout file.")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{p}: not a readable safetensors rollout ({err}).") from err
    return rollout_from_bytes(raw, str(p))


def rollout_from_bytes(raw: bytes, name: str) -> Rollout:
    """Parse the bytes of one rollout file (as read from any store); ``name`` is its source.

    Raises
    ------
    ArtifactError
        As :func:`read_rollout`; the message names ``name``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    p = name
    try:
        arrays = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, OSError, AttributeError, TypeError) as err:
        raise ArtifactError(f"{p}: not a readable safetensors rollout ({err}).") from err
    if "failguard" not in meta:
        raise ArtifactError(f"{p}: missing the 'failguard' header; not a failguard rollout log.")
    try:
        info = json.loads(meta["failguard"])
        if not isinstance(info, dict):
            raise json.JSONDecodeError("not a JSON object", str(meta["failguard"]), 0)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{p}: corrupt 'failguard' header ({err}).") from err
    if info.get("schema") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{p}: rollout schema version {info.get('schema')!r}, but this failguard reads "
            f"version {SCHEMA_VERSION}. Re-record the rollout or use a matching failguard."
        )
    unknown = set(arrays) - set(_FIELDS)
    if unknown:
        raise ArtifactError(f"{p}: unknown arrays {sorted(unknown)} in rollout file.")
    try:
        return Rollout(
            **arrays,
            success=info.get("success"),
            group=info.get("group"),
            metadata=info.get("metadata") or {},
            source=str(p),
        )
    except RolloutError as err:
        raise ArtifactError(f"{p}: invalid rollout: {err}") from err


def rollout_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The rollout files of a directory, in file-name order (hidden and temporary files left out).

    Raises
    ------
    ArtifactError
        If the directory does not exist or holds no rollout file.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ArtifactError(f"{d}: no such rollout directory.")
    files = sorted(f for f in d.iterdir() if f.suffix == SUFFIX and not f.name.startswith("."))
    if not files:
        raise ArtifactError(
            f"{d}: no '*{SUFFIX}' rollout files. Record rollouts with failguard.Recorder first."
        )
    return files


def iter_rollouts(
    directory: str | os.PathLike[str], errors: list[tuple[str, str]] | None = None
) -> Iterator[Rollout]:
    """Yield the rollouts of a directory lazily, one file at a time, in file-name order.

    Only one rollout is in memory at a time, so every streaming path of failguard
    (:meth:`FailureDetector.calibrate`, :func:`failguard.evaluate`,
    :func:`failguard.health.check_calibration`, :func:`failguard.streaming.iter_results`) runs
    over any number of files in constant memory.

    Parameters
    ----------
    directory : str or path-like
    errors : list, optional
        If given, an unreadable or corrupt file is skipped and ``(path, message)`` is appended
        to this list (and a warning names it); the other files are still read. By default the
        first unreadable file raises :class:`~failguard.ArtifactError`.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from failguard import Rollout
    >>> d = tempfile.mkdtemp()
    >>> _ = write_rollout(Rollout(np.ones((3, 2)), success=True), os.path.join(d, "a"))
    >>> _ = open(os.path.join(d, "b.safetensors"), "wb").write(b"not a rollout")
    >>> skipped = []
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     [len(r) for r in iter_rollouts(d, errors=skipped)]
    [3]
    >>> [os.path.basename(p) for p, _ in skipped]
    ['b.safetensors']
    """
    import warnings

    for f in rollout_files(directory):
        if errors is None:
            yield read_rollout(f)
            continue
        try:
            rollout = read_rollout(f)
        except ArtifactError as err:
            errors.append((str(f), str(err)))
            warnings.warn(f"skipped unreadable rollout file {err}", UserWarning, stacklevel=2)
            continue
        yield rollout


def read_rollouts(directory: str | os.PathLike[str]) -> list[Rollout]:
    """Read every rollout of a directory, in file-name order.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> rec = Recorder(tempfile.mkdtemp())
    >>> rec.start(group="id")
    >>> for t in range(4):
    ...     rec.step(embedding=np.full(3, t))
    >>> path = rec.end(success=True)
    >>> [len(r) for r in read_rollouts(rec.directory)]
    [4]
    """
    return list(iter_rollouts(directory))


class Recorder:
    """Append a rollout one step at a time, then write it atomically when it ends.

    Each finished rollout is its own file, ``rollout_000000.safetensors`` and so on, in
    ``directory``. A crash mid-rollout loses only the unfinished rollout; finished files are
    never touched again. Numbering continues after the files already in ``directory``.

    Parameters
    ----------
    directory : str or path-like
        Where rollout files go (created if needed).
    prefix : str, default="rollout"
        File name prefix.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> rec = Recorder(tempfile.mkdtemp())
    >>> rec.start(group="id", metadata={"seed": 3})
    >>> rec.step(embedding=np.zeros(4), action_samples=np.zeros((8, 2, 1)))
    >>> rec.end(success=True).name
    'rollout_000000.safetensors'
    """

    def __init__(self, directory: str | os.PathLike[str], prefix: str = "rollout") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._steps: dict[str, list[NDArray[Any]]] | None = None
        self._group: str | None = None
        self._metadata: dict[str, Any] = {}
        existing = [
            int(f.stem[len(prefix) + 1 :])
            for f in self.directory.glob(f"{prefix}_*{SUFFIX}")
            if f.stem[len(prefix) + 1 :].isdigit()
        ]
        self._next_index = max(existing, default=-1) + 1

    @property
    def recording(self) -> bool:
        """Whether a rollout has been started and not yet ended."""
        return self._steps is not None

    def start(self, group: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Begin a new rollout. Any unfinished rollout is discarded."""
        self._steps = {}
        self._group = group
        self._metadata = dict(metadata or {})

    def step(
        self,
        embedding: ArrayLike,
        action_samples: ArrayLike | None = None,
        action_logits: ArrayLike | None = None,
        action_ids: ArrayLike | None = None,
        executed_actions: ArrayLike | None = None,
    ) -> None:
        """Append one policy step. Shapes are those of one row of a :class:`Rollout`."""
        if self._steps is None:
            raise RuntimeError("Recorder.step called before Recorder.start().")
        given = {
            "embeddings": embedding,
            "action_samples": action_samples,
            "action_logits": action_logits,
            "action_ids": action_ids,
            "executed_actions": executed_actions,
        }
        n_done = len(next(iter(self._steps.values()))) if self._steps else 0
        present = {k for k, v in given.items() if v is not None}
        if n_done and present != set(self._steps):
            raise RolloutError(
                f"Recorder.step: step {n_done} gives {sorted(present)}, but earlier steps gave "
                f"{sorted(self._steps)}; every step must record the same fields."
            )
        rows = {}
        for name in present:
            ndim, kind, _ = _FIELDS[name]
            value = given[name]
            assert value is not None
            rows[name] = as_step_array(name, value, ndim - 1, kind, "Recorder.step")
        for name, row in rows.items():
            earlier = self._steps.get(name)
            if earlier and earlier[0].shape != row.shape:
                raise RolloutError(
                    f"Recorder.step: step {n_done} gives '{name}' of shape {row.shape}, but "
                    f"earlier steps gave {earlier[0].shape}; every step must have the same shape."
                )
        for name, row in rows.items():
            self._steps.setdefault(name, []).append(row)

    def end(self, success: bool | None, metadata: Mapping[str, Any] | None = None) -> Path:
        """Finish the rollout with its outcome and write it; returns the file path."""
        if self._steps is None:
            raise RuntimeError("Recorder.end called before Recorder.start().")
        if not self._steps:
            raise RolloutError("Recorder.end: the rollout has no steps; nothing to write.")
        meta = {**self._metadata, **dict(metadata or {})}
        arrays: dict[str, Any] = {k: np.stack(v) for k, v in self._steps.items()}
        rollout = Rollout(
            **arrays,
            success=success,
            group=self._group,
            metadata=meta,
        )
        path = write_rollout(rollout, self.directory / f"{self.prefix}_{self._next_index:06d}")
        self._next_index += 1
        self._steps = None
        return path

    def discard(self) -> None:
        """Drop the unfinished rollout without writing anything."""
        self._steps = None
