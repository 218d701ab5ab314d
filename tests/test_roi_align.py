import numpy as np
import pytest
from conftest import ORACLE_SETTINGS, check_random_case
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv._random_cases import check_boxes_naming_no_image, to_backend, to_host


@ORACLE_SETTINGS
@given(data=st.data())
def test_matches_oracle(backend, dtype, data):
    check_random_case("roi_align", backend, dtype, data)


def _call(backend, x, boxes, *args, **kw):
    return to_host(fastconv.roi_align(to_backend(x, backend), to_backend(boxes, backend), *args,
                                      backend=backend, **kw))


def test_constant_image_gives_the_constant_inside(backend):
    x = np.full((2, 3, 10, 12), 2.5)
    boxes = np.array([[1, 1.0, 2.0, 8.0, 7.0], [0, 0.0, 0.0, 11.0, 9.0]])
    for aligned in (False, True):
        out = _call(backend, x, boxes, (3, 4), 1.0, -1, aligned)
        np.testing.assert_allclose(out, 2.5, rtol=1e-12)


def test_linear_image_is_sampled_exactly(backend):
    # bilinear interpolation reproduces a linear function: bin means are the bin-centre values
    h, w = 8, 9
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (3 * yy + xx)[None, None]
    boxes = np.array([[0, 1.0, 1.0, 7.0, 5.0]])
    out = _call(backend, x, boxes, (2, 3), 1.0, 2, True)[0, 0]
    # aligned: the box spans [0.5, 6.5] x [0.5, 4.5]; bins are 2 wide and 2 high
    cy = 0.5 + (np.arange(2) + 0.5) * 2.0
    cx = 0.5 + (np.arange(3) + 0.5) * 2.0
    np.testing.assert_allclose(out, 3 * cy[:, None] + cx[None, :], rtol=1e-12)


def test_list_of_boxes_equals_k5_format(backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 7, 7))
    per_image = [np.array([[0.5, 1.0, 5.0, 6.0]]), np.array([[1.0, 0.0, 6.0, 3.5], [2, 2, 3, 3.0]])]
    k5 = np.concatenate([np.c_[np.full(len(b), i), b] for i, b in enumerate(per_image)])
    a = _call(backend, x, per_image, 2, 1.0, 2, False)
    b = _call(backend, x, k5, 2, 1.0, 2, False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [0])
def test_no_boxes(backend, k):
    out = _call(backend, np.ones((1, 3, 5, 5)), np.zeros((k, 5)), (2, 2))
    assert out.shape == (0, 3, 2, 2)


def test_sample_exactly_on_the_minus_one_edge_counts(backend):
    # x samples at -2.5 + (i + 0.5) * 13 / 13: the one at exactly -1 lies inside (clamped to
    # column 0). Reassociating the division (1.5 * (13 * (1/13)) -> 1.4999999) would move it
    # outside: geometry must be computed in torchvision's order, without fast-math.
    x = np.random.default_rng(0).standard_normal((3, 2, 9, 6))
    boxes = np.array([[2.0, -6.0, 27.0, 33.0, 42.0]])
    out = _call(backend, x, boxes, (3, 1), 1 / 3, 0, True)
    ref = fastconv.reference.roi_align(x, boxes, (3, 1), 1 / 3, 0, True)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sr", [2, -1])
def test_unchecked_boxes_naming_no_image_give_zeros(backend, dtype, sr):
    check_boxes_naming_no_image("roi_align", backend, dtype, sampling_ratio=sr, aligned=True)
