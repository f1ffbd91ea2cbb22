import math

import numpy as np
import pytest

from failguard import evaluate
from failguard.metrics import metrics_from_traces
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
    assert 0 <= m["roc_auc"] <= 1


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
