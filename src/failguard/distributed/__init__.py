"""Fleet-sized rollout logs on Ray Data (optional: ``pip install failguard[ray]``).

The work is embarrassingly parallel up to a final order statistic: each rollout is scored
alone into a :class:`~failguard.streaming.RolloutResult` (first alarm, peak ratio per
indicator, episode statistics, success, group), and calibration, evaluation and the health
check need only those records. This module fans the scoring out over a Ray cluster:

- the rollout files (a local directory, a list of paths, or an fsspec URI such as
  ``s3://bucket/logs`` or ``file:///data/logs``) become a Ray dataset of paths, read in
  parallel by the workers themselves;
- an actor pool scores them, the detector shipped to each worker once (its saved
  ``config.json`` + ``model.safetensors`` bytes, loaded in the actor's constructor) and
  torch's thread count set per worker;
- results come back to the driver, are checked to hold every rollout exactly once (a worker
  that dies mid-run has its batch retried by Ray; a lost or double-counted rollout fails the
  run loudly), and are put in file-name order, the order of :func:`failguard.iter_rollouts`;
- :func:`calibrate`, :func:`evaluate` and :func:`check_health` then run the exact conformal
  order statistic (PAC, Mondrian), the metrics and the health check on the gathered results,
  through the same functions as the in-process engine, so the thresholds, the metrics and the
  health report are identical bit for bit; :func:`write_parquet` writes the records.

A corrupt or unreadable file is reported by name (:attr:`FleetScores.skipped`) and the others
are scored, unless ``strict=True``. Fitting RND stays in one process on a sample (see
``docs/FLEET.md`` for how large a sample is enough). Nothing else in failguard imports Ray.

Examples
--------
>>> from failguard import distributed  # doctest: +SKIP
>>> distributed.init(num_cpus=2)  # doctest: +SKIP
>>> run = distributed.score(detector, "s3://fleet/logs/2026-11-25")  # doctest: +SKIP
>>> report = distributed.evaluate(detector, run)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import ArtifactError, DependencyError, DistributedError, FailguardError
from ..health import health_from_results
from ..metrics import evaluate_results
from ..streaming import RolloutResult, calibrate_from_results

if TYPE_CHECKING:
    from ..detector import FailureDetector
    from ..health import HealthReport
    from ..metrics import EvaluationReport

__all__ = [
    "DistributedError",
    "FleetScores",
    "calibrate",
    "check_health",
    "evaluate",
    "init",
    "list_rollout_files",
    "read_parquet",
    "score",
    "write_parquet",
]

SUFFIX = ".safetensors"


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:  # pragma: no cover - exercised where ray is absent
        raise DependencyError(
            "failguard.distributed needs Ray Data: pip install 'failguard[ray]'. Without it, "
            "pass an iterator such as failguard.iter_rollouts(path) to run in process."
        ) from err
    return ray


def init(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to a Ray cluster (``address``), or start a local one with ``num_cpus`` CPUs.

    Does nothing if Ray is already initialised in this process.
    """
    ray = _ray()
    if ray.is_initialized():
        return
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    kwargs.setdefault("configure_logging", False)
    if address is not None:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def list_rollout_files(source: str | os.PathLike[str] | Sequence[str]) -> tuple[list[str], Any]:
    """Rollout files of ``source`` in file-name order, and the fsspec filesystem to read them.

    ``source`` is a local directory, an fsspec URI of a directory (``s3://...``,
    ``file://...``, ``gs://...``), or an explicit list of file paths or URIs. Hidden files and
    files without the ``.safetensors`` suffix are left out (as :func:`failguard.iter_rollouts`
    does). The filesystem is None for local paths.
    """
    from ..logs import rollout_files

    if isinstance(source, (list, tuple)):
        paths = [str(p) for p in source]
        if not paths:
            raise ArtifactError("no rollout files given.")
        if "://" in paths[0]:
            import fsspec

            fs, _ = fsspec.core.url_to_fs(paths[0])
            return [fs._strip_protocol(p) for p in paths], fs
        return paths, None
    text = str(source)
    if "://" not in text:
        return [str(p) for p in rollout_files(text)], None
    import fsspec

    fs, root = fsspec.core.url_to_fs(text)
    if not fs.isdir(root):
        raise ArtifactError(f"{text}: no such rollout directory.")
    names = sorted(
        p for p in fs.find(root) if p.endswith(SUFFIX) and not p.rsplit("/", 1)[-1].startswith(".")
    )
    if not names:
        raise ArtifactError(
            f"{text}: no '*{SUFFIX}' rollout files. Record rollouts with failguard.Recorder first."
        )
    return names, fs


