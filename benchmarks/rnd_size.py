"""Does RND size matter? The paper-size RND (``RNDScore.paper()``, ≈34 M parameters) against
failguard's default small RND (≈74 k) on the robot benchmark, and the GPU step time of both.

Four stages; the second and fourth need a GPU to be quick, the others run on the CPU:

1. ``export``: read the robot benchmark's B = 32 rollouts (``benchmarks/robot``, cached under its
   ``--robot`` folder) and write, per task, every rollout's embeddings plus the benchmark's *fit*
   split for each seed (``split_rollouts``, the benchmark's own) to one safetensors file.
2. ``train``: per task, seed and size, fit ``RNDScore`` (small: the defaults; paper:
   ``RNDScore.paper()``) on that seed's fit rollouts, on ``--device`` (``cuda`` when available),
   and write the raw per-step scores of every rollout back (safetensors), with fit times and
   epochs (JSON).
3. ``evaluate``: here, on the CPU, with the library: the benchmark's protocol
   (``benchmarks/robot/evaluate.py``: rollout-disjoint fit / cal / val / test split, ACE fitted
   on the same fit split, windows and threshold style chosen on validation by TWA, conformal
   calibration on successes only, the test split used once) for RND-OE alone and FIPER
   (RND-OE AND ACE), with the RND scores read from stage 2. Writes
   ``benchmarks/results/rnd_size.json`` and, with ``--markdown``, the section of
   ``docs/BENCHMARKS.md``.
4. ``time``: the RND step on CUDA at N = 1 and N = 64 robots (eager and CUDA graphs), the torch
   ``Monitor.step`` with the RND on CUDA, and the exported graph on onnxruntime's CUDA execution
   provider if that provider is there. Writes a JSON file.

Usage::

    python -m benchmarks.rnd_size export --robot benchmarks/results/robot --out data.safetensors
    python -m benchmarks.rnd_size train --data data.safetensors --out scores --device cuda
    python -m benchmarks.rnd_size evaluate --robot benchmarks/results/robot --scores scores \\
        --markdown                               # or one evaluate per size, then `report`
    python -m benchmarks.rnd_size report --inputs small.json paper.json --scores scores
    python -m benchmarks.rnd_size time --out timing.json            # on the GPU machine
    python -m benchmarks.rnd_size time-doc --timing timing.json --markdown
    python -m benchmarks.rnd_size tiny                                # whole pipeline, toy sizes

Sizes are ``small``, ``paper``, or either with another epoch limit (``paper-1000ep``).

Nothing is tuned on test rollouts: only the RND scores differ between the sizes; splits,
candidate grid, selection and calibration are the benchmark's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import itertools

import numpy as np
import torch
from numpy.typing import NDArray

from ._protocol import timed_us

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Does RND size matter? (robot benchmark)"
SIZES = ("small", "paper")
LABEL = "b32"


def parse_variant(variant: str) -> tuple[str, int | None]:
    """``"small"``, ``"paper"`` or one of them with another epoch limit, ``"paper-1000ep"``."""
    size, _, rest = variant.partition("-")
    if size not in SIZES or (rest and not (rest.endswith("ep") and rest[:-2].isdigit())):
        raise argparse.ArgumentTypeError(
            f"unknown RND variant {variant!r}: use small, paper, or e.g. paper-1000ep"
        )
    return size, int(rest[:-2]) if rest else None


def _variant(text: str) -> str:
    parse_variant(text)
    return text


def make_rnd(variant: str, seed: int, device: str, max_epochs: int | None = None) -> Any:
    """The small default RND or the paper-size one, seeded like the benchmark (split seed).

    ``variant`` may carry its own epoch limit (``"paper-1000ep"``); ``max_epochs`` overrides
    both (pipeline checks).
    """
    from failguard import RNDScore

    size, epochs = parse_variant(variant)
    kw: dict[str, Any] = {"seed": seed, "device": device}
    if max_epochs is not None or epochs is not None:
        kw["max_epochs"] = max_epochs if max_epochs is not None else epochs
    if size == "small":
        return RNDScore(**kw)
    if size == "paper":
        return RNDScore.paper(**kw)
    raise ValueError(f"unknown size {size!r}; known: {SIZES}")


# ---------------------------------------------------------------------------------- export
def _config(tiny: bool, tasks: Sequence[str] | None = None) -> Any:
    """The robot benchmark's configuration (``--tiny``: its toy sizes), optionally fewer tasks."""
    import dataclasses

    from .robot import run

    cfg = run.TINY if tiny else run.Config()
    return dataclasses.replace(cfg, tasks=tuple(tasks)) if tasks else cfg


