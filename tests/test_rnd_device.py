"""RNDScore's ``device``: where the networks train and score (a placement, never saved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small_rnd
from failguard import FailureDetector, ParameterError, RNDScore
from failguard.scores import score_from_config

HAS_CUDA = torch.cuda.is_available()


def test_device_cpu_is_the_default_and_gives_the_same_score(fit_set):
    a = small_rnd(seed=3).fit(fit_set)
    b = small_rnd(seed=3, device="cpu").fit(fit_set)
    assert a.device == b.device == "cpu"
    np.testing.assert_array_equal(a.score(fit_set[1]), b.score(fit_set[1]))
    assert b.network_ is not None and b.network_.mean.device.type == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "", 3, None, "cuda:x"])
def test_bad_device_names_are_refused_with_the_fix(bad):
    with pytest.raises(ParameterError, match="'device' parameter of RNDScore"):
        RNDScore(device=bad)


def test_torch_device_objects_are_accepted():
    assert RNDScore(device=torch.device("cpu")).device == "cpu"
    assert RNDScore.paper(device="cpu").device == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_so_at_fit_and_to(fit_set):
    rnd = small_rnd(device="cuda")  # the name is valid; the device is missing
    with pytest.raises(ParameterError, match=r"no CUDA device.*device='cpu'"):
        rnd.fit(fit_set)
    fitted = small_rnd().fit(fit_set)
    with pytest.raises(ParameterError, match="no CUDA device"):
        fitted.to("cuda")
    assert fitted.device == "cpu"  # a refused move changes nothing


def test_device_is_not_saved_and_a_loaded_score_runs_on_cpu(fit_set, tmp_path):
    rnd = small_rnd(seed=1).fit(fit_set)
    cfg = rnd.get_config()
    assert "device" not in cfg["params"]
    loaded = score_from_config(cfg, rnd.get_tensors())
    assert isinstance(loaded, RNDScore) and loaded.device == "cpu"
    np.testing.assert_array_equal(loaded.score(fit_set[2]), rnd.score(fit_set[2]))
    det = FailureDetector([rnd], windows=3, alpha=0.2).fit(fit_set, progress=False)
    det.save(tmp_path / "det")
    again = FailureDetector.load(tmp_path / "det")
    assert again.scores[0].device == "cpu"  # type: ignore[attr-defined]


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_training_matches_cpu_training(fit_set):  # pragma: no cover - GPU only
    cpu = RNDScore(max_epochs=20, seed=2).fit(fit_set)
    gpu = RNDScore(max_epochs=20, seed=2, device="cuda").fit(fit_set)
    assert gpu.network_ is not None and gpu.network_.mean.device.type == "cuda"
    s_cpu, s_gpu = cpu.score(fit_set[0]), gpu.score(fit_set[0])
    assert np.corrcoef(s_cpu, s_gpu)[0, 1] > 0.99
    moved = gpu.to("cpu")
    np.testing.assert_allclose(moved.score(fit_set[0]), s_gpu, rtol=1e-4, atol=1e-5)
