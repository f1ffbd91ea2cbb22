"""Conformal calibration: exact ranks, planning, PAC control, and the guarantee, statistically.

The guarantee tests draw synthetic *windowed* score curves (non-stationary in time, with a
random per-rollout level and random lengths), calibrate on some, and measure the episode-
level false-alarm rate on fresh ones with a direct comparison η(t) > γ(t), independent of
the normalised statistics the calibrator uses. The same harness applied to the reference
code's choices (no n+1, raw per-step quantile, lower-band sign) must detect the violation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from failguard import CalibrationError, plan
from failguard.calibration import (
    CalibrationSettings,
    calibrate_thresholds,
    conformal_quantile,
    conformal_rank,
    extend_table,
    false_alarm_rate,
    min_calibration_size,
    min_pac_calibration_size,
    pac_quantile,
)
from failguard.synthetic import make_score_curves

ALPHA = 0.1
N_SEEDS = 500


def curves(rng: np.random.Generator, n: int, lengths: list[int] | None = None) -> list[np.ndarray]:
    return make_score_curves(rng, n, lengths)


def realised_far(style: str, mode: str = "corrected", n_cal: int = 40, n_seeds: int = N_SEEDS):
    est = false_alarm_rate(
        CalibrationSettings(style=style, alpha=ALPHA, mode=mode), curves, n_cal, 100, n_seeds
    )
    return est.far, est.se


@pytest.mark.parametrize("style", ["constant", "per_step", "band"])
def test_episode_false_alarm_rate_is_bounded(style):
    far, se = realised_far(style)
    assert far <= ALPHA + 3 * se, f"{style}: FAR {far:.4f} > alpha + 3 SE ({ALPHA + 3 * se:.4f})"
    # Not vacuous: the threshold is not absurdly conservative either.
    assert far > ALPHA / 4


@pytest.mark.parametrize(
    ("style", "n_cal"),
    [("band", 40), ("per_step", 40), ("constant", 20)],
    ids=["reversed-band-sign", "raw-per-step-quantile", "no-n-plus-1"],
)
def test_reference_calibration_breaks_the_guarantee(style, n_cal):
    """The same harness catches each of the reference code's flaws."""
    far, se = realised_far(style, mode="reference", n_cal=n_cal, n_seeds=300)
    assert far > ALPHA + 3 * se, f"reference {style}: FAR {far:.4f} unexpectedly within bound"


def test_constant_threshold_is_the_conformal_order_statistic():
    rng = np.random.default_rng(3)
    cal = curves(rng, 30)
    res = calibrate_thresholds({"s": cal}, CalibrationSettings(alpha=ALPHA), rng)
    maxima = sorted(float(c.max()) for c in cal)
    k = math.ceil(31 * 0.9)  # 28
    assert res.tables["s"][0] == maxima[k - 1]
    # Same as the inverted-CDF quantile at level k/n, computed by numpy.
    assert res.tables["s"][0] == np.quantile(maxima, k / 30, method="inverted_cdf")


def test_conformal_rank_edges():
    assert conformal_rank(9, 0.1) == 9
    assert conformal_rank(19, 0.05) == 19
    with pytest.raises(CalibrationError, match="at least 19"):
        conformal_rank(18, 0.05)
    with pytest.raises(ValueError, match="range \\(0, 1\\)"):
        conformal_rank(10, 1.5)
    for a in (0.01, 0.05, 0.1, 0.2, 0.33):
        n = min_calibration_size(a)
        conformal_rank(n, a)
        with pytest.raises(CalibrationError):
            conformal_rank(n - 1, a)
    assert conformal_quantile(np.arange(10.0), 0.1) == 9.0


def test_too_few_rollouts_names_the_number():
    rng = np.random.default_rng(0)
    with pytest.raises(CalibrationError, match="needs at least 37"):
        calibrate_thresholds(
            {"s": curves(rng, 30)}, CalibrationSettings(style="band", alpha=0.05), rng
        )
    assert plan(0.05, threshold="band").n_required == 37
    assert plan(0.05).n_required == 19
    assert plan(0.05, combine="or", n_indicators=2).n_required == 39


