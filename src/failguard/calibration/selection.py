"""Validated selection: choose indicators, windows, threshold style and fusion on validation.

:func:`select` fits every candidate's scores once on the fit rollouts, compares the
candidates on **validation** rollouts only, then calibrates the winner on the calibration
rollouts. Nothing is chosen on calibration (or test) data, so the conformal guarantee of the
returned detector is exactly that of a detector configured by hand.

How candidates are compared without touching the calibration set: the *reference*
validation successes (those from the calibration rollouts' groups; every success when the
rollouts carry no groups) are split in two halves; each candidate is calibrated on one half and
scored on the other half, the validation failures and the validation successes from other
groups (benign shifts), and then the other way round (2-fold cross-fitting). The criterion is
averaged over both folds. Successes under a shift never calibrate a fold: the deployed
thresholds come from in-distribution successes only, so thresholds set on shifted successes
would compare the candidates at alarm levels that deployment never uses.

A candidate whose calibration needs more successes at ``alpha`` than a half holds (see
:func:`~failguard.calibration.plan`: per-step thresholds, OR votes and PAC guarantees need
more) has its folds calibrated at the smallest level its halves allow, up to
``MAX_FOLD_ALPHA`` = 0.5 (recorded as its ``fold_alpha``); beyond that, or when the calibration
set itself is too small for it at ``alpha``, it is left out with the reason. This only affects
the comparison: the chosen detector is calibrated at ``alpha`` on the calibration set.

Criteria (``criterion=``):

``"twa"`` (the default when validation has failures)
    Timestep-wise accuracy: ½ (mean over failures of 1 - detection time (0 if missed) + TNR).
``"balanced_accuracy"``
    ½ (TPR + TNR).
``"synthetic"`` (the default when validation has successes only)
    Needs no failure at all. Each held-out validation success is turned into three
    pseudo-failures from a random onset in its first half on: *freeze* (every input held at
    its onset value: a stuck policy), *drift* (the embedding drifts off by up to 3 standard
    deviations: novel inputs) and *scatter* (sampled actions spread out, or action logits
    flatten: an uncertain policy). The criterion is the TWA of the held-out successes against
    those pseudo-failures, which keep the success's length, so the clock cannot help. It
    says which detectors see generic deviations of these three kinds; it cannot know which
    kinds of failure a real deployment has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core.kernel import split_indices
from ..detector import FailureDetector
from ..exceptions import CalibrationError, ConfigError, RolloutError
from ..metrics import metrics_from_traces
from ..scores import (
    ActionChunkEntropy,
    BaseScore,
    CachedScore,
    ChunkConsistency,
    Deviation,
    DiscreteActionEntropy,
    Movement,
    ProgressScore,
    RNDScore,
)
from ..types import Rollout

__all__ = [
    "CRITERIA",
    "SelectionReport",
    "candidate_grid",
    "default_candidates",
    "pseudo_failures",
    "select",
]

CRITERIA = ("auto", "twa", "balanced_accuracy", "synthetic")
#: Highest level a candidate's validation folds may be relaxed to when its halves are small.
#: At the smallest feasible level every relaxed threshold is about the largest score of the
#: half, whatever the candidate, so relaxed candidates are compared on a like footing; a low
#: cap would instead drop exactly the candidates that need many successes (OR votes, per-step
#: thresholds) and bias the choice towards AND.
MAX_FOLD_ALPHA = 0.5


@dataclass
class SelectionReport:
    """What :func:`select` compared and why it chose what it chose.

    Attributes
    ----------
    criterion : str
        ``"twa"``, ``"balanced_accuracy"`` or ``"synthetic"`` (see the module docstring).
    reason : str
        One sentence: the criterion and why it was used.
    n_validation_successes, n_validation_failures : int
    candidates : list of dict
        One per candidate: ``label``, ``params``, ``value`` (the criterion, mean over folds;
        None if it could not be calibrated on half the validation successes), ``metrics``
        (TPR, TNR, balanced accuracy, TWA, mean over folds), ``fold_alpha`` (the level its
        folds were calibrated at) and ``error``.
    chosen : int
        Index of the chosen candidate.
    """

    criterion: str
    reason: str
    n_validation_successes: int
    n_validation_failures: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    chosen: int = -1

    @property
    def best(self) -> dict[str, Any]:
        """The chosen candidate's entry."""
        return self.candidates[self.chosen]

    def table(self, top: int = 10) -> str:
        """The ``top`` candidates by criterion, best first, as plain text."""
        ranked = sorted(
            (c for c in self.candidates if c["value"] is not None),
            key=lambda c: -c["value"],
        )[:top]
        lines = [f"{self.reason}", f"{'criterion':>9}  candidate"]
        lines += [f"{c['value']:9.3f}  {c['label']}" for c in ranked]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return {
            "criterion": self.criterion,
            "reason": self.reason,
            "n_validation_successes": self.n_validation_successes,
            "n_validation_failures": self.n_validation_failures,
            "chosen": self.chosen,
            "candidates": self.candidates,
        }


