import numpy as np
import pytest
from conftest import ORACLE_SETTINGS, check_random_case
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._random_cases import to_backend, to_host


@ORACLE_SETTINGS
@given(data=st.data())
def test_matches_oracle(backend, dtype, data):
    check_random_case("conv2d", backend, dtype, data)


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("k,d", [(2, 1), (4, 1), (3, 2), (2, 3)])
def test_same_padding_puts_odd_extra_at_bottom_right(backend, k, d):
    # total padding d(k-1) odd: the oracle pads one more pixel at the end; check it directly
    x, w = _rand(1, 2, 7, 6), _rand(3, 2, k, k, seed=1)
    out = to_host(fastconv.conv2d(to_backend(x, backend), to_backend(w, backend),
                                  padding="same", dilation=d, backend=backend))
    total = d * (k - 1)
    padded = np.pad(x, ((0, 0), (0, 0), (total // 2, total - total // 2),
                        (total // 2, total - total // 2)))
    np.testing.assert_allclose(out, reference.conv2d(padded, w, dilation=d), rtol=1e-10, atol=1e-10)
    assert out.shape == (1, 3, 7, 6)


def test_depthwise_equals_per_channel_convolution(backend):
    x, w = _rand(2, 4, 9, 8), _rand(4, 1, 3, 3, seed=2)
    out = to_host(fastconv.conv2d(to_backend(x, backend), to_backend(w, backend), padding=1,
                                  groups=4, backend=backend))
    for c in range(4):
        one = reference.conv2d(x[:, c:c + 1], w[c:c + 1], padding=1)
        np.testing.assert_allclose(out[:, c:c + 1], one, rtol=1e-10, atol=1e-10)


def test_array_likes_and_result_type():
    x = _rand(1, 1, 4, 4).tolist()
    w = [[[[1.0]]]]
    out = fastconv.conv2d(x, w)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.asarray(x))


def test_zero_input_channels_gives_bias():
    x, w, b = np.zeros((2, 0, 5, 5)), np.zeros((3, 0, 2, 2)), np.array([1.0, 2.0, 3.0])
    out = fastconv.conv2d(x, w, b)
    assert out.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(out[:, :, 0, 0], [[1, 2, 3]] * 2)
