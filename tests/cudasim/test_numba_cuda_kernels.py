"""Every numba.cuda kernel, run by the CUDA simulator, against the NumPy oracle.

The backend functions are called directly with normalised arguments (pairs, padding =
(top, left), ``out_hw``), as ``fastconv._dispatch`` calls them.  Each op x dtype runs a
handful of small configurations chosen to hit the awkward cases: asymmetric stride /
padding / dilation, non-square kernels, groups and offset groups, mask / no mask, no bias,
boxes outside the image, aligned, adaptive sampling, NaN data; conv ops run through both
the direct and the implicit-GEMM kernels (``path`` fixture).  Inputs must never be written.
"""

import os

import numpy as np
import pytest
from numba import cuda

from fastconv import reference
from fastconv._random_cases import with_infinite_taps
from fastconv.backends import numba_cuda as backend

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-4, np.float64: 1e-10}


# ----------------------------------------------------------------------------- helpers


def rel_err(out, ref):
    """``max|out - ref| / max(1, max|ref|)`` over finite values; NaN/Inf must coincide."""
    out = np.asarray(out, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if out.size == 0:
        return 0.0
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref), err_msg="NaN positions differ")
    inf = np.isinf(ref)
    np.testing.assert_array_equal(out[inf], ref[inf], err_msg="Inf values differ")
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0
    scale = max(1.0, float(np.abs(ref[fin]).max()))
    return float(np.abs(out[fin] - ref[fin]).max() / scale)


def call(fn, *arrays, **params):
    """Run backend op ``fn`` on device copies of ``arrays``; check they are not written."""
    devs = [None if a is None else cuda.to_device(np.ascontiguousarray(a)) for a in arrays]
    out = fn(*devs, **params)
    for a, d in zip(arrays, devs, strict=True):
        if a is not None:
            np.testing.assert_array_equal(d.copy_to_host(), a, err_msg="an input was written")
    return out.copy_to_host()


def conv_out(size, k, s, p_lo, p_hi, d):
    return (size + p_lo + p_hi - d * (k - 1) - 1) // s + 1


def data(rng, shape, dtype, nan=False):
    a = rng.standard_normal(shape).astype(dtype)
    if nan and a.size:
        a.flat[rng.integers(a.size)] = np.nan
    return a


# ----------------------------------------------------------------------------- the simulator


@pytest.mark.parametrize("memory", ["global", "shared", "local"])
def test_negative_indices_are_refused_as_out_of_bounds(memory):
    """numpy would wrap ``a[-1]`` to the last element where a GPU reads outside the array;
    the conftest makes it an error in every kind of kernel array (see its docstring)."""
    from numba import float64

    @cuda.jit
    def shifted(a, out):
        i = cuda.threadIdx.x
        s = cuda.shared.array(4, float64)
        t = cuda.local.array(4, float64)
        s[i] = a[i]
        t[i] = a[i]
        cuda.syncthreads()
        if memory == "global":
            out[i] = a[i - 1]
        elif memory == "shared":
            out[i] = s[i - 1]
        else:
            out[i] = t[i - 1]

    a = cuda.to_device(np.arange(4.0))
    with pytest.raises(IndexError, match="negative index"):
        shifted[1, 4](a, cuda.device_array(4))


def _neighbour_kernel(first_barrier, second_barrier):
    """Each thread stages a[i] in shared memory and reads its neighbour's, twice over."""
    from numba import float64

    @cuda.jit
    def neighbour(a, out):
        i = cuda.threadIdx.x
        s = cuda.shared.array(4, float64)
        for r in range(2):
            s[i] = a[i] + r
            if first_barrier:
                cuda.syncthreads()
            out[r, i] = s[(i + 1) % 4]
            if second_barrier:
                cuda.syncthreads()

    return neighbour


@pytest.mark.parametrize("first, second", [(True, True), (False, True), (True, False)])
def test_shared_memory_races_are_reported(first, second):
    """A read of another thread's write, or a write over another thread's read, with no
    barrier between them is an error (the conftest's checked_memory)."""
    from ._checked_memory import SharedMemoryRace

    a = np.arange(4.0)
    out = cuda.device_array((2, 4))
    kernel = _neighbour_kernel(first, second)
    if first and second:
        kernel[1, 4](cuda.to_device(a), out)
        np.testing.assert_array_equal(out.copy_to_host(), [np.roll(a, -1), np.roll(a, -1) + 1])
    else:
        with pytest.raises(SharedMemoryRace, match="no syncthreads between"):
            kernel[1, 4](cuda.to_device(a), out)


def test_each_block_starts_with_poisoned_shared_memory():
    """What a block did not write reads as NaN, not the previous block's value or zero."""
    from numba import float64, int32

    @cuda.jit
    def leftovers(out, ints):
        b = cuda.blockIdx.x
        s = cuda.shared.array(2, float64)
        d = cuda.shared.array(0, float64)
        k = cuda.shared.array(2, int32)
        if b == 0:
            s[0] = 1.0
            d[0] = 1.0
            k[0] = 1
        cuda.syncthreads()
        out[b, 0] = s[0]
        out[b, 1] = d[0]
        ints[b] = k[0]

    out, ints = cuda.device_array((2, 2)), cuda.device_array(2, np.int32)
    leftovers[2, 1, 0, 16](out, ints)
    got = out.copy_to_host()
    assert (got[0] == 1).all() and np.isnan(got[1]).all()
    assert list(ints.copy_to_host()) == [1, -(2**30)]


# ----------------------------------------------------------------------------- conv2d