def test_pac_control_over_seeds():
    """P(true FAR > alpha) <= delta, the true FAR from a large fresh reference sample."""
    delta, n_seeds = 0.1, 200
    ref = np.array([c.max() for c in curves(np.random.default_rng(10_000), 20_000)])
    bad = 0
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        stats = np.array([c.max() for c in curves(rng, 60)])
        h = pac_quantile(stats, ALPHA, delta)
        bad += float(np.mean(ref > h)) > ALPHA
    rate = bad / n_seeds
    se = math.sqrt(delta * (1 - delta) / n_seeds)
    assert rate <= delta + 3 * se


def test_pac_minimum_size_matches_mapie():
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    for a, d in ((0.1, 0.1), (0.05, 0.1), (0.05, 0.05)):
        n = min_pac_calibration_size(a, d)
        p = compute_hoeffding_bentkus_p_value(np.array([0.0]), n, a, binary=True)
        p_less = compute_hoeffding_bentkus_p_value(np.array([0.0]), n - 1, a, binary=True)
        assert p[0, 0] <= d < p_less[0, 0]
        pac_quantile(np.random.default_rng(0).random(n), a, d)  # feasible at n
    assert plan(0.1, delta=0.1, calibration="per_indicator").n_required == 22
    assert plan(0.1, delta=0.1).n_required == 44  # 'auto' is joint for PAC: split in two


def test_joint_calibration_and_or_bonferroni():
    rng = np.random.default_rng(5)
    a = curves(rng, 60)
    b = curves(rng, 60, [len(c) for c in a])
    joint = calibrate_thresholds(
        {"a": a, "b": b}, CalibrationSettings(alpha=ALPHA, joint=True), rng
    )
    assert joint.levels["a"] == joint.levels["b"]
    assert "fused" in joint.statistics
    per = calibrate_thresholds(
        {"a": a, "b": b}, CalibrationSettings(alpha=ALPHA, combine="or"), rng
    )
    single = calibrate_thresholds({"a": a}, CalibrationSettings(alpha=ALPHA), rng)
    assert per.tables["a"][0] >= single.tables["a"][0]  # OR: each leg at alpha / 2


@pytest.mark.parametrize("combine", ["and", "or"])
def test_joint_fused_guarantee(combine):
    fars = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        ca = curves(rng, 40)
        cal = {"a": ca, "b": curves(rng, 40, [len(c) for c in ca])}
        res = calibrate_thresholds(
            cal, CalibrationSettings(alpha=ALPHA, joint=True, combine=combine), rng
        )
        test_a = curves(rng, 100)
        test_b = curves(rng, 100, [len(c) for c in test_a])
        hits = []
        for ca, cb in zip(test_a, test_b, strict=True):
            n = ca.shape[0]
            ra = ca[:n] > extend_table(res.tables["a"], n)
            rb = cb[:n] > extend_table(res.tables["b"], n)
            hits.append(np.any(ra & rb) if combine == "and" else np.any(ra | rb))
        fars.append(np.mean(hits))
    far, se = np.mean(fars), np.std(fars, ddof=1) / math.sqrt(len(fars))
    assert far <= ALPHA + 3 * se


def test_time_varying_profiles_stop_where_support_ends():
    rng = np.random.default_rng(0)
    curves_ = [rng.random(10) for _ in range(9)] + [rng.random(100) * 50]
    from failguard.calibration import band_profile, per_step_profile

    assert per_step_profile(curves_, 0.1, min_support=5).scale.shape == (10,)
    assert band_profile(curves_, min_support=5).offset.shape == (10,)
    assert per_step_profile(curves_, 0.1).scale.shape == (100,)  # min_support=1: every step
    # More support demanded than there are curves: use them all.
    assert per_step_profile(curves_[:3], 0.1, min_support=5).scale.shape == (10,)


def _three_legs(rng: np.random.Generator, n: int) -> dict[str, list[np.ndarray]]:
    """Three indicators; the third shares half of its signal with the first."""
    a = curves(rng, n)
    lengths = [len(c) for c in a]
    b = curves(rng, n, lengths)
    c = [0.5 * (x + y) for x, y in zip(a, curves(rng, n, lengths), strict=True)]
    return {"a": a, "b": b, "c": c}


