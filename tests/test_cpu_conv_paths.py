"""Every algorithm path of the CPU conv kernels against the oracle.

``fastconv.backends.cpu.conv`` picks, per call: the depthwise kernel (``C_in/groups == 1``)
or the packed row kernel; a register tile ``KB`` output channels x ``NV`` SIMD vectors
(16 float32 / 8 float64 lanes) from the output width and channels per group; an L1
reduction block over input channels (several blocks -> partial sums); and, for
``conv_transpose2d``, one stride-1 correlation per output phase (possibly with no taps).
These tests force each choice through the module's test hooks and sit on the crossover
boundaries (widths one below/at/above a vector or tile multiple, channel counts around the
tile height).
"""

import numba
import numpy as np
import pytest

from fastconv import reference
from fastconv.backends.cpu import _config
from fastconv.backends.cpu import conv as cpu_conv

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def hooks(monkeypatch):
    """Set the kernel-selection hooks for one test; restored afterwards."""

    def set_(**kw):
        if not any(name in ("_USE_POINTWISE", "_FORCE_PW") for name in kw):
            # row-kernel hooks: 1x1 layers stay on the row kernel too
            kw.setdefault("_USE_POINTWISE", False)
        for name, value in kw.items():
            monkeypatch.setattr(cpu_conv, name, value)

    return set_


#: the register tile for tests of choices made at run time (flat layout rows, ring size,
#: reduction blocks, output-channel groups): every (KB, NV) is a kernel compiled of its
#: own (~3-9 s on the CI machine), and these tests' shapes would otherwise each pick a
#: different one; the tiles themselves are tested by the tests that force or sit on them
RUNTIME_TILE = (4, 2)


@pytest.fixture(autouse=True)
def serial_twins(request, monkeypatch):
    """Run the kernels' serial twins here, unless a test is marked ``numba_parallel``.

    These tests are about the kernels' logic (tiles, layouts, tap tables, work items), and
    the twin is the same code with ``prange`` as ``range``: its worker loop still splits the
    items over ``nth`` workers, one after the other.  Numba compiles it about 3x faster
    (2.9 s against 8.6 s for a row kernel, measured on the CI machine), and these tests
    reach over a hundred kernel variants.  The parallel kernels run in the tests marked
    ``numba_parallel`` and in every other test file.
    """
    if request.node.get_closest_marker("numba_parallel") is None:
        monkeypatch.setattr(_config, "_serial_only", True)


def _rand(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _out_conv(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    assert out.flags.c_contiguous
    err = np.max(np.abs(out - ref), initial=0.0) / max(1.0, np.max(np.abs(ref), initial=0.0))
    assert err <= TOL[dtype], err


def run_conv(dtype, N, C, H, W, K, groups, kh, kw, stride=(1, 1), padding=(0, 0),
             dilation=(1, 1), bias=True, seed=0):
    x = _rand((N, C, H, W), dtype, seed)
    w = _rand((K, C // groups, kh, kw), dtype, seed + 1)
    b = _rand((K,), dtype, seed + 2) if bias else None
    keep = (x.copy(), w.copy(), None if b is None else b.copy())
    out_hw = (_out_conv(H, kh, stride[0], padding[0], dilation[0]),
              _out_conv(W, kw, stride[1], padding[1], dilation[1]))
    out = cpu_conv.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation,
                          groups=groups, out_hw=out_hw)
    ref = reference.conv2d(x, w, b, stride, padding, dilation, groups)
    _check(out, ref, dtype)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(w, keep[1])
    if b is not None:
        np.testing.assert_array_equal(b, keep[2])
    return out


def run_convt(dtype, N, C, H, W, Kg, groups, kh, kw, stride=(1, 1), padding=(0, 0),
              output_padding=(0, 0), dilation=(1, 1), bias=True, seed=0):
    x = _rand((N, C, H, W), dtype, seed)
    w = _rand((C, Kg, kh, kw), dtype, seed + 1)
    b = _rand((Kg * groups,), dtype, seed + 2) if bias else None
    keep = (x.copy(), w.copy())
    out_hw = tuple((n - 1) * s - 2 * p + d * (k - 1) + o + 1 for n, s, p, d, k, o in
                   zip((H, W), stride, padding, dilation, (kh, kw), output_padding,
                       strict=True))
    out = cpu_conv.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, out_hw=out_hw)
    ref = reference.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    _check(out, ref, dtype)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(w, keep[1])
    return out


# ------------------------------------------------------------------------------ row kernel


@pytest.mark.parametrize("kb,nv", [(1, 1), (3, 2), (6, 4), (16, 1)])
def test_row_kernel_forced_tiles(dtype, hooks, kb, nv):
    # K = 13 is not a multiple of any KB > 1: the last channel block is padded
    hooks(_FORCE_TILE=(kb, nv))
    run_conv(dtype, 2, 5, 11, 37, 13, 1, 3, 2, padding=(1, 0), dilation=(2, 3))
    run_convt(dtype, 1, 4, 7, 9, 13, 1, 3, 4, stride=(2, 3), padding=(1, 2))


@pytest.mark.parametrize("wo_minus_lanes", [-1, 0, 1])
@pytest.mark.parametrize("vectors", [1, 4, 5, 8, 9])
def test_width_around_vector_and_tile_multiples(dtype, vectors, wo_minus_lanes):
    # output width one below / at / above NV*L (L = 64 bytes / itemsize), for NV = 1..4 and
    # for widths that need several tiles
    lanes = cpu_conv.VEC_BYTES // dtype.itemsize
    wo = max(1, vectors * lanes + wo_minus_lanes)
    run_conv(dtype, 1, 3, 4, wo + 2, 5, 1, 3, 3, padding=(1, 0))


@pytest.mark.parametrize("K", [1, 5, 6, 7, 12, 13, 17])
def test_output_channels_around_tile_height(dtype, K):
    run_conv(dtype, 1, 4, 6, 20, K, 1, 3, 3, padding=(1, 1))


@pytest.mark.parametrize("l1_bytes", [1, 2000, 10**9])
def test_reduction_blocks_partial_sums(dtype, hooks, l1_bytes):
    # a tiny L1 budget gives one input channel per block (partial sums through the row
    # buffer on every block); a huge one a single block
    hooks(_L1_BLOCK_BYTES=l1_bytes, _FORCE_TILE=RUNTIME_TILE)
    run_conv(dtype, 1, 19, 9, 21, 7, 1, 3, 3, padding=(1, 1), dilation=(2, 1))
    run_conv(dtype, 1, 12, 9, 21, 9, 3, 3, 3, padding=(1, 1))
    run_convt(dtype, 1, 19, 6, 7, 5, 1, 4, 4, stride=(2, 2), padding=(1, 1))


@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (1, 2), (2, 3), (4, 4)])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
def test_strided_dilated_asymmetric(dtype, stride, dilation):
    # strides > 1 along W use the phase-split packed layout
    run_conv(dtype, 2, 6, 23, 41, 4, 2, 3, 5, stride=stride, padding=(2, 1), dilation=dilation)


