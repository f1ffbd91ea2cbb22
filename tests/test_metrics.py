import json
import math

import numpy as np
import pytest

from failguard import evaluate
from failguard.metrics import metrics_from_traces
from failguard.synthetic import make_rollouts
from failguard.types import Trace


def tr(alarm, success, group="id"):
    a = np.array(alarm, dtype=bool)
    fused = np.where(a, 2.0, 0.5) + np.arange(len(a)) * 1e-3
    return Trace({}, {}, {}, {}, fused, a, success, group)


def test_metrics_by_hand():
    traces = [
        tr([0, 0, 0, 1, 1], False),  # detected at 3 -> DT 3/4
        tr([0, 0, 0, 0, 0, 0, 0, 0, 0], False),  # missed; T_max = 9
        tr([1, 1, 1], False),  # detected at 0 -> DT 0
        tr([0, 0, 0, 0], True),
        tr([0, 1, 0, 0], True, "ood"),  # a false alarm
    ]
    m = metrics_from_traces(traces)
    assert m["tpr"] == pytest.approx(2 / 3)
    assert m["tnr"] == 0.5 and m["far"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx(0.5 * (2 / 3 + 0.5))
    dts = [3 / 8, 0 / 8]
    assert m["detection_time"] == pytest.approx(np.mean(dts))
    assert m["twa"] == pytest.approx(0.5 * ((1 - dts[0] + 1 - dts[1]) / 3 + 0.5))
    assert m["lead_time_steps"] == pytest.approx(np.mean([4 - 3, 2 - 0]))
    # AUC of the peak fused ratio: failures peak at 2.004, 0.508, 2.002, successes at 0.503
    # and 2.001, so 5 of the 6 (failure, success) pairs are ordered right.
    assert m["roc_auc"] == pytest.approx(5 / 6)


def test_no_failures_gives_nan_not_crash():
    m = metrics_from_traces([tr([0, 0], True)])
    assert math.isnan(m["tpr"]) and m["detection_time"] == 1.0 and m["tnr"] == 1.0


def test_evaluate_report(detector, test_set):
    rep = evaluate(detector, test_set, alphas=[0.01, 0.05, 0.2, 0.5])
    assert set(rep.per_group) == {"success/id", "success/ood", "fail/id", "fail/ood"}
    assert rep.per_group["success/id"]["n"] == 10
    assert [s["alpha"] for s in rep.sweep] == [0.01, 0.05, 0.2, 0.5]
    assert "needs at least 99" in rep.sweep[0]["error"]  # 40 rollouts cannot give 0.01
    d = rep.to_dict()
    assert d["overall"]["n_failure"] == 10
    assert "balanced_accuracy" in rep.table()
    # More permissive alpha never lowers the TPR.
    tprs = [s["tpr"] for s in rep.sweep if "tpr" in s]
    assert tprs == sorted(tprs)


# ------------------------------------------------------------ issue 11, item 7
def test_far_id_follows_the_in_distribution_group_whatever_its_name(fit_set, cal_set, tmp_path):
    from conftest import make_detector
    from failguard import FailureDetector

    rename = {"id": "nominal", "ood": "ood-light"}
    cal = [r.replace(group="nominal") for r in cal_set]
    test = make_rollouts(8, seed=80, length=40, n_discrete=5) + make_rollouts(
        6, kind="failure", seed=81, length=40, n_discrete=5
    )
    test = [r.replace(group=rename.get(r.group, r.group)) for r in test]
    test += [
        r.replace(group="ood-light")
        for r in make_rollouts(4, kind="ood_benign", seed=82, length=40, n_discrete=5)
    ]
    det = make_detector(alpha=0.2).fit(fit_set, progress=False).calibrate(cal)
    assert det.calibration_groups_ == ["nominal"]
    far_id = evaluate(det, test).overall["far_id"]
    nominal = [t for t in det.traces(test) if t.success and t.group == "nominal"]
    assert far_id == sum(t.predicted_failure for t in nominal) / len(nominal)
    loaded = FailureDetector.load(det.save(tmp_path / "d"))  # the groups are saved
    assert evaluate(loaded, test).overall["far_id"] == far_id
    # A detector that does not know its groups, and two success groups without "id": raise.
    anonymous = make_detector(alpha=0.2).fit(fit_set, progress=False)
    anonymous.calibrate([r.replace(group=None) for r in cal_set])
    with pytest.raises(ValueError, match="id_groups"):
        evaluate(anonymous, test)
    with pytest.raises(ValueError, match="no success belongs"):
        evaluate(det, test, id_groups=["id"])
    assert math.isnan(evaluate(det, test, id_groups=None).overall["far_id"])


def test_per_group_metrics_and_sweep(detector, test_set):
    report = evaluate(detector, test_set, alphas=[0.1, 0.2])
    assert set(report.by_group) == {t.group for t in test_set}
    for g, m in report.by_group.items():
        sel = [r for r in test_set if r.group == g]
        assert m["n_success"] + m["n_failure"] == len(sel)
        for k in ("balanced_accuracy", "twa", "roc_auc", "n_detected"):
            assert k in m
    assert not math.isnan(report.by_group["ood"]["balanced_accuracy"])
    for row in report.sweep:
        assert set(row["by_group"]) == set(report.by_group)
    json.dumps(report.to_dict(), allow_nan=False)  # nested NaN cleaned too
    assert "group ood" in report.table()


def test_detection_time_comes_with_the_number_detected(detector, test_set):
    report = evaluate(detector, test_set)
    o = report.overall
    assert o["n_detected"] == round(o["tpr"] * o["n_failure"])
    assert f"over {o['n_detected']} of {o['n_failure']} failures detected" in report.table()
    for key, m in report.per_group.items():
        alarmed = [t for t in detector.traces(test_set) if t.predicted_failure]
        assert m["n_alarmed"] == sum(
            f"{'success' if t.success else 'fail'}/{t.group}" == key for t in alarmed
        )


def test_one_sided_logs_explain_their_nans(detector, test_set):
    only_ok = evaluate(detector, [r for r in test_set if r.success])
    assert math.isnan(only_ok.overall["balanced_accuracy"])
    assert any("no failed rollouts" in n for n in only_ok.notes)
    assert "note: no failed rollouts" in only_ok.table()
    only_fail = evaluate(detector, [r for r in test_set if not r.success], id_groups=None)
    assert any("no successful rollouts" in n for n in only_fail.notes)
