"""Evaluate failguard's discrete-action detectors on recorded LunarLander rollouts.

Protocol (the same as the robot benchmark's), for each seed:

1. Rollout-disjoint split of that seed's rollouts: ID successes into *fit* (RND training),
   *calibration* (conformal thresholds), *validation* and *test*; ID failures and every
   OOD group half to validation, half to test. Fit and calibration hold successes only.
2. Scores are fitted once on the fit split and then frozen.
3. For each detector and each α, the window sizes and the threshold style (constant,
   per-step or functional band) are chosen by the library's :func:`failguard.select` on the
   validation split alone (TWA with 2-fold cross-fitted thresholds on the validation
   successes; ties broken by balanced accuracy, then by fewer legs and smaller windows).
   Nothing is tuned on calibration or test.
4. The chosen detector is calibrated on the calibration split at α and evaluated once on
   the test split: realised false-alarm rate on the held-out ID successes, TPR, TNR,
   balanced accuracy, TWA, detection time and ROC-AUC, overall and per group.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from failguard import (
    CalibrationError,
    Deviation,
    FailureDetector,
    Movement,
    Rollout,
    evaluate,
)
from failguard import select as fg_select
from failguard.scores import BaseScore, CachedScore, logits_entropy, make_score

from .._protocol import vote_rule

__all__ = [
    "DETECTORS",
    "ActionCertainty",
    "Split",
    "evaluate_seed",
    "split_rollouts",
]


@dataclass(frozen=True)
class Spec:
    """Scores a detector fuses and how.

    ``base`` names another detector whose validated windows the shared scores keep (FIPER
    plus a new leg searches only the new leg's window, the threshold style and the vote);
    ``ks`` lists the k of a k-of-n vote to choose from on validation (empty: AND).
    """

    scores: tuple[str, ...]
    base: str | None = None
    ks: tuple[int, ...] = ()


#: the new indicators of issue 9 (progress, stagnation, early warning, two-sided entropy)
NEW_SCORES: dict[str, str] = {
    "progress": "progress (completion time)",
    "shortfall": "progress shortfall",
    "stagnation": "stagnation (low movement)",
    "ews": "early warning (autocorrelation)",
    "entropy_low": "entropy collapse (two-sided, low side)",
    "state_stagnation": "stagnation of the position (Rollout.states)",
}

FIPER = "FIPER (RND AND entropy)"
SELECT = "fg.select's choice"

#: detector name -> what it fuses (AND when more than one, unless ``ks``)
DETECTORS: dict[str, Spec] = {
    FIPER: Spec(("rnd", "entropy")),
    "RND alone": Spec(("rnd",)),
    "entropy alone": Spec(("entropy",)),
    # post hoc (added after seeing that the policy is *more* certain when it fails)
    "certainty alone (post hoc)": Spec(("certainty",)),
    "RND AND certainty (post hoc)": Spec(("rnd", "certainty")),
    **{f"{v} alone": Spec((k,)) for k, v in NEW_SCORES.items()},
    **{
        f"FIPER + {v} (k-of-3)": Spec(("rnd", "entropy", k), base=FIPER, ks=(1, 3))
        for k, v in NEW_SCORES.items()
    },
}

METRICS = (
    "far_id",
    "far_benign_ood",
    "tpr",
    "tnr",
    "balanced_accuracy",
    "twa",
    "detection_time",
    "roc_auc",
    "lead_time_steps",
)


class ActionCertainty(BaseScore):
    """Certainty of a categorical policy, log2(K) - H(softmax(logits)), in bits (post hoc).

    The mirror image of :class:`failguard.DiscreteActionEntropy`: high when the policy is
    sure of its action. It is not part of FIPER; the benchmark adds it because a PPO policy
    trained with an entropy bonus is near-uniform where the action does not matter and
    decisive while it is crashing, so the entropy points the wrong way on this task.

    Parameters
    ----------
    name : str
        Indicator name.
    """

    def __init__(self, name: str = "certainty") -> None:
        super().__init__(name)
        self.requires = ("action_logits",)

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        """Nothing to learn."""

    def _score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        logits = np.asarray(inputs["action_logits"], dtype=np.float64)
        return np.maximum(np.log2(logits.shape[1]) - logits_entropy(logits), 0.0)


@dataclass
class Split:
    """A rollout-disjoint split of one seed's rollouts."""

    fit: list[Rollout]
    calibration: list[Rollout]
    validation: list[Rollout]
    test: list[Rollout]

    def sizes(self) -> dict[str, dict[str, int]]:
        """Counts per part, by ``success/<group>``."""
        out: dict[str, dict[str, int]] = {}
        for part in ("fit", "calibration", "validation", "test"):
            counts: dict[str, int] = {}
            for r in getattr(self, part):
                key = f"{'success' if r.success else 'fail'}/{r.group}"
                counts[key] = counts.get(key, 0) + 1
            out[part] = dict(sorted(counts.items()))
        return out


def split_rollouts(rollouts: Sequence[Rollout], n_fit: int, n_cal: int, seed: int) -> Split:
    """Split by rollout: fit and calibration from ID successes, the rest half/half.

    Parameters
    ----------
    rollouts : sequence of Rollout
        All rollouts of one seed.
    n_fit, n_cal : int
        ID successes for fitting the scores and for calibration.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    Split

    Raises
    ------
    ValueError
        If there are too few ID successes for fit, calibration and 2 held-out ones.
    """
    rng = np.random.default_rng(seed)
    id_ok = [r for r in rollouts if r.group == "id" and r.success]
    if len(id_ok) < n_fit + n_cal + 2:
        raise ValueError(
            f"Only {len(id_ok)} ID successes; need {n_fit} (fit) + {n_cal} (calibration) + 2 "
            "held out. Record more ID rollouts."
        )
    order = rng.permutation(len(id_ok))
    fit = [id_ok[i] for i in order[:n_fit]]
    cal = [id_ok[i] for i in order[n_fit : n_fit + n_cal]]
    rest = [id_ok[i] for i in order[n_fit + n_cal :]]
    val, test = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    others: dict[tuple[str | None, bool | None], list[Rollout]] = {}
    for r in rollouts:
        if not (r.group == "id" and r.success):
            others.setdefault((r.group, r.success), []).append(r)
    for key in sorted(others, key=str):
        members = others[key]
        perm = rng.permutation(len(members))
        half = (len(members) + int(rng.integers(2))) // 2  # odd counts: random side
        val += [members[i] for i in perm[:half]]
        test += [members[i] for i in perm[half:]]
    return Split(fit, cal, val, test)


def _summarise(report: Any) -> dict[str, Any]:
    """Flatten an EvaluationReport into the benchmark's metrics."""
    d = report.to_dict()
    o, groups = d["overall"], d["per_group"]
    benign = [m for k, m in groups.items() if k.startswith("success/ood")]
    n_benign = sum(m["n"] for m in benign)
    far_benign = sum(m["alarm_rate"] * m["n"] for m in benign) / n_benign if n_benign else None
    return {
        "far_id": groups.get("success/id", {}).get("alarm_rate"),
        "far_benign_ood": far_benign,
        "tpr": o["tpr"],
        "tnr": o["tnr"],
        "balanced_accuracy": o["balanced_accuracy"],
        "twa": o["twa"],
        "detection_time": o["detection_time"],
        "roc_auc": o["roc_auc"],
        "lead_time_steps": o["lead_time_steps"],
        "n_success": o["n_success"],
        "n_failure": o["n_failure"],
        "per_group": groups,
        "no_clock": _no_clock(d),
    }


def _no_clock(d: Mapping[str, Any]) -> dict[str, Any]:
    """The same metrics with every alarm after the longest calibration success removed."""
    o, groups = d.get("no_clock") or {}, d.get("no_clock_per_group") or {}
    if not o:
        return {}
    benign = [m for k, m in groups.items() if k.startswith("success/ood")]
    n_benign = sum(m["n"] for m in benign)
    return {
        "far_id": groups.get("success/id", {}).get("alarm_rate"),
        "far_benign_ood": (
            sum(m["alarm_rate"] * m["n"] for m in benign) / n_benign if n_benign else None
        ),
        **{k: o.get(k) for k in ("tpr", "tnr", "balanced_accuracy", "twa", "detection_time")},
        "roc_auc": o.get("roc_auc"),
        "lead_time_steps": o.get("lead_time_steps"),
        "per_group": groups,
        "horizon": d.get("horizon"),
    }


def _detector(
    cached: Mapping[str, BaseScore],
    names: Sequence[str],
    wins: Sequence[int],
    style: str,
    alpha: float,
    seed: int,
    k: int | None = None,
) -> FailureDetector:
    return FailureDetector(
        scores=[cached[n] for n in names],
        windows={n: int(w) for n, w in zip(names, wins, strict=True)},
        combine=vote_rule(len(names), k),
        threshold=style,
        alpha=alpha,
        random_state=seed,
    )


def make_scores(
    seed: int, rnd_kwargs: Mapping[str, Any] | None = None, progress_epochs: int = 20
) -> dict[str, BaseScore]:
    """Every indicator of the benchmark, unfitted.

    ``progress_epochs``: epochs of the progress networks (the fit set has ~50 k steps, so 20
    epochs are ~4 k gradient steps, as many as the robot benchmark's 150 epochs on ~1 k).
    """
    progress = {"seed": seed, "epochs": progress_epochs}
    return {
        "rnd": make_score("rnd", seed=seed, **dict(rnd_kwargs or {})),
        "entropy": make_score("entropy"),
        "entropy_samples": make_score("entropy_samples"),
        "certainty": ActionCertainty(),  # post hoc, this benchmark's own score
        "progress": make_score("progress", **progress),
        "shortfall": make_score("shortfall", **progress),
        "stagnation": make_score("stagnation"),
        "ews": make_score("ews"),
        "entropy_low": make_score("entropy_low"),
        # the lander's (x, y) position, recorded as Rollout.states
        "state_stagnation": Deviation(
            Movement(source="states"), side="low", name="state_stagnation"
        ),
    }


def evaluate_seed(
    rollouts: Sequence[Rollout],
    seed: int,
    n_fit: int,
    n_cal: int,
    window_grid: Sequence[int],
    alphas: Sequence[float],
    threshold_styles: Sequence[str] = ("constant", "per_step", "band"),
    rnd_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    detectors: Sequence[str] | None = None,
    progress_epochs: int = 20,
) -> dict[str, Any]:
    """Run the whole protocol for one seed.

    Parameters
    ----------
    rollouts : sequence of Rollout
        All rollouts of the seed (ID and OOD, successes and failures).
    seed : int
        Seeds the split and the RND networks.
    n_fit, n_cal : int
        ID successes used to fit the scores and to calibrate.
    window_grid : sequence of int
        Candidate window sizes (each indicator independently).
    alphas : sequence of float
        Target false-alarm rates.
    threshold_styles : sequence of str
        Candidate threshold styles, chosen on validation together with the windows.
    rnd_kwargs : mapping, optional
        Extra arguments of :class:`failguard.RNDScore`.
    progress : bool
        Show progress bars.
    detectors : sequence of str, optional
        Which detectors (default: all of :data:`DETECTORS` and ``fg.select``'s choice).
    progress_epochs : int
        Epochs of the progress networks.

    Returns
    -------
    dict
        Split sizes, and per α and detector: chosen windows, validation metrics, test metrics
        (also without the clock).
    """
    from tqdm import tqdm

    split = split_rollouts(rollouts, n_fit, n_cal, seed)
    t_max = max(len(r) for r in rollouts)
    base = make_scores(seed, rnd_kwargs, progress_epochs)
    if split.fit[0].states is None:  # rollouts recorded before the benchmark kept positions
        del base["state_stagnation"]
    for s in base.values():
        s.fit(split.fit, progress=progress)
    cached = {k: CachedScore(v) for k, v in base.items()}
    result: dict[str, Any] = {"seed": seed, "split": split.sizes(), "t_max": t_max, "alpha": {}}
    names_all = list(detectors) if detectors is not None else [*DETECTORS, SELECT]
    jobs = [(a, name) for a in alphas for name in names_all]
    for alpha, name in tqdm(jobs, desc=f"seed {seed}: validation search", disable=not progress):
        if name == SELECT:
            result["alpha"].setdefault(str(alpha), {})[name] = _run_select(
                cached, split, alpha, window_grid, threshold_styles, t_max, seed
            )
            continue
        spec = DETECTORS[name]
        names = spec.scores
        if any(n not in cached for n in names):
            continue
        fixed: dict[str, int] = {}
        if spec.base is not None:
            base_entry = result["alpha"].get(str(alpha), {}).get(spec.base, {})
            if "windows" not in base_entry:
                continue  # its base could not be calibrated at this alpha
            fixed = dict(base_entry["windows"])
        grids = [[fixed[n]] if n in fixed else list(window_grid) for n in names]
        candidates = [
            (style, wins, k)
            for style in threshold_styles
            for wins in itertools.product(*grids)
            for k in (spec.ks or (None,))
        ]
        # the library's validated selection (fg.select) over this detector's grid: each
        # candidate is compared on validation only (2-fold cross-fitted thresholds), the
        # winner is calibrated on the calibration split
        templates = [
            _detector(cached, names, wins, style, alpha, seed, k) for style, wins, k in candidates
        ]
        try:
            det = fg_select(
                split.fit,
                split.calibration,
                split.validation,
                alpha=alpha,
                candidates=templates,
                criterion="twa",
                random_state=seed,
            )
        except CalibrationError as err:  # too few validation successes for its folds
            result["alpha"].setdefault(str(alpha), {})[name] = {"error": str(err)}
            continue
        style, wins, k = candidates[det.selection_.chosen]
        val = dict(det.selection_.best["metrics"])
        test = _summarise(evaluate(det, split.test, t_max=t_max))
        result["alpha"].setdefault(str(alpha), {})[name] = {
            "windows": dict(zip(names, (int(w) for w in wins), strict=True)),
            "threshold": style,
            "k": k,
            "validation": val,
            "selection": det.selection_.reason,
            "test": test,
        }
    result["monitor_replay_matches"] = _check_streaming(base, split, min(alphas), window_grid)
    rnd = base["rnd"]
    result["rnd"] = {
        "parameters": int(rnd.n_parameters) if hasattr(rnd, "n_parameters") else None,
        "best_epoch": int(getattr(rnd, "best_epoch_", -1)),
    }
    return result


def _run_select(
    cached: Mapping[str, BaseScore],
    split: Split,
    alpha: float,
    window_grid: Sequence[int],
    threshold_styles: Sequence[str],
    t_max: int,
    seed: int,
) -> dict[str, Any]:
    """``fg.select`` on fit / calibration / validation; its choice evaluated once on test.

    The candidates: every library indicator alone, FIPER, and FIPER plus each new leg fused
    by OR or 2-of-3, over select's default windows (5, 10, 20; one per candidate, shared by its
    legs) and thresholds (constant, per-step). ``select`` compares them on validation only (2-fold
    cross-fitted thresholds), then calibrates the winner on the calibration split.
    """
    from failguard.calibration.selection import candidate_grid

    pool = tuple(n for n in ("rnd", "entropy", *NEW_SCORES) if n in cached)
    legs = {n: cached[n] for n in pool}
    structures: list[tuple[list[str], str]] = [([n], "and") for n in pool]
    structures.append((["rnd", "entropy"], "and"))
    for n in pool[2:]:
        structures += [(["rnd", "entropy", n], "or"), (["rnd", "entropy", n], "2-of-3")]
    # select's own default grid (windows 5, 10, 20; constant and per-step thresholds)
    grid = candidate_grid(legs, structures, random_state=seed)
    try:
        det = fg_select(
            split.fit, split.calibration, split.validation, alpha=alpha, candidates=grid
        )
    except CalibrationError as err:  # too few validation successes for its folds
        return {"error": str(err)}
    test = _summarise(evaluate(det, split.test, t_max=t_max))
    sel = det.selection_
    return {
        "windows": {k: int(v) for k, v in det.windows.items()},
        "threshold": det.threshold,
        "scores": list(det.names),
        "combine": det.combine,
        "k": None,
        "criterion": sel.criterion,
        "reason": sel.reason,
        "validation": sel.best.get("metrics", {}),
        "test": test,
    }


def _check_streaming(
    base: Mapping[str, BaseScore], split: Split, alpha: float, window_grid: Sequence[int]
) -> bool:
    """Replay a few test rollouts through the streaming Monitor; compare with the batch path."""
    w = int(window_grid[len(window_grid) // 2])
    # the scores are fitted already: wrap them so the detector does not train RND again
    det = FailureDetector(
        scores=[CachedScore(base["rnd"]), CachedScore(base["entropy"])], windows=w, alpha=alpha
    )
    det.fit(split.fit, progress=False).calibrate(split.calibration)
    ok = True
    for r in split.test[:: max(1, len(split.test) // 5)]:
        trace = det.score(r)
        mon = det.monitor()
        mon.reset()
        assert r.action_logits is not None
        alarms = [
            mon.step(embedding=r.embeddings[t], action_logits=r.action_logits[t]).alarm
            for t in range(len(r))
        ]
        ok = ok and bool(np.array_equal(np.asarray(alarms), trace.alarm))
    return ok