@pytest.mark.parametrize("groups,cpg,kpg", [(1, 7, 3), (2, 3, 5), (4, 2, 2), (3, 5, 1)])
def test_groups(dtype, groups, cpg, kpg):
    run_conv(dtype, 2, groups * cpg, 10, 19, groups * kpg, groups, 3, 3, padding=(1, 1))


def test_kernel_larger_than_input_with_padding(dtype):
    run_conv(dtype, 1, 2, 3, 4, 3, 1, 5, 6, padding=(2, 3))


@pytest.mark.parametrize("pointwise", [True, False])
def test_one_by_one_and_strided_one_by_one(dtype, hooks, pointwise):
    hooks(_USE_POINTWISE=pointwise)
    run_conv(dtype, 2, 16, 9, 33, 24, 1, 1, 1)
    run_conv(dtype, 2, 16, 9, 33, 24, 1, 1, 1, stride=(2, 2))


@pytest.mark.numba_parallel
def test_benchmark_like_shapes_small(dtype):
    # scaled-down versions of the BENCHMARKS.md cases (same structure, fewer pixels)
    run_conv(dtype, 1, 32, 20, 64, 32, 1, 3, 3, padding=(6, 6), dilation=(6, 6))  # dilated_aspp
    run_conv(dtype, 1, 64, 9, 56, 64, 8, 3, 3, padding=(1, 1))  # grouped_resnext
    run_conv(dtype, 1, 16, 9, 56, 16, 16, 3, 3, padding=(1, 1))  # depthwise
    run_convt(dtype, 1, 5, 6, 8, 5, 1, 16, 16, stride=(8, 8), padding=(4, 4))  # fcn
    run_convt(dtype, 1, 16, 7, 9, 8, 1, 4, 4, stride=(2, 2), padding=(1, 1))  # decoder


@pytest.mark.numba_parallel
@pytest.mark.parametrize("ring", [None, 1, 40])
def test_packed_row_ring_sizes(dtype, hooks, ring):
    # the smallest ring (one output row's span: every row re-packed as it is evicted) and
    # a large one; the ring is keyed per (image, group, row), so batches and groups and
    # transposed row phases share it
    hooks(_FORCE_RING=ring, _FORCE_TILE=RUNTIME_TILE)
    run_conv(dtype, 3, 6, 15, 20, 4, 2, 3, 3, stride=(2, 1), padding=(2, 1), dilation=(3, 1))
    run_convt(dtype, 2, 4, 9, 11, 3, 2, 4, 3, stride=(3, 2), padding=(1, 1), output_padding=(2, 0))


@pytest.mark.numba_parallel
@pytest.mark.parametrize("flat", [0, 1, 3, 100])
def test_flat_layout_rows_per_item(dtype, hooks, flat):
    # stride-1 convs may use the flat layout (output rows concatenated at width
    # Wo + dW*(kW - 1)): never (0), one row per item, a partial last block, whole images
    hooks(_FORCE_FLAT=flat, _FORCE_TILE=RUNTIME_TILE)
    run_conv(dtype, 2, 6, 13, 21, 10, 2, 3, 2, padding=(1, 0), dilation=(2, 3))
    run_conv(dtype, 1, 8, 7, 7, 16, 1, 3, 3, padding=(1, 1))
    run_conv(dtype, 1, 3, 9, 5, 4, 1, 5, 5, padding=(2, 2), bias=False)


@pytest.mark.parametrize("flat", [None, 0])
def test_small_images_and_odd_widths(dtype, hooks, flat):
    # the cases the flat layout is for (7x7, 14x14, widths between tile multiples)
    hooks(_FORCE_FLAT=flat)
    run_conv(dtype, 1, 32, 7, 7, 48, 1, 3, 3, padding=(1, 1))
    run_conv(dtype, 2, 16, 14, 14, 16, 2, 3, 3, padding=(1, 1))
    run_conv(dtype, 1, 16, 9, 56, 16, 2, 3, 3, padding=(1, 1))


@pytest.mark.numba_parallel
@pytest.mark.parametrize("kgroups", [1, 2, 3, 100])
def test_output_channel_groups(dtype, hooks, kgroups):
    # work items split over output-channel blocks (the last group may end on the shifted
    # last block)
    hooks(_FORCE_KGROUPS=kgroups, _FORCE_TILE=RUNTIME_TILE)
    run_conv(dtype, 1, 5, 6, 40, 13, 1, 3, 3, padding=(1, 1))
    run_conv(dtype, 1, 5, 6, 40, 13, 1, 3, 3, padding=(1, 1), stride=(2, 2))
    run_convt(dtype, 1, 5, 4, 9, 13, 1, 4, 4, stride=(2, 2), padding=(1, 1))


