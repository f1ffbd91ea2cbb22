import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failguard.windows import WindowState, window_scores

finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("kind", ["sum", "mean", "cumulative"])
@given(values=st.lists(finite, min_size=1, max_size=60), size=st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_streaming_equals_batch_bit_for_bit(kind, values, size):
    batch = window_scores(values, size, kind)
    state = WindowState(size, kind)
    stream = np.array([state.update(v) for v in values])
    np.testing.assert_array_equal(stream, batch)


@pytest.mark.parametrize("size", [1, 3, 7])
def test_sum_matches_definition(size):
    s = np.random.default_rng(0).random(30)
    expected = [s[max(0, t - size + 1) : t + 1].sum() for t in range(30)]
    np.testing.assert_allclose(window_scores(s, size), expected, rtol=1e-12)
    counts = np.minimum(np.arange(1, 31), size)
    np.testing.assert_allclose(window_scores(s, size, "mean"), np.array(expected) / counts)


def test_reset_and_bad_parameters():
    w = WindowState(2)
    w.update(5.0)
    w.reset()
    assert w.update(1.0) == 1.0
    with pytest.raises(ValueError, match="window size"):
        WindowState(0)
    with pytest.raises(ValueError, match="window kind"):
        window_scores([1.0], 2, "median")  # type: ignore[arg-type]
