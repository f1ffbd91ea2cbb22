"""Fleet benchmark: score and calibrate 10^7 steps in constant memory, in process and on Ray.

    python -m benchmarks.fleet            # 10^5 rollouts, 10^7 steps (about 20-40 min on 2 cores)
    python -m benchmarks.fleet --tiny     # CI size: the pipeline end to end, both engines

1. A synthetic fleet is generated to disk in chunks (one safetensors file per rollout, the
   format of :class:`failguard.Recorder`): small per-step data (an 8-dim embedding and 4
   action logits) so that 10^7 steps fit the disk and the time. ``fit/`` holds a sample of
   successes, ``cal/`` successes for calibration, ``test/`` successes and failures (one
   file of ``test/`` is corrupt on purpose: it must be named and skipped).
2. RND + action entropy are fitted in one process on the sample.
3. Each configuration runs in its own subprocess (so peak RSS is its own): calibrate on
   N/2 rollouts of ``cal/`` and evaluate on N/2 of ``test/``, in process (streaming) and on
   Ray with 1 and 2 workers. Ray's cluster start is timed apart; the throughput counts the
   calibrate + evaluate wall time. Peak RSS: the process (driver), and for Ray the largest
   worker too. Every configuration must give the same thresholds and metrics (hashes).
4. Side by side: the ratio (Ray steps/s per worker) / (in-process steps/s) is measured in one
   process tree per repeat, at N = 10^4, and reported as the median of the repeats.
5. Scaling: in process at N = 10^4 and 10^5 rollouts (cost per step, peak RSS).
6. An estimate of the hours and workers for 10^9 steps, from the measured per-worker rate.
7. How large a fitting sample is enough: RND fitted on 25 ... 400 rollouts, same calibration
   and test rollouts, ROC-AUC and balanced accuracy.

Writes ``benchmarks/results/fleet.json`` (or ``--out``) and prints Markdown tables. The
machine may be shared: timings are noisy, ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import failguard as fg
from failguard.logs import rollout_files, rollout_to_bytes

EMB, K = 8, 4
SCHEMA = 1


# ---------------------------------------------------------------------------- data
def _rollout(rng: np.random.Generator, fail: bool, ood: bool, mean_len: int) -> fg.Rollout:
    length = int(rng.integers(int(0.8 * mean_len), int(1.2 * mean_len) + 1))
    if fail:
        length = int(1.2 * mean_len)  # failures run to the time limit
    t = np.arange(length, dtype=np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    basis = np.stack(
        [np.sin(t / 15 + phase), np.cos(t / 15 + phase), t / mean_len, np.ones_like(t)]
    )
    mix = np.random.default_rng(7).normal(size=(4, EMB))  # the same task for every robot
    emb = basis.T @ mix + 0.1 * rng.normal(size=(length, EMB))
    if ood:
        emb += 0.6  # a benign shift (another site): a success
    target = ((t // 10).astype(int) + rng.integers(K)) % K
    peak = np.full(length, 4.0)
    if fail:
        onset = int(rng.uniform(0.3, 0.6) * length)
        drift = np.clip(t - onset, 0, None)
        emb += (drift * 0.05)[:, None] * np.random.default_rng(8).normal(size=EMB)
        peak = np.maximum(4.0 - drift * 0.15, 0.0)  # the policy stops knowing what to do
    logits = 0.3 * rng.normal(size=(length, K))
    logits[np.arange(length), target] += peak
    group = "ood" if ood else "id"
    return fg.Rollout(
        emb.astype(np.float32), action_logits=logits.astype(np.float32), success=not fail,
        group=group,
    )  # fmt: skip


def _write_chunk(folder: Path, start: int, rollouts: list[fg.Rollout]) -> None:
    for i, r in enumerate(rollouts):
        (folder / f"r{start + i:07d}.safetensors").write_bytes(rollout_to_bytes(r))


def generate(root: Path, n: int, n_fit: int, mean_len: int, chunk: int = 2000) -> dict[str, Any]:
    """Write the fleet in chunks of ``chunk`` rollouts (never more in memory); reuse if there."""
    spec = {"schema": SCHEMA, "n": n, "n_fit": n_fit, "mean_len": mean_len}
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == spec:
        return json.loads(manifest.read_text())
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    steps = 0
    for name, count, fail_rate, ood_rate, seed in (
        ("fit", n_fit, 0.0, 0.0, 1),
        ("cal", n // 2, 0.0, 0.05, 2),
        ("test", n // 2, 0.1, 0.05, 3),
    ):
        folder = root / name
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            fails = rng.random(size) < fail_rate
            oods = rng.random(size) < ood_rate
            batch = [
                _rollout(rng, bool(f), bool(o), mean_len) for f, o in zip(fails, oods, strict=True)
            ]
            steps += sum(len(r) for r in batch) if name != "fit" else 0
            _write_chunk(folder, start, batch)
    corrupt = rollout_files(root / "test")[len(rollout_files(root / "test")) // 3]
    corrupt.write_bytes(corrupt.read_bytes()[:64])  # truncated: must be named and skipped
    info = {
        "spec": spec,
        "steps_cal_test": steps,
        "seconds": time.perf_counter() - t0,
        "corrupt": str(corrupt.relative_to(root)),  # relative: no machine paths in results
        "bytes": sum(f.stat().st_size for f in root.rglob("*.safetensors")),
    }
    manifest.write_text(json.dumps(info, indent=2))
    return info


def make_detector(fit_dir: Path, n_fit: int | None = None, epochs: int = 30) -> fg.FailureDetector:
    files = rollout_files(fit_dir)[:n_fit]
    sample = [fg.read_rollout(f) for f in files]
    det = fg.FailureDetector(
        scores=[
            fg.RNDScore(target_hidden=(32,), predictor_hidden=(64, 32), output_dim=16,
                        max_epochs=epochs),
            fg.DiscreteActionEntropy(source="logits"),
        ],
        windows=10,
        alpha=0.05,
    )  # fmt: skip
    return det.fit(sample, progress=False)


# ---------------------------------------------------------------------------- one configuration
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _WorkerRss:
    """Samples the RSS of Ray's map workers (other processes) and keeps the largest."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info.get("cmdline") or [])
                mem = p.info.get("memory_info")
                if "MapWorker" in cmd and mem is not None:
                    self.peak = max(self.peak, mem.rss / 2**20)
            self._stop.wait(0.5)

    def __enter__(self) -> _WorkerRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_config(root: Path, engine: str, workers: int, n: int, batch_size: int) -> dict[str, Any]:
    """Calibrate on n/2 cal files and evaluate on n/2 test files; timings and hashes."""
    import torch

    torch.set_num_threads(1)
    det = fg.FailureDetector.load(root / "fitted")
    cal = [str(p) for p in rollout_files(root / "cal")[: n // 2]]
    test = [str(p) for p in rollout_files(root / "test")[: n // 2]]
    out: dict[str, Any] = {"engine": engine, "workers": workers, "n": n}
    skipped: list[tuple[str, str]] = []
    if engine == "ray":
        from failguard import distributed

        t0 = time.perf_counter()
        distributed.init(num_cpus=workers)
        out["init_seconds"] = time.perf_counter() - t0
        with _WorkerRss() as rss:
            t0 = time.perf_counter()
            cal_run = distributed.score(
                det, cal, num_workers=workers, batch_size=batch_size, alarms=False,
                curves=det.calibration_needs_curves,
            )  # fmt: skip
            distributed.calibrate(det, cal_run)
            test_run = distributed.score(det, test, num_workers=workers, batch_size=batch_size)
            report = distributed.evaluate(det, test_run)
            out["seconds"] = time.perf_counter() - t0
        out["worker_peak_rss_mb"] = rss.peak
        steps = cal_run.n_steps + test_run.n_steps
        skipped = test_run.skipped
    else:
        counted = [0]

        def stream(files: list[str], errors: list[tuple[str, str]]) -> Any:
            for f in files:
                try:
                    r = fg.read_rollout(f)
                except fg.ArtifactError as err:
                    errors.append((f, str(err)))
                    continue
                counted[0] += len(r)
                yield r

        t0 = time.perf_counter()
        det.calibrate(stream(cal, []))
        report = fg.evaluate(det, stream(test, skipped))  # an iterator: streamed
        out["seconds"] = time.perf_counter() - t0
        steps = counted[0]
    out["steps"] = int(steps)
    out["steps_per_s"] = steps / out["seconds"]
    out["steps_per_s_per_worker"] = out["steps_per_s"] / workers
    out["driver_peak_rss_mb"] = _peak_rss_mb()
    out["skipped"] = [os.path.relpath(p, root) for p, _ in skipped]  # no machine paths
    thresholds = {k: v.tolist() for k, v in det.thresholds_.items()}
    out["thresholds"] = thresholds
    out["thresholds_sha1"] = hashlib.sha1(json.dumps(thresholds).encode()).hexdigest()
    metrics = json.dumps(report.to_dict(), sort_keys=True)
    out["metrics_sha1"] = hashlib.sha1(metrics.encode()).hexdigest()
    out["balanced_accuracy"] = report.overall["balanced_accuracy"]
    return out


def spawn(root: Path, engine: str, workers: int, n: int, batch_size: int) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--config", engine, "--workers", str(workers), "--n", str(n),
        "--root", str(root), "--batch-size", str(batch_size),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- main
def sample_size_sweep(root: Path, sizes: list[int], n_eval: int, epochs: int) -> list[dict]:
    cal = [fg.read_rollout(f) for f in rollout_files(root / "cal")[:n_eval]]
    test = [fg.read_rollout(f) for f in rollout_files(root / "test")[:n_eval] if _readable(f)]
    out = []
    for size in sizes:
        det = make_detector(root / "fit", size, epochs).calibrate(cal)
        rep = fg.evaluate(det, test)
        out.append(
            {
                "n_fit": size,
                "roc_auc": rep.overall["roc_auc"],
                "balanced_accuracy": rep.overall["balanced_accuracy"],
                "far": rep.overall["far"],
            }
        )
    return out


def _readable(f: Path) -> bool:
    try:
        fg.read_rollout(f)
    except fg.ArtifactError:
        return False
    return True


def _has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CI size")
    parser.add_argument("--rollouts", type=int, default=100_000, help="cal + test rollouts")
    parser.add_argument("--small", type=int, default=10_000, help="N of the side-by-side runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/tmp/failguard_fleet"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fleet.json"))
    parser.add_argument("--batch-size", type=int, default=256, help="Ray: files per task")
    parser.add_argument("--keep", action="store_true", help="keep the generated fleet")
    parser.add_argument("--config", choices=("inprocess", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.config:  # one configuration, in its own process
        print(json.dumps(run_config(args.root, args.config, args.workers, args.n, args.batch_size)))
        return

    n, small, repeats, mean_len, n_fit, epochs = (
        args.rollouts, args.small, args.repeats, 100, 400, 30
    )  # fmt: skip
    if args.tiny:
        n, small, repeats, mean_len, n_fit, epochs = 400, 200, 1, 30, 40, 5
        args.batch_size = 32
    root = args.root
    print(f"generating {n} rollouts (+{n_fit} to fit) under {root} ...", flush=True)
    gen = generate(root, n, n_fit, mean_len)
    print(
        f"  {gen['steps_cal_test']} steps, {gen['bytes'] / 2**20:.0f} MiB, {gen['seconds']:.0f} s"
    )
    t0 = time.perf_counter()
    make_detector(root / "fit", None, epochs).save(root / "fitted")
    fit_seconds = time.perf_counter() - t0

    ray_ok = _has_ray()
    engines = [("inprocess", 1)] + ([("ray", 1), ("ray", 2)] if ray_ok else [])
    side: list[dict[str, Any]] = []
    for rep in range(repeats):
        for engine, w in engines:
            print(f"side by side, repeat {rep + 1}: {engine} x{w}, N={small}", flush=True)
            side.append(spawn(root, engine, w, small, args.batch_size))
    full = []
    for engine, w in engines:
        print(f"full: {engine} x{w}, N={n}", flush=True)
        full.append(spawn(root, engine, w, n, args.batch_size))

    ratios = {}
    if ray_ok:
        for w in (1, 2):
            per_rep = [
                side[i * len(engines) + engines.index(("ray", w))]["steps_per_s_per_worker"]
                / side[i * len(engines)]["steps_per_s"]
                for i in range(repeats)
            ]
            ratios[f"ray{w}_per_worker_over_inprocess"] = {
                "per_repeat": per_rep, "median": statistics.median(per_rep)
            }  # fmt: skip
    identical = (
        len({r["thresholds_sha1"] for r in full}) == 1
        and len({r["metrics_sha1"] for r in full}) == 1
    )
    identical_small = (
        len({r["thresholds_sha1"] for r in side}) == 1
        and len({r["metrics_sha1"] for r in side}) == 1
    )
    inproc_small = [r for r in side if r["engine"] == "inprocess"]
    inproc_full = next(r for r in full if r["engine"] == "inprocess")
    scaling = {
        "small": {
            "n": small,
            "us_per_step": 1e6 / statistics.median(r["steps_per_s"] for r in inproc_small),
            "peak_rss_mb": statistics.median(r["driver_peak_rss_mb"] for r in inproc_small),
        },
        "full": {
            "n": n,
            "us_per_step": 1e6 / inproc_full["steps_per_s"],
            "peak_rss_mb": inproc_full["driver_peak_rss_mb"],
        },
    }
    per_worker = (
        statistics.median(
            [r["steps_per_s_per_worker"] for r in full if r["engine"] == "ray"]
            + [r["steps_per_s_per_worker"] for r in side if r["engine"] == "ray"]
        )
        if ray_ok
        else inproc_full["steps_per_s"]
    )
    worker_hours = 1e9 / per_worker / 3600
    estimate = {
        "per_worker_steps_per_s": per_worker,
        "worker_hours_for_1e9_steps": worker_hours,
        "hours_with": {str(w): worker_hours / w for w in (16, 64, 256)},
    }
    print("sample-size sweep ...", flush=True)
    sweep = sample_size_sweep(
        root, [10, 20, 40] if args.tiny else [25, 100, 400], 100 if args.tiny else 2000, epochs
    )
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "failguard": fg.__version__,
        "generation": gen,
        "fit_seconds": fit_seconds,
        "side_by_side": side,
        "ratios": ratios,
        "full": full,
        "identical_results": {"full": identical, "side_by_side": identical_small},
        "scaling": scaling,
        "estimate_1e9": estimate,
        "fit_sample_sweep": sweep,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)

    print("\n| run | N rollouts | steps | steps/s | per worker | driver RSS MiB | worker RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in full + side:
        print(
            f"| {r['engine']} x{r['workers']} | {r['n']} | {r['steps']} | {r['steps_per_s']:.0f} "
            f"| {r['steps_per_s_per_worker']:.0f} | {r['driver_peak_rss_mb']:.0f} "
            f"| {r.get('worker_peak_rss_mb', 0):.0f} |"
        )
    for k, v in ratios.items():
        print(f"{k}: median {v['median']:.2f} (repeats {[round(x, 2) for x in v['per_repeat']]})")
    print(f"identical thresholds and metrics: full {identical}, side by side {identical_small}")
    s, f = scaling["small"], scaling["full"]
    print(
        f"scaling in process: {s['n']} -> {f['n']} rollouts: {s['us_per_step']:.1f} -> "
        f"{f['us_per_step']:.1f} us/step, peak RSS {s['peak_rss_mb']:.0f} -> "
        f"{f['peak_rss_mb']:.0f} MiB"
    )
    print(
        f"1e9 steps at {per_worker:.0f} steps/s per worker: {worker_hours:.1f} worker-hours "
        + ", ".join(f"{h:.2f} h on {w}" for w, h in estimate["hours_with"].items())
    )
    print("\n| fit rollouts | ROC-AUC | balanced acc | FAR |")
    print("|---|---|---|---|")
    for row in sweep:
        print(
            f"| {row['n_fit']} | {row['roc_auc']:.3f} | {row['balanced_accuracy']:.3f} "
            f"| {row['far']:.3f} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
