import numpy as np
from conftest import ORACLE_SETTINGS, check_random_case
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv._random_cases import to_backend, to_host


@ORACLE_SETTINGS
@given(data=st.data())
def test_matches_oracle(backend, dtype, data):
    check_random_case("deform_conv2d", backend, dtype, data)


def _call(backend, *arrays, **kw):
    return to_host(fastconv.deform_conv2d(*[to_backend(a, backend) for a in arrays],
                                          backend=backend, **kw))


def test_zero_offsets_and_unit_mask_equal_conv2d(backend):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 9, 7)), rng.standard_normal((6, 2, 3, 2))  # 2 weight groups
    off = np.zeros((2, 2 * 2 * 6, 5, 4))  # 2 offset groups, 3x2 kernel, stride 2, pad 1
    mask = np.ones((2, 2 * 6, 5, 4))
    out = _call(backend, x, off, w, stride=2, padding=1, mask=to_backend(mask, backend))
    ref = fastconv.conv2d(x, w, stride=2, padding=1, groups=2)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


def test_whole_pixel_offset_shifts_the_image(backend):
    x = np.random.default_rng(4).standard_normal((1, 1, 6, 6))
    w = np.ones((1, 1, 1, 1))
    off = np.zeros((1, 2, 6, 6))
    off[:, 0], off[:, 1] = 1.0, -2.0  # sample at (y + 1, x - 2): zero where it leaves the image
    out = _call(backend, x, off, w)[0, 0]
    expected = np.zeros((6, 6))
    expected[:5, 2:] = x[0, 0, 1:, :4]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_samples_beyond_one_pixel_outside_are_zero(backend):
    x = np.ones((1, 1, 4, 4))
    w = np.ones((1, 1, 1, 1))
    off = np.zeros((1, 2, 4, 4))
    off[:, 0] = -1.0 - np.arange(4)[:, None]  # y + dy = -1 exactly for every row: zero
    out = _call(backend, x, off, w)
    np.testing.assert_array_equal(out, 0.0)
    off[:, 0] = -0.5 - np.arange(4)[:, None]  # y + dy = -0.5: half of the top-row corner
    np.testing.assert_allclose(_call(backend, x, off, w), 0.5, rtol=1e-12)