# ------------------------------------------------------------------------------ depthwise


@pytest.mark.parametrize("use_depthwise", [True, False])
@pytest.mark.parametrize("mult", [1, 2, 3, 8])
def test_depthwise_kernel_and_row_kernel_agree(dtype, hooks, use_depthwise, mult):
    hooks(_USE_DEPTHWISE=use_depthwise)
    run_conv(dtype, 2, 5, 13, 35, 5 * mult, 5, 3, 3, padding=(1, 1))


@pytest.mark.parametrize("stride,dilation,padding", [((2, 2), (1, 1), (1, 1)),
                                                     ((1, 3), (2, 1), (0, 2)),
                                                     ((3, 2), (3, 2), (3, 0))])
def test_depthwise_strided_dilated(dtype, stride, dilation, padding):
    run_conv(dtype, 1, 6, 17, 50, 6, 6, 3, 4, stride=stride, padding=padding, dilation=dilation)


@pytest.mark.parametrize("nv", [1, 2, 3, 4])
def test_depthwise_forced_widths(dtype, hooks, nv):
    hooks(_FORCE_TILE=(1, nv))
    run_conv(dtype, 1, 3, 8, 70, 3, 3, 3, 3, padding=(1, 1))


# ------------------------------------------------------------------------------ transposed


@pytest.mark.parametrize("stride,kernel,padding,dilation,output_padding", [
    ((1, 1), (3, 3), (1, 1), (1, 1), (0, 0)),
    ((2, 2), (4, 4), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (0, 0), (1, 1), (2, 2)),   # k < s: some output phases have no taps
    ((8, 8), (16, 16), (4, 4), (1, 1), (0, 0)),
    ((2, 3), (3, 5), (2, 0), (3, 2), (1, 1)),   # dilation > stride
    ((4, 1), (1, 3), (0, 1), (1, 1), (3, 0)),
])
def test_transposed_phases(dtype, stride, kernel, padding, dilation, output_padding):
    run_convt(dtype, 2, 4, 5, 7, 3, 1, *kernel, stride=stride, padding=padding,
              dilation=dilation, output_padding=output_padding)


@pytest.mark.parametrize("groups", [2, 3])
def test_transposed_groups(dtype, groups):
    run_convt(dtype, 1, 2 * groups, 6, 9, 3, groups, 3, 3, stride=(2, 2), padding=(1, 1),
              output_padding=(1, 0))


def test_transposed_wide_rows_multiple_tiles(dtype):
    run_convt(dtype, 1, 3, 2, 70, 2, 1, 2, 3, stride=(1, 2), padding=(0, 1))


@pytest.mark.parametrize("sw", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("width", [1, 15, 16, 17, 40])
def test_transposed_column_phase_interleave(dtype, sw, width):
    # W strides 2, 4, 8 use the SIMD interleave epilogue (L input columns at a time, then a
    # scalar tail); 3 and 5 the scalar one; output_padding gives phases one column short
    run_convt(dtype, 1, 2, 3, width, 3, 1, 2, 2 * sw, stride=(2, sw), padding=(0, 1),
              output_padding=(1, sw - 1))


# ------------------------------------------------------------------------------ edge cases


def test_empty_batch_and_zero_channels(dtype):
    x = np.zeros((0, 4, 6, 6), dtype)
    w = _rand((3, 4, 3, 3), dtype, 0)
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                          groups=1, out_hw=(4, 4))
    assert out.shape == (0, 3, 4, 4) and out.dtype == dtype
    # C_in = 0: the output is the bias (a garbage-filled heap must not leak through)
    np.full(10**6, np.nan, dtype).sum()
    b = np.arange(3, dtype=dtype)
    out = cpu_conv.conv2d(np.zeros((2, 0, 6, 6), dtype), np.zeros((3, 0, 3, 3), dtype), b,
                          stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                          out_hw=(4, 4))
    np.testing.assert_array_equal(out, np.broadcast_to(b[None, :, None, None], (2, 3, 4, 4)))
    out = cpu_conv.conv_transpose2d(np.zeros((2, 0, 3, 3), dtype), np.zeros((0, 3, 2, 2), dtype),
                                    b, stride=(2, 2), padding=(0, 0), dilation=(1, 1),
                                    groups=1, out_hw=(6, 6))
    np.testing.assert_array_equal(out, np.broadcast_to(b[None, :, None, None], (2, 3, 6, 6)))
    # zero output channels
    out = cpu_conv.conv2d(_rand((1, 2, 5, 5), dtype, 0), np.zeros((0, 2, 3, 3), dtype), None,
                          stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                          out_hw=(3, 3))
    assert out.shape == (1, 0, 3, 3)