def _detector_bytes(detector: FailureDetector) -> dict[str, bytes]:
    from .._artifact import CONFIG_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory(prefix="failguard-ship-") as tmp:
        detector.save(tmp)
        return {
            CONFIG_FILE: (Path(tmp) / CONFIG_FILE).read_bytes(),
            WEIGHTS_FILE: (Path(tmp) / WEIGHTS_FILE).read_bytes(),
        }


def _detector_from_bytes(files: dict[str, bytes]) -> FailureDetector:
    from ..detector import FailureDetector

    with tempfile.TemporaryDirectory(prefix="failguard-load-") as tmp:
        for name, payload in files.items():
            (Path(tmp) / name).write_bytes(payload)
        return FailureDetector.load(tmp)


class _Scorer:
    """The per-worker scorer of the actor pool: holds one loaded detector for its lifetime."""

    def __init__(
        self,
        detector_files: dict[str, bytes],
        threads: int,
        curves: bool,
        alarms: bool,
        nonfinite: str,
        filesystem: Any,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.detector = _detector_from_bytes(detector_files)
        self.curves, self.alarms, self.nonfinite = curves, alarms, nonfinite
        self.fs = filesystem

    def _read(self, path: str) -> bytes:
        if self.fs is None:
            return Path(path).read_bytes()
        with self.fs.open(path, "rb") as handle:
            return bytes(handle.read())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from ..logs import rollout_from_bytes
        from ..streaming import summarise

        out: dict[str, list[Any]] = {
            "index": [],
            "row": [],
            "skipped": [],
            "fatal": [],
            "worker": [],
        }
        for index, path in zip(batch["index"], batch["path"], strict=True):
            row, skipped, fatal = "", "", ""
            try:
                try:
                    raw = self._read(str(path))
                except OSError as err:
                    raise ArtifactError(f"{path}: not a readable rollout file ({err}).") from err
                rollout = rollout_from_bytes(raw, str(path))
                res = summarise(
                    self.detector, rollout, self.curves, self.alarms, self.nonfinite, int(index)
                )
                row = json.dumps(res.to_row())
            except ArtifactError as err:
                skipped = str(err)
            except FailguardError as err:
                fatal = f"{type(err).__name__}\t{err}"
            out["index"].append(int(index))
            out["row"].append(row)
            out["skipped"].append(skipped)
            out["fatal"].append(fatal)
            out["worker"].append(os.getpid())
        return out


@dataclass
class FleetScores:
    """Per-rollout results of a run, in file-name order, and the files that were skipped.

    Attributes
    ----------
    results : list of RolloutResult
    skipped : list of (path, message)
        Unreadable or corrupt files (left out of ``results``).
    n_files : int
        Files the run was given.
    workers : dict[int, int]
        Rollout files handled per worker process id (a restarted worker has a new id).
    """

    results: list[RolloutResult]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_files: int = 0
    workers: dict[int, int] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        """Steps scored."""
        return sum(r.n_steps for r in self.results)


def score(
    detector: FailureDetector,
    source: str | os.PathLike[str] | Sequence[str],
    *,
    num_workers: int | None = None,
    threads_per_worker: int = 1,
    batch_size: int = 64,
    strict: bool = False,
    curves: bool = False,
    alarms: bool = True,
    nonfinite: str = "raise",
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> FleetScores:
    """Score every rollout file of ``source`` on Ray into per-rollout results.

    Parameters
    ----------
    detector : FailureDetector
        Fitted; alarm fields are filled if it is calibrated.
    source : path, URI or list of them
        See :func:`list_rollout_files`.
    num_workers : int, optional
        Actors in the pool (each takes one CPU); default: the cluster's CPUs.
    threads_per_worker : int, default=1
        torch intra-op threads in each actor.
    batch_size : int, default=64
        Rollout files per task.
    strict : bool, default=False
        Raise :class:`~failguard.ArtifactError` if any file is unreadable; by default such
        files are skipped and reported in :attr:`FleetScores.skipped`.
    curves, alarms, nonfinite
        As in :func:`failguard.streaming.summarise`.
    progress : bool, default=False
        A progress bar of the rollouts gathered (on stderr).
    callback : callable, optional
        Called as ``callback(n_gathered, worker_pid)`` after each gathered rollout.

    Raises
    ------
    DistributedError
        If a rollout is missing from the gathered results or appears twice.
    """
    from tqdm.auto import tqdm

    ray = _ray()
    detector._require_fitted()
    if not ray.is_initialized():
        init()
    paths, fs = list_rollout_files(source)
    n = len(paths)
    workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    items = [{"index": i, "path": p} for i, p in enumerate(paths)]
    blocks = max(1, min(n, math.ceil(n / batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    files = _detector_bytes(detector)
    mapped = ds.map_batches(
        _Scorer,
        fn_constructor_kwargs={
            "detector_files": files,
            "threads": threads_per_worker,
            "curves": curves,
            "alarms": alarms,
            "nonfinite": nonfinite,
            "filesystem": fs,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    seen = np.zeros(n, dtype=np.int64)
    by_index: dict[int, RolloutResult] = {}
    skipped: dict[int, tuple[str, str]] = {}
    per_worker: dict[int, int] = {}
    bar = tqdm(total=n, disable=not progress, desc="scoring (ray)", unit=" rollouts", leave=False)
    for k, rec in enumerate(mapped.iter_rows()):
        i, pid = int(rec["index"]), int(rec["worker"])
        seen[i] += 1
        per_worker[pid] = per_worker.get(pid, 0) + 1
        bar.update(1)
        if callback is not None:
            callback(k + 1, pid)
        if rec["fatal"]:
            bar.close()
            raise _reraise(str(rec["fatal"]))
        if rec["skipped"]:
            skipped[i] = (paths[i], str(rec["skipped"]))
        else:
            by_index[i] = RolloutResult.from_row(json.loads(rec["row"]))
    bar.close()
    lost, twice = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
    if lost.size or twice.size:
        raise DistributedError(
            f"distributed run over {n} files returned {lost.size} rollout(s) never and "
            f"{twice.size} more than once (first lost: "
            f"{paths[lost[0]] if lost.size else None}, first repeated: "
            f"{paths[twice[0]] if twice.size else None}); the results cannot be trusted. "
            "Run it again."
        )
    bad = [skipped[i] for i in sorted(skipped)]
    if strict and bad:
        raise ArtifactError(
            f"{len(bad)} of {n} rollout files are unreadable (first: {bad[0][1]}); "
            "without strict, they are skipped and reported."
        )
    return FleetScores([by_index[i] for i in sorted(by_index)], bad, n, per_worker)


def _reraise(fatal: str) -> FailguardError:
    """The worker's failguard error, as the same class with the same message."""
    from .. import exceptions

    name, _, message = fatal.partition("\t")
    cls = getattr(exceptions, name, FailguardError)
    if not (isinstance(cls, type) and issubclass(cls, FailguardError)):
        cls = FailguardError
    return cls(message)


def _results_of(
    detector: FailureDetector, source: Any, kwargs: dict[str, Any], **fixed: Any
) -> Iterable[RolloutResult]:
    if isinstance(source, FleetScores):
        return source.results
    return score(detector, source, **{**kwargs, **fixed}).results


def calibrate(
    detector: FailureDetector, source: str | os.PathLike[str] | Sequence[str], **kwargs: Any
) -> FailureDetector:
    """Calibrate ``detector`` on the successful rollouts of ``source``, scored on Ray.

    The same thresholds as ``detector.calibrate(failguard.iter_rollouts(source))``: every
    rollout must be successful (or unlabelled, with a warning), none used to fit.
    ``kwargs`` go to :func:`score`.
    """
    results = _results_of(
        detector, source, kwargs, curves=detector.calibration_needs_curves, alarms=False
    )
    return calibrate_from_results(detector, results)


def evaluate(
    detector: FailureDetector,
    source: str | os.PathLike[str] | Sequence[str] | FleetScores,
    t_max: int | None = None,
    id_groups: Iterable[str] | str | None = "auto",
    **kwargs: Any,
) -> EvaluationReport:
    """:func:`failguard.evaluate` of a calibrated detector on ``source`` (or on a run's results)."""
    detector.spec()  # raises NotFittedError unless calibrated
    results = _results_of(detector, source, kwargs)
    if id_groups == "auto" and detector.calibration_groups_:
        id_groups = detector.calibration_groups_
    return evaluate_results(results, detector.alpha, t_max, id_groups)


def check_health(
    detector: FailureDetector,
    source: str | os.PathLike[str] | Sequence[str] | FleetScores,
    confidence: float = 0.95,
    min_rollouts: int = 10,
    **kwargs: Any,
) -> HealthReport:
    """:func:`failguard.health.check_calibration` on the new successes of ``source``."""
    detector.spec()  # raises NotFittedError unless calibrated
    results = _results_of(detector, source, kwargs)
    return health_from_results(detector, results, confidence, min_rollouts)


def write_parquet(results: Iterable[RolloutResult], path: str | os.PathLike[str]) -> Path:
    """Write per-rollout results as one Parquet file (one row per rollout, see ``to_row``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r.to_row() for r in results]
    table = pa.Table.from_pylist(rows)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


def read_parquet(path: str | os.PathLike[str]) -> list[RolloutResult]:
    """Read results written by :func:`write_parquet`."""
    import pyarrow.parquet as pq

    return [RolloutResult.from_row(row) for row in pq.read_table(path).to_pylist()]