CONV2D = [
    # N, C, H, W, K, (kH, kW), stride, padding (top, left), (bottom, right), dilation, groups, bias
    (2, 4, 7, 6, 6, (3, 2), (2, 1), (1, 0), (1, 0), (1, 2), 2, True),
    (1, 3, 5, 8, 3, (1, 3), (1, 3), (0, 2), (0, 2), (2, 1), 3, False),  # depthwise
    (1, 2, 5, 6, 5, (2, 4), (1, 1), (0, 3), (1, 3), (1, 2), 1, True),  # "same", odd extra pad
    (2, 3, 4, 5, 7, (2, 2), (3, 2), (2, 1), (2, 1), (1, 1), 1, False),  # K=7: partial tiles
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(CONV2D)))
def test_conv2d(cfg, dtype, path):
    N, C, H, W, K, (kH, kW), s, p, p_hi, d, g, has_bias = CONV2D[cfg]
    rng = np.random.default_rng(cfg)
    x = data(rng, (N, C, H, W), dtype, nan=cfg == 0)
    w = data(rng, (K, C // g, kH, kW), dtype)
    b = data(rng, (K,), dtype) if has_bias else None
    out_hw = (
        conv_out(H, kH, s[0], p[0], p_hi[0], d[0]),
        conv_out(W, kW, s[1], p[1], p_hi[1], d[1]),
    )
    got = call(backend.conv2d, x, w, b, stride=s, padding=p, dilation=d, groups=g, out_hw=out_hw)
    pad = "same" if p != p_hi else p
    ref = reference.conv2d(x, w, b, stride=s, padding=pad, dilation=d, groups=g)
    assert got.dtype == dtype
    assert rel_err(got, ref) <= TOL[dtype]


# ----------------------------------------------------------------------------- conv2d: depthwise

DEPTHWISE = [
    # N, C, H, W, multiplier, (kH, kW), stride, padding (top, left), (bottom, right), dilation,
    # bias, NaN in the input
    (2, 3, 9, 11, 2, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), True, True),  # multiplier 2
    (1, 2, 13, 10, 1, (3, 3), (1, 1), (2, 2), (2, 2), (2, 2), False, False),  # dilation 2
    (1, 2, 12, 14, 3, (3, 2), (1, 2), (3, 0), (3, 3), (3, 3), True, False),  # dilation 3
    (2, 2, 6, 5, 1, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), True, True),  # 1 x 1
    (1, 3, 10, 9, 1, (5, 5), (1, 1), (2, 2), (2, 2), (1, 1), False, True),  # 5 x 5, "same"
    (1, 2, 7, 9, 2, (2, 5), (2, 1), (1, 3), (0, 1), (1, 2), True, False),  # non-square, asym.
    # padding (9 / 11) beyond the kernel extent: whole tiles and whole rows of tiles are padding
    (1, 2, 3, 4, 1, (2, 2), (1, 1), (9, 11), (10, 12), (1, 1), True, False),
    (3, 1, 8, 17, 4, (3, 1), (3, 2), (0, 2), (2, 0), (2, 1), False, True),  # N=3, C=1, K=4
]


def run_depthwise(cfg, dtype):
    N, C, H, W, M, (kH, kW), s, p, p_hi, d, has_bias, nan = cfg
    rng = np.random.default_rng([hash(cfg) % 2**32])
    x = data(rng, (N, C, H, W), dtype, nan=nan)
    w = data(rng, (C * M, 1, kH, kW), dtype)
    b = data(rng, (C * M,), dtype) if has_bias else None
    out_hw = (
        conv_out(H, kH, s[0], p[0], p_hi[0], d[0]),
        conv_out(W, kW, s[1], p[1], p_hi[1], d[1]),
    )
    got = call(backend.conv2d, x, w, b, stride=s, padding=p, dilation=d, groups=C, out_hw=out_hw)
    # the oracle pads symmetrically: pad the input here (zeros, as the oracle's own padding)
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p_hi[0]), (p[1], p_hi[1])))
    ref = reference.conv2d(xp, w, b, stride=s, padding=0, dilation=d, groups=C)
    return got, ref


# ----------------------------------------------------------------------------- conv2d: grouped

GROUPED = [
    # N, Cg, Kg, groups, H, W, (kH, kW), stride, padding (top, left), (bottom, right),
    # dilation, bias, NaN in the input
    (2, 2, 2, 2, 5, 6, (3, 3), (2, 1), (1, 1), (1, 1), (1, 1), True, True),  # KB 2, N=2
    (1, 3, 3, 1, 5, 5, (3, 2), (1, 1), (0, 2), (1, 0), (1, 1), False, False),  # KB 4, tail
    (1, 2, 5, 2, 6, 5, (2, 3), (1, 2), (2, 1), (0, 2), (2, 1), True, True),  # KB 8, tail
    (2, 3, 8, 2, 4, 5, (3, 3), (1, 1), (1, 1), (1, 1), (1, 2), False, False),  # KB 8
    (1, 2, 12, 1, 4, 4, (2, 2), (2, 2), (1, 0), (0, 1), (1, 1), True, False),  # 2 chunks, tail
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(GROUPED)))
def test_conv2d_grouped(cfg, dtype, launched):
    """Several output channels of a group per thread (``conv2d_grouped``, GEMM disabled)."""
    from fastconv.backends.numba_cuda import _launch

    N, Cg, Kg, g, H, W, (kH, kW), s, p, p_hi, d, has_bias, nan = GROUPED[cfg]
    rng = np.random.default_rng(100 + cfg)
    x = data(rng, (N, Cg * g, H, W), dtype, nan=nan)
    w = data(rng, (Kg * g, Cg, kH, kW), dtype)
    b = data(rng, (Kg * g,), dtype) if has_bias else None
    out_hw = (
        conv_out(H, kH, s[0], p[0], p_hi[0], d[0]),
        conv_out(W, kW, s[1], p[1], p_hi[1], d[1]),
    )
    old = _launch.configure(gemm_min_channels=10**9)
    try:
        got = call(backend.conv2d, x, w, b, stride=s, padding=p, dilation=d, groups=g,
                   out_hw=out_hw)
    finally:
        _launch.configure(gemm_min_channels=old.gemm_min_channels)
    assert launched == ["conv2d_grouped"]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p_hi[0]), (p[1], p_hi[1])))
    ref = reference.conv2d(xp, w, b, stride=s, padding=0, dilation=d, groups=g)
    assert got.dtype == dtype
    if nan:
        assert np.isnan(ref).any()
    assert rel_err(got, ref) <= TOL[dtype]


def test_conv2d_grouped_kb():
    from fastconv.backends.numba_cuda import conv

    assert [conv.grouped_kb(k) for k in (2, 3, 4, 5, 8, 9, 12, 100)] == [2, 4, 4, 8, 8, 8, 8, 8]


