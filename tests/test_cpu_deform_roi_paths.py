"""Internal paths of the CPU deform_conv2d / roi_align / roi_pool kernels against the oracle.

* ``_bilinear``: the two edge rules (``bilinear_zero_pad`` for deform_conv2d,
  ``bilinear_clamp`` / ``clamp_axis`` for roi_align) sample exactly what the oracle
  samples, on and around the image edges and at integer coordinates.
* ``deform``: the tile of output pixels (one tile, many tiles, a partial last tile and
  a pixel count that is not a multiple of the 6-pixel GEMM block), the output-channel
  tail of the 6x4 GEMM block, offset groups that split weight groups and vice versa,
  DCNv1 (no mask) and no bias, NaN/Inf in data, offsets and mask.
* ``roi``: both paths (channels-last separable, planar) forced through the public
  backend function, boxes inside / across the edge / outside / degenerate, adaptive
  and fixed sampling grids, several images with unused ones in between, NaN/Inf data.
* Thread count: 1 and 2 threads (where available) give identical results.
"""

import numba
import numpy as np
import pytest

from fastconv import reference
from fastconv._random_cases import relative_error
from fastconv.backends.cpu import _bilinear, deform, roi

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
_MAX_THREADS = min(2, numba.config.NUMBA_NUM_THREADS)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def _rand(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    assert out.flags.c_contiguous
    err = relative_error(out, ref)
    assert err <= TOL[dtype], err


# --------------------------------------------------------------------------- _bilinear


_EDGE_COORDS = [-1.5, -1.0, -0.999, -0.5, 0.0, 0.25, 1.0, 2.5, 3.0, 3.5, 3.999, 4.0, 4.5, 5.0]


def _points(h, w):
    pts = [(y, x) for y in _EDGE_COORDS for x in _EDGE_COORDS]
    pts += [(y * (h + 1) / 4 - 1, x * (w + 1) / 5 - 1) for y in range(5) for x in range(6)]
    return np.array(pts)


def test_bilinear_zero_pad_matches_deform_oracle(dtype):
    h, w = 4, 5
    img = _rand((h, w), dtype, 1)
    bordered = np.zeros((h + 2) * (w + 2), dtype)
    bordered.reshape(h + 2, w + 2)[1:-1, 1:-1] = img
    pts = _points(h, w).astype(dtype)
    T = dtype.type
    got = []
    for py, px in pts:
        i00, i01, i10, i11, w00, w01, w10, w11 = _bilinear.bilinear_zero_pad(py, px, h, w, T)
        got.append(w00 * bordered[i00] + w01 * bordered[i01] + w10 * bordered[i10]
                   + w11 * bordered[i11])
    # the oracle: a 1x1 deformable conv with weight 1 samples output pixel (0, 0) at (dy, dx)
    k = len(pts)
    x = np.ascontiguousarray(np.broadcast_to(img, (k, 1, h, w)))
    off = np.zeros((k, 2, h, w), dtype)
    off[:, 0, 0, 0] = pts[:, 0]
    off[:, 1, 0, 0] = pts[:, 1]
    ref = reference.deform_conv2d(x, off, np.ones((1, 1, 1, 1)))[:, 0, 0, 0]
    assert ref.shape == (k,)
    np.testing.assert_allclose(np.array(got, np.float64), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_bilinear_zero_pad_nan_point_is_nan():
    T = np.float32
    out = _bilinear.bilinear_zero_pad(T(np.nan), T(1.0), 3, 3, T)
    assert out[:4] == (0, 0, 0, 0) and all(np.isnan(v) for v in out[4:])
    out = _bilinear.bilinear_zero_pad(T(np.inf), T(1.0), 3, 3, T)
    assert out == (0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)


def test_bilinear_clamp_matches_roi_align_oracle(dtype):
    h, w = 4, 5
    img = _rand((1, 1, h, w), dtype, 2)
    flat = img.reshape(-1)
    pts = _points(h, w).astype(dtype)
    T = dtype.type
    got = []
    for y, x in pts:
        inside, i1, i2, i3, i4, w1, w2, w3, w4 = _bilinear.bilinear_clamp(y, x, h, w, T)
        v = w1 * flat[i1] + w2 * flat[i2] + w3 * flat[i3] + w4 * flat[i4]
        assert inside or v == 0
        got.append(v if inside else 0.0)
    # the oracle: aligned RoIAlign of a zero-size box at (x + 0.5, y + 0.5), one sample
    boxes = np.zeros((len(pts), 5), dtype)
    boxes[:, 1] = boxes[:, 3] = pts[:, 1] + T(0.5)
    boxes[:, 2] = boxes[:, 4] = pts[:, 0] + T(0.5)
    ref = reference.roi_align(img, boxes, 1, 1.0, 1, True)[:, 0, 0, 0]
    np.testing.assert_allclose(np.array(got, np.float64), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_clamp_axis_is_the_rule_of_bilinear_clamp():
    T = np.float64
    for v in _EDGE_COORDS:
        ok, lo, hi, frac, rest = _bilinear.clamp_axis(T(v), 4, T)
        assert ok == (-1 <= v <= 4)
        if ok:
            c = min(max(v, 0.0), 3.0)
            assert lo == min(int(c), 3) and hi == min(lo + 1, 3)
            assert frac == c - lo and rest == 1 - frac


# --------------------------------------------------------------------------- deform_conv2d


def _out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def run_deform(dtype, N, C, H, W, K, groups, og, kh, kw, stride=(1, 1), padding=(0, 0),
               dilation=(1, 1), mask=True, bias=True, seed=0, scale=1.5, threads=None):
    out_hw = (_out(H, kh, stride[0], padding[0], dilation[0]),
              _out(W, kw, stride[1], padding[1], dilation[1]))
    x = _rand((N, C, H, W), dtype, seed)
    off = (scale * _rand((N, 2 * og * kh * kw) + out_hw, dtype, seed + 1)).astype(dtype)
    m = np.random.default_rng(seed + 2).uniform(size=(N, og * kh * kw) + out_hw).astype(dtype)
    m = m if mask else None
    w = _rand((K, C // groups, kh, kw), dtype, seed + 3)
    b = _rand((K,), dtype, seed + 4) if bias else None
    keep = [None if a is None else a.copy() for a in (x, off, w, b, m)]
    old = numba.get_num_threads()
    if threads:
        numba.set_num_threads(threads)
    try:
        out = deform.deform_conv2d(x, off, w, b, m, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups, offset_groups=og,
                                   out_hw=out_hw)
    finally:
        numba.set_num_threads(old)
    for a, k in zip((x, off, w, b, m), keep, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, k)
    ref = reference.deform_conv2d(x, off, w, b, stride, padding, dilation, m)
    return out, ref


@pytest.mark.parametrize("tile_bytes, max_tile", [(1 << 18, 288), (1, 6), (1, 12), (1 << 12, 18)])
def test_deform_tiles(dtype, monkeypatch, tile_bytes, max_tile):
    # one tile (63 pixels padded to 66); tiles of 6 / 12 / <=18 pixels over 7*9 = 63
    # output pixels (partial last tile, a partial 6-pixel GEMM block)
    monkeypatch.setattr(deform, "_COLS_BYTES", tile_bytes)
    monkeypatch.setattr(deform, "_MAX_TILE", max_tile)
    out, ref = run_deform(dtype, 2, 6, 7, 9, 5, 1, 1, 3, 3, padding=(1, 1))
    _check(out, ref, dtype)


@pytest.mark.parametrize("K", [1, 3, 4, 5, 8, 9])
def test_deform_output_channel_tail(dtype, K):
    out, ref = run_deform(dtype, 1, 4, 6, 5, K, 1, 1, 2, 3, padding=(0, 1), seed=K)
    _check(out, ref, dtype)


@pytest.mark.parametrize("C, groups, og, K", [
    (12, 3, 2, 6),   # offset group (6 ch) spans two weight groups (4 ch)
    (12, 2, 3, 4),   # weight group (6 ch) spans two offset groups (4 ch)
    (8, 8, 8, 8),    # depthwise, one channel per offset group
    (8, 8, 1, 16),   # depthwise weights, one offset group
    (6, 1, 6, 5),
])
def test_deform_groups_and_offset_groups(dtype, C, groups, og, K):
    out, ref = run_deform(dtype, 2, C, 5, 6, K, groups, og, 3, 2, stride=(2, 1),
                          padding=(1, 0), dilation=(1, 2), seed=C + groups + og)
    _check(out, ref, dtype)


@pytest.mark.parametrize("mask, bias", [(False, False), (False, True), (True, False)])
def test_deform_dcnv1_and_no_bias(dtype, mask, bias):
    out, ref = run_deform(dtype, 2, 4, 6, 7, 3, 1, 2, 3, 3, padding=(1, 1), mask=mask, bias=bias)
    _check(out, ref, dtype)


def test_deform_large_offsets_and_strides(dtype):
    out, ref = run_deform(dtype, 1, 5, 9, 8, 7, 1, 1, 3, 2, stride=(3, 2), padding=(2, 3),
                          dilation=(2, 3), scale=6.0)
    _check(out, ref, dtype)


def test_deform_empty_batch(dtype):
    out, ref = run_deform(dtype, 0, 4, 5, 5, 3, 1, 1, 3, 3, padding=(1, 1))
    assert out.shape == ref.shape == (0, 3, 5, 5)


def test_deform_non_finite(dtype):
    N, C, H, W, og = 2, 4, 6, 5, 2
    x = _rand((N, C, H, W), dtype, 5)
    x[0, 1, 2, 3] = np.nan
    x[1, 3, 0, 0] = np.inf
    off = _rand((N, 2 * og * 9, H, W), dtype, 6)
    off[0, 4, 1, 1] = np.nan
    off[1, 5, 2, 2] = np.inf
    off[0, 0::2, 3, 3] = np.round(off[0, 0::2, 3, 3])  # integer rows: zero-weight corners
    m = np.random.default_rng(7).uniform(size=(N, og * 9, H, W)).astype(dtype)
    m[1, 2, 4, 4] = np.nan
    m[0, 7, 0, 4] = np.inf
    w = _rand((3, C, 3, 3), dtype, 8)
    out = deform.deform_conv2d(x, off, w, None, m, stride=(1, 1), padding=(1, 1),
                               dilation=(1, 1), groups=1, offset_groups=og, out_hw=(H, W))
    ref = reference.deform_conv2d(x, off, w, None, 1, 1, 1, m)
    assert np.isnan(ref).any()
    _check(out, ref, dtype)


def test_deform_threads_agree(dtype):
    a, _ = run_deform(dtype, 2, 8, 11, 13, 6, 2, 2, 3, 3, padding=(1, 1), threads=1)
    b, _ = run_deform(dtype, 2, 8, 11, 13, 6, 2, 2, 3, 3, padding=(1, 1), threads=_MAX_THREADS)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- roi_align / roi_pool


def _boxes(dtype, n_img, h, w, k, seed, used=None):
    rng = np.random.default_rng(seed)
    b = rng.choice(used if used is not None else np.arange(n_img), k)
    x1 = rng.uniform(-0.4 * w, 1.2 * w, k)
    y1 = rng.uniform(-0.4 * h, 1.2 * h, k)
    x2 = x1 + rng.uniform(0, 0.9 * w, k)
    y2 = y1 + rng.uniform(0, 0.9 * h, k)
    boxes = np.stack([b, x1, y1, x2, y2], 1)
    boxes[:4, 1:] = np.round(2 * boxes[:4, 1:]) / 2  # halves: C rounding ties in roi_pool
    boxes[4] = [b[4], 2.0, 3.0, 2.0, 3.0]  # degenerate (zero size)
    boxes[5] = [b[5], -9.0, -9.0, -5.0, -6.0]  # outside
    boxes[6] = [b[6], 0.0, 0.0, w - 1.0, h - 1.0]  # whole image
    return boxes.astype(dtype)


@pytest.fixture(params=["channels_last", "streamed", "planar"])
def roi_path(request, monkeypatch):
    """The planar path, or the channels-last one with plain or non-temporal output stores."""
    monkeypatch.setattr(roi, "_use_channels_last", lambda *a: request.param != "planar")
    if request.param == "streamed":  # every output streamed, not only those >= 8 MiB
        monkeypatch.setattr(roi, "_STREAM_MIN_BYTES", 0)
    return request.param


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio, output_size, scale", [
    (-1, (3, 4), 1.0), (2, (7, 7), 0.5), (1, (2, 3), 1.0), (3, (1, 1), 0.75), (-1, (14, 14), 2.0),
])
def test_roi_align_paths(dtype, roi_path, aligned, sampling_ratio, output_size, scale):
    x = _rand((3, 11, 9, 12), dtype, 11)
    boxes = _boxes(dtype, 3, 9 / scale, 12 / scale, 23, 12, used=[0, 2])  # image 1 unused
    keep = (x.copy(), boxes.copy())
    out = roi.roi_align(x, boxes, output_size=output_size, spatial_scale=scale,
                        sampling_ratio=sampling_ratio, aligned=aligned)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(boxes, keep[1])
    ref = reference.roi_align(x, boxes, output_size, scale, sampling_ratio, aligned)
    _check(out, ref, dtype)


@pytest.mark.parametrize("output_size, scale", [((3, 4), 1.0), ((7, 7), 0.5), ((1, 1), 1.0),
                                                 ((5, 2), 0.25)])
def test_roi_pool_paths(dtype, roi_path, output_size, scale):
    x = _rand((3, 10, 8, 13), dtype, 13)
    boxes = _boxes(dtype, 3, 8 / scale, 13 / scale, 29, 14, used=[1, 2])  # image 0 unused
    keep = (x.copy(), boxes.copy())
    out = roi.roi_pool(x, boxes, output_size=output_size, spatial_scale=scale)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(boxes, keep[1])
    ref = reference.roi_pool(x, boxes, output_size, scale)
    assert out.dtype == dtype and out.shape == ref.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref.astype(dtype))


def test_roi_tiny_maps(dtype, roi_path):
    for h, w in ((1, 1), (1, 5), (4, 1)):
        x = _rand((1, 9, h, w), dtype, h * 10 + w)
        boxes = np.array([[0, -0.7, -0.2, 0.6, 0.9], [0, 0, 0, w, h], [0, 0.3, 0.1, 0.3, 0.1]],
                         dtype)
        for aligned in (False, True):
            out = roi.roi_align(x, boxes, output_size=(2, 3), spatial_scale=1.0,
                                sampling_ratio=-1, aligned=aligned)
            _check(out, reference.roi_align(x, boxes, (2, 3), 1.0, -1, aligned), dtype)
        out = roi.roi_pool(x, boxes, output_size=(2, 3), spatial_scale=1.0)
        np.testing.assert_array_equal(out, reference.roi_pool(x, boxes, (2, 3), 1.0).astype(dtype))


def test_roi_non_finite(dtype, roi_path):
    x = _rand((2, 6, 10, 11), dtype, 21)
    x[0, 1, 4, 4] = np.nan
    x[1, 2, 3, 7] = np.inf
    x[0, 3, :, 6] = np.nan
    x[1, 4, 2:5, 2:5] = -np.inf
    x[1, 5, 6:9, 6:9] = np.nan  # a whole RoIPool bin of NaN -> -FLT_MAX
    boxes = _boxes(dtype, 2, 10, 11, 31, 22)
    boxes[7] = [1, 6, 6, 8.4, 8.4]
    for aligned in (False, True):
        out = roi.roi_align(x, boxes, output_size=(3, 4), spatial_scale=1.0, sampling_ratio=2,
                            aligned=aligned)
        ref = reference.roi_align(x, boxes, (3, 4), 1.0, 2, aligned)
        assert np.isnan(ref).any()
        _check(out, ref, dtype)
    out = roi.roi_pool(x, boxes, output_size=(3, 3), spatial_scale=1.0)
    ref = reference.roi_pool(x, boxes, (3, 3), 1.0)
    assert (ref == -np.finfo(np.float32).max).any()
    np.testing.assert_array_equal(out, ref.astype(dtype))


def test_roi_no_boxes(dtype, roi_path):
    x = _rand((1, 3, 5, 5), dtype, 0)
    none = np.zeros((0, 5), dtype)
    assert roi.roi_align(x, none, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=-1,
                         aligned=False).shape == (0, 3, 2, 2)
    assert roi.roi_pool(x, none, output_size=(2, 2), spatial_scale=1.0).shape == (0, 3, 2, 2)


@numba.njit
def _stream_copy_into(dst, d_off, src, s_off, n):
    roi._stream_copy(dst, d_off, src, s_off, n)
    roi._store_fence()


def test_stream_copy_matches_slice_assignment(dtype):
    # every head / whole-line / tail split: offsets around a cache line, lengths from
    # shorter than the head to several lines
    lanes = roi._LINE // np.dtype(dtype).itemsize
    rng = np.random.default_rng(5)
    src = rng.standard_normal(8 * lanes).astype(dtype)
    for d_off in range(lanes + 1):
        for n in (0, 1, lanes - 1, lanes, lanes + 3, 3 * lanes + 1):
            s_off = (7 * d_off + n) % lanes  # source misaligned independently
            dst = np.full(5 * lanes, -1, dtype)
            _stream_copy_into(dst, d_off, src, s_off, n)
            want = np.full(5 * lanes, -1, dtype)
            want[d_off:d_off + n] = src[s_off:s_off + n]
            np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("c_in", [32, 70])
def test_roi_streamed_output_many_channels(dtype, c_in, monkeypatch):
    # more channels than one staged block (32), with a tail that is not a multiple of 8
    monkeypatch.setattr(roi, "_use_channels_last", lambda *a: True)
    monkeypatch.setattr(roi, "_STREAM_MIN_BYTES", 0)
    x = _rand((2, c_in, 9, 10), dtype, 41)
    boxes = _boxes(dtype, 2, 9, 10, 17, 42)
    out = roi.roi_align(x, boxes, output_size=(3, 5), spatial_scale=1.0, sampling_ratio=2,
                        aligned=True)
    _check(out, reference.roi_align(x, boxes, (3, 5), 1.0, 2, True), dtype)
    out = roi.roi_pool(x, boxes, output_size=(3, 5), spatial_scale=1.0)
    np.testing.assert_array_equal(out, reference.roi_pool(x, boxes, (3, 5), 1.0).astype(dtype))


def test_roi_streams_only_large_outputs():
    assert not roi._streamed(np.empty((8, 256, 7, 7), np.float32))  # 0.4 MB: stays cached
    assert roi._streamed(np.empty((512, 256, 7, 7), np.float32))  # 25.7 MB


def test_roi_path_choice():
    def choose(c, h, w, reads, crossover=roi._ALIGN_CROSSOVER):
        return roi._use_channels_last(1, c, h, w, reads, 4, crossover)

    # many boxes on a small map -> channels-last; one box on a big map -> planar
    assert choose(256, 50, 68, 4.0 * 512 * 49 * 4)
    assert not choose(256, 200, 300, 4.0 * 1 * 49 * 4)
    assert not choose(2, 50, 68, 1e9)  # too few channels to vectorise
    # a 61 MB copy runs at memory bandwidth: for roi_align it pays from ~1.2 reads per pixel
    assert not choose(256, 200, 300, 1.0 * 200 * 300)
    assert choose(256, 200, 300, 1.5 * 200 * 300)
    # roi_pool's planar reads are dearer: the copy pays from ~0.3 reads per pixel
    assert choose(256, 200, 300, 0.5 * 200 * 300, roi._POOL_CROSSOVER)
    assert not choose(256, 200, 300, 0.25 * 200 * 300, roi._POOL_CROSSOVER)
    assert choose(256, 50, 68, 0.4 * 50 * 68, roi._POOL_CROSSOVER)


def test_roi_threads_agree(dtype):
    x = _rand((2, 20, 16, 17), dtype, 31)
    boxes = _boxes(dtype, 2, 16, 17, 40, 32)
    old = numba.get_num_threads()
    res = []
    for n in (1, _MAX_THREADS):
        numba.set_num_threads(n)
        try:
            res.append((roi.roi_align(x, boxes, output_size=(5, 4), spatial_scale=1.0,
                                      sampling_ratio=-1, aligned=True),
                        roi.roi_pool(x, boxes, output_size=(5, 4), spatial_scale=1.0)))
        finally:
            numba.set_num_threads(old)
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(res[0][1], res[1][1])


def _edge_boxes(dtype, batch):
    """Rows on both sides of every rule of the box check: batch indices at and around
    0 and ``batch``, fractions, -0.0, NaN and infinities, and non-finite coordinates."""
    idx = [0, -0.0, 1, batch - 1, batch, batch + 1, -1, -0.5, 0.5, batch - 0.5,
           np.nextafter(dtype.type(batch - 1), dtype.type(batch)), np.nan, np.inf, -np.inf,
           2.0**40]
    rows = [[i, 1.0, 2.0, 3.0, 4.0] for i in idx]
    for j in range(1, 5):
        for v in (np.nan, np.inf, -np.inf, np.finfo(dtype).max):
            row = [0, 1.0, 2.0, 3.0, 4.0]
            row[j] = v
            rows.append(row)
    return np.array(rows, dtype)


def _args_accept(rois, batch):
    from fastconv import _args

    try:
        _args.check_rois(rois.astype(np.float64), batch)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("batch", [1, 3])
def test_roi_box_count_agrees_with_the_worded_check(dtype, batch):
    """``count_bad_boxes`` (the one-pass check the public wrapper runs) finds a row bad
    exactly when ``_args.check_rois`` (which words the error) rejects it."""
    boxes = _edge_boxes(dtype, batch)
    keep = boxes.copy()
    bad = 0
    for k in range(boxes.shape[0]):
        ok = _args_accept(boxes[k:k + 1], batch)
        bad += not ok
        assert roi.count_bad_boxes(boxes[k:k + 1], batch) == (not ok), boxes[k]
    assert 0 < bad < boxes.shape[0]
    assert roi.count_bad_boxes(boxes, batch) == bad
    with np.errstate(over="ignore"):
        half = boxes.astype(np.float16)  # widened in count_bad_boxes: the same values
    assert roi.count_bad_boxes(half, batch) == sum(
        not _args_accept(half[k:k + 1], batch) for k in range(half.shape[0]))
    assert roi.count_bad_boxes(boxes[:0], batch) == 0
    np.testing.assert_array_equal(boxes, keep)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_box_scan_matches_numpy(dtype, pool, sampling_ratio):
    """The one pass before a launch: rows naming no image, the images used and their
    slots, and the cost estimate, against the same quantities worked out with NumPy."""
    n_b, h, w, ph, pw, scale = 5, 20, 30, 3, 4, 0.5
    boxes = _boxes(dtype, n_b, h / scale, w / scale, 19, 8, used=[1, 3])
    boxes[[2, 9], 0] = [-1.0, np.nan]  # name no image (check_boxes=False)
    boxes[11, 0] = -0.5  # truncates to image 0
    boxes[12, 0] = 4.5  # truncates to image 4
    missing, idx, slot, reads = roi._scan_boxes(boxes, n_b, h, w, scale, ph, pw,
                                                sampling_ratio, pool)
    b = boxes[:, 0].astype(np.float64)
    has_image = (b > -1) & (b < n_b)
    used = np.zeros(n_b, bool)
    used[np.trunc(b[has_image]).astype(np.int64)] = True
    used[0] |= not has_image.all()  # the kernels read those rows as image 0
    assert missing == (~has_image).sum() == 2
    np.testing.assert_array_equal(idx, np.flatnonzero(used))
    want_slot = np.full(n_b, -1)
    want_slot[used] = np.arange(used.sum())
    np.testing.assert_array_equal(slot, want_slot)
    c = boxes.astype(np.float64)
    bw, bh = np.abs(c[:, 3] - c[:, 1]) * scale, np.abs(c[:, 4] - c[:, 2]) * scale
    if pool:
        want = np.sum(np.clip(bw + 1, 1, w) * np.clip(bh + 1, 1, h))
    elif sampling_ratio > 0:
        want = 4.0 * len(boxes) * ph * pw * sampling_ratio**2
    else:
        want = 4.0 * ph * pw * np.sum(np.ceil(bh / ph) * np.ceil(bw / pw))
    assert reads == pytest.approx(want, rel=1e-12)