def _label(det: FailureDetector) -> str:
    windows = sorted(set(det.windows.values()))
    w = str(windows[0]) if len(windows) == 1 else str(det.windows)
    legs = "+".join(det.names)
    fusion = "" if len(det.names) == 1 else f" {det.combine}"
    joint = " joint" if det.calibration == "joint" and len(det.names) > 1 else ""
    return f"{legs}{fusion}{joint} w={w} {det.threshold}"


def candidate_grid(
    legs: Mapping[str, BaseScore],
    structures: Sequence[tuple[Sequence[str], str]],
    windows: Sequence[int] = (5, 10, 20),
    thresholds: Sequence[str] = ("constant", "per_step"),
    **params: Any,
) -> list[FailureDetector]:
    """Candidate detectors over a grid; candidates share the score objects in ``legs``.

    Parameters
    ----------
    legs : mapping name -> score
        Unfitted scores by a short name (the score's own ``name`` is used by the detector).
    structures : sequence of (leg names, combine)
        E.g. ``[(["rnd"], "and"), (["rnd", "ace"], "and"), (["rnd", "ace", "progress"],
        "2-of-3")]``.
    windows : sequence of int
        Each structure is tried with every window (the same for all its legs).
    thresholds : sequence of str
        Threshold styles to try.
    **params
        Other :class:`~failguard.FailureDetector` parameters for every candidate.

    Examples
    --------
    >>> legs = {"rnd": RNDScore(), "ace": ActionChunkEntropy()}
    >>> grid = candidate_grid(legs, [(["rnd"], "and"), (["rnd", "ace"], "and")], windows=(5, 10))
    >>> len(grid), grid[0].scores[0] is grid[-1].scores[0]
    (8, True)
    """
    out = []
    for names, combine in structures:
        scores = [legs[n] for n in names]
        for style in thresholds:
            for w in windows:
                out.append(
                    FailureDetector(
                        scores=scores, windows=w, combine=combine, threshold=style, **params
                    )
                )
    return out