def test_conv2d_one_output_channel_per_group_runs_the_direct_kernel(launched):
    from fastconv.backends.numba_cuda import _launch

    rng = np.random.default_rng(7)
    x = data(rng, (1, 4, 4, 4), np.float32)
    w = data(rng, (2, 2, 3, 3), np.float32)
    old = _launch.configure(gemm_min_channels=10**9)
    try:
        got = call(backend.conv2d, x, w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                   groups=2, out_hw=(4, 4))
    finally:
        _launch.configure(gemm_min_channels=old.gemm_min_channels)
    assert launched == ["conv2d_direct"]
    assert rel_err(got, reference.conv2d(x, w, None, padding=1, groups=2)) <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(DEPTHWISE)))
def test_conv2d_depthwise(cfg, dtype, path, launched):
    """conv2d_depthwise whatever the GEMM thresholds (``path``): the tests' 8-thread blocks
    make 4 x 8 output tiles, so every case runs several tiles through 2 grid-capped blocks."""
    got, ref = run_depthwise(DEPTHWISE[cfg], dtype)
    assert launched == ["conv2d_depthwise"]
    assert got.dtype == dtype
    assert rel_err(got, ref) <= TOL[dtype]


def test_conv2d_depthwise_config_of_conv2d_runs_the_depthwise_kernel(path, launched):
    """CONV2D's depthwise case (groups = C, one input channel each) goes to the new kernel."""
    N, C, H, W, K, k, s, p, p_hi, d, g, has_bias = CONV2D[1]
    assert g == C == K
    test_conv2d(1, np.float64, path)
    assert launched == ["conv2d_depthwise"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_depthwise_nan_times_zero_and_inf_weights(dtype, launched):
    """Every in-bounds input is multiplied, as by the oracle: a NaN under a zero weight still
    gives NaN; padding is a zero that is multiplied too (0 * inf = NaN, as the oracle's
    zero-padded input gives), never a skipped tap."""
    rng = np.random.default_rng(9)
    x = data(rng, (1, 2, 6, 7), dtype)
    x[0, 0, 2, 3] = np.nan
    w = data(rng, (2, 1, 3, 3), dtype)
    w[0, 0, 1, 1] = 0.0  # the centre tap sees the NaN for output (2, 3) only
    w[1, 0, 0, 0] = np.inf  # a padding tap for the top row and left column
    conv_args = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2, out_hw=(6, 7))
    got = call(backend.conv2d, x, w, None, **conv_args)
    ref = reference.conv2d(x, w, None, padding=1, groups=2)
    assert launched == ["conv2d_depthwise"]
    assert np.isnan(got[0, 0, 2, 3]) and np.isnan(ref[0, 0, 2, 3])
    assert np.isnan(got[0, 1, 0, :]).all() and np.isnan(got[0, 1, :, 0]).all()
    assert rel_err(got, ref) <= TOL[dtype]


def test_conv2d_depthwise_falls_back_where_the_tile_does_not_fit(path, launched):
    """A dilation of 100 makes the 8 x 4 output tile read a 708 x 204 input tile (over the 48
    KiB of shared memory): the other kernels take it, with the same result."""
    from fastconv.backends.numba_cuda import conv

    assert conv.depthwise_geometry(3, 3, 1, 1, 100, 100, 8, 8) is None
    got, ref = run_depthwise((1, 2, 205, 203, 1, (3, 3), (1, 1), (0, 1), (0, 1), (100, 100),
                              True, True), np.float64)
    assert launched and "conv2d_depthwise" not in launched
    assert rel_err(got, ref) <= TOL[np.float64]


def test_depthwise_geometry():
    """The production block (256 threads) is a 32 x 8 thread grid computing a 32 x 32 tile;
    the shared memory is the input tile with its halo; a tile over 48 KiB gives None."""
    from fastconv.backends.numba_cuda import conv

    assert conv.depthwise_block(256) == (32, 8)
    assert conv.depthwise_block(8) == (4, 2)  # the tests' blocks: two thread rows
    assert conv.depthwise_block(1) == (1, 1)
    assert conv.depthwise_geometry(3, 3, 1, 1, 1, 1, 4, 256) == (32, 8, 34 * 34 * 4)
    assert conv.depthwise_geometry(3, 3, 2, 2, 1, 1, 8, 256) == (32, 8, 65 * 65 * 8)
    assert conv.depthwise_geometry(5, 3, 1, 2, 3, 1, 4, 8) == (4, 2, 20 * 9 * 4)
    assert conv.depthwise_geometry(3, 3, 1, 1, 36, 36, 4, 256) == (32, 8, 104 * 104 * 4)
    assert conv.depthwise_geometry(3, 3, 1, 1, 36, 36, 8, 256) is None


# ----------------------------------------------------------------------------- conv_transpose2d

CONVT = [
    # N, C_in, H, W, K_per_group, (kH, kW), stride, padding, output_padding, dilation, groups, bias
    (2, 4, 3, 4, 3, (3, 4), (2, 3), (1, 2), (1, 2), (1, 2), 2, True),
    (1, 3, 4, 2, 2, (2, 1), (3, 1), (0, 0), (2, 0), (2, 1), 1, True),  # kH < sH: bias-only rows
    (1, 2, 3, 3, 4, (3, 3), (2, 2), (1, 1), (1, 1), (2, 2), 1, False),  # gcd(s, d) = 2
    (2, 2, 2, 3, 5, (2, 3), (1, 2), (1, 0), (0, 1), (1, 1), 2, False),
    # 11 x 11 output at stride 2: phases of 36, 30, 30 and 25 pixels, so the GEMM's 5 pixel
    # tiles (of 8) per phase run past the end of the smallest phase, which skips the last one
    (1, 2, 5, 5, 4, (3, 3), (2, 2), (0, 0), (0, 0), (1, 1), 1, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(CONVT)))
