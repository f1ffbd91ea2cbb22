import math
from collections import Counter

import numpy as np
import pytest

from failguard import ActionChunkEntropy, DiscreteActionEntropy, Rollout
from failguard.scores.entropy import empirical_entropy, logits_entropy


def direct_ace(samples, cell, dims=None, dt=None):
    """Independent ACE: a Python dict histogram per (step, chunk index), float32 binning."""
    a = np.asarray(samples, dtype=np.float32)
    if dims is not None:
        a = a[..., dims]
    if dt is not None:
        a = np.cumsum(a * np.float32(dt), axis=2, dtype=np.float32)
    t_len, b, h, _ = a.shape
    out = []
    for t in range(t_len):
        ents = []
        for j in range(h):
            pts = a[t, :, j, :]
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            origin = lo - np.float32(0.01) * (hi - lo)
            cells = Counter(tuple(np.floor((p - origin) / cell).astype(int)) for p in pts)
            ents.append(-sum((c / b) * math.log2(c / b) for c in cells.values()))
        out.append(np.mean(ents))
    return np.array(out)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("b", [8, 32, 256])
def test_ace_matches_direct_histogram(d, b):
    rng = np.random.default_rng(d * 1000 + b)
    modes = rng.integers(0, 3, size=(6, b, 1, 1)).astype(np.float32)
    samples = rng.normal(size=(6, b, 4, d)).astype(np.float32) * 0.2 + modes
    r = Rollout(np.zeros((6, 2)), action_samples=samples, success=True)
    ace = ActionChunkEntropy().fit([r])
    np.testing.assert_allclose(ace.score(r), direct_ace(samples, ace.cell_), rtol=0, atol=1e-12)
    assert ace.score(r).max() <= math.log2(b) + 1e-12


def test_ace_dims_integration_and_cells():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(5, 16, 8, 4)).astype(np.float32)
    r = Rollout(np.zeros((5, 2)), action_samples=samples, success=True)
    ace = ActionChunkEntropy(dims=[0, 2], integrate_dt=0.05).fit([r])
    pts = ace.points(samples)
    span = pts.reshape(-1, 2).max(0) - pts.reshape(-1, 2).min(0)
    np.testing.assert_allclose(ace.cell_, 0.03 * span, rtol=1e-6)
    np.testing.assert_allclose(
        ace.score(r), direct_ace(samples, ace.cell_, [0, 2], 0.05), atol=1e-12
    )


def direct_ace_float_cells(samples, cell):
    """Independent ACE that keys each point by its float32 cell values (no int conversion)."""
    a = np.asarray(samples, dtype=np.float32)
    t_len, b, h, _ = a.shape
    out = []
    with np.errstate(over="ignore"):
        for t in range(t_len):
            ents = []
            for j in range(h):
                pts = a[t, :, j, :]
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                origin = lo - np.float32(0.01) * (hi - lo)
                cells = Counter(tuple(np.floor((p - origin) / cell).tolist()) for p in pts)
                ents.append(-sum((c / b) * math.log2(c / b) for c in cells.values()))
            out.append(np.mean(ents))
    return np.array(out)


@pytest.mark.parametrize("far", [1e12, 1e20, 1e30, 3e38])
def test_ace_exact_at_extreme_spreads(far):
    """Cells past int64 (or +inf) are still told apart exactly: no wrapped integer cells."""
    rng = np.random.default_rng(3)
    base = (rng.normal(size=(4, 32, 4, 3)) * 0.3).astype(np.float32)
    r = Rollout(np.zeros((4, 2)), action_samples=base, success=True)
    ace = ActionChunkEntropy().fit([r])
    extreme = base.copy()
    extreme[0, :3] = np.float32(far)  # three points far away on every axis
    extreme[1, :5, :, 0] = np.float32(-far)  # five on one axis only
    extreme[2, 0] = np.float32(far)
    extreme[2, 1] = np.float32(-far)  # span overflows float32: every cell is +inf
    extreme[3, :16] = np.float32(far) * np.float32(0.5)
    extreme[3, 16:20] = np.float32(far)
    got = ace.score_steps({"action_samples": extreme})
    np.testing.assert_allclose(got, direct_ace_float_cells(extreme, ace.cell_), atol=1e-12)
    assert np.all(np.isfinite(got)) and got[0] > 0 and got[3] > 0


def test_ace_integrated_overflow_is_nan():
    """Velocities whose integral overflows float32 have no defined cells: the step is NaN."""
    rng = np.random.default_rng(4)
    v = rng.normal(size=(3, 16, 8, 2)).astype(np.float32)
    ace = ActionChunkEntropy(integrate_dt=1.0).fit(
        [Rollout(np.zeros((3, 2)), action_samples=v, success=True)]
    )
    v[1, 0] = np.float32(3e38)  # cumsum along the chunk reaches +inf
    got = ace.score_steps({"action_samples": v})
    assert np.isnan(got[1]) and np.all(np.isfinite(got[[0, 2]]))


def test_ace_zero_range_axis_takes_largest_range():
    samples = np.zeros((3, 8, 2, 2), dtype=np.float32)
    samples[..., 0] = np.random.default_rng(0).normal(size=(3, 8, 2))
    r = Rollout(np.zeros((3, 2)), action_samples=samples, success=True)
    ace = ActionChunkEntropy().fit([r])
    assert ace.cell_[1] == ace.cell_[0] > 0


def test_ace_identical_samples_have_zero_entropy():
    samples = np.ones((4, 32, 8, 3), dtype=np.float32)
    r = Rollout(np.zeros((4, 2)), action_samples=samples, success=True)
    np.testing.assert_array_equal(ActionChunkEntropy().fit([r]).score(r), 0.0)


def test_empirical_and_logit_entropy():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=(50, 64))
    expected = []
    for row in ids:
        p = np.bincount(row) / 64
        p = p[p > 0]
        expected.append(-(p * np.log2(p)).sum())
    np.testing.assert_allclose(empirical_entropy(ids), expected, atol=1e-12)
    logits = rng.normal(size=(20, 6)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(logits_entropy(logits), -(p * np.log2(p)).sum(1), atol=1e-10)
    np.testing.assert_allclose(logits_entropy(np.zeros((1, 8))), [3.0])


def test_discrete_entropy_scores(fit_set):
    r = fit_set[0]
    for source, field in (("logits", "action_logits"), ("samples", "action_ids")):
        s = DiscreteActionEntropy(source=source).fit(fit_set)
        assert s.requires == (field,)
        assert s.score(r).shape == (len(r),)
    with pytest.raises(ValueError, match="'source' parameter"):
        DiscreteActionEntropy(source="probs")
