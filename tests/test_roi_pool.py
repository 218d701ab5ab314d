import numpy as np
from conftest import ORACLE_SETTINGS, check_random_case
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv._random_cases import check_boxes_naming_no_image, to_backend, to_host


@ORACLE_SETTINGS
@given(data=st.data())
def test_matches_oracle(backend, dtype, data):
    check_random_case("roi_pool", backend, dtype, data)


def _call(backend, x, boxes, *args, **kw):
    return to_host(fastconv.roi_pool(to_backend(x, backend), to_backend(boxes, backend), *args,
                                     backend=backend, **kw))


def test_rounds_half_away_from_zero(backend):
    # x1 = 0.5 rounds to 1 (NumPy's rint would give 0), x2 = 2.5 rounds to 3 (rint: 2)
    x = np.arange(6, dtype=np.float64)[None, None, None, :].repeat(2, axis=2)
    out = _call(backend, x, np.array([[0, 0.5, 0.0, 2.5, 1.0]]), (1, 1))
    assert out[0, 0, 0, 0] == 3.0
    out = _call(backend, x, np.array([[0, 0.5, 0.0, 0.5, 1.0]]), (1, 2))
    np.testing.assert_array_equal(out[0, 0, 0], [1.0, 1.0])  # size clamped to 1, both bins see x=1


def test_max_over_bins(backend):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = _call(backend, x, [np.array([[0.0, 0.0, 3.0, 3.0]], np.float32)], 2)
    np.testing.assert_array_equal(out, [[[[5, 7], [13, 15]]]])


def test_box_outside_gives_zero(backend):
    out = _call(backend, np.ones((1, 1, 4, 4)), np.array([[0, 10.0, 10.0, 12.0, 12.0]]), 2)
    np.testing.assert_array_equal(out, 0.0)


def test_unchecked_boxes_naming_no_image_give_zeros(backend, dtype):
    check_boxes_naming_no_image("roi_pool", backend, dtype)