def test_conv_transpose2d(cfg, dtype, path):
    N, C, H, W, Kg, (kH, kW), s, p, op, d, g, has_bias = CONVT[cfg]
    rng = np.random.default_rng(100 + cfg)
    x = data(rng, (N, C, H, W), dtype, nan=cfg == 3)
    w = data(rng, (C, Kg, kH, kW), dtype)
    b = data(rng, (Kg * g,), dtype) if has_bias else None
    out_hw = tuple(
        (H_ - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + o_ + 1
        for H_, s_, p_, d_, k_, o_ in zip((H, W), s, p, d, (kH, kW), op, strict=True)
    )
    got = call(
        backend.conv_transpose2d, x, w, b, stride=s, padding=p, dilation=d, groups=g, out_hw=out_hw
    )
    ref = reference.conv_transpose2d(
        x, w, b, stride=s, padding=p, output_padding=op, groups=g, dilation=d
    )
    assert got.dtype == dtype
    assert rel_err(got, ref) <= TOL[dtype]


# ----------------------------------------------------------------------------- deform_conv2d

DEFORM = [
    # N, C, H, W, K, (kH, kW), stride, padding, dilation, groups, offset_groups, mask, bias, scale
    (2, 4, 5, 6, 4, (3, 2), (1, 2), (1, 0), (2, 1), 2, 2, True, True, 2.0),
    (1, 3, 4, 4, 5, (2, 2), (1, 1), (1, 1), (1, 1), 1, 3, False, False, 0.5),
    (1, 2, 3, 5, 3, (1, 3), (2, 1), (0, 1), (1, 1), 1, 1, True, False, 4.0),
    (1, 4, 4, 3, 6, (2, 1), (1, 1), (0, 0), (1, 1), 2, 1, False, True, 0.5),  # half pixels
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(DEFORM)))
def test_deform_conv2d(cfg, dtype, path):
    N, C, H, W, K, (kH, kW), s, p, d, g, G, has_mask, has_bias, scale = DEFORM[cfg]
    rng = np.random.default_rng(200 + cfg)
    Ho = conv_out(H, kH, s[0], p[0], p[0], d[0])
    Wo = conv_out(W, kW, s[1], p[1], p[1], d[1])
    x = data(rng, (N, C, H, W), dtype, nan=cfg == 1)
    offset = rng.standard_normal((N, 2 * G * kH * kW, Ho, Wo)) * scale
    if cfg == 3:
        offset = np.round(offset * 2) / 2  # whole and half pixels: samples on corners / edges
    offset = offset.astype(dtype)
    mask = rng.uniform(0, 1, (N, G * kH * kW, Ho, Wo)).astype(dtype) if has_mask else None
    w = data(rng, (K, C // g, kH, kW), dtype)
    b = data(rng, (K,), dtype) if has_bias else None
    got = call(
        backend.deform_conv2d,
        x,
        offset,
        w,
        b,
        mask,
        stride=s,
        padding=p,
        dilation=d,
        groups=g,
        offset_groups=G,
        out_hw=(Ho, Wo),
    )
    ref = reference.deform_conv2d(x, offset, w, b, stride=s, padding=p, dilation=d, mask=mask)
    assert got.dtype == dtype
    assert rel_err(got, ref) <= TOL[dtype]


def test_deform_conv2d_nan_offset():
    """A NaN sample coordinate gives a NaN sample (as the oracle), never an out-of-bounds read."""
    rng = np.random.default_rng(7)
    x = data(rng, (1, 2, 4, 4), np.float64)
    offset = rng.standard_normal((1, 2, 4, 4))
    offset[0, 0, 1, 2] = np.nan
    w = data(rng, (3, 2, 1, 1), np.float64)
    got = call(
        backend.deform_conv2d,
        x,
        offset,
        w,
        None,
        None,
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        groups=1,
        offset_groups=1,
        out_hw=(4, 4),
    )
    ref = reference.deform_conv2d(x, offset, w)
    assert rel_err(got, ref) <= TOL[np.float64]
    assert np.isnan(got[0, :, 1, 2]).all()


# ----------------------------------------------------------------------------- inf weights


ONE = (1, 1)
#: (op, input shape, weight shape, stride, padding, dilation, groups)
INFINITE_WEIGHT_CASES = [
    ("conv2d", (1, 4, 5, 6), (2, 2, 3, 3), ONE, ONE, ONE, 2),  # 1 channel/group: direct
    ("conv2d", (1, 4, 5, 6), (8, 4, 3, 3), (2, 1), ONE, ONE, 1),  # grouped KB 8, or GEMM
    ("conv2d", (2, 3, 5, 6), (6, 1, 3, 3), ONE, (2, 2), (2, 2), 3),  # depthwise
    ("conv2d", (1, 3, 4, 5), (4, 3, 1, 1), ONE, ONE, ONE, 1),  # a ring of pure padding
    ("conv_transpose2d", (1, 4, 4, 5), (4, 3, 4, 4), (2, 2), ONE, ONE, 1),
    ("conv_transpose2d", (1, 2, 4, 5), (2, 5, 6, 6), (3, 3), ONE, ONE, 1),
    ("conv_transpose2d", (2, 4, 3, 4), (4, 2, 3, 3), (2, 1), ONE, (2, 1), 2),
    ("deform_conv2d", (1, 2, 5, 6), (5, 2, 3, 3), ONE, ONE, ONE, 1),
]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_weights_propagate_as_in_the_oracle(dtype, path, launched):
    """Every kernel path gives the oracle's NaN/inf for infinite weights: conv2d multiplies
    its padding zeros (0 * inf = NaN, not a skipped tap), deform_conv2d its out-of-image
    samples, and conv_transpose2d only real inputs (after its GEMM, which multiplies
    out-of-image zeros, nonfinite_blocks sends it through the exact gathering pass)."""
    rng = np.random.default_rng(11)
    for op, xs, ws, s, p, d, g in INFINITE_WEIGHT_CASES:
        x = data(rng, xs, dtype)
        w = with_infinite_taps(data(rng, ws, dtype))  # +inf first tap, -inf last
        params = dict(stride=s, padding=p, dilation=d, groups=g)
        if op == "conv_transpose2d":
            out_hw = tuple((n - 1) * s_ - 2 * p_ + d_ * (k - 1) + 1
                           for n, s_, p_, d_, k in zip(xs[2:], s, p, d, ws[2:], strict=True))
            got = call(backend.conv_transpose2d, x, w, None, **params, out_hw=out_hw)
            ref = reference.conv_transpose2d(x, w, None, **params)
        else:
            out_hw = tuple(conv_out(n, k, s_, p_, p_, d_)
                           for n, k, s_, p_, d_ in zip(xs[2:], ws[2:], s, p, d, strict=True))
            if op == "conv2d":
                got = call(backend.conv2d, x, w, None, **params, out_hw=out_hw)
                ref = reference.conv2d(x, w, None, **params)
            else:
                offset = (rng.standard_normal((xs[0], 2 * ws[2] * ws[3], *out_hw)) * 2)
                offset = offset.astype(dtype)
                got = call(backend.deform_conv2d, x, offset, w, None, None, **params,
                           offset_groups=1, out_hw=out_hw)
                ref = reference.deform_conv2d(x, offset, w, None, stride=s, padding=p,
                                              dilation=d)
        assert not np.isfinite(ref).all()
        assert rel_err(got, ref) <= TOL[dtype], (op, xs, ws)
    conv_kernels = {"direct": {"conv2d_direct", "conv2d_grouped", "conv2d_depthwise",
                               "conv_transpose2d_direct"},
                    "gemm": {"conv2d_gemm", "conv2d_depthwise", "conv_transpose2d_gemm",
                             "nonfinite_blocks", "conv_transpose2d_direct"}}[path]
    assert conv_kernels <= set(launched), sorted(set(launched))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 * inf
@pytest.mark.parametrize("path", ["gemm"], indirect=True)
def test_the_exact_pass_flags_are_kept_per_stream_and_rewritten_each_call(path):
    """After a transposed GEMM the flag buffer is reused call after call (no allocation)
    and rewritten each time: a finite weight after an infinite one, and the reverse, each
    leave the flags that describe them and give the oracle."""
    from fastconv.backends.numba_cuda import _launch

    rng = np.random.default_rng(5)
    x = data(rng, (1, 4, 4, 5), np.float64)
    finite = data(rng, (4, 3, 4, 4), np.float64)
    infinite = with_infinite_taps(finite)
    params = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1)
    _launch._scratch_cache.clear()
    for w in (finite, infinite, finite, infinite):
        got = call(backend.conv_transpose2d, x, w, None, **params, out_hw=(8, 10))
        ref = reference.conv_transpose2d(x, w, None, **params)
        assert np.isfinite(ref).all() == (w is finite)
        assert rel_err(got, ref) <= TOL[np.float64]
        (flags,) = _launch._scratch_cache.values()  # one buffer, rewritten by every call
        assert flags.copy_to_host().any() == (w is infinite)


def test_stream_scratch_is_one_buffer_per_stream_thread_and_size():
    import threading

    from fastconv.backends.numba_cuda import _launch

    a = _launch.stream_scratch(3, np.int32, 0)
    assert a.shape == (3,) and a.dtype == np.int32
    assert _launch.stream_scratch(3, np.int32, 0) is a
    assert _launch.stream_scratch(4, np.int32, 0) is not a
    assert _launch.stream_scratch(3, np.int32, (0, 1234)) is not a
    other = []
    t = threading.Thread(target=lambda: other.append(_launch.stream_scratch(3, np.int32, 0)))
    t.start()
    t.join()
    assert other[0] is not a  # the per-thread default stream differs between threads


# ----------------------------------------------------------------------------- roi ops


def make_boxes(rng, N, H, W, scale, K, dtype):
    """(K, 5) boxes: random, partly/wholly outside, half-pixel corners, degenerate."""
    span = np.array([W + 4, H + 4]) / scale
    xy1 = rng.uniform(-3 / scale, span, (K, 2))
    size = rng.uniform(0, span, (K, 2))
    xy1[1::3] = np.round(xy1[1::3] * scale * 2) / 2 / scale  # ties for rounding
    size[1::3] = np.round(size[1::3] * scale * 2) / 2 / scale
    size[2::5, 0] = 0  # degenerate
    boxes = np.concatenate([xy1, xy1 + size], axis=1)
    boxes[-1] = [-8 / scale, -8 / scale, -2 / scale, -3 / scale]  # wholly outside
    batch = rng.integers(0, N, (K, 1)).astype(np.float64)
    return np.concatenate([batch, boxes], axis=1).astype(dtype)


ROI_ALIGN = [
    # N, C, H, W, K, (PH, PW), scale, sampling_ratio, aligned
    (2, 5, 7, 6, 5, (3, 2), 0.5, 2, False),
    (1, 3, 6, 8, 4, (2, 3), 1.0, -1, True),
    (2, 1, 5, 5, 6, (1, 4), 0.25, 0, False),
    (1, 4, 4, 7, 3, (2, 2), 1.0, 1, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(ROI_ALIGN)))
def test_roi_align(cfg, dtype):
    N, C, H, W, K, out, scale, sr, aligned = ROI_ALIGN[cfg]
    rng = np.random.default_rng(300 + cfg)
    x = data(rng, (N, C, H, W), dtype, nan=cfg == 2)
    rois = make_boxes(rng, N, H, W, scale, K, dtype)
    got = call(
        backend.roi_align,
        x,
        rois,
        output_size=out,
        spatial_scale=scale,
        sampling_ratio=sr,
        aligned=aligned,
    )
    ref = reference.roi_align(x, rois, out, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
    assert got.dtype == dtype
    assert rel_err(got, ref) <= TOL[dtype]


ROI_POOL = [
    # N, C, H, W, K, (PH, PW), scale
    (2, 3, 7, 6, 6, (3, 3), 0.5),
    (1, 2, 6, 8, 5, (2, 4), 1.0),
    (2, 1, 5, 4, 4, (4, 1), 0.25),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", range(len(ROI_POOL)))
def test_roi_pool(cfg, dtype):
    N, C, H, W, K, out, scale = ROI_POOL[cfg]
    rng = np.random.default_rng(400 + cfg)
    x = data(rng, (N, C, H, W), dtype, nan=cfg == 0)
    if cfg == 1:
        x[0, 0, :2, :] = -np.inf  # bins of only -inf give -FLT_MAX
    rois = make_boxes(rng, N, H, W, scale, K, dtype)
    got = call(backend.roi_pool, x, rois, output_size=out, spatial_scale=scale)
    ref = reference.roi_pool(x, rois, out, spatial_scale=scale)
    assert got.dtype == dtype
    assert rel_err(got, ref) <= TOL[dtype]


# ----------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_and_boxes(dtype, path):
    z = lambda *s: cuda.to_device(np.zeros(s, dtype))  # noqa: E731
    conv = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    assert backend.conv2d(z(0, 2, 4, 4), z(3, 2, 2, 2), None, out_hw=(3, 3), **conv).shape == (
        0,
        3,
        3,
        3,
    )
    assert backend.conv2d(z(1, 2, 4, 4), z(0, 2, 2, 2), None, out_hw=(3, 3), **conv).shape == (
        1,
        0,
        3,
        3,
    )
    assert backend.conv_transpose2d(
        z(0, 2, 4, 4), z(2, 3, 2, 2), None, out_hw=(5, 5), **conv
    ).shape == (0, 3, 5, 5)
    out = backend.deform_conv2d(
        z(0, 2, 4, 4),
        z(0, 8, 3, 3),
        z(3, 2, 2, 2),
        None,
        None,
        offset_groups=1,
        out_hw=(3, 3),
        **conv,
    )
    assert out.shape == (0, 3, 3, 3)
    out = backend.roi_align(
        z(2, 3, 4, 4),
        z(0, 5),
        output_size=(2, 2),
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=False,
    )
    assert out.shape == (0, 3, 2, 2) and out.dtype == dtype
    out = backend.roi_pool(z(2, 3, 4, 4), z(0, 5), output_size=(2, 3), spatial_scale=1.0)
    assert out.shape == (0, 3, 2, 3) and out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_input_channels_is_bias(dtype, path):
    """C_in = 0: an empty reduction, the output is the bias."""
    b = np.arange(3, dtype=dtype)
    x = np.zeros((2, 0, 4, 5), dtype)
    conv = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    got = call(backend.conv2d, x, np.zeros((3, 0, 2, 2), dtype), b, out_hw=(3, 4), **conv)
    np.testing.assert_array_equal(got, np.broadcast_to(b[None, :, None, None], (2, 3, 3, 4)))
    got = call(backend.conv_transpose2d, x, np.zeros((0, 3, 2, 2), dtype), b, out_hw=(5, 6), **conv)
    np.testing.assert_array_equal(got, np.broadcast_to(b[None, :, None, None], (2, 3, 5, 6)))


# ----------------------------------------------------------------------------- plumbing


@pytest.mark.parametrize("dtype", DTYPES)
def test_ascontiguous_views(dtype):
    rng = np.random.default_rng(5)
    host = data(rng, (2, 3, 5, 6), dtype)
    d = cuda.to_device(host)
    assert backend.ascontiguous(d) is d
    views = {
        "step": (d[:, :, ::2, 1::2], host[:, :, ::2, 1::2]),
        "negative": (d[:, ::-1, :, ::-1], host[:, ::-1, :, ::-1]),
        "transposed": (d.transpose((0, 1, 3, 2)), host.transpose(0, 1, 3, 2)),
    }
    for name, (view, expect) in views.items():
        assert not view.is_c_contiguous(), name
        c = backend.ascontiguous(view)
        assert c.is_c_contiguous(), name
        np.testing.assert_array_equal(c.copy_to_host(), expect, err_msg=name)
    np.testing.assert_array_equal(d.copy_to_host(), host)
    for rank in (1, 2, 3):
        h = data(rng, (4, 5, 6)[:rank], dtype)
        sl = (slice(None, None, -1),) * rank
        c = backend.ascontiguous(cuda.to_device(h)[sl])
        np.testing.assert_array_equal(c.copy_to_host(), h[sl])
    empty = cuda.to_device(np.zeros((0, 4), dtype))[:, ::2]
    assert backend.ascontiguous(empty).shape == (0, 2)


def test_noncontiguous_input_through_ascontiguous(path):
    """A negative-stride / strided device view gives the same conv as the oracle on the view."""
    rng = np.random.default_rng(11)
    host = data(rng, (1, 4, 9, 7), np.float64)
    view_h = host[:, ::-1, ::2, :]
    view_d = cuda.to_device(host)[:, ::-1, ::2, :]
    w = data(rng, (4, 2, 2, 2), np.float64)
    out = backend.conv2d(
        backend.ascontiguous(view_d),
        cuda.to_device(w),
        None,
        stride=(1, 1),
        padding=(1, 0),
        dilation=(1, 1),
        groups=2,
        out_hw=(6, 6),
    )
    ref = reference.conv2d(view_h, w, None, padding=(1, 0), groups=2)
    assert rel_err(out.copy_to_host(), ref) <= TOL[np.float64]


def test_plumbing():
    backend.check_available()  # the simulator counts as available
    d = cuda.to_device(np.ones((2, 3), np.float32))
    assert backend.as_native(d) is d
    assert backend.device_id(d) == 0
    with backend.use_device(0):
        np.testing.assert_array_equal(backend.to_host(d), np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="CUDA device arrays"):
        backend.as_native(np.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_check_on_the_device(dtype, monkeypatch):
    """count_bad_boxes agrees with NumPy; the public call checks device boxes on the device
    and raises the host path's errors."""
    import fastconv
    from fastconv import _random_cases as rc

    checks = []
    real = backend.count_bad_boxes
    monkeypatch.setattr(backend, "count_bad_boxes", lambda *a: checks.append(a) or real(*a))
    rng = np.random.default_rng(5)
    boxes, n_bad = rc.boxes_with_every_defect(rng, dtype, batch=3)
    assert n_bad == 10
    assert backend.count_bad_boxes(cuda.to_device(boxes), 3) == n_bad
    assert backend.count_bad_boxes(cuda.to_device(boxes[:0]), 3) == 0
    checks.clear()
    x = data(rng, (3, 2, 6, 7), dtype)
    good = boxes[np.isfinite(boxes).all(axis=1) & (boxes[:, 0] == np.floor(boxes[:, 0]))
                 & (boxes[:, 0] >= 0) & (boxes[:, 0] < 3)][:20]
    got = fastconv.roi_align(cuda.to_device(x), cuda.to_device(good), 2, 0.5).copy_to_host()
    np.testing.assert_allclose(got, fastconv.roi_align(x, good, 2, 0.5, backend="cpu"),
                               rtol=TOL[dtype], atol=TOL[dtype])
    assert len(checks) == 1  # the good boxes were checked on the device
    for row, message in [([0, 1, np.nan, 2, 3], "boxes must be finite, row 1"),
                         ([3, 1, 1, 2, 3], r"batch index must be an integer in \[0, 3\), row 1")]:
        bad = np.array([good[0], row], dtype)
        with pytest.raises(ValueError, match=message):
            fastconv.roi_pool(cuda.to_device(x), cuda.to_device(bad), 2)
    assert len(checks) == 3


# ------------------------------------------------------------------------ random configurations

#: random configurations per op x dtype x path; ``FASTCONV_SIM_CASES`` widens a run (CI: 25)
N_RANDOM = int(os.environ.get("FASTCONV_SIM_CASES", "25"))


def random_conv2d(rng, dtype):
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    g, cpg, copg = r(1, 3), r(1, 4), r(1, 6)
    k = (r(1, 4), r(1, 4))
    d = (r(1, 3), r(1, 3))
    if r(0, 3) == 0:  # "same": stride 1, total pad d*(k-1), the odd pixel at the bottom/right
        s = (1, 1)
        tot = tuple(d_ * (k_ - 1) for d_, k_ in zip(d, k, strict=True))
        p, p_hi, pad = tuple(t // 2 for t in tot), tuple(t - t // 2 for t in tot), "same"
    else:
        s = (r(1, 3), r(1, 3))
        p = p_hi = pad = (r(0, 3), r(0, 3))
    hw = tuple(
        max(1, d_ * (k_ - 1) + 1 - p_ - q_) + r(0, 5)
        for d_, k_, p_, q_ in zip(d, k, p, p_hi, strict=True)
    )
    x = data(rng, (r(0, 2), g * cpg, *hw), dtype, nan=r(0, 3) == 0)
    w = data(rng, (g * copg, cpg, *k), dtype)
    b = data(rng, (g * copg,), dtype) if r(0, 1) else None
    out_hw = tuple(
        conv_out(h, k_, s_, p_, q_, d_)
        for h, k_, s_, p_, q_, d_ in zip(hw, k, s, p, p_hi, d, strict=True)
    )
    got = call(backend.conv2d, x, w, b, stride=s, padding=p, dilation=d, groups=g, out_hw=out_hw)
    return got, reference.conv2d(x, w, b, stride=s, padding=pad, dilation=d, groups=g)


def random_conv_transpose2d(rng, dtype):
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    g, cipg, copg = r(1, 3), r(1, 3), r(1, 6)
    k = (r(1, 4), r(1, 4))
    s, d, p = (r(1, 3), r(1, 3)), (r(1, 3), r(1, 3)), (r(0, 3), r(0, 3))
    op = tuple(r(0, max(s_, d_) - 1) for s_, d_ in zip(s, d, strict=True))
    hw = [r(1, 4), r(1, 4)]
    for a in range(2):
        while (hw[a] - 1) * s[a] - 2 * p[a] + d[a] * (k[a] - 1) + op[a] < 0:
            hw[a] += 1
    x = data(rng, (r(0, 2), g * cipg, *hw), dtype, nan=r(0, 3) == 0)
    w = data(rng, (g * cipg, copg, *k), dtype)
    b = data(rng, (g * copg,), dtype) if r(0, 1) else None
    out_hw = tuple(
        (h - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + o_ + 1
        for h, s_, p_, d_, k_, o_ in zip(hw, s, p, d, k, op, strict=True)
    )
    got = call(
        backend.conv_transpose2d, x, w, b, stride=s, padding=p, dilation=d, groups=g, out_hw=out_hw
    )
    return got, reference.conv_transpose2d(
        x, w, b, stride=s, padding=p, output_padding=op, groups=g, dilation=d
    )


def random_deform_conv2d(rng, dtype):
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    g, G = r(1, 2), r(1, 3)
    C = g * G * r(1, 2)
    K = g * r(1, 5)
    k = (r(1, 3), r(1, 3))
    s, d, p = (r(1, 2), r(1, 2)), (r(1, 2), r(1, 2)), (r(0, 2), r(0, 2))
    hw = tuple(
        max(1, d_ * (k_ - 1) + 1 - 2 * p_) + r(0, 4) for d_, k_, p_ in zip(d, k, p, strict=True)
    )
    out_hw = tuple(
        conv_out(h, k_, s_, p_, p_, d_) for h, k_, s_, p_, d_ in zip(hw, k, s, p, d, strict=True)
    )
    N = r(0, 2)
    x = data(rng, (N, C, *hw), dtype, nan=r(0, 3) == 0)
    offset = rng.standard_normal((N, 2 * G * k[0] * k[1], *out_hw)) * (0.5, 2.0, 4.0)[r(0, 2)]
    if r(0, 2) == 0:
        offset = np.round(offset * 2) / 2
    offset = offset.astype(dtype)
    mask = rng.uniform(0, 1, (N, G * k[0] * k[1], *out_hw)).astype(dtype) if r(0, 1) else None
    w = data(rng, (K, C // g, *k), dtype)
    b = data(rng, (K,), dtype) if r(0, 1) else None
    got = call(
        backend.deform_conv2d,
        x,
        offset,
        w,
        b,
        mask,
        stride=s,
        padding=p,
        dilation=d,
        groups=g,
        offset_groups=G,
        out_hw=out_hw,
    )
    return got, reference.deform_conv2d(x, offset, w, b, stride=s, padding=p, dilation=d, mask=mask)


def random_roi_align(rng, dtype):
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    N, C, H, W = r(1, 2), r(1, 5), r(1, 8), r(1, 8)
    scale = (1.0, 0.5, 0.25, 0.0625)[r(0, 3)]
    x = data(rng, (N, C, H, W), dtype, nan=r(0, 3) == 0)
    rois = make_boxes(rng, N, H, W, scale, r(1, 6), dtype)
    out, sr, aligned = (r(1, 4), r(1, 4)), r(-1, 3), bool(r(0, 1))
    got = call(
        backend.roi_align,
        x,
        rois,
        output_size=out,
        spatial_scale=scale,
        sampling_ratio=sr,
        aligned=aligned,
    )
    return got, reference.roi_align(
        x, rois, out, spatial_scale=scale, sampling_ratio=sr, aligned=aligned
    )


def random_roi_pool(rng, dtype):
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    N, C, H, W = r(1, 2), r(1, 4), r(1, 8), r(1, 8)
    scale = (1.0, 0.5, 0.25, 0.0625)[r(0, 3)]
    x = data(rng, (N, C, H, W), dtype, nan=r(0, 3) == 0)
    rois = make_boxes(rng, N, H, W, scale, r(1, 6), dtype)
    out = (r(1, 4), r(1, 4))
    got = call(backend.roi_pool, x, rois, output_size=out, spatial_scale=scale)
    return got, reference.roi_pool(x, rois, out, spatial_scale=scale)


RANDOM = {
    "conv2d": random_conv2d,
    "conv_transpose2d": random_conv_transpose2d,
    "deform_conv2d": random_deform_conv2d,
    "roi_align": random_roi_align,
    "roi_pool": random_roi_pool,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(RANDOM))
def test_random_configurations(op, dtype, path):
    if path == "gemm" and op.startswith("roi"):
        pytest.skip("the RoI ops have one kernel each")
    for i in range(N_RANDOM):
        rng = np.random.default_rng([sorted(RANDOM).index(op), i, dtype == np.float32])
        got, ref = RANDOM[op](rng, dtype)
        assert got.dtype == dtype
        err = rel_err(got, ref)
        assert err <= TOL[dtype], f"{op} random case {i}: relative error {err:.3g}"


def test_weight_rows_view_shares_the_weight():
    """conv2d's GEMM gets the weight as (K, Cg*kH*kW) rows, a view of the same memory (its
    memoisation per array is tested on real DeviceNDArrays in test_numba_cuda_ptx.py)."""
    from fastconv.backends.numba_cuda import _launch

    host = np.arange(6 * 2 * 3 * 3, dtype=np.float32).reshape(6, 2, 3, 3)
    w = cuda.to_device(host)
    rows = _launch.weight_rows(w)
    assert rows.shape == (6, 18)
    np.testing.assert_array_equal(rows.copy_to_host(), host.reshape(6, 18))
    w[1, 0, 0, 0] = -1.0
    assert rows.copy_to_host()[1, 0] == -1.0


def test_small_launch_settings_are_in_effect():
    """The shrunk settings reach every module, so several blocks and grid-stride loops run."""
    from fastconv.backends.numba_cuda import _copy, _launch, conv, deform, roi

    for mod in (conv, deform, roi, _copy):
        assert mod.settings is _launch.settings
    assert _launch.settings.block == 8 and _launch.settings.max_grid == (2, 2, 2)
    assert _launch.grid_2d(1000, 1000, 8) == (2, 2)
    assert _launch.grid_tiles(_launch.settings.tiles_wide, 100, 100, 5) == (2,)
    assert _launch.choose_tiles(5, 8, 100, 1) == _launch.settings.tiles_wide or (
        _launch.settings.gemm_min_channels > 5
    )


# the case generator puts an inf in the weights 1 time in 10: the simulator's NumPy scalars
# warn on its 0 * inf over padding (NaN, as in the oracle)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(RANDOM))
def test_public_api_random_cases(op, dtype):
    """The public functions dispatch numba device arrays to this backend (lead's case generator)."""
    rc = pytest.importorskip("fastconv._random_cases")
    for seed in range(max(4, N_RANDOM // 6)):
        rng = np.random.default_rng([seed, 17])

        def pick(lo, hi, rng=rng):
            return int(rng.integers(lo, hi + 1))

        case = rc.GENERATORS[op](pick, rng, np.dtype(dtype))
        err, out, _ = rc.run_case(case, "numba_cuda")
        assert out.dtype == dtype
        assert err <= TOL[dtype], f"relative error {err:.3g} for {case.describe()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, params", [("roi_align", dict(sampling_ratio=2, aligned=True)),
                                        ("roi_align", dict(sampling_ratio=-1)),
                                        ("roi_pool", {})])
def test_unchecked_boxes_naming_no_image_give_zeros(dtype, op, params):
    from fastconv import _random_cases as rc

    rc.check_boxes_naming_no_image(op, "numba_cuda", np.dtype(dtype), **params)


@pytest.mark.parametrize("dtype", DTYPES)
def test_list_boxes_are_built_on_the_device(dtype, monkeypatch):
    """torchvision's list form (int and float parts, an empty one) and (K, 5) boxes in
    another dtype become (K, 5) boxes on the device: the same rows as the host path, and
    no copy to the host when they are valid."""
    import fastconv
    from fastconv import _dispatch

    host_copies = []
    real = backend.to_host
    monkeypatch.setattr(backend, "to_host", lambda a: host_copies.append(a) or real(a))
    rng = np.random.default_rng(8)
    parts = [rng.uniform(0, 9, (20, 4)), np.zeros((0, 4)), rng.integers(0, 9, (3, 4))]
    want = _dispatch.stack_boxes(np, parts, True, np.dtype(dtype))
    got = backend.stack_boxes([cuda.to_device(p) for p in parts], True, np.dtype(dtype))
    np.testing.assert_array_equal(got.copy_to_host(), want)
    k5 = np.c_[np.array([2, 0, 1]), rng.uniform(0, 9, (3, 4))].astype(np.float16)
    got = backend.stack_boxes([cuda.to_device(k5)], False, np.dtype(dtype))
    np.testing.assert_array_equal(got.copy_to_host(), k5.astype(dtype))
    # through the public call: the same result as the cpu backend, no host copy of the boxes
    x = data(rng, (3, 2, 9, 9), dtype)
    out = fastconv.roi_align(cuda.to_device(x), [cuda.to_device(p) for p in parts], 2, 0.5,
                             sampling_ratio=2).copy_to_host()
    np.testing.assert_allclose(out, fastconv.roi_align(x, parts, 2, 0.5, sampling_ratio=2),
                               rtol=TOL[dtype], atol=TOL[dtype])
    assert host_copies == []
