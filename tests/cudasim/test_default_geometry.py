"""The shared-memory kernels at the launch geometry a GPU gets, in the simulator.

The rest of the simulator tests shrink the launches (8-thread blocks, 16-thread GEMM
tiles) so that tiny inputs run many blocks and every grid-stride loop.  The geometry a GPU
runs -- 256-thread blocks, 64 x 64 and 32 x 64 GEMM tiles with 16-deep reduction chunks,
conv2d_depthwise's 32 x 32 output tile with 4 loads in flight per thread, the box check's
256 threads -- indexes shared memory in other ways (each thread's share of a tile, the
loader's rows per thread), and otherwise would first run on a device.  Here each kernel
with shared memory runs once or twice at that geometry, with the conftest's checks on:
negative indices, shared memory poisoned per block, races between threads.  One or two
blocks per case (a 256-thread block takes seconds in the simulator).
"""

import numpy as np
import pytest
from numba import cuda

from fastconv import reference
from fastconv.backends import numba_cuda as backend
from fastconv.backends.numba_cuda import _launch

from .test_numba_cuda_kernels import call, rel_err

F4 = np.float32
ONE = (1, 1)


@pytest.fixture
def real_geometry():
    """The launch settings a GPU gets, but the wide GEMM tiles for any number of blocks."""
    saved = _launch.configure()
    defaults = _launch.Settings()
    _launch.configure(**{f: getattr(defaults, f) for f in defaults.__dataclass_fields__})
    _launch.configure(gemm_wide_min_blocks=1)
    yield
    _launch.configure(**{f: getattr(saved, f) for f in saved.__dataclass_fields__})


@pytest.mark.parametrize("k", [16, 64], ids=["narrow", "wide"])
def test_conv2d_gemm(real_geometry, launched, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1, 16, 7, 9)).astype(F4)  # 63 pixels: a partial tile
    w = rng.standard_normal((k, 16, 3, 3)).astype(F4)  # 144 = 9 reduction chunks of 16
    got = call(backend.conv2d, x, w, None, stride=ONE, padding=ONE, dilation=ONE, groups=1,
               out_hw=(7, 9))
    assert launched == ["conv2d_gemm"]
    assert rel_err(got, reference.conv2d(x, w, None, padding=1)) < 1e-5


def test_conv2d_depthwise(real_geometry, launched):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 37, 35)).astype(F4)  # 2 x 2 output tiles, partial ones
    w = rng.standard_normal((1, 1, 3, 3)).astype(F4)
    got = call(backend.conv2d, x, w, None, stride=ONE, padding=ONE, dilation=ONE, groups=1,
               out_hw=(37, 35))
    assert launched == ["conv2d_depthwise"]
    assert rel_err(got, reference.conv2d(x, w, None, padding=1)) < 1e-5


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("kg", [16, 64], ids=["narrow", "wide"])
def test_conv_transpose2d_gemm_and_its_exact_pass(real_geometry, launched, kg):
    from fastconv._random_cases import with_infinite_taps

    rng = np.random.default_rng(kg)
    x = rng.standard_normal((1, 16, 4, 5)).astype(F4)
    w = rng.standard_normal((16, kg, 3, 3)).astype(F4)
    if kg == 16:  # an infinite weight: the guarded exact pass recomputes the output
        w = with_infinite_taps(w)
    params = dict(stride=(2, 1), padding=ONE, dilation=ONE, groups=1)  # 2 phases: 2 blocks
    got = call(backend.conv_transpose2d, x, w, None, **params, out_hw=(7, 5))
    assert launched == ["conv_transpose2d_gemm", "nonfinite_blocks", "conv_transpose2d_direct"]
    # NaN positions and inf values as the oracle's, the rest within the tolerance
    assert rel_err(got, reference.conv_transpose2d(x, w, None, **params)) < 1e-5


@pytest.mark.parametrize("k", [16, 64], ids=["narrow", "wide"])
def test_deform_conv2d_gemm(real_geometry, launched, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1, 8, 6, 7)).astype(F4)
    offset = (rng.standard_normal((1, 18, 6, 7)) * 2).astype(F4)
    mask = rng.uniform(0, 1, (1, 9, 6, 7)).astype(F4)
    w = rng.standard_normal((k, 8, 3, 3)).astype(F4)
    got = call(backend.deform_conv2d, x, offset, w, None, mask, stride=ONE, padding=ONE,
               dilation=ONE, groups=1, offset_groups=1, out_hw=(6, 7))
    assert launched == ["deform_conv2d_gemm"]
    ref = reference.deform_conv2d(x, offset, w, None, padding=(1, 1), mask=mask)
    assert rel_err(got, ref) < 1e-5


def test_box_check(real_geometry):
    from fastconv.backends.numba_cuda import roi

    rng = np.random.default_rng(2)
    boxes = np.concatenate([rng.integers(0, 2, (300, 1)), rng.uniform(0, 9, (300, 4))],
                           axis=1).astype(F4)
    boxes[::7, 3] = np.nan
    boxes[::11, 0] = 2  # batch index out of range
    bad = int(np.sum(np.isnan(boxes[:, 3]) | (boxes[:, 0] >= 2)))
    assert roi.count_bad_boxes(cuda.to_device(boxes), 2) == bad