def default_candidates(
    example: Rollout,
    windows: Sequence[int] = (5, 10, 20),
    thresholds: Sequence[str] = ("constant", "per_step"),
    seed: int = 0,
    exec_horizon: int | None = None,
    epochs: int | None = None,
) -> list[FailureDetector]:
    """The default search space of :func:`select` for rollouts shaped like ``example``.

    Legs: RND-OE; ACE (continuous chunks) or the action entropy (discrete agents), each also
    two-sided (:class:`~failguard.scores.Deviation`); progress (:class:`ProgressScore`);
    stagnation (``Deviation(Movement(), side="low")``), also of the physical state when
    ``example`` has ``states``; chunk consistency (chunks only).
    Structures: every leg alone, FIPER (RND AND entropy), and FIPER plus each new leg,
    fused by 2-of-3 voting or OR.

    Parameters
    ----------
    example : Rollout
        Decides which legs apply (chunks, logits or sampled ids).
    windows, thresholds : sequences
        As in :func:`candidate_grid`.
    seed : int, default=0
        Seeds the learned scores.
    exec_horizon : int, optional
        Actions executed per policy step, for chunk consistency (default H // 2).
    epochs : int, optional
        Training epochs of RND (its ``max_epochs``) and of the progress model (default:
        theirs).
    """
    rnd = RNDScore(seed=seed) if epochs is None else RNDScore(seed=seed, max_epochs=epochs)
    progress = (
        ProgressScore(seed=seed) if epochs is None else ProgressScore(seed=seed, epochs=epochs)
    )
    legs: dict[str, BaseScore] = {"rnd": rnd}
    entropy: BaseScore | None = None
    if example.action_samples is not None:
        entropy = ActionChunkEntropy()
    elif example.action_logits is not None:
        entropy = DiscreteActionEntropy()
    elif example.action_ids is not None:
        entropy = DiscreteActionEntropy(source="samples")
    new: list[str] = []
    if entropy is not None:
        legs["entropy"] = entropy
        legs["entropy_z"] = Deviation(type(entropy)(**_entropy_params(entropy)), side="both")
        new.append("entropy_z")
    legs["progress"] = progress
    legs["stagnation"] = Deviation(Movement(lag=5), side="low")
    new += ["progress", "stagnation"]
    if example.states is not None:
        legs["state_stagnation"] = Deviation(Movement(lag=5, source="states"), side="low")
        new.append("state_stagnation")
    if example.action_samples is not None and example.action_samples.shape[2] >= 2:
        h = example.action_samples.shape[2]
        e = exec_horizon if exec_horizon is not None else max(1, h // 2)
        legs["consistency"] = ChunkConsistency(exec_horizon=min(e, h - 1))
        new.append("consistency")
    structures: list[tuple[Sequence[str], str]] = [([n], "and") for n in legs]
    if entropy is not None:
        structures.append((["rnd", "entropy"], "and"))
        for n in new:
            structures.append((["rnd", "entropy", n], "2-of-3"))
            structures.append((["rnd", "entropy", n], "or"))
    return candidate_grid(legs, structures, windows, thresholds)


def _entropy_params(score: BaseScore) -> dict[str, Any]:
    if isinstance(score, DiscreteActionEntropy):
        return {"source": score.source}
    assert isinstance(score, ActionChunkEntropy)
    return {
        "dims": score.dims,
        "cell_factor": score.cell_factor,
        "integrate_dt": score.integrate_dt,
    }


def _ramp(n: int, onset: int, rise: int) -> NDArray[np.float64]:
    return np.clip((np.arange(n) - onset) / max(rise, 1), 0.0, 1.0)


def pseudo_failures(
    rollouts: Sequence[Rollout], rng: np.random.Generator
) -> list[tuple[int, Rollout]]:
    """Freeze, drift and scatter pseudo-failures of successful rollouts (see module docstring).

    Returns
    -------
    list of (index of the source rollout, pseudo-failure)
    """
    emb = np.concatenate([r.embeddings for r in rollouts]).astype(np.float64)
    emb_std = emb.std(axis=0) + 1e-12
    act_std = None
    chunks = [r.action_samples for r in rollouts if r.action_samples is not None]
    if chunks:
        a = np.concatenate([c.reshape(-1, c.shape[-1]) for c in chunks])
        act_std = a.std(axis=0) + 1e-12
    out: list[tuple[int, Rollout]] = []
    for i, r in enumerate(rollouts):
        n = len(r)
        onset = int(rng.integers(n // 4, max(n // 4 + 1, n // 2)))
        fields: dict[str, Any] = {
            f: getattr(r, f)
            for f in (
                "action_samples",
                "action_logits",
                "action_ids",
                "executed_actions",
                "states",
            )
            if getattr(r, f) is not None
        }
        frozen: dict[str, Any] = {}
        for f, v in {"embeddings": r.embeddings, **fields}.items():
            x = np.array(v, copy=True)
            x[onset:] = x[onset]
            frozen[f] = x
        out.append((i, Rollout(**frozen, success=False, group="synthetic-freeze")))
        ramp = _ramp(n, onset, n // 5)
        u = rng.normal(size=emb_std.shape[0])
        u *= np.sqrt(u.shape[0]) / np.linalg.norm(u)
        drift = r.embeddings + (3.0 * ramp[:, None] * u * emb_std).astype(np.float32)
        out.append((i, Rollout(drift, **fields, success=False, group="synthetic-drift")))
        scattered = dict(fields)
        if act_std is not None and r.action_samples is not None:
            noise = rng.normal(size=r.action_samples.shape) * act_std
            scattered["action_samples"] = r.action_samples + (
                0.5 * ramp[:, None, None, None] * noise
            ).astype(np.float32)
        if r.action_logits is not None:
            scattered["action_logits"] = r.action_logits * (1.0 - 0.9 * ramp[:, None])
        if r.action_ids is not None:
            k = int(r.action_ids.max()) + 1
            swap = rng.random(r.action_ids.shape) < 0.5 * ramp[:, None]
            scattered["action_ids"] = np.where(
                swap, rng.integers(0, k, r.action_ids.shape), r.action_ids
            )
        out.append(
            (i, Rollout(r.embeddings, **scattered, success=False, group="synthetic-scatter"))
        )
    return out


def _fold_level(
    scores: Sequence[BaseScore], params: Mapping[str, Any], n_half: int, n_calibration: int
) -> tuple[float | None, str | None]:
    """The level at which a candidate's validation folds are calibrated, or why it cannot be.

    ``params["alpha"]`` if a half of ``n_half`` reference successes suffices at it; else the
    smallest level up to :data:`MAX_FOLD_ALPHA` that does (bisection on the count that
    :meth:`FailureDetector.calibration_plan` gives, which falls as the level rises).
    """
    alpha = float(params["alpha"])

    def needed(level: float) -> int:
        det = FailureDetector(scores=list(scores), **{**params, "alpha": level})
        return det.calibration_plan().n_required

    if needed(alpha) > n_calibration:
        return None, (
            f"needs {needed(alpha)} calibration successes at alpha={alpha:g}; the calibration "
            f"set has {n_calibration}"
        )
    if needed(alpha) <= n_half:
        return alpha, None
    top = max(alpha, MAX_FOLD_ALPHA)
    if needed(top) > n_half:
        return None, (
            f"its folds need more than {n_half} reference validation successes a half even "
            f"at alpha={top:g}"
        )
    lo, hi = alpha, top
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        if needed(mid) <= n_half:
            hi = mid
        else:
            lo = mid
    return hi, None


def _labelled(rollouts: Sequence[Rollout], where: str) -> None:
    unknown = [i for i, r in enumerate(rollouts) if r.success is None]
    if unknown:
        raise RolloutError(
            f"select: {where} rollout {unknown[0]} (and {len(unknown) - 1} more) has no "
            "success label; validation rollouts must say whether they succeeded."
        )


def select(
    fit: Sequence[Rollout],
    calibration: Sequence[Rollout],
    validation: Sequence[Rollout],
    alpha: float = 0.05,
    candidates: Sequence[FailureDetector] | None = None,
    criterion: str = "auto",
    random_state: int = 0,
    progress: bool = False,
) -> FailureDetector:
    """Choose a detector on validation rollouts, then calibrate it on the calibration set.

    Parameters
    ----------
    fit : sequence of Rollout
        Successful rollouts that fit the scores (each distinct score object once).
    calibration : sequence of Rollout
        Other successful rollouts; only the chosen detector sees them.
    validation : sequence of Rollout
        Labelled rollouts, disjoint from both: successes, and failures if you have any.
    alpha : float, default=0.05
        The returned detector's alpha (every candidate is compared at it).
    candidates : sequence of FailureDetector, optional
        Unfitted templates (:func:`candidate_grid` builds grids that share score objects);
        default :func:`default_candidates` for rollouts like ``fit[0]``.
    criterion : {"auto", "twa", "balanced_accuracy", "synthetic"}, default="auto"
        ``"auto"``: ``"twa"`` if validation has failures, else ``"synthetic"``.
    random_state : int, default=0
        Seeds the validation folds and the pseudo-failures.
    progress : bool, default=False

    Returns
    -------
    FailureDetector
        Fitted and calibrated; ``detector.selection_`` is the :class:`SelectionReport`.

    Raises
    ------
    CalibrationError
        If no candidate can be calibrated on half of the validation successes at ``alpha``
        (the message says how many validation successes are needed).

    Examples
    --------
    >>> from failguard import FailureDetector, RNDScore, ActionChunkEntropy, Movement
    >>> from failguard.synthetic import make_rollouts
    >>> fit, cal = make_rollouts(10, seed=0, length=30), make_rollouts(30, seed=1, length=30)
    >>> val = make_rollouts(40, seed=2, length=30) + make_rollouts(10, "stuck", 3, length=30)
    >>> legs = {"rnd": RNDScore(max_epochs=3), "ace": ActionChunkEntropy(),
    ...         "still": Deviation(Movement(), side="low")}
    >>> grid = candidate_grid(legs, [(["rnd", "ace"], "and"), (["still"], "and")], windows=(5,))
    >>> det = select(fit, cal, val, alpha=0.1, candidates=grid)
    >>> det.selection_.criterion, det.names
    ('twa', ['movement_low'])
    """
    if criterion not in CRITERIA:
        raise ConfigError(
            f"The 'criterion' parameter of select must be one of {CRITERIA}. "
            f"Got {criterion!r} instead."
        )
    fit, calibration, validation = list(fit), list(calibration), list(validation)
    if not fit or not calibration or not validation:
        raise RolloutError("select: fit, calibration and validation rollouts are all needed.")
    _labelled(validation, "validation")
    succ = [r for r in validation if r.success]
    fails = [r for r in validation if not r.success]
    if criterion == "auto":
        criterion = "twa" if fails else "synthetic"
    if criterion in ("twa", "balanced_accuracy") and not fails:
        raise RolloutError(
            f"select: criterion={criterion!r} needs failed validation rollouts, and there are "
            "none; use criterion='synthetic' (or 'auto')."
        )
    if len(succ) < 2:
        raise RolloutError("select: validation needs at least 2 successful rollouts.")
    cal_groups = {r.group for r in calibration}
    reference = [r for r in succ if r.group in cal_groups]
    shifted = [r for r in succ if r.group not in cal_groups]
    if len(reference) < 2:  # validation successes share no group with calibration: use them all
        reference, shifted = succ, []
    rng = np.random.default_rng(random_state)
    first, second = split_indices(len(reference), len(reference) // 2, rng)
    n_half = min(len(first), len(second))
    folds_on = f"2-fold cross-fitted thresholds on {len(reference)} reference successes"
    if shifted:
        folds_on += f" from the calibration groups, {len(shifted)} shifted successes held out"
    reason = {
        "twa": f"criterion: TWA on {len(fails)} validation failures and held-out validation "
        f"successes ({folds_on})",
        "balanced_accuracy": f"criterion: balanced accuracy on {len(fails)} validation "
        f"failures and held-out validation successes ({folds_on})",
        "synthetic": "criterion: TWA against freeze/drift/scatter pseudo-failures of held-out "
        "validation successes (no failed validation rollouts"
        + (" used" if fails else " given")
        + f"; {folds_on})",
    }[criterion]
    if candidates is None:
        candidates = default_candidates(fit[0], seed=random_state)
    candidates = list(candidates)
    if not candidates:
        raise ConfigError("select: no candidates given.")

    # Fit every distinct score object once; cache its per-rollout scores.
    from tqdm.auto import tqdm

    cached: dict[int, CachedScore] = {}
    for template in candidates:
        for s in template.scores:
            if id(s) not in cached:
                cached[id(s)] = CachedScore(s if s.is_fitted else s.fit(fit, progress=progress))

    folds = [
        ([reference[i] for i in first], [reference[i] for i in second] + shifted),
        ([reference[i] for i in second], [reference[i] for i in first] + shifted),
    ]
    pseudo: list[tuple[int, Rollout]] = []
    if criterion == "synthetic":
        pseudo = pseudo_failures(succ, rng)
    source_of = {id(r): i for i, r in enumerate(succ)}
    t_max = max(len(r) for r in validation)

    report = SelectionReport(criterion, reason, len(succ), len(fails))
    key_best: tuple[float, ...] | None = None
    for ci, template in enumerate(tqdm(candidates, desc="select", disable=not progress)):
        params = {**template.get_params(), "alpha": alpha}
        scores = [cached[id(s)] for s in template.scores]
        fold_alpha, error = _fold_level(scores, params, n_half, len(calibration))
        det = FailureDetector(scores=scores, **{**params, "alpha": fold_alpha or alpha})
        det.fitted_state.record_fit(fit)
        values: list[float] = []
        metrics: list[dict[str, float]] = []
        for cal_part, held in folds if error is None else []:
            try:
                det.calibrate(cal_part)
            except CalibrationError as err:
                error = str(err)
                break
            if criterion == "synthetic":
                held_ids = {source_of[id(r)] for r in held}
                negatives = [p for i, p in pseudo if i in held_ids]
            else:
                negatives = fails
            m = metrics_from_traces(det.traces(held + negatives), t_max, None)
            metrics.append(m)
            values.append(m["balanced_accuracy" if criterion == "balanced_accuracy" else "twa"])
        entry: dict[str, Any] = {
            "label": _label(det),
            "names": det.names,
            "params": params,
            "value": None,
            "metrics": {},
            "fold_alpha": fold_alpha,
            "error": error,
        }
        if error is None and any(math.isnan(v) for v in values):
            error = "the criterion is undefined on this validation set"
        if error is None:
            entry["value"] = float(np.mean(values))
            entry["metrics"] = {
                k: float(np.mean([m[k] for m in metrics]))
                for k in ("tpr", "tnr", "balanced_accuracy", "twa", "detection_time")
            }
            key = (
                entry["value"],
                entry["metrics"]["balanced_accuracy"],
                -len(det.names),
                -sum(det.windows.values()),
            )
            if key_best is None or key > key_best:
                key_best, report.chosen = key, ci
        report.candidates.append(entry)
    if report.chosen < 0:
        need = next((c["error"] for c in report.candidates if c["error"]), "")
        raise CalibrationError(
            f"select: no candidate could be compared on halves of the {len(reference)} "
            f"reference validation successes at alpha={alpha:g} ({need}). Give select more "
            "validation successes (twice what one calibration needs) or raise alpha."
        )
    best = candidates[report.chosen]
    chosen = FailureDetector(
        scores=[cached[id(s)].inner for s in best.scores],
        **report.candidates[report.chosen]["params"],
    )
    chosen.fitted_state.record_fit(fit)
    chosen.calibrate(calibration)
    chosen.fitted_state.selection = report
    return chosen
