"""Artifacts are verified, not trusted (issue 13, items 4 and 9; issue 11, item 6)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from failguard import ArtifactError, FailureDetector
from failguard._artifact import _artifact_digest


def _edit(path: Path, change, tensors_change=None, rehash: bool = True) -> None:
    """Edit a saved detector; with ``rehash`` the stored checksum is recomputed, so that the
    check under test (not the checksum) is what must catch the edit."""
    from safetensors.numpy import load_file, save

    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    if tensors_change is not None:
        tensors = load_file(str(path / "model.safetensors"))
        tensors_change(tensors)
        (path / "model.safetensors").write_bytes(save(tensors))
    if rehash:
        cfg.pop("sha256", None)
        cfg["sha256"] = _artifact_digest((path / "model.safetensors").read_bytes(), cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def saved(detector, tmp_path):
    return detector.save(tmp_path / "det")


@pytest.mark.parametrize("key", ["windows", "combine", "window_kind"])
def test_missing_params_are_refused_not_defaulted(saved, key):
    """Before: a missing 'windows' or 'combine' silently took the default."""
    _edit(saved, lambda c: c["params"].pop(key))
    with pytest.raises(ArtifactError, match="params"):
        FailureDetector.load(saved)


@pytest.mark.parametrize(
    ("key", "value"),
    [("windows", {"rnd": 3, "ace": 10}), ("combine", "or"), ("window_kind", "mean")],
)
def test_edited_params_are_caught(saved, key, value):
    """Before: edited windows, combine and window_kind loaded and changed the alarms."""
    _edit(saved, lambda c: c["params"].__setitem__(key, value), rehash=False)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        FailureDetector.load(saved)
    if key == "combine":  # also caught without the checksum: settings disagree with params
        with pytest.raises(ArtifactError, match="disagree"):
            FailureDetector.load(saved, verify=False)


@pytest.mark.parametrize("bad", [np.nan, 0.0, -1.0, np.inf])
def test_thresholds_must_be_finite_and_positive(saved, bad):
    def poison(t):
        t["calibration.pooled.tables.rnd"] = np.full_like(t["calibration.pooled.tables.rnd"], bad)

    _edit(saved, lambda c: None, poison)
    with pytest.raises(ArtifactError, match="finite and positive"):
        FailureDetector.load(saved)


def test_levels_and_tables_agree(saved):
    """Issue 11, item 6: calibration.levels had no effect; now it must agree with the tables."""

    def change(c):
        c["calibration"]["levels"]["rnd"] *= 0.5

    _edit(saved, change)
    with pytest.raises(ArtifactError, match="levels"):
        FailureDetector.load(saved)


def test_weight_bit_flips_are_detected(saved, detector):
    """Before: 0 of 60 single-bit flips in the weights were detected and 51 changed scores."""
    raw = (saved / "model.safetensors").read_bytes()
    rng = np.random.default_rng(0)
    header = int.from_bytes(raw[:8], "little")
    for pos in rng.integers(8 + header, len(raw), size=60):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        (saved / "model.safetensors").write_bytes(bytes(bad))
        with pytest.raises(ArtifactError, match="checksum mismatch"):
            FailureDetector.load(saved)
    (saved / "model.safetensors").write_bytes(raw)
    assert FailureDetector.load(saved).names == detector.names


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("predictor_hidden", [20_000_000]),
        ("target_hidden", [4096] * 40),
        ("output_dim", 10**9),
    ],
)
def test_absurd_sizes_refused_before_allocation(saved, where, value):
    """Before: a hidden width of 2e7 reached 2.5 GB RSS."""
    _edit(saved, lambda c: c["scores"][0]["params"].__setitem__(where, value))
    start = time.perf_counter()
    with pytest.raises(ArtifactError):
        FailureDetector.load(saved)
    assert time.perf_counter() - start < 5.0


def test_config_sizes_must_match_the_weights(saved):
    _edit(saved, lambda c: c["scores"][0]["fitted"].__setitem__("d_in", 20_000))
    with pytest.raises(ArtifactError, match="do not match"):
        FailureDetector.load(saved)


def test_huge_window_refused(saved):
    """Before: windows=1e9 attempted a 7.45 GiB allocation."""
    _edit(saved, lambda c: c["params"]["windows"].__setitem__("rnd", 10**9))
    with pytest.raises(ArtifactError, match="windows"):
        FailureDetector.load(saved)


def test_deeply_nested_json_is_an_artifact_error(saved):
    """Before: RecursionError escaped."""
    (saved / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError):
        FailureDetector.load(saved)


def test_detector_saved_before_checksums_loads_with_a_warning(saved, detector):
    _edit(saved, lambda c: c.pop("sha256"), rehash=False)
    with pytest.warns(UserWarning, match="save it again"):
        det = FailureDetector.load(saved)
    assert det.names == detector.names


# ---------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from failguard.exporters import export_onnx

    return export_onnx(detector, tmp_path_factory.mktemp("art") / "monitor.onnx")


@pytest.mark.onnx
def test_onnx_bit_flips_are_detected(exported, tmp_path):
    """Before: 1 of 60 flips in the .onnx file was detected and 48 changed scores."""
    from failguard.runtime import OnnxMonitor

    raw = exported.read_bytes()
    rng = np.random.default_rng(1)
    target = tmp_path / "flipped.onnx"
    for pos in rng.integers(0, len(raw), size=60):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(bad))
        with pytest.raises(ArtifactError):
            OnnxMonitor(target)
    target.write_bytes(raw)
    OnnxMonitor(target)


def _rewrite_meta(src: Path, dst: Path, change) -> None:
    import onnx

    model = onnx.load(str(src))
    for p in model.metadata_props:
        if p.key == "failguard":
            meta = json.loads(p.value)
            change(meta)
            p.value = json.dumps(meta)
    onnx.save(model, str(dst))


@pytest.mark.onnx
def test_onnx_names_checked_against_the_graph(exported, tmp_path):
    """Before: reversing 'names' in the metadata swapped the rnd/ace labels of every Verdict."""
    from failguard.runtime import OnnxMonitor

    target = tmp_path / "swapped.onnx"
    _rewrite_meta(exported, target, lambda m: m["names"].reverse())
    with pytest.raises(ArtifactError, match="checksum"):
        OnnxMonitor(target)
    with pytest.raises(ArtifactError, match="in that order"):
        OnnxMonitor(target, verify=False)


@pytest.mark.onnx
def test_onnx_exported_before_checksums_loads_with_a_warning(exported, tmp_path):
    from failguard.runtime import OnnxMonitor

    target = tmp_path / "old.onnx"
    _rewrite_meta(exported, target, lambda m: m.pop("sha256"))
    with pytest.warns(UserWarning, match="Export the detector again"):
        OnnxMonitor(target)
