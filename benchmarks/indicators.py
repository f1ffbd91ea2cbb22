"""Which indicator sees which failure, on failguard's synthetic rollouts (a smoke test of the
new indicators, not evidence about real policies: the simulator benchmarks are that).

    python -m benchmarks.indicators            # 3 seeds (about a minute on 2 cores)
    python -m benchmarks.indicators --tiny     # CI size, checks the script only

For each indicator alone (window mean of 8 steps): ROC-AUC of the per-rollout maximum,
successes against "stuck" failures (no progress, confident, entropy collapse) and against
"failure" rollouts (OOD drift + multimodal chunks), using only the steps before the longest
calibration success ended (no clock). Then each detector at alpha = 0.1: TPR on each failure
kind and FAR on held-out successes, with and without the clock. Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import failguard as fg
from failguard.metrics import remove_clock
from failguard.synthetic import make_rollouts
from failguard.windows import window_scores

KW: dict[str, Any] = {"length": 40, "n_discrete": 5}


def legs(seed: int, epochs: int) -> dict[str, fg.scores.BaseScore]:
    return {
        "rnd": fg.RNDScore(seed=seed, max_epochs=epochs),
        "ace": fg.ActionChunkEntropy(),
        "entropy": fg.DiscreteActionEntropy(),
        "entropy_low": fg.Deviation(fg.DiscreteActionEntropy(), side="low"),
        "ace_z": fg.Deviation(fg.ActionChunkEntropy(), side="both"),
        "progress": fg.ProgressScore(seed=seed, epochs=epochs),
        "progress_shortfall": fg.ProgressScore(mode="shortfall", seed=seed, epochs=epochs),
        "movement_low": fg.Deviation(fg.Movement(lag=5), side="low"),
        "ews_var_z": fg.Deviation(fg.SlowingDown(statistic="variance")),
        "ews_ac_z": fg.Deviation(fg.SlowingDown(statistic="autocorrelation")),
        "consistency": fg.ChunkConsistency(exec_horizon=4),
        "stac": fg.STACScore(exec_horizon=4),
    }


def run(seed: int, n: int, epochs: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    warnings.filterwarnings("ignore", message=".*max_epochs.*")
    fit = make_rollouts(n, seed=100 * seed, **KW)
    cal = make_rollouts(2 * n, seed=100 * seed + 1, **KW)
    ok = make_rollouts(n, seed=100 * seed + 2, **KW)
    stuck = make_rollouts(n, "stuck", seed=100 * seed + 3, **KW)
    drift = make_rollouts(n, "failure", seed=100 * seed + 4, **KW)
    horizon = max(len(r) for r in cal)
    out: dict[str, Any] = {"auc": {}, "detectors": {}}
    scores = legs(seed, epochs)
    for name, s in scores.items():
        s.fit(fit)
        peak = {
            k: [window_scores(s.score(r), 8, "mean")[:horizon].max() for r in rs]
            for k, rs in (("ok", ok), ("stuck", stuck), ("drift", drift))
        }
        out["auc"][name] = {
            k: float(roc_auc_score([0] * n + [1] * n, peak["ok"] + peak[k]))
            for k in ("stuck", "drift")
        }
    cached = {k: fg.scores.CachedScore(v) for k, v in scores.items()}
    detectors = {
        "FIPER (rnd AND ace)": (["rnd", "ace"], "and"),
        **{f"{k} alone": ([k], "and") for k in scores if k not in ("rnd",)},
        **{
            f"FIPER {c} {k}": (["rnd", "ace", k], c)
            for c in ("2-of-3", "or")
            for k in ("progress", "movement_low", "entropy_low", "consistency")
        },
    }
    for label, (names, combine) in detectors.items():
        det = fg.FailureDetector([cached[k] for k in names], windows=8, combine=combine, alpha=0.1)
        det.fit(fit, progress=False).calibrate(cal)
        row: dict[str, float] = {}
        for clock, tr in (("", None), ("no_clock_", horizon)):
            for kind, rs in (("far", ok), ("tpr_stuck", stuck), ("tpr_drift", drift)):
                traces = det.traces(rs)
                if tr is not None:
                    traces = remove_clock(traces, tr)
                row[clock + kind] = float(np.mean([t.predicted_failure for t in traces]))
        out["detectors"][label] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    # tiny: 2n = 30 calibration rollouts, the fewest an OR over three legs (alpha/3 each) needs
    seeds, n, epochs = ((0,), 15, 3) if args.tiny else ((0, 1, 2), 30, 40)
    runs = [run(s, n, epochs) for s in seeds]
    auc = {k: {f: float(np.mean([r["auc"][k][f] for r in runs])) for f in ("stuck", "drift")}
           for k in runs[0]["auc"]}  # fmt: skip
    det = {
        k: {
            m: float(np.mean([r["detectors"][k][m] for r in runs])) for m in runs[0]["detectors"][k]
        }
        for k in runs[0]["detectors"]
    }
    print(f"ROC-AUC of the per-rollout max (window mean 8, no clock), {len(seeds)} seeds")
    print("| indicator | stuck | drift |\n|---|---|---|")
    for k, v in auc.items():
        print(f"| {k} | {v['stuck']:.2f} | {v['drift']:.2f} |")
    print("\nalpha = 0.1: alarm rates (with clock / without clock)")
    print("| detector | FAR | TPR stuck | TPR drift |\n|---|---|---|---|")
    for k, v in det.items():
        cells = [
            f"{v[m]:.2f} / {v['no_clock_' + m]:.2f}" for m in ("far", "tpr_stuck", "tpr_drift")
        ]
        print(f"| {k} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(
            json.dumps({"auc": auc, "detectors": det, "seeds": list(seeds)}, indent=2)
        )


if __name__ == "__main__":
    main()