@pytest.mark.parametrize("flat", [None, 0])
@pytest.mark.parametrize("groups", [1, 4])
def test_nan_propagates_to_its_receptive_field(dtype, hooks, groups, flat):
    hooks(_FORCE_FLAT=flat)
    x = _rand((1, 4, 12, 40), dtype, 0)
    x[0, 1, 5, 20] = np.nan
    w = _rand((4, 4 // groups, 3, 3), dtype, 1)
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                          groups=groups, out_hw=(12, 40))
    ref = reference.conv2d(x, w, None, 1, 1, 1, groups)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(out).sum() == (9 * 4 if groups == 1 else 9)
    fin = ~np.isnan(ref)
    assert np.max(np.abs(out[fin] - ref[fin])) <= TOL[dtype] * max(1, np.abs(ref[fin]).max())
    wt = _rand((4, 3, 4, 4), dtype, 2)
    out = cpu_conv.conv_transpose2d(x, wt, None, stride=(2, 2), padding=(1, 1), dilation=(1, 1),
                                    groups=1, out_hw=(24, 80))
    ref = reference.conv_transpose2d(x, wt, None, 2, 1, 0, 1, 1)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


@pytest.mark.parametrize("shape", [
    # (C, H, W, K, kh, kw, stride, padding, dilation): dilated rates whose top and bottom
    # output rows have one or two kernel rows in the padding (ASPP), strided, asymmetric
    (8, 9, 19, 12, 3, 3, (1, 1), (6, 6), (6, 6)),
    (8, 9, 19, 12, 3, 3, (1, 1), (9, 2), (9, 1)),
    (5, 11, 17, 7, 5, 3, (2, 1), (5, 1), (2, 3)),
    (3, 4, 20, 6, 3, 3, (1, 1), (12, 1), (5, 1)),  # rows whose every tap is padding
])
def test_padding_row_taps_skipped_exactly(dtype, hooks, shape):
    """Dropping the taps on zero-padding rows changes no bit of the result."""
    C, H, W, K, kh, kw, stride, padding, dilation = shape
    hooks(_FORCE_FLAT=0)
    outs = []
    for skip in (True, False):
        hooks(_SKIP_PADDING=skip)
        outs.append(run_conv(dtype, 2, C, H, W, K, 1, kh, kw, stride, padding, dilation))
    np.testing.assert_array_equal(outs[0], outs[1])
    outs = []
    for skip in (True, False):
        hooks(_SKIP_PADDING=skip)
        # the largest padding up to padding[0] that leaves conv_transpose2d an output
        pt = [min(padding[0], ((n - 1) * s + d * (k - 1)) // 2)
              for n, s, d, k in zip((H, W), stride, dilation, (kh, kw), strict=True)]
        outs.append(run_convt(dtype, 1, C, H, W, K, 1, kh, kw, stride, tuple(pt),
                              dilation=dilation))
    np.testing.assert_array_equal(outs[0], outs[1])


# ------------------------------------------------------------ channel-vectorised tile


@pytest.mark.parametrize("shape", [
    # (N, C, H, W, K, groups, kh, kw, stride, padding, dilation); K >= 16 lanes
    (1, 6, 13, 33, 32, 1, 3, 3, (1, 1), (6, 6), (6, 6)),  # ASPP-like, shifted last pixel tile
    (2, 5, 9, 23, 40, 1, 3, 3, (1, 1), (2, 2), (2, 2)),  # K not a multiple of a channel block
    (1, 4, 11, 19, 48, 1, 3, 2, (2, 3), (1, 0), (1, 2)),  # strided: packed column phases
    (2, 8, 7, 17, 64, 2, 3, 3, (1, 1), (1, 1), (1, 1)),  # groups, 32 channels each
    (1, 3, 6, 40, 16, 1, 1, 1, (1, 1), (0, 0), (1, 1)),  # 1x1, one vector of channels (f32)
    (1, 2, 5, 3, 24, 1, 3, 3, (1, 1), (1, 1), (1, 1)),  # rows narrower than a pixel tile
])
@pytest.mark.parametrize("rows", [None, 1, 4, 100])
def test_channel_vectorised_tile(dtype, hooks, shape, rows):
    """Pixels x output-channel vectors, several output rows per work item."""
    N, C, H, W, K, groups, kh, kw, stride, padding, dilation = shape
    hooks(_FORCE_CV=True, _FORCE_CV_ROWS=rows)
    run_conv(dtype, N, C, H, W, K, groups, kh, kw, stride, padding, dilation)


@pytest.mark.parametrize("kp,nv", [(1, 1), (5, 2), (7, 3), (6, 4), (16, 1)])
def test_channel_vectorised_forced_tiles(dtype, hooks, kp, nv):
    # 52 channels: the last channel block is shifted back (overlaps the one before)
    hooks(_FORCE_CV=True, _FORCE_TILE=(kp, nv))
    run_conv(dtype, 2, 5, 11, 37, 52, 1, 3, 2, padding=(1, 0), dilation=(2, 3))


@pytest.mark.parametrize("ring", [1, 40])
@pytest.mark.parametrize("l1_bytes", [1, 10**9])
def test_channel_vectorised_ring_and_reduction_blocks(dtype, hooks, ring, l1_bytes):
    hooks(_FORCE_CV=True, _FORCE_CV_ROWS=3, _FORCE_RING=ring, _CV_BLOCK_BYTES=l1_bytes)
    run_conv(dtype, 2, 7, 12, 21, 24, 1, 3, 3, stride=(2, 1), padding=(3, 3), dilation=(3, 3))


def test_channel_vectorised_padding_skip_is_exact(dtype, hooks):
    hooks(_FORCE_CV=True, _FORCE_CV_ROWS=5)
    outs = []
    for skip in (True, False):
        hooks(_SKIP_PADDING=skip)
        outs.append(run_conv(dtype, 1, 6, 13, 35, 32, 1, 3, 3, padding=(6, 6), dilation=(6, 6)))
    np.testing.assert_array_equal(outs[0], outs[1])
    x = _rand((1, 3, 8, 21), dtype, 0)
    w = _rand((16, 3, 3, 3), dtype, 1)
    w[2, 1, 0, 1] = np.inf  # top kernel row: inf * zero padding is NaN for the first rows
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(4, 4), dilation=(4, 4),
                          groups=1, out_hw=(8, 21))
    ref = reference.conv2d(x, w, None, 1, 4, 4, 1)
    assert np.isnan(ref[0, 2, :4]).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


def _plan(dtype, N, C, H, W, K, groups, kh, kw, stride=(1, 1), padding=(0, 0),
          dilation=(1, 1)):
    """The plan conv2d runs for this layer (after the hooks set by the test)."""
    out_hw = (_out_conv(H, kh, stride[0], padding[0], dilation[0]),
              _out_conv(W, kw, stride[1], padding[1], dilation[1]))
    return cpu_conv._conv2d_plan((N, C, H, W), (K, C // groups, kh, kw),
                                 np.dtype(dtype).itemsize, stride, padding, dilation, groups,
                                 out_hw, numba.get_num_threads(), cpu_conv._knobs())


def test_channel_vectorised_tile_chosen_where_row_lanes_are_wasted():
    """An ASPP branch on rows of 2L+1 columns (33 of 48 lanes of the row tile on AVX-512;
    the flat layout would compute 45 columns for 33): the channel-vectorised tile is
    chosen; a width of 4L keeps the row tile."""
    lanes = cpu_conv.VEC_BYTES // 4
    for width, cv in ((2 * lanes + 1, True), (4 * lanes, False)):
        shape = (1, 8, 2 * lanes + 1, width, 16 * lanes, 1, 3, 3)
        plan = _plan(np.float32, *shape, padding=(6, 6), dilation=(6, 6))
        assert isinstance(plan, cpu_conv._RowsPlan) and plan.kernel[3] == cv, (width, plan)
        run_conv(np.dtype(np.float32), *shape, padding=(6, 6), dilation=(6, 6))


# ------------------------------------------------------------ weights: packed or in place


@pytest.mark.parametrize("shape", [
    # (N, C, H, W, K, groups, kh, kw, stride, padding, dilation)
    (1, 24, 7, 7, 20, 1, 1, 1, (1, 1), (0, 0), (1, 1)),  # 1x1 on a small map
    (2, 12, 7, 9, 13, 1, 3, 3, (1, 1), (2, 2), (2, 2)),  # padding rows, K % KB != 0
    (1, 12, 9, 8, 18, 3, 3, 2, (2, 1), (1, 1), (1, 3)),  # groups, strided, dilated
    (1, 5, 6, 40, 7, 1, 3, 3, (1, 1), (6, 6), (6, 6)),  # rows whose every tap is padding
])
@pytest.mark.parametrize("flat", [None, 0])
def test_weights_read_in_place(dtype, hooks, shape, flat):
    """conv2d can read its (K, Cg, kH, kW) weights in place (no packed stream), in the row
    and the flat layouts; the result equals the packed one bit for bit."""
    N, C, H, W, K, groups, kh, kw, stride, padding, dilation = shape
    hooks(_FORCE_FLAT=flat)
    outs = []
    for direct in (True, False):
        hooks(_FORCE_DIRECT=direct)
        outs.append(run_conv(dtype, N, C, H, W, K, groups, kh, kw, stride, padding, dilation))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_weights_in_place_from_a_strided_array_and_inf_on_padding_rows(hooks):
    hooks(_FORCE_DIRECT=True, _FORCE_FLAT=0)
    x = _rand((1, 3, 8, 21), np.float32, 0)
    w = np.asfortranarray(_rand((16, 3, 3, 3), np.float32, 1))
    w[2, 1, 0, 1] = np.inf  # top kernel row: inf * zero padding is NaN for the first rows
    keep = w.copy(order="A")
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(4, 4), dilation=(4, 4),
                          groups=1, out_hw=(8, 21))
    ref = reference.conv2d(x, w, None, 1, 4, 4, 1)
    assert np.isnan(ref[0, 2, :4]).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(w, keep)


def test_weights_in_place_chosen_for_few_output_pixels(monkeypatch):
    seen = []
    rows_kernel = cpu_conv._rows_kernel

    def spy(*args):
        seen.append(args[4] if len(args) > 4 else False)
        return rows_kernel(*args)

    monkeypatch.setattr(cpu_conv, "_rows_kernel", spy)
    monkeypatch.setattr(cpu_conv, "_USE_POINTWISE", False)
    for hw, direct in ((7, True), (28, False)):
        seen.clear()
        run_conv(np.dtype(np.float32), 1, 32, hw, hw, 40, 1, 1, 1)
        assert seen == [direct], (hw, seen)


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_packing_orders_agree(transposed):
    """_pack_weights fills small blocks one output channel at a time and large ones in
    write order: the same stream."""
    rng = np.random.default_rng(0)
    G, Cg, Kg, kh, kw, KB = 2, 9, 13, 3, 2, 4
    w = rng.standard_normal((G * Cg, Kg, kh, kw) if transposed else (G * Kg, Cg, kh, kw))
    ntap = np.array([6, 4])
    wtap = np.array([[0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 0, 0]], dtype=np.int64)
    nkb = -(-Kg // KB)
    streams = []
    for by_channel_bytes in (0, 10**12):
        wp = np.full(G * nkb * KB * Cg * int(ntap.sum()), np.nan)
        assert cpu_conv._pack_weights(w, transposed, G, KB, nkb, ntap, wtap, wp,
                                      by_channel_bytes)
        streams.append(wp)
    assert not np.isnan(streams[0]).any()
    np.testing.assert_array_equal(streams[0], streams[1])
    # spot-check the layout: phase 1, group 1, last (shifted) block, channel c, tap t
    p1 = G * nkb * Cg * 6 * KB
    g, kb, c, t, kk = 1, nkb - 1, 7, 1, 2
    k = min(kb * KB, Kg - KB) + kk
    src = w[g * Cg + c, k] if transposed else w[g * Kg + k, c]
    assert streams[0][p1 + (((g * nkb + kb) * Cg + c) * 4 + t) * KB + kk] == src.ravel()[3]


@pytest.mark.parametrize("n", [1, 15, 16, 1000])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_packed_weights_are_cache_line_aligned(n, dt):
    a = cpu_conv._aligned_empty(n, dt)
    assert a.shape == (n,) and a.dtype == dt and a.ctypes.data % 64 == 0


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_weight_on_padding_rows_gives_nan_like_the_oracle(dtype, bad):
    """inf * zero padding is NaN in the oracle: no padding tap is skipped then."""
    x = _rand((1, 3, 8, 21), dtype, 0)
    w = _rand((4, 3, 3, 3), dtype, 1)
    w[2, 1, 0, 1] = bad  # top kernel row: reads the padding for the first output rows
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(4, 4), dilation=(4, 4),
                          groups=1, out_hw=(8, 21))
    ref = reference.conv2d(x, w, None, 1, 4, 4, 1)
    assert np.isnan(ref[0, 2, :4]).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("stride, kernel, groups", [((2, 2), (4, 4), 1), ((3, 2), (5, 3), 2),
                                                    ((8, 8), (16, 16), 1)])
def test_transposed_non_finite_weight_reaches_only_real_inputs(dtype, bad, stride, kernel,
                                                               groups):
    """conv_transpose2d multiplies only real inputs (the oracle's scatter, PyTorch's CPU
    path): an inf/NaN weight whose tap falls outside the image for an output adds nothing
    there, where the phase kernels would multiply a zero (NaN); they hand over to the
    gathering kernel then.  Finite elsewhere: the first output channel's other taps."""
    x = _rand((2, 2 * groups, 4, 5), dtype, 0)
    w = _rand((2 * groups, 3, *kernel), dtype, 1)
    w[0, 0, 0, 0] = bad
    w[-1, -1, -1, -1] = -np.inf
    params = dict(stride=stride, padding=(1, 1), dilation=(1, 1), groups=groups)
    out_hw = tuple((n - 1) * s - 2 + k for n, s, k in zip((4, 5), stride, kernel, strict=True))
    keep = w.copy()
    out = cpu_conv.conv_transpose2d(x, w, None, out_hw=out_hw, **params)
    ref = reference.conv_transpose2d(x, w, None, **params)
    np.testing.assert_array_equal(w, keep)
    assert np.isfinite(ref).any() and not np.isfinite(ref).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])
    finite = np.isfinite(ref)
    _check(np.where(finite, out, 0), np.where(finite, ref, 0), dtype)


