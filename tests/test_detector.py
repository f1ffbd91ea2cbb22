"""FailureDetector and Monitor: phases, errors, batch == streaming, persistence."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import make_detector, small_rnd
from failguard import (
    ActionChunkEntropy,
    ArtifactError,
    CalibrationError,
    DiscreteActionEntropy,
    FailureDetector,
    LogpZOScore,
    NotFittedError,
    ParameterError,
    PCAKMeansScore,
    RNDActionScore,
    RNDScore,
    RolloutError,
    STACScore,
)
from failguard.synthetic import make_rollouts


def replay(det, rollout, group=None):
    mon = det.monitor(group=group)
    verdicts = []
    for t in range(len(rollout)):
        kw = {"embedding": rollout.embeddings[t]}
        for field, arg in (
            ("action_samples", "action_samples"),
            ("action_logits", "action_logits"),
            ("action_ids", "action_ids"),
            ("states", "state"),
        ):
            if field in det.requires:
                kw[arg] = getattr(rollout, field)[t]
        verdicts.append(mon.step(**kw))
    return verdicts


def assert_stream_matches_batch(det, rollouts, exact_raw=False):
    for r in rollouts:
        trace = det.score(r)
        verdicts = replay(det, r, group=r.group if det.mondrian else None)
        assert [v.alarm for v in verdicts] == trace.alarm.tolist()
        for name in det.names:
            raw = np.array([v.scores[name] for v in verdicts])
            if exact_raw:
                np.testing.assert_array_equal(raw, trace.scores[name])
            else:
                np.testing.assert_allclose(raw, trace.scores[name], rtol=1e-5, atol=1e-6)
            thr = np.array([v.thresholds[name] for v in verdicts])
            np.testing.assert_array_equal(thr, trace.thresholds[name])
        np.testing.assert_allclose([v.fused_ratio for v in verdicts], trace.fused, rtol=1e-5)


@pytest.mark.parametrize("window_kind", ["sum", "mean", "cumulative"])
@pytest.mark.parametrize("threshold", ["constant", "per_step", "band"])
@pytest.mark.parametrize("combine", ["and", "or"])
def test_streaming_equals_batch(fit_set, cal_set, test_set, window_kind, threshold, combine):
    det = make_detector(
        alpha=0.2,
        window_kind=window_kind,
        threshold=threshold,
        combine=combine,
        windows={"rnd": 4, "ace": 3},
    )
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::3])


@pytest.mark.parametrize("guarantee", ["marginal", "pac"])
def test_streaming_equals_batch_pac_joint_mondrian(fit_set, cal_set, test_set, guarantee):
    det = make_detector(alpha=0.2, guarantee=guarantee, delta=0.2, calibration="joint")
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::4])


@pytest.mark.parametrize("calibration", ["per_indicator", "joint"])
def test_vote_streams_like_batch_and_counts_legs(fit_set, cal_set, test_set, calibration):
    scores = [small_rnd(), ActionChunkEntropy(), DiscreteActionEntropy()]
    det = make_detector(scores=scores, alpha=0.2, combine="2-of-3", calibration=calibration)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::4])
    for tr in det.traces(test_set):
        above = sum((r > 1.0).astype(int) for r in tr.ratios.values())
        np.testing.assert_array_equal(tr.alarm, above >= 2)
    if calibration == "per_indicator":  # each leg at k * alpha / n
        assert det.settings.level(3) == pytest.approx((0.2 * 2 / 3, 0.1 / 3))
    with pytest.raises(ValueError, match="'combine' parameter"):
        make_detector(scores=[small_rnd(), ActionChunkEntropy()], combine="2-of-3")


def test_entropy_and_baseline_scores_stream_exactly(fit_set, cal_set, test_set):
    """Scores without matrix products (entropies, STAC) agree bit for bit."""
    det = make_detector(
        alpha=0.2,
        scores=[
            ActionChunkEntropy(),
            STACScore(exec_horizon=3),
            DiscreteActionEntropy("logits"),
            DiscreteActionEntropy("samples"),
        ],
        combine="or",
    )
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::3], exact_raw=True)


def test_learned_baselines_stream(fit_set, cal_set, test_set):
    det = make_detector(
        alpha=0.2,
        scores=[PCAKMeansScore(n_clusters=4), LogpZOScore(epochs=2), RNDActionScore(max_epochs=2)],
        combine="or",
    )
    det.fit(fit_set, progress=False).calibrate(cal_set)
    assert_stream_matches_batch(det, test_set[::5])


def test_mondrian_thresholds_per_group(fit_set):
    cal = make_rollouts(30, seed=11, length=40) + make_rollouts(
        30, kind="ood_benign", seed=12, length=40
    )
    det = make_detector(alpha=0.2, mondrian=True).fit(fit_set, progress=False).calibrate(cal)
    assert set(det.group_calibration_) == {"id", "ood"}
    assert not np.array_equal(det.tables_for("id")["rnd"], det.tables_for("ood")["rnd"])
    assert_stream_matches_batch(det, cal[::10])
    with pytest.warns(UserWarning, match="No Mondrian thresholds"):
        det.tables_for("unseen")


def test_detector_separates_failures(detector, test_set):
    pred = detector.predict(test_set)
    labels = np.array([not r.success for r in test_set])
    # A 3-epoch RND on 8 rollouts is weak; the full-size quality is the benchmarks' job.
    assert pred[labels].mean() >= pred[~labels].mean() + 0.3


def test_phase_order_is_enforced(fit_set, cal_set):
    det = make_detector()
    with pytest.raises(NotFittedError, match=r"Incorrect method order.*not fitted"):
        det.calibrate(cal_set)
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(cal_set[0])
    det.fit(fit_set, progress=False)
    with pytest.raises(NotFittedError, match="not calibrated"):
        det.monitor()


def test_calibration_set_errors(fit_set, cal_set):
    det = make_detector(alpha=0.1).fit(fit_set, progress=False)
    failed = make_rollouts(1, kind="failure", seed=9, length=40)
    with pytest.raises(CalibrationError, match=r"rollout 3 .*failed"):
        det.calibrate(cal_set[:3] + failed + cal_set[3:])
    with pytest.raises(CalibrationError, match="also used to fit"):
        det.calibrate(cal_set + fit_set[:1])
    with pytest.raises(CalibrationError, match="needs at least 9 successful"):
        det.calibrate(cal_set[:5])
    with pytest.raises(CalibrationError, match="no rollouts"):
        det.calibrate([])
    unlabeled = [r.replace(success=None) for r in cal_set[:20]]
    with pytest.warns(UserWarning, match="success=None"):
        det.calibrate(unlabeled)
    with pytest.raises(CalibrationError, match="failed"):
        make_detector().fit(failed, progress=False)


def test_parameter_validation_messages():
    with pytest.raises(
        ValueError,
        match=r"The 'alpha' parameter of FailureDetector must be a "
        r"float in the range \(0, 1\)\. Got 1\.5 instead\.",
    ):
        FailureDetector(alpha=1.5)
    with pytest.raises(ValueError, match="'combine' parameter"):
        FailureDetector(combine="xor")
    with pytest.raises(ValueError, match="unique names"):
        FailureDetector(scores=[small_rnd(), small_rnd()])
    with pytest.raises(ValueError, match="'windows' parameter"):
        FailureDetector(windows={"nope": 3})
    with pytest.raises(ValueError, match="'windows' parameter"):
        FailureDetector(windows=0)


def test_errors_name_the_rollout_file(tmp_path, detector, fit_set, cal_set):
    from failguard import read_rollouts, write_rollout

    for i, r in enumerate(cal_set[:12]):
        write_rollout(r, tmp_path / f"ok_{i:02d}")
    write_rollout(make_rollouts(1, kind="failure", seed=3, length=40)[0], tmp_path / "z_bad")
    logs = read_rollouts(tmp_path)
    with pytest.raises(CalibrationError, match=r"rollout 12 \(.*z_bad.safetensors\) .*failed"):
        detector.calibrate(logs)
    odd = make_rollouts(1, seed=3, length=20, embedding_dim=16)[0]
    with pytest.raises(RolloutError, match=r"rollout 2 group 'id': rnd: 'embeddings' has per-step"):
        detector.traces([*cal_set[:2], odd])


def test_mismatched_rollouts_are_rejected(detector):
    wrong_d = make_rollouts(1, seed=3, length=20, embedding_dim=16)[0]
    with pytest.raises(RolloutError, match=r"per-step shape \(16,\).*fitted on \(32,\)"):
        detector.score(wrong_d)
    no_actions = wrong_d.replace(action_samples=None, embeddings=np.zeros((20, 32)))
    with pytest.raises(RolloutError, match="action_samples"):
        detector.score(no_actions)


def test_monitor_step_errors(detector):
    mon = detector.monitor()
    e, a = np.zeros(32), np.zeros((32, 8, 3))
    with pytest.raises(RolloutError, match="needs 'action_samples'"):
        mon.step(embedding=e)
    with pytest.raises(RolloutError, match="NaN or inf"):
        mon.step(embedding=np.full(32, np.nan), action_samples=a)
    with pytest.raises(RolloutError, match=r"shape \(31,\).*fitted on \(32,\)"):
        mon.step(embedding=np.zeros(31), action_samples=a)
    with pytest.raises(RolloutError, match="must have 1 dimensions"):
        mon.step(embedding=np.zeros((1, 32)), action_samples=a)
    assert mon.t == 0  # nothing was consumed by the failed calls
    v = mon.step(embedding=e, action_samples=a)
    assert v.step == 0 and mon.t == 1 and mon.last_verdict is v
    mon.reset()
    assert mon.t == 0


def test_save_load_round_trip_is_bit_exact(tmp_path, fit_set, cal_set, test_set):
    det = make_detector(alpha=0.2, threshold="band", mondrian=False).fit(fit_set, progress=False)
    det.calibrate(cal_set)
    det.save(tmp_path / "det")
    loaded = FailureDetector.load(tmp_path / "det")
    assert loaded.get_params() == det.get_params()
    for r in test_set[::4]:
        a, b = det.score(r), loaded.score(r)
        for name in det.names:
            np.testing.assert_array_equal(a.scores[name], b.scores[name])
            np.testing.assert_array_equal(a.thresholds[name], b.thresholds[name])
        np.testing.assert_array_equal(a.alarm, b.alarm)
        for k, v in det.p_values(r).items():
            np.testing.assert_array_equal(v, loaded.p_values(r)[k])
    # A loaded detector still knows its fit rollouts.
    with pytest.raises(CalibrationError, match="also used to fit"):
        loaded.calibrate(fit_set)


def test_save_load_every_score_type(tmp_path, fit_set, cal_set):
    scores = [
        small_rnd(),
        ActionChunkEntropy(dims=[0, 1], integrate_dt=0.1),
        DiscreteActionEntropy(),
        DiscreteActionEntropy("samples"),
        STACScore(3),
        PCAKMeansScore(n_clusters=3),
        LogpZOScore(epochs=1),
        RNDActionScore(max_epochs=1),
    ]
    det = make_detector(scores=scores, alpha=0.2, combine="or", mondrian=True)
    det.fit(fit_set, progress=False).calibrate(cal_set)
    det.save(tmp_path / "all")
    loaded = FailureDetector.load(tmp_path / "all")
    r = cal_set[0]
    for name in det.names:
        np.testing.assert_array_equal(det.score(r).scores[name], loaded.score(r).scores[name])
    # Every fitted array comes back bit-exact, in the same (C) memory order it is used in, so
    # scoring cannot round differently after a round trip (scikit-learn returns Fortran order).
    for a, b in zip(det.scores, loaded.scores, strict=True):
        ta, tb = a.get_tensors(), b.get_tensors()
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].flags.c_contiguous, (a.name, k)
            assert ta[k].dtype == tb[k].dtype and ta[k].tobytes() == tb[k].tobytes(), (a.name, k)
    for res_a, res_b in [(det.calibration_, loaded.calibration_)] + [
        (det.group_calibration_[g], loaded.group_calibration_[g]) for g in det.group_calibration_
    ]:
        for n in det.names:
            assert res_a.tables[n].tobytes() == res_b.tables[n].tobytes()
            assert res_a.profiles[n].offset.tobytes() == res_b.profiles[n].offset.tobytes()
            assert res_a.profiles[n].scale.tobytes() == res_b.profiles[n].scale.tobytes()


def test_corrupt_artifacts_raise_artifact_error(tmp_path, detector):
    with pytest.raises(ArtifactError, match="missing"):
        FailureDetector.load(tmp_path / "nothing")
    path = detector.save(tmp_path / "det")
    cfg = json.loads((path / "config.json").read_text())
    cfg["schema"] = 999
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="schema version 999"):
        FailureDetector.load(path)
    detector.save(path)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="safetensors"):
        FailureDetector.load(path)
    detector.save(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        FailureDetector.load(path)
    detector.save(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["scores"][0]["type"] = "Mystery"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        FailureDetector.load(path)
    with pytest.raises(ArtifactError, match="Mystery"):
        FailureDetector.load(path, verify=False)


def test_p_values_fall_on_failures(detector, test_set):
    fail = next(r for r in test_set if detector.score(r).predicted_failure)
    p = detector.p_values(fail)
    assert set(p) == {"rnd", "ace"}
    for v in p.values():
        assert np.all(np.diff(v) <= 0)  # running max -> non-increasing p-values
        # Both legs crossed their conformal thresholds, so both p-values are <= alpha.
        assert v[-1] <= detector.alpha


def test_with_params_shares_scores_and_recalibrates(detector, cal_set, test_set):
    band = detector.with_params(threshold="band", windows={"rnd": 4, "ace": 6}, combine="or")
    assert band.scores is not detector.scores and band.scores[0] is detector.scores[0]
    assert band.is_calibrated and band.n_calibration_ == detector.n_calibration_
    fresh = make_detector(
        scores=detector.scores,
        alpha=0.1,
        threshold="band",
        windows={"rnd": 4, "ace": 6},
        combine="or",
    )
    fresh.fitted_state.fitted = True  # same fitted scores, calibrated the ordinary way
    fresh.calibrate(cal_set)
    for name in detector.names:
        np.testing.assert_array_equal(band.thresholds_[name], fresh.thresholds_[name])
    raw = detector.raw_scores_many(test_set)
    with pytest.warns(DeprecationWarning, match="CachedScore"):
        via_raw = band.traces(test_set, raw=raw)  # deprecated, still exact
    direct = band.traces(test_set)
    for a, b in zip(via_raw, direct, strict=True):
        np.testing.assert_array_equal(a.alarm, b.alarm)
    with pytest.raises(ValueError, match="keeps the fitted scores"):
        detector.with_params(scores=[])
    with pytest.raises(TypeError, match="unknown parameter"):
        detector.with_params(window=3)
    with pytest.raises(ValueError, match="raw must hold"), pytest.warns(DeprecationWarning):
        band.traces(test_set[:2], raw=raw)


def test_parameters_are_a_frozen_config_kept_apart_from_fitted_state(detector, cal_set):
    import dataclasses

    from failguard.config import DetectorConfig

    det = make_detector(windows={"rnd": 4}, alpha=np.float32(0.25), combine="or")
    # stored as given (a windows dict stays a dict of the names given), validated, frozen
    assert det.config.windows == {"rnd": 4} and det.windows == {"rnd": 4, "ace": 10}
    assert det.config.alpha == 0.25 and type(det.config.alpha) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        det.config.alpha = 0.1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        det.alpha = 0.1  # type: ignore[misc]
    assert det.get_params() == {**det.config.as_dict(), "windows": {"rnd": 4, "ace": 10}}
    assert DetectorConfig(**det.config.as_dict()) == det.config
    with pytest.raises(ParameterError, match="'alpha' parameter"):
        det.config.replace(alpha=2.0)
    # with_params: a new validated config; the fitted state (scores, calibration) is shared
    other = detector.with_params(alpha=0.2)
    assert other.config == detector.config.replace(alpha=0.2)
    assert other.scores[0] is detector.scores[0] and detector.alpha == 0.1
    # fitting and calibrating never touch the parameters
    before = detector.config
    fresh = make_detector(scores=detector.scores, alpha=0.1)
    fresh.fitted_state.fitted = True
    fresh.calibrate(cal_set)
    assert detector.config is before and fresh.config == detector.config


def test_evaluate_far_on_in_distribution_successes(detector, test_set):
    from failguard import evaluate

    rep = evaluate(detector, test_set)
    ids = [
        t
        for t, r in zip(detector.traces(test_set), test_set, strict=True)
        if r.success and r.group == "id"
    ]
    assert rep.overall["far_id"] == np.mean([t.predicted_failure for t in ids])
    with pytest.raises(ValueError, match="no success belongs"):  # was a silent NaN
        evaluate(detector, test_set, id_groups=["nope"])


def test_with_alpha_recalibrates_without_refitting(detector):
    loose = detector.with_alpha(0.3)
    assert loose.scores[0] is detector.scores[0]
    assert loose.thresholds_["rnd"][0] <= detector.thresholds_["rnd"][0]
    assert detector.alpha == 0.1


def test_rnd_training_is_seeded_and_splits_by_rollout(fit_set, monkeypatch, caplog):
    a = small_rnd(seed=4).fit(fit_set)
    b = small_rnd(seed=4).fit(fit_set)
    r = fit_set[0]
    np.testing.assert_array_equal(a.score(r), b.score(r))
    assert len(a.history_["val"]) >= 1
    # The validation steps are whole rollouts, none of them also in training: the step counts
    # the network sees are sums over two disjoint sets of rollouts (lengths vary by rollout).
    seen = []
    fit_network = RNDScore._fit_network

    def spy(self, x_train, x_val, *args):
        seen.append((x_train.shape[0], x_val.shape[0]))
        return fit_network(self, x_train, x_val, *args)

    monkeypatch.setattr(RNDScore, "_fit_network", spy)
    rollouts = fit_set[:10]
    lengths = [len(x.embeddings) for x in rollouts]
    assert len(set(lengths)) > 1  # otherwise the counts below could not tell rollouts apart
    small_rnd(seed=4, val_fraction=0.2).fit(rollouts)
    n_train, n_val = seen[-1]
    assert n_train + n_val == sum(lengths)
    from itertools import combinations

    # exactly round(0.2 * 10) = 2 whole rollouts are held out
    assert any(sum(c) == n_val for c in combinations(lengths, 2))
    assert not any(sum(c) == n_val for c in combinations(lengths, 1))
    # Two rollouts still split (one each); one rollout cannot, and says so in the log.
    caplog.set_level("WARNING", logger="failguard.scores.rnd")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*still falling")  # 3 epochs: undertrained
        small_rnd().fit(fit_set[:2])
        assert seen[-1] == (lengths[0], lengths[1]) or seen[-1] == (lengths[1], lengths[0])
        assert not caplog.records
        small_rnd().fit(fit_set[:1])
    assert seen[-1] == (lengths[0], lengths[0])  # validated on the training steps
    assert "fewer than 2 rollouts" in caplog.text


def test_rnd_warns_when_max_epochs_cut_a_falling_loss(fit_set):
    with pytest.warns(UserWarning, match="still falling.*raise max_epochs"):
        RNDScore(max_epochs=2).fit(fit_set)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnd = RNDScore(max_epochs=400, patience=1).fit(fit_set)  # early stopping ends it
    assert len(rnd.history_["val"]) < 400


def test_refit_drops_the_stale_calibration(fit_set, cal_set):
    det = make_detector(alpha=0.2).fit(fit_set, progress=False).calibrate(cal_set)
    det.fit(cal_set[:8], progress=False)
    assert not det.is_calibrated and not det.can_recalibrate and det.n_calibration_ == 0
    assert not det.with_params(alpha=0.1).is_calibrated


def test_failed_calibration_changes_nothing(fit_set, cal_set):
    det = make_detector(alpha=0.2).fit(fit_set, progress=False).calibrate(cal_set)
    before = {k: v.copy() for k, v in det.thresholds_.items()}
    with pytest.raises(CalibrationError):
        det.calibrate(cal_set[:3])
    assert det.n_calibration_ == len(cal_set)
    for k, v in before.items():
        np.testing.assert_array_equal(det.thresholds_[k], v)
        np.testing.assert_array_equal(det.with_alpha(0.2).thresholds_[k], v)
    mondrian = make_detector(alpha=0.2, mondrian=True).fit(fit_set, progress=False)
    mixed = cal_set[:20] + [r.replace(group="rare") for r in cal_set[20:22]]
    with pytest.raises(CalibrationError, match="group 'rare'"):
        mondrian.calibrate(mixed)
    assert not mondrian.is_calibrated and mondrian.group_calibration_ == {}


def test_duplicate_calibration_rollouts_are_refused(detector, cal_set):
    with pytest.raises(CalibrationError, match=r"rollout 20 .*repeats rollout 0"):
        detector.with_params().calibrate(cal_set[:20] + cal_set[:1])


def test_with_params_copy_refits_its_own_scores(detector, fit_set, test_set):
    r = test_set[0]
    before = detector.raw_scores(r)["rnd"].copy()
    copy_ = detector.with_params(windows=5)
    copy_.fit(fit_set[:4], progress=False)
    assert copy_.scores[0] is not detector.scores[0]
    np.testing.assert_array_equal(detector.raw_scores(r)["rnd"], before)


def test_monitor_refuses_to_mix_old_thresholds_with_new_scores(fit_set, cal_set):
    det = make_detector(alpha=0.2).fit(fit_set, progress=False).calibrate(cal_set)
    mon = det.monitor()
    det.calibrate(cal_set[::-1])
    with pytest.raises(NotFittedError, match=r"call monitor.reset"):
        mon.step(embedding=np.zeros(32), action_samples=np.zeros((32, 8, 3)))
    mon.reset()
    mon.step(embedding=np.zeros(32), action_samples=np.zeros((32, 8, 3)))


def test_numpy_scalars_are_accepted_and_saved(tmp_path, fit_set, cal_set):
    det = make_detector(alpha=np.float32(0.2), windows=np.int64(4), min_support=np.int64(2))
    det.fit(fit_set, progress=False).calibrate(cal_set)
    loaded = FailureDetector.load(det.save(tmp_path / "np"))
    assert loaded.windows == {"rnd": 4, "ace": 4} and loaded.min_support == 2


def test_fitted_detector_saves_before_calibration(tmp_path, fit_set, cal_set):
    det = make_detector(alpha=0.2).fit(fit_set, progress=False)
    loaded = FailureDetector.load(det.save(tmp_path / "fitted"))
    assert not loaded.is_calibrated
    with pytest.raises(CalibrationError, match="also used to fit"):
        loaded.calibrate(fit_set)
    loaded.calibrate(cal_set)
    np.testing.assert_array_equal(
        loaded.score(cal_set[0]).scores["rnd"], det.raw_scores(cal_set[0])["rnd"]
    )


def test_mondrian_group_names_with_dots_round_trip(tmp_path, fit_set, cal_set):
    cal = [r.replace(group="arm.v1" if i % 2 else "arm.v2") for i, r in enumerate(cal_set)]
    det = make_detector(alpha=0.2, mondrian=True).fit(fit_set, progress=False).calibrate(cal)
    loaded = FailureDetector.load(det.save(tmp_path / "dots"))
    for g in ("arm.v1", "arm.v2"):
        np.testing.assert_array_equal(loaded.tables_for(g)["ace"], det.tables_for(g)["ace"])


def test_reference_mode_runs_on_any_n_and_has_no_p_values(fit_set, cal_set):
    det = make_detector(alpha=0.05, mode="reference").fit(fit_set, progress=False)
    cal = cal_set[:10]
    det.calibrate(cal)  # the reference code calibrates on 10 rollouts at alpha=0.05
    # Its constant threshold is numpy's linear quantile of the per-rollout peaks (no n+1).
    for name in det.names:
        peaks = [det.score(r).windowed[name].max() for r in cal]
        assert det.calibration_.levels[name] == pytest.approx(np.quantile(peaks, 0.95))
        np.testing.assert_allclose(det.thresholds_[name], np.quantile(peaks, 0.95))
    # the corrected mode refuses the same 10 rollouts: it needs 19 at alpha=0.05
    with pytest.raises(CalibrationError, match="19"):
        det.with_params(mode="corrected").calibrate(cal)
    with pytest.raises(ValueError, match="reference"):
        det.p_values(cal_set[0])


def test_trimmed_band_keeps_its_width_where_every_running_curve_was_trimmed():
    from failguard.calibration import band_profile

    rng = np.random.default_rng(0)
    curves = [rng.random(10) for _ in range(18)] + [rng.random(40) * 100 for _ in range(2)]
    prof = band_profile(curves, trim=0.1)  # trims exactly the two long curves
    assert prof.scale.shape == (40,)
    assert prof.scale[-1] > 1.0  # their own spread, not the 1e-6 floor
    # One curve alone has no spread: the band ends where fewer than two curves run.
    assert band_profile(curves[:19]).scale.shape == (10,)


def test_cached_score_scores_each_rollout_once(fit_set, cal_set):
    from failguard.scores import CachedScore

    inner = small_rnd().fit(fit_set)
    calls = []
    original = inner.score_many

    def counting(rollouts):
        calls.append(len(rollouts))
        return original(rollouts)

    inner.score_many = counting  # type: ignore[method-assign]
    cached = CachedScore(inner)
    for w in (2, 5):
        det = make_detector(scores=[cached], windows=w, alpha=0.2)
        det.fit(fit_set, progress=False).calibrate(cal_set)
    assert calls == [len(cal_set)]  # the second detector reused every score
    np.testing.assert_array_equal(cached.score(cal_set[0]), original([cal_set[0]])[0])
    with pytest.raises(NotFittedError, match="fitted scores only"):
        CachedScore(small_rnd())
