"""failguard.testing: the score contract over every built-in score, Trace = Monitor =
OnnxMonitor, and each check failing on a score broken in the way it guards against."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from failguard import ActionChunkEntropy, FailureDetector
from failguard.scores import SCORE_NAMES, BaseScore, make_score, register_score
from failguard.testing import (
    check_data,
    check_export,
    check_parity,
    check_save_load,
    check_score_determinism,
    check_score_output,
    check_streaming,
    parametrize_with_checks,
)
from failguard.types import Rollout

# small networks and few epochs: the contract, not the detection quality, is under test
FAST: dict[str, dict[str, Any]] = {
    "rnd": {"max_epochs": 2, "target_hidden": (16,), "predictor_hidden": (16,)},
    "rnd_a": {"max_epochs": 2},
    "logpzo": {"epochs": 2, "hidden": (16,)},
    "progress": {"epochs": 2, "hidden": (16,)},
    "shortfall": {"epochs": 2, "hidden": (16,)},
    "stac": {"exec_horizon": 2},
    "consistency": {"exec_horizon": 2},
    "pca_kmeans": {"n_components": 2, "n_clusters": 3},
}
BUILTIN = [make_score(n, **FAST.get(n, {})) for n in sorted(SCORE_NAMES)]


def test_every_builtin_score_is_under_test():
    assert sorted(s.name for s in BUILTIN) == sorted(SCORE_NAMES)


@parametrize_with_checks(BUILTIN)
def test_builtin_scores_meet_the_contract(score, check):
    check(score)
    assert not score.is_fitted  # the checks fit copies


@pytest.mark.onnx
def test_check_parity_on_a_fused_detector():
    data = check_data()
    det = FailureDetector([make_score("rnd", **FAST["rnd"]), make_score("ace")], alpha=0.2)
    det.fit(data.fit, progress=False).calibrate(data.calibration, progress=False)
    check_parity(det, data.test)


# ---------------------------------------------------------------------- broken scores
class _Broken(BaseScore):
    requires = ("embeddings",)

    def __init__(self, name: str = "broken") -> None:
        super().__init__(name)

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        self.mean_ = np.mean(np.concatenate([r.embeddings for r in rollouts]), axis=0)

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return np.linalg.norm(inputs["embeddings"] - self.mean_, axis=1)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_}

    def _restore(self, fitted: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        self.mean_ = np.asarray(tensors["mean"], dtype=np.float64)


@register_score
class _Sound(_Broken):
    """The same score, unbroken: every check passes (so each failure below is the break)."""


@register_score
class _ShortOutput(_Broken):
    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return super()._score(inputs)[1:]


@register_score
class _Unseeded(_Broken):
    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        super()._fit(rollouts, progress)
        self.mean_ = self.mean_ + np.random.default_rng().normal(size=self.mean_.shape)


@register_score
class _LossySave(_Broken):
    """Fits a scale that neither _fitted nor _tensors saves: a loaded copy has the default."""

    def __init__(self, name: str = "broken") -> None:
        super().__init__(name)
        self.scale_ = 1.0

    def _fit(self, rollouts: Sequence[Rollout], progress: bool) -> None:
        super()._fit(rollouts, progress)
        self.scale_ = 2.0

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return self.scale_ * super()._score(inputs)


@register_score
class _HiddenContext(_Broken):
    """Reads the previous step but declares context 0."""

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        e = inputs["embeddings"]
        prev = np.concatenate([e[:1], e[:-1]])
        return np.linalg.norm(e - prev, axis=1)


@register_score
class _ExportsSomethingElse(ActionChunkEntropy):
    """Scores differently from the ONNX graph it exports (that of its parent)."""

    def _score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        return 1.5 * super()._score(inputs)


@register_score
class _ClaimsExport(_Broken):
    exportable = True  # but it has no ONNX graph


@pytest.mark.parametrize(
    "check", [check_score_output, check_score_determinism, check_save_load, check_streaming]
)
def test_a_sound_score_passes(check):
    check(_Sound())


@pytest.mark.parametrize(
    ("score", "check", "message"),
    [
        (_ShortOutput(), check_score_output, "shape"),
        (_Unseeded(), check_score_determinism, "seed every random draw"),
        (_LossySave(), check_save_load, "loaded score differs"),
        (_HiddenContext(), check_streaming, "context=0"),
        (_ExportsSomethingElse(), check_export, "Trace vs OnnxMonitor"),
    ],
    ids=["shape", "determinism", "save_load", "streaming", "export"],
)
def test_each_check_catches_its_break(score, check, message):
    with pytest.raises(AssertionError, match=message):
        check(score)


def test_check_export_catches_a_false_exportable_claim():
    check_export(_Sound())  # not exportable, and the exporter says so
    with pytest.raises(AssertionError, match="exportable is True, but the exporter refuses"):
        check_export(_ClaimsExport())


def test_check_parity_catches_a_monitor_that_differs(monkeypatch):
    data = check_data()
    det = FailureDetector([_Sound()], windows=2, alpha=0.2)
    det.fit(data.fit, progress=False).calibrate(data.calibration, progress=False)
    check_parity(det, data.test, onnx=False)
    # a detector whose batch scoring drifts from its own monitor's step
    score = det.scores[0]
    original = score._score
    monkeypatch.setattr(
        score, "_score", lambda inputs: original(inputs) * (1 + 0.01 * (len(inputs["t"]) > 1))
    )
    with pytest.raises(AssertionError, match="Trace vs Monitor"):
        check_parity(det, data.test, onnx=False)


# Run in a fresh interpreter: whether a warning shows in this one depends on what other tests
# imported and triggered before (warning registries, filters), i.e. on test order.
_ALIAS_CHILD = """
import warnings
import failguard.testing  # the new home: under -W error a DeprecationWarning here fails
try:
    from {module} import ToyChunkPolicy
except DeprecationWarning as w:
    print("warned:", w)
else:
    raise SystemExit("importing ToyChunkPolicy from {module} did not warn")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from {module} import ToyChunkPolicy
assert ToyChunkPolicy is failguard.testing.ToyChunkPolicy, "the alias is another class"
"""


@pytest.mark.parametrize("module", ["failguard.integrations", "failguard.integrations.lerobot"])
def test_toy_chunk_policy_moved_with_a_deprecated_alias(module):
    code = _ALIAS_CHILD.format(module=module)
    proc = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"warned: {module}.ToyChunkPolicy moved to failguard.testing")
