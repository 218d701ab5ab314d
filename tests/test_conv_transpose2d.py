import numpy as np
from conftest import ORACLE_SETTINGS, check_random_case
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv._random_cases import to_backend, to_host


@ORACLE_SETTINGS
@given(data=st.data())
def test_matches_oracle(backend, dtype, data):
    check_random_case("conv_transpose2d", backend, dtype, data)


@ORACLE_SETTINGS
@given(data=st.data())
def test_is_the_adjoint_of_conv2d(backend, data):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>: a check that needs no oracle."""
    draw = data.draw
    groups, cpg, copg = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    hw = [d[a] * (k[a] - 1) + 1 + draw(st.integers(0, 6)) for a in range(2)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((2, groups * cpg, *hw))
    w = rng.standard_normal((groups * copg, cpg, *k))
    y = to_host(fastconv.conv2d(to_backend(x, backend), to_backend(w, backend), stride=s,
                                padding=p, dilation=d, groups=groups, backend=backend))
    g = rng.standard_normal(y.shape)
    # output_padding recovers the rows/columns that the forward stride dropped
    out_pad = tuple((hw[a] + 2 * p[a] - d[a] * (k[a] - 1) - 1) % s[a] for a in range(2))
    xt = to_host(fastconv.conv_transpose2d(to_backend(g, backend), to_backend(w, backend), stride=s,
                                           padding=p, output_padding=out_pad, groups=groups,
                                           dilation=d, backend=backend))
    assert xt.shape == x.shape
    lhs, rhs = float(np.sum(y * g)), float(np.sum(x * xt))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs), float(np.abs(y * g).sum()))
