"""Rollout logs: record a rollout a step at a time and read a directory of them back.

Format (pickle-free, documented in ``docs/FORMATS.md``): one rollout is one
`safetensors <https://github.com/huggingface/safetensors>`_ file. Its tensors are the
per-step arrays of :class:`~failguard.Rollout` under their field names (``embeddings``,
``action_samples``, ``action_logits``, ``action_ids``, ``executed_actions``, ``states``); its
header metadata holds one key, ``"failguard"``, a JSON object with ``schema``, ``success``,
``group`` and ``metadata``. Files are written to a temporary name and renamed into place,
so a crash never leaves a half-written rollout under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._version import SCHEMA_VERSION
from .exceptions import ArtifactError, NotFittedError, RolloutError
from .types import _FIELDS, Rollout, as_step_array

__all__ = [
    "Recorder",
    "clean_stale_temp_files",
    "iter_rollouts",
    "read_rollout",
    "read_rollouts",
    "rollout_files",
    "rollout_from_bytes",
    "rollout_to_bytes",
    "write_rollout",
]

SUFFIX = ".safetensors"


_TMP_SUFFIX = ".fgtmp"
#: errors of os.link that mean "this file system has no hard links"
_NO_LINKS = {
    getattr(errno, name)
    for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "EXDEV", "ENOSYS", "EMLINK", "EACCES")
    if hasattr(errno, name)
}
#: temporary files of the old naming (tempfile.mkstemp) older than this are stale
_LEGACY_TMP_AGE_S = 3600.0


def _host_tag() -> str:
    """A short tag of this machine (temporary file names carry it with the writer's pid)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories can't be
    opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, payload: bytes) -> Path:
    """Write ``payload`` to a new temporary file in ``directory`` and fsync it.

    The file is created like ``open()`` creates files (mode 0o666 less the umask, unlike
    ``tempfile.mkstemp``'s 0o600), and its name says who wrote it:
    ``.<name>.<host>.<pid>.<random>.fgtmp``, so that a later writer can remove it if that
    process died (see :func:`clean_stale_temp_files`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = directory / (
            f".{name}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        )
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _publish_new(tmp: Path, path: Path) -> bool:
    """Give the temporary file ``tmp`` the name ``path`` only if no file has that name.

    Atomic and never overwrites: a hard link (fails with EEXIST if the name is taken), or,
    where links are not supported, an ``O_EXCL`` claim of the name and a rename onto it.
    Returns False if the name is taken (``tmp`` is kept for another try).
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as err:  # no hard links here (some network or FAT file systems): claim it
        if err.errno not in _NO_LINKS:
            raise
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            return False
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return True
    tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``path`` atomically (temporary file, fsync, rename, fsync of the directory),
    replacing any file of that name; created with the umask's mode like ``open()``."""
    tmp = _write_temp(path.parent, path.name, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its files
    return True


def clean_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that crashed failguard writers left in ``directory``.

    A temporary file is removed only when its writer is provably gone: it was written on
    this machine by a process that no longer exists, or it has the older naming (no pid)
    and is over an hour old. Files of live writers, and of other machines sharing the
    directory, are left alone. Returns the removed paths.
    """
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    host = _host_tag()
    now = time.time()
    for f in d.iterdir():
        name = f.name
        if not name.startswith("."):
            continue
        stale = False
        if name.endswith(_TMP_SUFFIX):
            parts = name[: -len(_TMP_SUFFIX)].rsplit(".", 3)
            if len(parts) == 4 and parts[1] == host and parts[2].isdigit():
                stale = not _pid_alive(int(parts[2]))
        elif name.endswith(".tmp") and (name.startswith(".rollout") or SUFFIX in name):
            with contextlib.suppress(OSError):
                stale = now - f.stat().st_mtime > _LEGACY_TMP_AGE_S
        if stale:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed.append(f)
    return removed


def _rollout_digest(tensors: Mapping[str, NDArray[Any]], header: Mapping[str, Any]) -> str:
    """SHA-256 of a rollout's arrays (name, dtype, shape, bytes) and of its header."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(header), sort_keys=True).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _rollout_payload(rollout: Rollout) -> bytes:
    from safetensors.numpy import save

    header: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "success": rollout.success,
        "group": rollout.group,
        "metadata": dict(rollout.metadata),
    }
    tensors = {k: np.ascontiguousarray(v) for k, v in rollout.arrays().items()}
    try:
        header["sha256"] = _rollout_digest(tensors, header)
        meta = json.dumps(header)
    except (TypeError, ValueError) as err:
        raise RolloutError(f"Rollout metadata must be JSON-serialisable: {err}") from err
    return bytes(save(tensors, metadata={"failguard": meta}))


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
    return _rollout_payload(rollout)


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
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (
        SafetensorError,
        ValueError,
        OSError,
        AttributeError,
        TypeError,
        RecursionError,
        MemoryError,
    ) as err:
        raise ArtifactError(f"{p}: not a readable safetensors rollout ({err}).") from err
    if not isinstance(meta, dict) or "failguard" not in meta:
        raise ArtifactError(f"{p}: missing the 'failguard' header; not a failguard rollout log.")
    try:
        info = json.loads(meta["failguard"])
    except (TypeError, ValueError, RecursionError) as err:
        raise ArtifactError(f"{p}: corrupt 'failguard' header ({err}).") from err
    if not isinstance(info, dict):
        raise ArtifactError(f"{p}: corrupt 'failguard' header (not a JSON object).")
    if info.get("schema") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{p}: rollout schema version {info.get('schema')!r}, but this failguard reads "
            f"version {SCHEMA_VERSION}. Re-record the rollout or use a matching failguard."
        )
    unknown = set(arrays) - set(_FIELDS)
    if unknown:
        raise ArtifactError(f"{p}: unknown arrays {sorted(unknown)} in rollout file.")
    stored = info.pop("sha256", None)
    if stored is not None:  # files written before failguard stored checksums have none
        try:
            digest = _rollout_digest(arrays, info)
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"{p}: corrupt 'failguard' header ({err}).") from err
        if digest != stored:
            raise ArtifactError(
                f"{p}: checksum mismatch (SHA-256 of its arrays and header is {digest[:12]}..., "
                f"the file says {str(stored)[:12]}...): the file is corrupt or was edited. "
                "Restore it from a copy or remove it from the directory."
            )
    for key in ("metadata",):
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise ArtifactError(f"{p}: corrupt 'failguard' header ('{key}' is not an object).")
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

    Any number of recorders (threads, processes, machines sharing a file system) may write
    to one directory: a rollout is written to a temporary file, fsynced, and then given the
    next free name atomically (a hard link, or an ``O_EXCL`` claim where links are not
    supported), never overwriting a file; the directory is fsynced after. A recorder removes
    the temporary files that crashed writers on this machine left behind
    (:func:`clean_stale_temp_files`). Files are created with the umask's mode, like
    ``open()``. Each file holds a SHA-256 of its arrays and header, checked on read.

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
        clean_stale_temp_files(self.directory)
        self._next_index = self._scan()

    def _scan(self) -> int:
        """1 + the largest index among the files already in the directory."""
        n = len(self.prefix) + 1
        existing = [
            int(f.stem[n:])
            for f in self.directory.glob(f"{self.prefix}_*{SUFFIX}")
            if f.stem[n:].isdigit()
        ]
        return max(existing, default=-1) + 1

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
        state: ArrayLike | None = None,
    ) -> None:
        """Append one policy step. Shapes are those of one row of a :class:`Rollout`.

        ``state`` is one row of :attr:`Rollout.states` (shape (S,)), e.g. the end-effector
        position.
        """
        if self._steps is None:
            raise NotFittedError("Recorder.step called before Recorder.start().")
        given = {
            "embeddings": embedding,
            "action_samples": action_samples,
            "action_logits": action_logits,
            "action_ids": action_ids,
            "executed_actions": executed_actions,
            "states": state,
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
            raise NotFittedError("Recorder.end called before Recorder.start().")
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
        tmp = _write_temp(self.directory, f"{self.prefix}{SUFFIX}", _rollout_payload(rollout))
        try:
            index = self._next_index
            while True:
                path = self.directory / f"{self.prefix}_{index:06d}{SUFFIX}"
                if _publish_new(tmp, path):
                    break
                index = max(index + 1, self._scan())  # another writer took it: skip ahead
        finally:
            tmp.unlink(missing_ok=True)
        self._next_index = index + 1
        self._steps = None
        return path

    def discard(self) -> None:
        """Drop the unfinished rollout without writing anything."""
        self._steps = None