def test_inf_input_gives_inf_not_nan():
    x = np.ones((1, 1, 4, 20), np.float32)
    x[0, 0, 2, 5] = np.inf
    w = np.ones((1, 1, 3, 3), np.float32)
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                          out_hw=(4, 20))
    assert np.isposinf(out[0, 0, 1:4, 4:7]).all()
    assert np.isfinite(out).sum() == out.size - 9


@pytest.mark.numba_parallel
def test_respects_thread_count(dtype):
    import numba

    before = numba.get_num_threads()
    try:
        results = []
        for nt in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(nt)
            results.append(run_conv(dtype, 2, 8, 13, 30, 6, 2, 3, 3, padding=(1, 1)))
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])
    finally:
        numba.set_num_threads(before)


_AVX2_SCRIPT = """
import numpy as np
from fastconv import reference
from fastconv.backends.cpu import conv as c
assert (c.VEC_BYTES, c._NREGS) == (32, 16), (c.VEC_BYTES, c._NREGS)
rng = np.random.default_rng(0)
for dt, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
    x = rng.standard_normal((2, 6, 11, 37)).astype(dt)
    w = rng.standard_normal((8, 3, 3, 3)).astype(dt)
    out = c.conv2d(x, w, None, stride=(1, 2), padding=(1, 1), dilation=(2, 1), groups=2,
                   out_hw=(9, 19))
    ref = reference.conv2d(x, w, None, (1, 2), 1, (2, 1), 2)
    assert np.abs(out - ref).max() <= tol * max(1, np.abs(ref).max())
    wt = rng.standard_normal((6, 5, 4, 4)).astype(dt)
    out = c.conv_transpose2d(x, wt, None, stride=(2, 2), padding=(1, 1), dilation=(1, 1),
                             groups=1, out_hw=(22, 74))
    ref = reference.conv_transpose2d(x, wt, None, 2, 1, 0, 1, 1)
    assert np.abs(out - ref).max() <= tol * max(1, np.abs(ref).max())
    wd = rng.standard_normal((12, 1, 3, 3)).astype(dt)
    out = c.conv2d(x, wd, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=6,
                   out_hw=(11, 37))
    ref = reference.conv2d(x, wd, None, 1, 1, 1, 6)
    assert np.abs(out - ref).max() <= tol * max(1, np.abs(ref).max())
    c._FORCE_CV = True  # the channel-vectorised tile: 16 channels = 2 / 4 AVX2 vectors
    w16 = rng.standard_normal((16, 6, 3, 3)).astype(dt)
    out = c.conv2d(x, w16, None, stride=(1, 1), padding=(2, 2), dilation=(2, 2), groups=1,
                   out_hw=(11, 37))
    c._FORCE_CV = None
    ref = reference.conv2d(x, w16, None, 1, 2, 2, 1)
    assert np.abs(out - ref).max() <= tol * max(1, np.abs(ref).max())
print("ok")
"""


