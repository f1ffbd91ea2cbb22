"""Reduced-precision RND weights: alarm agreement and ROC-AUC of fp16 / int8 against fp32.

A FIPER detector (RND-OE AND ACE) is fitted and calibrated on successful in-distribution
rollouts of a real simulator run (the MetaWorld benchmark's recorded rollouts), exported three
times (``export_onnx(..., weights="fp32" | "fp16" | "int8")``) and replayed through
:class:`failguard.runtime.OnnxMonitor` on held-out rollouts of every condition. Reported per
precision: the share of steps whose alarm equals fp32's, the share of rollouts whose verdict
(alarm at any step) equals fp32's, the largest relative change of the RND score, and the
ROC-AUC (failure vs success) of the rollout's largest fused ratio and of its largest RND
score, next to fp32's. Splits are by rollout and fixed by ``--seed``; nothing is tuned.

Usage::

    python benchmarks/precision.py --rollouts DIR [--task push] [--rnd default|paper]

``DIR`` holds ``<task>/<condition>/rollout_*.safetensors`` (``benchmarks/robot/run.py``
writes them under ``<out>/rollouts/b32``). ``--rnd paper`` uses ``RNDScore.paper()`` (about
34 M parameters; slow to fit on a CPU, so ``--epochs`` is small by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from failguard import ActionChunkEntropy, FailureDetector, RNDScore, Rollout, read_rollouts
from failguard.exporters import export_onnx
from failguard.runtime import OnnxMonitor

ROOT = Path(__file__).resolve().parents[1]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC (ties count one half): P(score of a failure > score of a success)."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def load(directory: Path, task: str) -> dict[str, list[Rollout]]:
    out = {}
    for cond in sorted(p.name for p in (directory / task).iterdir() if p.is_dir()):
        rolls = read_rollouts(directory / task / cond)
        if rolls:
            out[cond] = rolls
    return out


def replay(path: Path, rollouts: list[Rollout]) -> dict[str, Any]:
    """Every rollout through one OnnxMonitor (all robots at once): per-step alarms, RND
    scores, fused ratios."""
    mon = OnnxMonitor(path, intra_op_threads=None)
    n = len(rollouts)
    length = max(len(r) for r in rollouts)
    mon.reset_batch(n)
    alarms = np.zeros((n, length), dtype=bool)
    rnd = np.full((n, length), np.nan)
    fused = np.full((n, length), np.nan)
    for t in range(length):
        idx = [min(t, len(r) - 1) for r in rollouts]
        out = mon.step_batch(
            embedding=np.stack([r.embeddings[i] for r, i in zip(rollouts, idx, strict=True)]),
            action_samples=np.stack(
                [r.action_samples[i] for r, i in zip(rollouts, idx, strict=True)]  # type: ignore[index]
            ),
        )
        live = np.array([t < len(r) for r in rollouts])
        alarms[live, t] = out.alarm[live]
        rnd[live, t] = out.scores["rnd"][live]
        fused[live, t] = out.fused_ratio[live]
    return {"alarm": alarms, "rnd": rnd, "fused": fused, "live": ~np.isnan(rnd)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = load(args.rollouts, args.task)
    rng = np.random.default_rng(args.seed)
    ident = [r for r in data.get("id", []) if r.success]
    order = rng.permutation(len(ident))
    n_fit, n_cal = args.n_fit, args.n_cal
    fit = [ident[i] for i in order[:n_fit]]
    cal = [ident[i] for i in order[n_fit : n_fit + n_cal]]
    used = {id(r) for r in fit + cal}
    test = [r for rolls in data.values() for r in rolls if id(r) not in used]
    rnd = (
        RNDScore.paper(max_epochs=args.epochs, batch_size=64)
        if args.rnd == "paper"
        else RNDScore(max_epochs=args.epochs)
    )
    det = FailureDetector([rnd, ActionChunkEntropy()], alpha=args.alpha)
    t0 = time.time()
    det.fit(fit, progress=False).calibrate(cal)
    fit_s = time.time() - t0
    labels = np.array([not r.success for r in test])
    res: dict[str, Any] = {
        "task": args.task,
        "rnd": args.rnd,
        "rnd_parameters": rnd.n_parameters,
        "epochs": args.epochs,
        "alpha": args.alpha,
        "n_fit": len(fit),
        "n_cal": len(cal),
        "n_test": len(test),
        "n_test_failures": int(labels.sum()),
        "steps": 0,
        "fit_seconds": fit_s,
        "precisions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for w in ("fp32", "fp16", "int8"):
            path = export_onnx(det, Path(tmp) / f"{w}.onnx", weights=w)
            runs[w] = replay(path, test)
            runs[w]["bytes"] = path.stat().st_size
    ref = runs["fp32"]
    live = ref["live"]
    res["steps"] = int(live.sum())
    for w, r in runs.items():
        verdict = r["alarm"].any(axis=1)
        rel = np.abs(r["rnd"][live] - ref["rnd"][live]) / np.maximum(
            np.abs(ref["rnd"][live]), 1e-12
        )
        res["precisions"][w] = {
            "onnx_bytes": r["bytes"],
            "step_alarm_agreement": float((r["alarm"][live] == ref["alarm"][live]).mean()),
            "rollout_verdict_agreement": float((verdict == ref["alarm"].any(axis=1)).mean()),
            "max_rel_rnd_change": float(rel.max()),
            "median_rel_rnd_change": float(np.median(rel)),
            "auc_fused": roc_auc(labels, np.nanmax(r["fused"], axis=1)),
            "auc_rnd": roc_auc(labels, np.nanmax(r["rnd"], axis=1)),
            "tpr": float(verdict[labels].mean()) if labels.any() else float("nan"),
            "fpr": float(verdict[~labels].mean()) if (~labels).any() else float("nan"),
        }
    return res


def table(res: dict[str, Any]) -> str:
    lines = [
        f"{res['task']}, RND {res['rnd']} ({res['rnd_parameters']:,} parameters), "
        f"{res['n_test']} test rollouts ({res['n_test_failures']} failures), {res['steps']:,} "
        "steps",
        "",
        "| weights | file (MB) | step alarms = fp32 | rollout verdicts = fp32 | max / median "
        "rel. RND change | ROC-AUC fused | ROC-AUC RND | TPR | FPR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w, p in res["precisions"].items():
        lines.append(
            f"| {w} | {p['onnx_bytes'] / 1e6:.2f} | {100 * p['step_alarm_agreement']:.3f} % | "
            f"{100 * p['rollout_verdict_agreement']:.1f} % | {p['max_rel_rnd_change']:.1e} / "
            f"{p['median_rel_rnd_change']:.1e} | {p['auc_fused']:.3f} | {p['auc_rnd']:.3f} | "
            f"{p['tpr']:.2f} | {p['fpr']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=Path, required=True, help="<dir>/<task>/<condition>")
    parser.add_argument("--task", default="push")
    parser.add_argument("--rnd", choices=("default", "paper"), default="default")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n-fit", type=int, default=50)
    parser.add_argument("--n-cal", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.rnd == "paper" else 100
    res = run(args)
    print(table(res))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
