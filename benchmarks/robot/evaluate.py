"""Evaluation protocol: rollout-disjoint splits, per-method settings chosen on validation, test.

For every task and split seed:

1. ID rollouts are shuffled; the first ``n_fit`` ID *successes* fit the scores (RND
   training, ACE cell sizes, ...), the next ``n_cal`` ID successes calibrate the thresholds.
   Every remaining rollout (ID successes and failures, all OOD rollouts) goes half to
   validation and half to test, stratified by group.
2. Each method's window sizes, threshold style (and vote) are chosen by the library's
   :func:`failguard.select` on validation alone (TWA with 2-fold cross-fitted thresholds on
   the validation successes; ties: balanced accuracy, then fewer legs and smaller windows),
   and the chosen detector is calibrated on the calibration split. Nothing is tuned on
   calibration or test.
3. The chosen detector is evaluated on test with :func:`failguard.evaluate` (overall,
   per group, α sweep).

Scores are fitted once per (task, seed) and shared by the methods that use them; a
:class:`failguard.scores.CachedScore` wrapper keeps their per-rollout scores so the
window/threshold grid does not rescore.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from failguard import (
    CalibrationError,
    Deviation,
    FailureDetector,
    Movement,
    Rollout,
    evaluate,
)
from failguard import select as fg_select
from failguard.scores import (
    BaseScore,
    CachedScore,
    make_score,
)

from .._protocol import vote_rule

__all__ = ["METHODS", "MethodSpec", "evaluate_task", "make_scores", "split_rollouts"]


@dataclass(frozen=True)
class MethodSpec:
    """One detector variant: which scores, how they are fused, which calibration mode.

    ``base`` names another method whose validated windows the shared scores keep (FIPER plus
    a new leg searches only the new leg's window, the threshold style and the vote); ``ks``
    lists the k of a k-of-n vote to choose from on validation (empty: ``combine`` as given).
    """

    scores: tuple[str, ...]
    combine: str = "and"
    mode: str = "corrected"
    label: str = ""
    calibration: str = "auto"
    base: str | None = None
    ks: tuple[int, ...] = ()


#: the new indicators of issue 9 (progress, stagnation, early warning, chunk consistency)
NEW_SCORES: dict[str, str] = {
    "progress": "progress (completion time)",
    "shortfall": "progress shortfall",
    "stagnation": "stagnation (low movement)",
    "ews": "early warning (autocorrelation)",
    "consistency": "chunk consistency",
    "state_stagnation": "stagnation of the hand position (Rollout.states)",
}

METHODS: dict[str, MethodSpec] = {
    "fiper": MethodSpec(("rnd", "ace"), "and", "corrected", "FIPER (RND-OE AND ACE)"),
    "or": MethodSpec(("rnd", "ace"), "or", "corrected", "RND-OE OR ACE"),
    "rnd_oe": MethodSpec(("rnd",), label="RND-OE alone"),
    "ace": MethodSpec(("ace",), label="ACE alone"),
    "stac": MethodSpec(("stac",), label="STAC"),
    "pca_kmeans": MethodSpec(("pca_kmeans",), label="PCA-kmeans"),
    "logpzo": MethodSpec(("logpzo",), label="logpZO"),
    "rnd_a": MethodSpec(("rnd_a",), label="RND-A"),
    "fiper_reference": MethodSpec(
        ("rnd", "ace"), "and", "reference", "FIPER, reference calibration"
    ),
    "fiper_joint": MethodSpec(
        ("rnd", "ace"), "and", "corrected", "FIPER, joint calibration", "joint"
    ),
    **{f"new_{k}": MethodSpec((k,), label=f"{v} alone") for k, v in NEW_SCORES.items()},
    **{
        f"fiper_{k}": MethodSpec(
            ("rnd", "ace", k), "vote", label=f"FIPER + {v} (k-of-3)", base="fiper", ks=(1, 3)
        )
        for k, v in NEW_SCORES.items()
    },
}

#: the single-indicator baselines against which the goal "TWA 0.05 ahead" is measured
BASELINES = ("rnd_oe", "ace", "stac", "pca_kmeans", "logpzo", "rnd_a")


def make_scores(names: Sequence[str], seed: int, exec_horizon: int) -> dict[str, BaseScore]:
    """Unfitted scores by name, seeded with the split seed."""
    params: dict[str, dict[str, Any]] = {
        "rnd": {"seed": seed},
        # end-effector xyz deltas integrated along the chunk (the reference's choice)
        "ace": {"dims": [0, 1, 2], "integrate_dt": 1.0},
        "stac": {"exec_horizon": exec_horizon},
        "pca_kmeans": {"seed": seed},
        "logpzo": {"seed": seed},
        "rnd_a": {"seed": seed},
        "progress": {"seed": seed},
        "shortfall": {"seed": seed},
        "consistency": {"exec_horizon": exec_horizon},
    }
    return {
        n: (
            # the hand position, recorded as Rollout.states
            Deviation(Movement(source="states"), side="low", name=n)
            if n == "state_stagnation"
            else make_score(n, **params.get(n, {}))
        )
        for n in names
    }


def split_rollouts(
    rollouts: Sequence[Rollout], seed: int, n_fit: int, n_cal: int
) -> dict[str, list[Rollout]]:
    """Rollout-disjoint fit / cal / val / test split (see module docstring)."""
    rng = np.random.default_rng(seed)
    ids = [r for r in rollouts if r.group == "id"]
    order = rng.permutation(len(ids))
    id_succ = [ids[i] for i in order if ids[i].success]
    id_fail = [ids[i] for i in order if not ids[i].success]
    if len(id_succ) < n_fit + n_cal + 2:
        raise RuntimeError(
            f"only {len(id_succ)} ID successes; need {n_fit + n_cal + 2} for fit/cal/val/test"
        )
    out: dict[str, list[Rollout]] = {
        "fit": id_succ[:n_fit],
        "cal": id_succ[n_fit : n_fit + n_cal],
        "val": [],
        "test": [],
    }
    rest: dict[str, list[Rollout]] = {"id-success": id_succ[n_fit + n_cal :], "id-fail": id_fail}
    for g in sorted({r.group for r in rollouts if r.group != "id"}, key=str):
        members = [r for r in rollouts if r.group == g]
        rest[str(g)] = [members[i] for i in rng.permutation(len(members))]
    for members in rest.values():
        half = len(members) // 2
        out["val"] += members[:half]
        out["test"] += members[half:]
    return out


def _detector(
    method: MethodSpec,
    cached: Mapping[str, CachedScore],
    windows: Mapping[str, int],
    threshold: str,
    alpha: float,
    fit: Sequence[Rollout],
    cal: Sequence[Rollout],
    k: int | None = None,
) -> FailureDetector:
    det = _template(method, cached, windows, threshold, alpha, k)
    return det.fit(fit, progress=False).calibrate(cal)


def _template(
    method: MethodSpec,
    cached: Mapping[str, CachedScore],
    windows: Mapping[str, int],
    threshold: str,
    alpha: float,
    k: int | None,
) -> FailureDetector:
    """The unfitted detector of ``method`` at these settings (k: the vote, None for AND)."""
    return FailureDetector(
        scores=[cached[n] for n in method.scores],
        windows=dict(windows),
        combine=vote_rule(len(method.scores), k, method.combine),
        threshold=threshold,
        alpha=alpha,
        mode=method.mode,
        calibration=method.calibration,
    )


def _candidates(
    method: MethodSpec,
    window_grid: Sequence[int],
    threshold_styles: Sequence[str],
    fixed: Mapping[str, int],
) -> list[tuple[str, dict[str, int], int | None]]:
    """(style, windows, k) candidates of one method; ``fixed`` windows are not searched."""
    free = [n for n in method.scores if n not in fixed]
    out = []
    for style in threshold_styles:
        for ws in itertools.product(*([window_grid] * len(free))):
            windows = {**fixed, **dict(zip(free, ws, strict=True))}
            windows = {n: windows[n] for n in method.scores}
            for k in method.ks or (None,):
                out.append((style, windows, k))
    return out


def evaluate_task(
    rollouts: Sequence[Rollout],
    seed: int,
    n_fit: int,
    n_cal: int,
    alphas: Sequence[float],
    sweep_alphas: Sequence[float],
    window_grid: Sequence[int],
    threshold_styles: Sequence[str],
    methods: Sequence[str],
    exec_horizon: int,
    desc: str = "",
    prefitted: Mapping[str, BaseScore] | None = None,
) -> dict[str, Any]:
    """Fit, select on validation and test every method for one task and one split seed.

    ``prefitted`` maps score names to scores used as given instead of the benchmark's own
    (``benchmarks/rnd_size.py`` passes RND scores trained elsewhere); their ``fit`` still sees
    this seed's fit split.

    Returns
    -------
    dict
        ``{"split": sizes, "methods": {method: {str(alpha): result}}}`` where a result has the
        chosen ``windows``, ``threshold`` and ``k``, the validation metrics, and the test
        report (``failguard.EvaluationReport.to_dict()``, with the metrics without the clock).
    """
    torch.manual_seed(seed)
    splits = split_rollouts(rollouts, seed, n_fit, n_cal)
    t_max = max(len(r) for r in rollouts)
    pool = SELECT_POOL
    if splits["fit"][0].states is None:  # rollouts recorded before the benchmark kept positions
        methods = [m for m in methods if m not in METHODS or not _reads_states(METHODS[m])]
        pool = tuple(n for n in SELECT_POOL if n != "state_stagnation")
    needed = sorted({n for m in methods if m in METHODS for n in METHODS[m].scores})
    if "select" in methods:
        needed = sorted({*needed, *pool})
    prefitted = dict(prefitted or {})
    raw_scores = make_scores([n for n in needed if n not in prefitted], seed, exec_horizon)
    raw_scores.update({n: s for n, s in prefitted.items() if n in needed})
    cached: dict[str, CachedScore] = {}
    for name in needed:
        cached[name] = CachedScore(raw_scores[name].fit(splits["fit"], progress=False))
    result: dict[str, Any] = {
        "split": {k: len(v) for k, v in splits.items()},
        "t_max": t_max,
        "methods": {},
    }
    for method_name in methods:
        if method_name == "select":
            result["methods"]["select"] = _run_select(
                cached, splits, alphas, sweep_alphas, window_grid, threshold_styles, t_max, pool
            )
            continue
        method = METHODS[method_name]
        per_alpha: dict[str, Any] = {}
        for alpha in alphas:
            fixed: dict[str, int] = {}
            if method.base is not None:
                base = result["methods"].get(method.base, {}).get(str(alpha), {})
                fixed = dict(base.get("windows", {}))
            configs = _candidates(method, window_grid, threshold_styles, fixed)
            # the library's validated selection over this method's grid: every candidate is
            # compared on validation only, the winner is calibrated on the calibration split
            templates = [
                _template(method, cached, windows, style, alpha, k) for style, windows, k in configs
            ]
            try:
                det = fg_select(
                    splits["fit"],
                    splits["cal"],
                    splits["val"],
                    alpha=alpha,
                    candidates=templates,
                    criterion="twa",
                    random_state=seed,
                )
            except CalibrationError as err:
                per_alpha[str(alpha)] = {"error": f"no configuration could be calibrated: {err}"}
                continue
            style, windows, k = configs[det.selection_.chosen]
            val = dict(det.selection_.best["metrics"])
            report = evaluate(det, splits["test"], alphas=sweep_alphas, t_max=t_max)
            per_alpha[str(alpha)] = {
                "windows": windows,
                "threshold": style,
                "k": k,
                "validation": {k_: v for k_, v in val.items() if isinstance(v, (int, float))},
                "test": report.to_dict(),
            }
        result["methods"][method_name] = per_alpha
    return result


#: the indicators fg.select chooses from
SELECT_POOL = ("rnd", "ace", *NEW_SCORES)


def _reads_states(method: MethodSpec) -> bool:
    return "state_stagnation" in method.scores


def _run_select(
    cached: Mapping[str, CachedScore],
    splits: Mapping[str, list[Rollout]],
    alphas: Sequence[float],
    sweep_alphas: Sequence[float],
    window_grid: Sequence[int],
    threshold_styles: Sequence[str],
    t_max: int,
    pool: Sequence[str] = (),
) -> dict[str, Any]:
    """``fg.select`` on fit / cal / val at each α; its choice evaluated once on test.

    The candidates: every pool indicator alone, FIPER, and FIPER plus each new leg fused by
    OR or 2-of-3, over select's default windows (5, 10, 20; one per candidate, shared by its
    legs) and thresholds (constant, per-step). ``select`` compares them on validation only
    (2-fold cross-fitted thresholds), then calibrates the winner on the calibration split.
    """
    from failguard.calibration.selection import candidate_grid

    pool = tuple(pool) or SELECT_POOL
    legs = {n: cached[n] for n in pool}
    structures: list[tuple[list[str], str]] = [([n], "and") for n in pool]
    structures.append((["rnd", "ace"], "and"))
    for n in pool[2:]:
        structures += [(["rnd", "ace", n], "or"), (["rnd", "ace", n], "2-of-3")]
    # select's own default grid (windows 5, 10, 20; constant and per-step thresholds),
    # each candidate cross-fitted on two folds of the validation successes
    grid = candidate_grid(legs, structures)
    per_alpha: dict[str, Any] = {}
    for alpha in alphas:
        try:
            det = fg_select(
                splits["fit"], splits["cal"], splits["val"], alpha=alpha, candidates=grid
            )
        except CalibrationError as err:  # too few validation successes for its folds
            per_alpha[str(alpha)] = {"error": str(err)}
            continue
        report = evaluate(det, splits["test"], alphas=sweep_alphas, t_max=t_max)
        sel = det.selection_
        per_alpha[str(alpha)] = {
            "windows": dict(det.windows),
            "threshold": det.threshold,
            "scores": list(det.names),
            "combine": det.combine,
            "criterion": sel.criterion,
            "reason": sel.reason,
            "validation": sel.best.get("metrics", {}),
            "test": report.to_dict(),
        }
    return per_alpha


def chosen_detector(
    rollouts: Sequence[Rollout],
    seed: int,
    n_fit: int,
    n_cal: int,
    method_name: str,
    windows: Mapping[str, int],
    threshold: str,
    alpha: float,
    exec_horizon: int,
) -> tuple[FailureDetector, dict[str, list[Rollout]]]:
    """Rebuild one chosen detector (for plots) and return it with its splits."""
    torch.manual_seed(seed)
    splits = split_rollouts(rollouts, seed, n_fit, n_cal)
    method = METHODS[method_name]
    scores = make_scores(method.scores, seed, exec_horizon)
    cached = {n: CachedScore(s.fit(splits["fit"], progress=False)) for n, s in scores.items()}
    det = _detector(method, cached, windows, threshold, alpha, splits["fit"], splits["cal"])
    return det, splits