@pytest.mark.slow
def test_avx2_target_in_subprocess(tmp_path):
    # the tiles follow numba's target: 32-byte vectors and 16 registers on AVX2 machines
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path),
               NUMBA_CPU_FEATURES="+avx2,+fma,+avx,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,+sse,"
                                  "+popcnt,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+cx16")
    res = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


_NO_FMA_SCRIPT = """
import re
import numpy as np
from fastconv import reference
from fastconv.backends.cpu import _config, conv as c, deform as d
assert _config.MULTIPLY_ADD_INTRINSIC == "llvm.fmuladd", _config.MULTIPLY_ADD_INTRINSIC
assert (c.VEC_BYTES, c._NREGS) == (16, 16), (c.VEC_BYTES, c._NREGS)
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 8, 9, 13)).astype(np.float32)
w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
wp = rng.standard_normal((12, 8, 1, 1)).astype(np.float32)
wd = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
off = rng.standard_normal((1, 18, 9, 13)).astype(np.float32)
for out, ref in (
        (c.conv2d(x, w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                  out_hw=(9, 13)), reference.conv2d(x, w, None, 1, 1, 1, 1)),
        (c.conv2d(x, wp, None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                  out_hw=(9, 13)), reference.conv2d(x, wp, None, 1, 0, 1, 1)),
        (c.conv2d(x, wd, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=8,
                  out_hw=(9, 13)), reference.conv2d(x, wd, None, 1, 1, 1, 8)),
        (d.deform_conv2d(x, off, w, None, None, stride=(1, 1), padding=(1, 1),
                         dilation=(1, 1), groups=1, offset_groups=1, out_hw=(9, 13)),
         reference.deform_conv2d(x, off, w, None, 1, 1, 1, None))):
    assert np.abs(out - ref).max() <= 1e-4 * max(1, np.abs(ref).max())
kernels = [k.parallel for table in (c._ROWS_KERNELS, c._PW_KERNELS, c._DW_KERNELS)
           for k in table.values()]
kernels += [k.parallel for k in vars(d).values() if isinstance(k, _config._ParallelKernel)]
compiled = [k for k in kernels if k.signatures]
assert len(compiled) >= 4, compiled
for k in compiled:
    asm = "\\n".join(k.inspect_asm().values())
    calls = sorted(set(re.findall(r"\\bfmaf?\\b", asm)))
    assert not calls, (k.py_func.__qualname__, calls)
print("ok")
"""