_FUSION_CASES = [
    pytest.param(c, j, n, marks=[pytest.mark.slow] if n > 100 else [])
    for c, j, n in [
        ("2-of-3", False, 80),
        ("2-of-3", True, 80),
        *[(c, j, 300) for c in ("and", "or", "2-of-3") for j in (False, True)],
    ]
]


@pytest.mark.parametrize(("combine", "joint", "n_seeds"), _FUSION_CASES)
def test_every_fusion_rule_keeps_the_guarantee(combine, joint, n_seeds):
    """Episode-level FAR <= alpha for AND, OR and 2-of-3 voting, per indicator and jointly.

    Alarms are counted directly (at least k legs above their own table at the same step),
    independently of the fused statistic the calibrator uses. The default suite runs 2-of-3
    on 80 seeds; ``-m slow`` every rule on 300.
    """
    k = {"and": 3, "or": 1, "2-of-3": 2}[combine]
    fars = []
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        res = calibrate_thresholds(
            _three_legs(rng, 60),
            CalibrationSettings(alpha=ALPHA, joint=joint, combine=combine),
            rng,
        )
        test = _three_legs(rng, 60)
        hits = []
        for i in range(60):
            n = test["a"][i].shape[0]
            above = sum(
                (test[leg][i] > extend_table(res.tables[leg], n)).astype(int) for leg in "abc"
            )
            hits.append(bool(np.any(above >= k)))
        fars.append(np.mean(hits))
    far, se = np.mean(fars), np.std(fars, ddof=1) / math.sqrt(len(fars))
    assert far <= ALPHA + 3 * se, f"{combine}, joint={joint}: FAR {far:.4f}"
    if joint:  # calibrated on the fused statistic itself: close to alpha, not vacuous
        assert far > ALPHA / 2, f"{combine}: FAR {far:.4f} is far below alpha"


def test_vote_levels_per_indicator():
    s = CalibrationSettings(alpha=0.1, combine="2-of-3", delta=0.1)
    assert s.level(3) == pytest.approx((0.2 / 3, 0.1 / 3))
    assert CalibrationSettings(alpha=0.1, combine="3-of-3").level(3) == (0.1, 0.1)
    assert CalibrationSettings(alpha=0.1, combine="or").level(3) == pytest.approx(
        (0.1 / 3, 0.1 / 3)
    )
    with pytest.raises(ValueError, match="k-of-3"):
        CalibrationSettings(alpha=0.1, combine="2-of-2").level(3)
    # the per-leg alpha must come from the rule: calibrating each leg at alpha breaks OR
    fars = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        legs = _three_legs(rng, 60)
        res = calibrate_thresholds(legs, CalibrationSettings(alpha=ALPHA), rng)  # AND levels
        test = _three_legs(rng, 60)
        hits = [
            any(np.any(test[g][i] > extend_table(res.tables[g], len(test[g][i]))) for g in "abc")
            for i in range(60)
        ]
        fars.append(np.mean(hits))
    assert np.mean(fars) > 1.5 * ALPHA  # so the harness above can see a wrong per-leg alpha


def test_reference_mode_claims_only_what_it_reproduces():
    """Constant and per-step are the reference formulas exactly; the band is not claimed."""
    from pathlib import Path

    from failguard.calibration import CalibrationSettings, calibrate_thresholds

    rng = np.random.default_rng(3)
    cs = [rng.random(int(rng.integers(5, 30))) for _ in range(11)]
    const = calibrate_thresholds(
        {"a": cs}, CalibrationSettings(mode="reference", alpha=0.1), np.random.default_rng(0)
    )
    assert const.tables["a"][0] == np.quantile([c.max() for c in cs], 0.9)
    per_step = calibrate_thresholds(
        {"a": cs},
        CalibrationSettings(mode="reference", alpha=0.1, style="per_step"),
        np.random.default_rng(0),
    )
    stack = np.full((len(cs), max(len(c) for c in cs)), np.nan)
    for i, c in enumerate(cs):
        stack[i, : len(c)] = c
    np.testing.assert_array_equal(per_step.tables["a"], np.nanquantile(stack, 0.9, axis=0))
    root = Path(__file__).resolve().parents[1]
    row = next(ln for ln in (root / "README.md").read_text().splitlines() if "| `mode` |" in ln)
    assert "not its band exactly" in row
    import failguard

    assert "*not* the reference band exactly" in failguard.FailureDetector.__doc__
