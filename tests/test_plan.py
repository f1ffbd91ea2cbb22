"""``plan`` gives exactly the number that ``calibrate`` asks for, for every option."""

from __future__ import annotations

import itertools

import pytest

from failguard import ActionChunkEntropy, DiscreteActionEntropy, FailureDetector, plan
from failguard.exceptions import CalibrationError
from failguard.synthetic import make_rollouts

KW = {"length": 8, "embedding_dim": 4, "n_samples": 8, "horizon": 2, "action_dim": 2}


@pytest.fixture(scope="module")
def pool():
    a = make_rollouts(130, seed=50, n_discrete=4, **KW)
    b = [r.replace(group="b") for r in make_rollouts(130, seed=51, n_discrete=4, **KW)]
    # Mondrian: the groups alternate, so the first 2n rollouts hold n of each.
    return [r for pair in zip(a, b, strict=True) for r in pair]


@pytest.fixture(scope="module")
def fitted(pool):
    fit_set = make_rollouts(4, seed=49, n_discrete=4, **KW)
    return {
        k: FailureDetector(
            scores=[ActionChunkEntropy(), DiscreteActionEntropy()][:k], alpha=0.2
        ).fit(fit_set, progress=False)
        for k in (1, 2)
    }


def _check(det: FailureDetector, pool, planned: int) -> None:
    assert det.calibration_plan().n_required == planned
    per = 2 if det.mondrian else 1
    with pytest.raises(CalibrationError, match=rf"needs at least {planned} "):
        det.calibrate(pool[: per * planned - per])
    det.calibrate(pool[: per * planned])


GRID = list(
    itertools.product(
        (1, 2),  # indicators
        ("constant", "per_step", "band"),
        ("and", "or"),
        ("auto", "per_indicator", "joint"),
        (None, 0.2),  # delta: marginal or PAC
    )
)


@pytest.mark.parametrize(("k", "style", "combine", "calibration", "delta"), GRID)
def test_plan_matches_calibrate(fitted, pool, k, style, combine, calibration, delta):
    alpha = 0.2
    planned = plan(
        alpha, delta, threshold=style, n_indicators=k, combine=combine, calibration=calibration
    ).n_required
    det = fitted[k].with_params(
        alpha=alpha,
        threshold=style,
        combine=combine,
        calibration=calibration,
        guarantee="marginal" if delta is None else "pac",
        delta=delta or 0.1,
    )
    _check(det, pool, planned)


@pytest.mark.parametrize(
    "options",
    [
        {"split": 0.3, "threshold": "band"},
        {"split": 0.7, "threshold": "per_step", "combine": "or"},
        {"mondrian": True},
        {"mondrian": True, "threshold": "per_step", "delta": 0.2},
        {"mode": "reference", "threshold": "band"},
        {"mode": "reference"},
    ],
)
def test_plan_matches_calibrate_other_options(fitted, pool, options):
    options = dict(options)
    delta = options.pop("delta", None)
    style = options.pop("threshold", "constant")
    combine = options.pop("combine", "and")
    planned = plan(0.2, delta, threshold=style, combine=combine, **options).n_required
    det = fitted[2].with_params(
        alpha=0.2,
        threshold=style,
        combine=combine,
        guarantee="marginal" if delta is None else "pac",
        delta=delta or 0.1,
        **options,
    )
    if det.mode == "reference":
        assert det.calibration_plan().n_required == planned
        det.calibrate(pool[:planned])  # the reference code checks nothing more
        if planned > 1:
            with pytest.raises(CalibrationError):
                det.calibrate(pool[: planned - 1])
        return
    _check(det, pool, planned)


def test_pac_auto_counts_the_joint_split():
    assert plan(0.1, delta=0.1).n_required == 44
    assert plan(0.1, delta=0.1, calibration="per_indicator").n_required == 22
    assert plan(0.1, delta=0.1, joint=False).n_required == 22
    assert "in every group" in plan(0.1, mondrian=True).explanation