def load_rollouts(robot: Path, cfg: Any, task: str) -> list[Any]:
    """The rollouts the robot benchmark evaluates for ``task`` (same order, same cap)."""
    from .robot import run

    return list(run.load_task_rollouts(robot, LABEL, task, run.condition_sizes(cfg, LABEL, task)))


def fingerprint(rollouts: Sequence[Any]) -> NDArray[np.float64]:
    """Per rollout: length and the float64 sum of its embeddings (checks the order later)."""
    return np.array(
        [[len(r), float(np.asarray(r.embeddings, dtype=np.float64).sum())] for r in rollouts]
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Stage 1: embeddings and fit splits to one safetensors file."""
    from safetensors.numpy import save_file

    from .robot.evaluate import split_rollouts

    cfg = _config(args.tiny, args.tasks)
    tensors: dict[str, NDArray[Any]] = {}
    meta: dict[str, Any] = {"tasks": list(cfg.tasks), "seeds": list(args.seeds), "tiny": args.tiny}
    for task in cfg.tasks:
        rollouts = load_rollouts(args.robot, cfg, task)
        index = {id(r): i for i, r in enumerate(rollouts)}
        tensors[f"{task}/embeddings"] = np.concatenate(
            [np.asarray(r.embeddings, dtype=np.float32) for r in rollouts]
        )
        tensors[f"{task}/lengths"] = np.array([len(r) for r in rollouts], dtype=np.int64)
        tensors[f"{task}/fingerprint"] = fingerprint(rollouts)
        for seed in args.seeds:
            fit = split_rollouts(rollouts, seed, cfg.n_fit, cfg.n_cal)["fit"]
            tensors[f"{task}/fit_seed{seed}"] = np.array([index[id(r)] for r in fit], np.int64)
        print(f"{task}: {len(rollouts)} rollouts, {tensors[f'{task}/embeddings'].shape} steps")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"rnd_size": json.dumps(meta)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


# ---------------------------------------------------------------------------------- train
def _read(path: Path) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {})["rnd_size"])
    return load_file(str(path)), meta


def cmd_train(args: argparse.Namespace) -> int:
    """Stage 2: fit each size per task and seed on ``--device``; write raw scores."""
    from safetensors.numpy import save_file

    from failguard import Rollout

    data, meta = _read(args.data)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seeds = args.seeds or meta["seeds"]
    args.out.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {"device": device, "machine": _machine(), "fits": []}
    for size in args.sizes:
        scores: dict[str, NDArray[Any]] = {}
        for seed in seeds:  # seed outermost: a run cut short still has whole seeds
            for task in meta["tasks"]:
                emb = data[f"{task}/embeddings"]
                lengths = data[f"{task}/lengths"]
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                fit_idx = data[f"{task}/fit_seed{seed}"]
                fit = [
                    Rollout(emb[starts[i] : starts[i] + lengths[i]], success=True) for i in fit_idx
                ]
                rnd = make_rnd(size, seed, device, args.max_epochs)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                rnd.fit(fit)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                flat = np.concatenate(
                    [
                        rnd.score_steps({"embeddings": emb[i : i + 8192]})
                        for i in range(0, len(emb), 8192)
                    ]
                )
                score_s = time.perf_counter() - t0
                scores[f"{task}/seed{seed}"] = flat.astype(np.float64)
                entry = {
                    "size": size,
                    "task": task,
                    "seed": seed,
                    "parameters": rnd.n_parameters,
                    "fit_seconds": fit_s,
                    "score_seconds": score_s,
                    "steps_scored": len(emb),
                    "epochs_run": len(rnd.history_["val"]),
                    "best_epoch": rnd.best_epoch_,
                    "best_val_loss": float(min(rnd.history_["val"])),
                    "fit_rollouts": len(fit),
                }
                log["fits"].append(entry)
                print(json.dumps(entry), flush=True)
            save_file(scores, str(args.out / f"scores_{size}.safetensors"))
            log_path = args.out / f"train_log_{'_'.join(args.sizes)}.json"
            log_path.write_text(json.dumps(log, indent=1))
    return 0


# ---------------------------------------------------------------------------------- evaluate
def _precomputed_score(name: str, table: Mapping[int, NDArray[np.float64]]) -> Any:
    """A score whose per-rollout values were computed elsewhere (stage 2), keyed by identity.

    It learns nothing (``fit`` only checks the inputs) and scores only the rollouts in
    ``table``; anything else is an error, so a mismatch between stages cannot pass silently.
    """
    from failguard.exceptions import RolloutError
    from failguard.scores import BaseScore

    class PrecomputedScore(BaseScore):
        def _fit(self, rollouts: Sequence[Any], progress: bool) -> None:
            for r in rollouts:
                if id(r) not in table:
                    raise RolloutError(f"{self.name}: rollout not in the precomputed table")

        def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
            raise RolloutError(f"{self.name}: precomputed scores serve whole rollouts only")

        def score_many(self, rollouts: Sequence[Any]) -> list[NDArray[np.float64]]:
            missing = [i for i, r in enumerate(rollouts) if id(r) not in table]
            if missing:
                raise RolloutError(f"{self.name}: rollouts {missing[:5]} have no precomputed score")
            return [table[id(r)] for r in rollouts]

        def score(self, rollout: Any) -> NDArray[np.float64]:
            return self.score_many([rollout])[0]

    return PrecomputedScore(name)


def evaluate_size(
    rollouts: Sequence[Any], flat: NDArray[np.float64], seed: int, cfg: Any, methods: Sequence[str]
) -> dict[str, Any]:
    """The benchmark's ``evaluate_task`` for ``methods`` with the RND scores ``flat``."""
    from .robot.evaluate import evaluate_task
    from .robot.policy import PolicyConfig

    lengths = np.array([len(r) for r in rollouts])
    if flat.shape != (lengths.sum(),):
        raise ValueError(f"scores have shape {flat.shape}; the rollouts have {lengths.sum()} steps")
    parts = np.split(flat, np.cumsum(lengths)[:-1])
    table = {id(r): np.asarray(p, dtype=np.float64) for r, p in zip(rollouts, parts, strict=True)}
    return evaluate_task(
        rollouts,
        seed,
        cfg.n_fit,
        cfg.n_cal,
        cfg.alphas,
        cfg.sweep_alphas,
        cfg.window_grid,
        cfg.threshold_styles,
        methods,
        PolicyConfig().exec_horizon,
        desc=f"s{seed}",
        prefitted={"rnd": _precomputed_score("rnd", table)},
    )


METRICS = ("twa", "balanced_accuracy", "roc_auc", "far_id", "tpr", "tnr", "detection_time")
METHOD_LABELS = {"rnd_oe": "RND-OE alone", "fiper": "FIPER (RND-OE AND ACE)"}


def _test_metrics(res: Mapping[str, Any]) -> dict[str, float]:
    test = res["test"]
    overall = test["overall"]
    out = {k: float("nan") if overall.get(k) is None else float(overall[k]) for k in METRICS}
    sid = test["per_group"].get("success/id")
    out["far_id"] = float(sid["alarm_rate"]) if sid else float("nan")
    return out


def aggregate(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per size, method and α: the task mean per seed, then mean ± std (ddof 0) over seeds."""
    out: dict[str, Any] = {}
    for size, by_seed in results.items():
        for seed_key, by_task in by_seed.items():
            for task, res in by_task.items():
                for method, per_alpha in res["methods"].items():
                    for alpha, r in per_alpha.items():
                        if "test" not in r:
                            continue
                        slot = out.setdefault(size, {}).setdefault(method, {}).setdefault(alpha, {})
                        per = slot.setdefault("per_seed", {}).setdefault(seed_key, {})
                        per[task] = {
                            **_test_metrics(r),
                            "windows": r["windows"],
                            "threshold": r["threshold"],
                        }
    for by_method in out.values():
        for by_alpha in by_method.values():
            for slot in by_alpha.values():
                for k in METRICS:
                    seed_means = []
                    for per_task in slot["per_seed"].values():
                        vals = [v[k] for v in per_task.values() if not math.isnan(v[k])]
                        if vals:
                            seed_means.append(float(np.mean(vals)))
                    arr = np.array(seed_means)
                    slot[k] = {
                        "mean": float(arr.mean()) if arr.size else None,
                        "std": float(arr.std()) if arr.size else None,
                        "n_seeds": int(arr.size),
                    }
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Stage 3 (CPU): the benchmark's protocol with each size's RND scores."""
    from safetensors.numpy import load_file

    cfg = _config(args.tiny, args.tasks)
    data = _read(args.data)[0] if args.data else {}
    torch.set_num_threads(1)
    methods = list(args.methods)
    out_path = args.out
    previous = json.loads(out_path.read_text()) if out_path.is_file() and args.resume else {}
    results: dict[str, Any] = previous.get("raw", {})
    train_logs = [json.loads(p.read_text()) for p in sorted(args.scores.glob("train_log_*.json"))]
    for size in args.sizes:
        scores = load_file(str(args.scores / f"scores_{size}.safetensors"))
        for task in cfg.tasks:
            rollouts = load_rollouts(args.robot, cfg, task)
            if data:
                ref = data[f"{task}/fingerprint"]
                got = fingerprint(rollouts)
                if ref.shape != got.shape or not np.allclose(ref, got, rtol=1e-9, atol=1e-6):
                    raise SystemExit(f"{task}: the rollouts differ from the exported ones")
            for seed in args.seeds:
                key = str(seed)
                if task in results.get(size, {}).get(key, {}):
                    continue
                t0 = time.time()
                res = evaluate_size(rollouts, scores[f"{task}/seed{seed}"], seed, cfg, methods)
                res["seconds"] = time.time() - t0
                results.setdefault(size, {}).setdefault(key, {})[task] = res
                print(f"{size} {task} seed {seed}: {res['seconds']:.0f} s", flush=True)
                _write(out_path, results, train_logs, cfg, args)
    summary = _write(out_path, results, train_logs, cfg, args)
    print(markdown(summary))
    if args.markdown:
        _replace_section(DOC, SECTION, markdown(summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Merge ``evaluate`` outputs (e.g. one per size, run in parallel) into one summary."""
    cfg = _config(args.tiny, args.tasks)
    results: dict[str, Any] = {}
    for path in args.inputs:
        for size, by_seed in json.loads(path.read_text())["raw"].items():
            for seed, by_task in by_seed.items():
                results.setdefault(size, {}).setdefault(seed, {}).update(by_task)
    train_logs = [json.loads(p.read_text()) for p in sorted(args.scores.glob("train_log_*.json"))]
    summary = _write(args.out, results, train_logs, cfg, args)
    text = markdown(summary)
    print(text)
    if args.markdown:
        _replace_section(DOC, SECTION, text)
    return 0


def _compact(results: Mapping[str, Any]) -> dict[str, Any]:
    """The raw results with the test reports' overall, per-group and no-clock metrics (the α
    sweeps and by-group breakdowns, most of the bytes, are dropped)."""
    keep = ("alpha", "overall", "per_group", "no_clock", "horizon", "notes")
    out: dict[str, Any] = {}
    for size, by_seed in results.items():
        for seed, by_task in by_seed.items():
            for task, res in by_task.items():
                methods = {
                    m: {
                        a: {**r, "test": {k: v for k, v in r["test"].items() if k in keep}}
                        if "test" in r
                        else r
                        for a, r in per_alpha.items()
                    }
                    for m, per_alpha in res["methods"].items()
                }
                slot = out.setdefault(size, {}).setdefault(seed, {})
                slot[task] = {**res, "methods": methods}
    return out


def _write(
    path: Path, results: Mapping[str, Any], train_logs: list[Any], cfg: Any, args: Any
) -> dict[str, Any]:
    fits: dict[str, Any] = {}
    devices = sorted({log["device"] for log in train_logs})
    machines = {json.dumps(log["machine"], sort_keys=True) for log in train_logs}
    for log in train_logs:
        for f in log["fits"]:
            slot = fits.setdefault(f["size"], {"parameters": f["parameters"], "per_fit": []})
            slot["per_fit"].append(
                {k: f[k] for k in ("task", "seed", "fit_seconds", "epochs_run", "best_epoch")}
            )
    # the tables use whole seeds only (every task evaluated), so the task mean means the same
    complete = {
        size: {seed: by_task for seed, by_task in by_seed.items() if set(cfg.tasks) <= set(by_task)}
        for size, by_seed in results.items()
    }
    summary = {
        "command": f"python -m benchmarks.rnd_size {args.cmd}" + (" --tiny" if args.tiny else ""),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "protocol": {
            "tasks": list(cfg.tasks),
            "seeds": sorted({int(s) for by in complete.values() for s in by}),
            "n_fit": cfg.n_fit,
            "n_cal": cfg.n_cal,
            "alphas": list(cfg.alphas),
            "window_grid": list(cfg.window_grid),
            "threshold_styles": list(cfg.threshold_styles),
            "samples_per_step": 32,
        },
        "training": {"devices": devices, "machines": [json.loads(m) for m in machines], **fits},
        "evaluation_machine": _machine(),
        "summary": aggregate(complete),
        "raw": _compact(results),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    return summary


def _fmt(cell: Mapping[str, Any]) -> str:
    if cell.get("mean") is None:
        return "n/a"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def paired_difference(
    s: Mapping[str, Any], method: str, alpha: str, other: str = "paper"
) -> dict[str, str]:
    """``other`` minus small per seed (same splits, same ACE), each the mean over the tasks
    both finished; formatted mean ± std over the seeds both have."""
    try:
        a = s[other][method][alpha]["per_seed"]
        b = s["small"][method][alpha]["per_seed"]
    except KeyError:
        return {}
    seeds = sorted(set(a) & set(b))
    out: dict[str, str] = {}
    for k in METRICS:
        diffs = []
        for seed in seeds:
            tasks = sorted(set(a[seed]) & set(b[seed]))
            pairs = [(a[seed][t][k], b[seed][t][k]) for t in tasks]
            pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
            if pairs:
                diffs.append(float(np.mean([x - y for x, y in pairs])))
        if diffs:
            out[k] = f"{np.mean(diffs):+.2f} ± {np.std(diffs):.2f}"
            out["n_seeds"] = str(len(diffs))
    return out


def markdown(summary: Mapping[str, Any]) -> str:
    """The size-vs-detection table(s) for docs/BENCHMARKS.md."""
    s = summary["summary"]
    proto = summary["protocol"]
    tr = summary["training"]
    gpus = sorted({m["gpu"] for m in tr.get("machines", []) if "gpu" in m})
    where = ", ".join(tr["devices"]) + (f" ({', '.join(gpus)})" if gpus else "")
    lines = [
        f"Command: `{summary['command']}` (after `export`, `train` and `evaluate`; see the "
        f"script's docstring), {summary['date']}. RND trained and scored on {where}; "
        "evaluated on the CPU with the robot benchmark's protocol. Raw numbers: "
        "`benchmarks/results/rnd_size.json`.",
        "",
        f"Tasks {', '.join(proto['tasks'])}; B = 32 sampled chunks; split seeds "
        f"{proto['seeds']} (fit {proto['n_fit']}, cal {proto['n_cal']} ID successes); "
        "windows and threshold style chosen on validation by TWA; mean ± std over seeds of the "
        "task mean. *FAR* is the alarm rate on held-out ID successes.",
        "",
    ]
    sizes = [z for z in SIZES if z in s] + sorted(z for z in s if z not in SIZES)
    for alpha in [str(a) for a in proto["alphas"]]:
        lines += [
            f"**α = {alpha}**",
            "",
            "| method | RND | parameters | TWA | balanced acc | ROC-AUC | FAR (held-out ID "
            "succ.) | TPR | TNR |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method in ("rnd_oe", "fiper"):
            for size in sizes:
                cell = s[size].get(method, {}).get(alpha)
                if cell is None:
                    continue
                params = tr.get(size, {}).get("parameters")
                n = cell["twa"]["n_seeds"]
                label = size if n == len(proto["seeds"]) else f"{size} ({n} seeds)"
                lines.append(
                    f"| {METHOD_LABELS.get(method, method)} | {label} | "
                    f"{'' if params is None else f'{params:,}'} | "
                    + " | ".join(
                        _fmt(cell[k])
                        for k in ("twa", "balanced_accuracy", "roc_auc", "far_id", "tpr", "tnr")
                    )
                    + " |"
                )
            for other in [z for z in sizes if z != "small"]:
                diff = paired_difference(s, method, alpha, other)
                if diff:
                    n = int(diff.pop("n_seeds"))
                    lines.append(
                        f"| {METHOD_LABELS.get(method, method)} | {other} − small (paired, "
                        f"{n} seeds) | | "
                        + " | ".join(
                            diff[k]
                            for k in ("twa", "balanced_accuracy", "roc_auc", "far_id", "tpr", "tnr")
                        )
                        + " |"
                    )
        lines.append("")
    for size in sizes:
        per = tr.get(size, {}).get("per_fit", [])
        if per:
            secs = np.array([p["fit_seconds"] for p in per])
            epochs = np.array([p["epochs_run"] for p in per])
            lines.append(
                f"- {size}: {tr[size]['parameters']:,} parameters; fit {np.median(secs):.1f} s "
                f"(median over {len(per)} fits), {int(np.median(epochs))} epochs (median; "
                f"range {epochs.min()}–{epochs.max()})."
            )
    return "\n".join(lines).rstrip() + "\n"


def _replace_section(doc: Path, title: str, body: str, marker: str = "rnd_size") -> None:
    """Replace the text between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->``
    (appended under ``title`` at the end of the file if the markers are not there yet)."""
    text = doc.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n{title}\n\n{block}\n"
    doc.write_text(text)


# ---------------------------------------------------------------------------------- time
def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fitted_rnd(size: str, d: int, device: str) -> Any:
    from failguard.synthetic import make_rollouts

    rollouts = make_rollouts(6, seed=0, embedding_dim=d, length=40)
    return make_rnd(size, 0, device, max_epochs=1).fit(rollouts)


def time_rnd(
    net: torch.nn.Module, d: int, n: int, repeats: int, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """One RND step for ``n`` robots: host embedding in, host scores out (synchronised).

    ``eager``: copy to the GPU, forward, copy back. ``graph``: the same forward captured once
    as a CUDA graph on static buffers and replayed.
    """
    dev = torch.device("cuda")
    rng = np.random.default_rng(0)
    host = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)).pin_memory()
    out_host = torch.empty(n, dtype=torch.float32).pin_memory()
    model = net.to(dev).to(dtype).eval()

    def eager() -> None:
        with torch.no_grad():
            s = model(host.to(dev, non_blocking=True).to(dtype))
        out_host.copy_(s.float(), non_blocking=True)
        torch.cuda.synchronize()

    res: dict[str, Any] = {"eager": timed_us(eager, repeats, 50)}
    static_in = torch.zeros(n, d, device=dev, dtype=dtype)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = model(static_in)

    def replay() -> None:
        static_in.copy_(host, non_blocking=True)
        graph.replay()
        out_host.copy_(static_out, non_blocking=True)
        torch.cuda.synchronize()

    res["graph"] = timed_us(replay, repeats, 50)
    replay()
    graph_scores = out_host.clone()
    eager()
    res["graph_equals_eager_max_abs"] = float((graph_scores - out_host).abs().max())
    return res


def time_monitor(size: str, d: int, device: str, repeats: int) -> dict[str, Any]:
    """torch ``Monitor.step`` (RND on ``device`` + ACE + windows + thresholds), one robot."""
    from failguard import ActionChunkEntropy, FailureDetector, Monitor
    from failguard.synthetic import make_rollouts

    kw = {"embedding_dim": d, "n_samples": 32, "horizon": 8, "action_dim": 3, "length": 40}
    fit_set = make_rollouts(8, seed=0, **kw)
    cal_set = make_rollouts(30, seed=1, **kw)
    det = FailureDetector(
        [make_rnd(size, 0, device, max_epochs=1), ActionChunkEntropy()], windows=10, alpha=0.1
    )
    det.fit(fit_set, progress=False).calibrate(cal_set)
    mon = Monitor(det)
    r = make_rollouts(1, seed=2, **{**kw, "length": 400})[0]
    state = {"t": 0}

    def step() -> None:
        t = state["t"] % len(r)
        if t == 0:
            mon.reset()
        assert r.action_samples is not None
        mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
        state["t"] += 1

    return timed_us(step, repeats, 50)


def time_ort(size: str, d: int, repeats: int, provider: str = "CUDAExecutionProvider") -> Any:
    """The exported monitor step (``OnnxMonitor.step``, one robot) on ``provider``, if there."""
    import tempfile

    import onnxruntime as ort

    from failguard import ActionChunkEntropy, FailureDetector
    from failguard.exporters import export_onnx
    from failguard.runtime import OnnxMonitor
    from failguard.synthetic import make_rollouts

    providers = ort.get_available_providers()
    out: dict[str, Any] = {"onnxruntime": ort.__version__, "providers": providers}
    if provider not in providers:
        out["skipped"] = f"onnxruntime has no {provider} here"
        return out
    kw = {"embedding_dim": d, "n_samples": 32, "horizon": 8, "action_dim": 3, "length": 40}
    det = FailureDetector(
        [make_rnd(size, 0, "cpu", max_epochs=1), ActionChunkEntropy()], windows=10, alpha=0.1
    )
    det.fit(make_rollouts(8, seed=0, **kw), progress=False)
    det.calibrate(make_rollouts(30, seed=1, **kw))
    r = make_rollouts(1, seed=2, **{**kw, "length": 400})[0]
    assert r.action_samples is not None
    samples = r.action_samples
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(det, Path(tmp) / "monitor.onnx")
        mon = OnnxMonitor(path, providers=[provider])
        out["session_providers"] = mon.session.get_providers()
        state = {"t": 0}

        def step() -> None:
            t = state["t"] % len(r)
            if t == 0:
                mon.reset()
            mon.step(embedding=r.embeddings[t], action_samples=samples[t])
            state["t"] += 1

        out["onnx_monitor_step_n1"] = timed_us(step, repeats, 50)
    return out


def _time_cpu(net: torch.nn.Module, d: int, n: int, repeats: int) -> dict[str, float]:
    """The same forward in torch on this machine's CPU, one thread (for the ratio)."""
    model = net.to("cpu").float().eval()
    x = torch.randn(n, d)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return timed_us(forward, repeats, 10)


def cmd_time(args: argparse.Namespace) -> int:
    """Stage 4 (GPU): step times; writes ``--out``."""
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time", file=sys.stderr)
        return 1
    res: dict[str, Any] = {
        "command": "python -m benchmarks.rnd_size time",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "repeats": args.repeats,
        "rnd": {},
    }
    torch.backends.cuda.matmul.allow_tf32 = False
    for size in SIZES:
        for d in args.dims:
            rnd = _fitted_rnd(size, d, "cpu")
            for n in (1, 64):
                key = f"d{d}_n{n}"
                res["rnd"].setdefault(size, {})[key] = {
                    "parameters": rnd.n_parameters,
                    **time_rnd(rnd.network_, d, n, args.repeats),
                }
                torch.set_num_threads(1)
                res["rnd"][size][key]["cpu_torch_1thread"] = _time_cpu(
                    rnd.network_, d, n, max(50, args.repeats // 10)
                )
                print(size, key, json.dumps(res["rnd"][size][key]), flush=True)
    res["monitor_step_n1"] = {
        size: time_monitor(size, args.dims[0], "cuda", max(200, args.repeats // 5))
        for size in SIZES
    }
    print("monitor", json.dumps(res["monitor_step_n1"]), flush=True)
    try:
        res["onnxruntime_cuda"] = {
            size: time_ort(size, args.dims[0], max(200, args.repeats // 5)) for size in SIZES
        }
    except Exception as err:  # report, do not lose the torch timings
        res["onnxruntime_cuda"] = {"error": f"{type(err).__name__}: {err}"}
    print("ort", json.dumps(res["onnxruntime_cuda"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return 0


def timing_markdown(res: Mapping[str, Any]) -> str:
    """The GPU timing table for docs/BENCHMARKS.md from a ``time`` result."""
    m = res["machine"]
    lines = [
        f"Command: `{res['command']}` on the GPU machine ({m.get('gpu', 'GPU')}, "
        f"{m['logical_cpus']} logical CPUs, torch {m['torch']}), {res['date']}; p50 / p99 of "
        f"{res['repeats']} steps after 50 warm-up steps. Raw numbers: "
        "`benchmarks/results/rnd_size_gpu.json`. One step = a host embedding batch (N robots) "
        "in, the N scores back on the host, synchronised: *eager* copies, runs the torch "
        "modules and copies back; *CUDA graph* replays the forward captured once on static "
        "buffers (scores identical to eager). *CPU* is the same forward in torch on one core "
        "of that machine's CPU.",
        "",
        "| RND | d | parameters | N | eager p50 / p99 (µs) | CUDA graph p50 / p99 (µs) | "
        "CPU 1 thread p50 (µs) | graph robot-steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in SIZES:
        block = res["rnd"].get(size, {})
        for key, v in block.items():
            if not isinstance(v, Mapping) or "eager" not in v:
                continue
            d, n = (int(x[1:]) for x in key.split("_"))
            params = rnd_parameters(size, d)
            e, g, c = v["eager"], v["graph"], v["cpu_torch_1thread"]
            lines.append(
                f"| {size} | {d} | {params:,} | {n} | "
                f"{e['p50_us']:,.0f} / {e['p99_us']:,.0f} | {g['p50_us']:,.0f} / "
                f"{g['p99_us']:,.0f} | {c['p50_us']:,.0f} | {n / g['p50_us'] * 1e6:,.0f} |"
            )
    mon = res.get("monitor_step_n1", {})
    if mon:
        lines += [
            "",
            "torch `Monitor.step` with the RND on CUDA (one robot, d = "
            f"{min(res_dims(res))}, B = 32, H = 8, D = 3; RND + ACE in numpy + windows + "
            "thresholds, eager): "
            + "; ".join(
                f"{size} {v['p50_us']:,.0f} / {v['p99_us']:,.0f} µs (p50 / p99)"
                for size, v in mon.items()
            )
            + ".",
        ]
    ort_res = res.get("onnxruntime_cuda", {})
    skipped = {v.get("skipped") for v in ort_res.values() if isinstance(v, Mapping)}
    if skipped and None not in skipped:
        prov = next(iter(ort_res.values())).get("providers")
        lines += [
            "",
            f"onnxruntime {next(iter(ort_res.values())).get('onnxruntime')} there offers "
            f"{prov}: no CUDA execution provider, so the exported graph was not timed on the GPU.",
        ]
    return "\n".join(lines) + "\n"


def rnd_parameters(size: str, d: int) -> int:
    """Weights and biases of target plus predictor for embedding size ``d``."""
    rnd = make_rnd(size, 0, "cpu")
    total = 0
    for hidden in (rnd.target_hidden, rnd.predictor_hidden):
        widths = [d, *hidden, rnd.output_dim]
        total += sum(a * b + b for a, b in itertools.pairwise(widths))
    return total


def res_dims(res: Mapping[str, Any]) -> list[int]:
    """The embedding sizes a ``time`` result covers."""
    keys = [k for block in res["rnd"].values() for k in block if k.startswith("d")]
    return sorted({int(k.split("_")[0][1:]) for k in keys})


def cmd_time_doc(args: argparse.Namespace) -> int:
    """Write the GPU timing section of docs/BENCHMARKS.md from a ``time`` JSON file."""
    res = json.loads(args.timing.read_text())
    text = timing_markdown(res)
    print(text)
    if args.markdown:
        _replace_section(DOC, SECTION, text, marker="rnd_size_gpu")
    return 0


# ---------------------------------------------------------------------------------- tiny
def cmd_tiny(args: argparse.Namespace) -> int:
    """The whole pipeline at toy sizes on this machine (robot benchmark --tiny rollouts)."""
    robot = args.robot
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = ["--robot", str(robot), "--tiny", *(["--tasks", *args.tasks] if args.tasks else [])]
    rc = main(["export", *base, "--out", str(work / "data.safetensors"), "--seeds", "0"])
    rc |= main(
        [
            "train",
            "--data",
            str(work / "data.safetensors"),
            "--out",
            str(work / "scores"),
            "--device",
            "auto",
            "--max-epochs",
            str(args.max_epochs),
        ]
    )
    rc |= main(
        [
            "evaluate",
            *base,
            "--data",
            str(work / "data.safetensors"),
            "--scores",
            str(work / "scores"),
            "--seeds",
            "0",
            "--out",
            str(work / "rnd_size.json"),
        ]
    )
    return rc


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    default_robot = RESULTS / "robot"

    p = sub.add_parser("export", help="rollouts -> embeddings + fit splits")
    p.add_argument("--robot", type=Path, default=default_robot)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tasks", nargs="+", default=None, help="default: the benchmark's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("train", help="fit RNDs and score every rollout")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), type=_variant)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--device", default="auto", help="torch device; auto: cuda if available")
    p.add_argument("--max-epochs", type=int, default=None, help="override (pipeline checks)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="the benchmark's protocol with each size's scores")
    p.add_argument("--robot", type=Path, default=default_robot)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tasks", nargs="+", default=None, help="default: the benchmark's")
    p.add_argument("--data", type=Path, default=None, help="export file (checks the order)")
    p.add_argument("--scores", type=Path, required=True)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), type=_variant)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["rnd_oe", "fiper"])
    p.add_argument("--out", type=Path, default=RESULTS / "rnd_size.json")
    p.add_argument("--resume", action="store_true", help="keep finished results in --out")
    p.add_argument("--markdown", action="store_true", help="rewrite the docs section")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="merge evaluate outputs into one summary")
    p.add_argument("--inputs", type=Path, nargs="+", required=True)
    p.add_argument("--scores", type=Path, required=True, help="folder with the train logs")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tasks", nargs="+", default=None, help="default: the benchmark's")
    p.add_argument("--out", type=Path, default=RESULTS / "rnd_size.json")
    p.add_argument("--markdown", action="store_true", help="rewrite the docs section")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("time", help="GPU step times")
    p.add_argument("--out", type=Path, default=RESULTS / "rnd_size_gpu.json")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=2000)
    p.set_defaults(fn=cmd_time)

    p = sub.add_parser("time-doc", help="GPU timing table from a time JSON")
    p.add_argument("--timing", type=Path, default=RESULTS / "rnd_size_gpu.json")
    p.add_argument("--markdown", action="store_true", help="rewrite the docs section")
    p.set_defaults(fn=cmd_time_doc)

    p = sub.add_parser("tiny", help="whole pipeline at toy sizes (CPU)")
    p.add_argument("--robot", type=Path, default=RESULTS / "robot-tiny")
    p.add_argument("--work", type=Path, default=Path("rnd_size_tiny"))
    p.add_argument("--tasks", nargs="+", default=None, help="default: the benchmark's")
    p.add_argument("--max-epochs", type=int, default=3)
    p.set_defaults(fn=cmd_tiny)

    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