@pytest.mark.slow
def test_target_without_fma_multiplies_and_adds_instead_of_calling_libm(tmp_path):
    """On an x86 target without FMA (``NUMBA_CPU_NAME=generic``: SSE2 only; also pre-Haswell
    CPUs) the kernels' multiply-adds must not become calls to libm's ``fmaf``, which made
    every conv and deform_conv2d case 8-23x slower there (dilated_aspp 1167 ms instead of
    50 ms on the dev VM)."""
    import os
    import subprocess
    import sys

    from fastconv.backends.cpu import _config

    if not _config.target_is_x86():
        pytest.skip("the generic target has FMA off only on x86")
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CPU_FEATURES", None)
    res = subprocess.run([sys.executable, "-c", _NO_FMA_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


@pytest.mark.parametrize("machine, features, expected", [
    ("x86_64", {"+avx2", "+fma"}, "llvm.fma"),
    ("x86_64", {"+avx", "+sse4.2"}, "llvm.fmuladd"),  # Sandy Bridge: AVX without FMA
    ("x86_64", set(), "llvm.fmuladd"),  # NUMBA_CPU_NAME=generic
    ("aarch64", {"+neon"}, "llvm.fma"),  # FMA is part of the base architecture
])
def test_multiply_add_intrinsic_follows_the_target(monkeypatch, machine, features, expected):
    from fastconv.backends.cpu import _config

    monkeypatch.setattr(_config.platform, "machine", lambda: machine)
    monkeypatch.setattr(_config, "target_cpu_features", lambda: frozenset(features))
    assert _config._multiply_add_intrinsic() == expected


# ------------------------------------------------------------ 1x1 kernels: the pointwise GEMM


@pytest.mark.parametrize("shape", [
    # (N, C, H, W, K, groups, stride, padding)
    (1, 300, 6, 11, 70, 1, (1, 1), (0, 0)),  # several reduction blocks, a masked last tile
    (2, 24, 7, 7, 13, 1, (1, 1), (0, 0)),  # K % KB != 0: the shifted last channel block
    (1, 12, 9, 9, 20, 2, (2, 2), (1, 1)),  # groups, strided, zero padding around the image
    (3, 4, 1, 1, 5, 1, (1, 1), (0, 0)),  # one pixel per image: fewer pixels than lanes
    (1, 16, 33, 33, 40, 1, (2, 1), (0, 2)),  # padding on one axis only
    (2, 9, 5, 4, 3, 3, (3, 2), (2, 0)),  # output rows of padding only
])
@pytest.mark.parametrize("force", [
    None,
    {"KC": 4, "tiles": 1},  # partial sums re-loaded from the output, one tile per item
    {"KC": 3, "tiles": 2, "kgroups": 3},  # output channels split over items
    {"tile": (5, 1), "KC": 2},  # many shifted channel blocks x reduction blocks
    {"tile": (3, 2), "KC": 1},
])
def test_pointwise_paths(dtype, hooks, shape, force):
    """1x1 kernels run as a GEMM over the flat pixels (``_pointwise``): every reduction
    block after the first re-loads its partial sums from the output, so the rows a shifted
    last channel block shares with the block before, and the pixels past the image's end,
    must be neither re-read nor re-written (masked tile I/O)."""
    N, C, H, W, K, groups, stride, padding = shape
    hooks(_FORCE_PW=force)
    run_conv(dtype, N, C, H, W, K, groups, 1, 1, stride, padding)
    run_conv(dtype, N, C, H, W, K, groups, 1, 1, stride, padding, bias=False, seed=5)


def test_pointwise_chosen_for_one_by_one_only(monkeypatch):
    seen = []
    pw_kernel = cpu_conv._pw_kernel

    def spy(*args):
        seen.append(args)
        return pw_kernel(*args)

    monkeypatch.setattr(cpu_conv, "_pw_kernel", spy)
    run_conv(np.dtype(np.float32), 1, 8, 5, 6, 4, 1, 1, 1, dilation=(3, 2))
    assert len(seen) == 1
    run_conv(np.dtype(np.float32), 1, 8, 5, 6, 4, 1, 3, 1, padding=(1, 0))
    run_conv(np.dtype(np.float32), 1, 8, 5, 6, 8, 8, 1, 1)  # depthwise kernel
    assert len(seen) == 1
    monkeypatch.setattr(cpu_conv, "_USE_POINTWISE", False)
    run_conv(np.dtype(np.float32), 1, 8, 5, 6, 4, 1, 1, 1)
    assert len(seen) == 1


def test_pointwise_masked_tile_io():
    """The masked tile load / store touch only rows ``k >= klo`` and columns ``j < n``."""
    import numba

    @numba.njit
    def roundtrip(src, dst, klo, n):
        proto = cpu_conv.tile_zero(src, 3, 2)
        acc = cpu_conv.tile_load_mask(proto, src, 1, 40, klo, n)
        cpu_conv.tile_store_mask(acc, dst, 1, 40, klo, n)

    L = cpu_conv._lanes(numba.float32)
    src = np.arange(200, dtype=np.float32)
    for klo, n in ((0, 2 * L), (1, L + 3), (2, 1), (3, 5), (0, 0)):
        dst = np.full(200, -1, dtype=np.float32)
        roundtrip(src, dst, klo, n)
        want = np.full(200, -1, dtype=np.float32)
        for k in range(klo, 3):
            want[1 + 40 * k:1 + 40 * k + n] = src[1 + 40 * k:1 + 40 * k + n]
        np.testing.assert_array_equal(dst, want)


def test_pointwise_inf_and_nan(hooks):
    """inf/NaN propagate as in the oracle: an inf weight times zero padding is NaN, an inf
    input reaches only its own pixel."""
    hooks(_FORCE_PW={"KC": 3})
    x = _rand((1, 8, 5, 5), np.float32, 0)
    x[0, 2, 1, 3] = np.inf
    x[0, 5, 4, 0] = np.nan
    w = _rand((6, 8, 1, 1), np.float32, 1)
    w[1, 3] = np.inf
    out = cpu_conv.conv2d(x, w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                          groups=1, out_hw=(7, 7))
    ref = reference.conv2d(x, w, None, 1, 1, 1, 1)
    assert np.isnan(ref[0, 1, 0, 0]) and np.isinf(ref[0, 0, 2, 4])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ the plan cache


def test_plan_is_memoised_and_never_written():
    """A layer called again reuses its plan (the same object); a call with an inf weight
    (no padding taps skipped) leaves the shared plan as it was, so the next call with
    finite weights is exact again."""
    shape = (1, 6, 9, 11, 10, 1, 3, 3)
    kw = dict(padding=(4, 4), dilation=(4, 4))
    plan = _plan(np.float32, *shape, **kw)
    assert _plan(np.float32, *shape, **kw) is plan
    tables = [a.copy() for a in (plan.geo, plan.ptab, plan.trow, plan.tcol, plan.rowoffs)]
    x = _rand((1, 6, 9, 11), np.float32, 0)
    w = _rand((10, 6, 3, 3), np.float32, 1)
    w_inf = w.copy()
    w_inf[2, 1, 0, 0] = np.inf
    for weight in (w_inf, w):
        out = cpu_conv.conv2d(x, weight, None, stride=(1, 1), groups=1, out_hw=(9, 11), **kw)
        ref = reference.conv2d(x, weight, None, 1, 4, 4, 1)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(out[ok], ref[ok], rtol=1e-4, atol=1e-4)
    for before, after in zip(tables, (plan.geo, plan.ptab, plan.trow, plan.tcol,
                                      plan.rowoffs), strict=True):
        np.testing.assert_array_equal(before, after)


def test_plan_follows_the_hooks(hooks):
    """A hook set at run time takes effect on a geometry already planned: the hooks'
    values are part of the cache key."""
    shape = (1, 8, 7, 7, 16, 1, 3, 3)
    default = _plan(np.float32, *shape, padding=(1, 1))
    hooks(_FORCE_FLAT=0, _FORCE_DIRECT=False)
    forced = _plan(np.float32, *shape, padding=(1, 1))
    assert forced is not default
    assert forced.geo[cpu_conv._FLAT] == 0 and not forced.kernel[4]
    hooks(_FORCE_FLAT=2)
    assert _plan(np.float32, *shape, padding=(1, 1)).geo[cpu_conv._FLAT] == 2
    hooks(_FORCE_PW={"tile": (2, 1)}, _USE_POINTWISE=True)
    assert isinstance(_plan(np.float32, 1, 8, 7, 7, 16, 1, 1, 1), cpu_conv._PointwisePlan)
    assert _plan(np.float32, 1, 8, 7, 7, 16, 1, 1, 1).KB == 2


def test_every_hook_is_a_plan_knob():
    import re

    names = [n for n in vars(cpu_conv) if re.fullmatch(r"_(FORCE|USE)_[A-Z_]+", n)]
    assert names and set(names) <= set(cpu_conv._PLAN_KNOBS)
    for name in ("_XBUF_BYTES", "_L1_BLOCK_BYTES", "_CV_BLOCK_BYTES", "_PW_KC", "_PW_TILES",
                 "_DIRECT_PIXELS", "_ITEMS_PER_THREAD", "_L2_BYTES"):
        assert name in cpu_conv._PLAN_KNOBS, name
