"""roi_align and roi_pool as numba.cuda kernels.

Both launch grid y over the RoIs (grid-stride) and grid x over the flattened
``(channel, ph, pw)`` outputs of one RoI, so consecutive threads write consecutive output
addresses and a block shares one RoI (its box row is a broadcast read).  The box geometry
is computed in the input's dtype in torchvision's order of operations.

* ``roi_align`` -- a thread owns one bin ``(ph, pw)`` for ``CPT`` consecutive channels: it
  computes each sample point's bilinear set-up (:func:`._bilinear.functions`
  ``corners_edge_clamp``, the replicate-edge rule) once and reuses it for all ``CPT``
  channels.
* ``roi_pool`` -- a thread owns one output element and takes the running maximum over its
  bin (``value > max`` from ``-FLT_MAX``, so NaN is skipped, as in torchvision).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda, types

from .. import _tuning
from . import autotune
from ._bilinear import functions as _bilinear_functions
from ._launch import (
    cdiv,
    current_stream,
    empty,
    grid_2d,
    launch,
    numba_arg_types,
    scalar,
    settings,
)

#: threads of the one block of the box check
CHECK_BLOCK = 256

#: torchvision's start value of the running maximum (C's FLT_MAX), in every dtype
_NEG_FLT_MAX = -3.4028234663852886e38


def roi_align(x, rois, *, output_size, spatial_scale, sampling_ratio, aligned):
    """Backend roi_align; see :mod:`fastconv.backends` for the contract."""
    K = rois.shape[0]
    C = x.shape[1]
    PH, PW = output_size
    out = empty((K, C, PH, PW), x.dtype)
    if out.size == 0:
        return out
    T = x.dtype.type
    args = (x, rois, out, scalar(x.dtype, spatial_scale), int(sampling_ratio), 1 if aligned else 0)
    block = settings.block

    def plan(arm):  # arm: channels per thread (reusing each sample's bilinear weights)
        cpt = (arm and arm["ROI_CPT"]) or settings.roi_channels_per_thread
        return (_align_kernel(T, cpt), grid_2d(cdiv(C, cpt) * PH * PW, K, block), block, 0,
                args)

    autotune.run("roi_align", lambda: (x.shape, _tuning.box_bucket(K), output_size,
                                       int(sampling_ratio), bool(aligned), x.dtype.char),
                 plan, launch, *current_stream())
    return out


def roi_pool(x, rois, *, output_size, spatial_scale):
    """Backend roi_pool; see :mod:`fastconv.backends` for the contract."""
    K = rois.shape[0]
    C = x.shape[1]
    PH, PW = output_size
    out = empty((K, C, PH, PW), x.dtype)
    if out.size == 0:
        return out
    T = x.dtype.type
    kern = _pool_kernel(T)
    block = settings.block
    grid = grid_2d(C * PH * PW, K, block)
    skey, stream = current_stream()
    launch(kern, grid, block, skey, stream, x, rois, out, scalar(x.dtype, spatial_scale))
    return out


def count_bad_boxes(rois, batch: int) -> int:
    """How many rows of the ``(K, 5)`` float boxes ``rois`` have a non-finite coordinate
    or a batch index that is not an integer in ``[0, batch)``.

    One block of one kernel and a 4-byte copy back (a sync) instead of copying the boxes
    to the host; the public wrapper copies them only when it must word an error.
    """
    kern = _check_kernel(rois.dtype.type)
    bad = empty((1,), np.int32)
    skey, stream = current_stream()
    # batch in the boxes' dtype, so a float32 kernel compares in float32
    launch(kern, 1, CHECK_BLOCK, skey, stream, rois, scalar(rois.dtype, batch), bad)
    return int(bad.copy_to_host(stream=stream)[0])


@cuda.jit(cache=True)
def roi_copy_boxes(src, dst, row0, index):
    """Rows of ``src`` into ``dst[row0:]``, converted to ``dst``'s dtype (grid-stride): an
    ``(L, 4)`` part after batch index ``index``, or ``(L, 5)`` rows as they are when
    ``index < 0``."""
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for i in range(start, src.shape[0], cuda.gridDim.x * cuda.blockDim.x):
        if index >= 0:
            dst[row0 + i, 0] = index
            for j in range(4):
                dst[row0 + i, j + 1] = src[i, j]
        else:
            for j in range(5):
                dst[row0 + i, j] = src[i, j]


def stack_boxes(items, is_list, dtype):
    """RoI boxes in either torchvision format as a ``(K, 5)`` device array in ``dtype``,
    built on the device: one copy kernel per part (``items`` are device arrays: the
    ``(L_n, 4)`` parts of the list form, whose rows get batch index ``n``, or one
    ``(K, 5)`` array in another dtype)."""
    out = empty((sum(int(b.shape[0]) for b in items), 5), np.dtype(dtype))
    block = settings.block
    skey, stream = current_stream()
    row0 = 0
    for n, b in enumerate(items):
        rows = int(b.shape[0])
        if rows:
            grid = (max(1, min(cdiv(rows, block), settings.max_grid[0])),)
            launch(roi_copy_boxes, grid, block, skey, stream, b, out, row0,
                   n if is_list else -1)
        row0 += rows
    return out


@functools.cache
def _align_kernel(T, cpt):
    return _build_align(T, cpt)


@functools.cache
def _pool_kernel(T):
    return _build_pool(T)


@functools.cache
def _check_kernel(T):
    return _build_check(T)


def ptx_cases(T):
    """``[(name, kernel, argtypes)]`` for every kernel of this module and float type ``T``."""
    f, i, _, a2, a4 = numba_arg_types(T)
    cpt = settings.roi_channels_per_thread
    align = (a4, a2, a4, f, i, i)
    # the other channels-per-thread instantiations that autotuning may launch
    tuned = sorted({arm["ROI_CPT"] for arm in autotune.ARMS["roi_align"]} - {None, cpt})
    return [
        ("roi_align", _align_kernel(T, cpt), align),
        *((f"roi_align_cpt{c}", _align_kernel(T, c), align) for c in tuned),
        ("roi_pool", _pool_kernel(T), (a4, a2, a4, f)),
        ("roi_count_bad_boxes", _check_kernel(T),
         (a2, f, types.Array(types.int32, 1, "C"))),
        # boxes into T boxes (any layout): the list form's parts, often integers, and (K, 5)
        # boxes of the other float dtype; a conversion, no float64 arithmetic
        *((f"roi_copy_boxes_from_{np.dtype(src).name}", roi_copy_boxes,
           (types.Array(numba.from_dtype(np.dtype(src)), 2, "A"), a2, i, i))
          for src in (np.int32, np.int64, np.float32, np.float64)),
    ]


def _build_align(T, CPT):
    zero = T(0.0)
    half = T(0.5)
    one = T(1.0)
    _, corners_edge_clamp, gather = _bilinear_functions(T)

    @cuda.jit(cache=True)
    def roi_align(x, rois, out, spatial_scale, sampling_ratio, aligned):
        """Grid y: RoIs; grid x: (channel block, ph, pw); CPT channels per thread."""
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = rois.shape[0]
        PH = out.shape[2]
        PW = out.shape[3]
        PP = PH * PW
        total = ((C + CPT - 1) // CPT) * PP
        acc = cuda.local.array(CPT, T)
        start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.x * cuda.blockDim.x
        N = x.shape[0]
        for k in range(cuda.blockIdx.y, K, cuda.gridDim.y):
            # a batch index naming no image (only with check_boxes=False): no samples, zeros
            b = rois[k, 0]
            has_image = b > -one and b < T(N)
            n = int(b) if has_image else 0
            shift = half if aligned else zero
            start_w = rois[k, 1] * spatial_scale - shift
            start_h = rois[k, 2] * spatial_scale - shift
            end_w = rois[k, 3] * spatial_scale - shift
            end_h = rois[k, 4] * spatial_scale - shift
            roi_w = end_w - start_w
            roi_h = end_h - start_h
            if not aligned:
                roi_w = max(roi_w, one)
                roi_h = max(roi_h, one)
            bin_h = roi_h / T(PH)
            bin_w = roi_w / T(PW)
            if sampling_ratio > 0:
                grid_h = sampling_ratio
                grid_w = sampling_ratio
            else:
                grid_h = int(math.ceil(roi_h / T(PH)))
                grid_w = int(math.ceil(roi_w / T(PW)))
            if not has_image:
                grid_h = 0
            count = T(max(grid_h * grid_w, 1))
            for idx in range(start, total, step):
                cq = idx // PP
                r = idx - cq * PP
                ph = r // PW
                pw = r - ph * PW
                c0 = cq * CPT
                for u in range(CPT):
                    acc[u] = zero
                for iy in range(grid_h):
                    yy = start_h + T(ph) * bin_h + (T(iy) + half) * bin_h / T(grid_h)
                    for ix in range(grid_w):
                        xx = start_w + T(pw) * bin_w + (T(ix) + half) * bin_w / T(grid_w)
                        yl, xl, yh, xh, w1, w2, w3, w4, msk = corners_edge_clamp(yy, xx, H, W)
                        if msk != 0:
                            for u in range(CPT):
                                if c0 + u < C:
                                    acc[u] += gather(
                                        x, n, c0 + u, yl, xl, yh, xh, w1, w2, w3, w4, msk
                                    )
                for u in range(CPT):
                    if c0 + u < C:
                        out[k, c0 + u, ph, pw] = acc[u] / count

    return roi_align


def _build_pool(T):
    zero = T(0.0)
    half = T(0.5)
    one = T(1.0)
    lowest = T(_NEG_FLT_MAX)

    @cuda.jit(device=True, inline="always")
    def c_round(v):
        """C's ``round`` (half away from zero) of a float, as an int."""
        a = abs(v)
        f = int(math.floor(a))
        if a - T(f) >= half:
            f += 1
        if v < zero:
            f = -f
        return f

    @cuda.jit(cache=True)
    def roi_pool(x, rois, out, spatial_scale):
        """Grid y: RoIs; grid x: (channel, ph, pw); one output element per thread."""
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = rois.shape[0]
        PH = out.shape[2]
        PW = out.shape[3]
        PP = PH * PW
        total = C * PP
        start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        step = cuda.gridDim.x * cuda.blockDim.x
        N = x.shape[0]
        for k in range(cuda.blockIdx.y, K, cuda.gridDim.y):
            # a batch index naming no image (only with check_boxes=False): empty bins, zeros
            b = rois[k, 0]
            has_image = b > -one and b < T(N)
            n = int(b) if has_image else 0
            start_w = c_round(rois[k, 1] * spatial_scale)
            start_h = c_round(rois[k, 2] * spatial_scale)
            end_w = c_round(rois[k, 3] * spatial_scale)
            end_h = c_round(rois[k, 4] * spatial_scale)
            roi_w = max(end_w - start_w + 1, 1)
            roi_h = max(end_h - start_h + 1, 1)
            bin_h = T(roi_h) / T(PH)
            bin_w = T(roi_w) / T(PW)
            for idx in range(start, total, step):
                c = idx // PP
                r = idx - c * PP
                ph = r // PW
                pw = r - ph * PW
                hstart = int(math.floor(T(ph) * bin_h))
                wstart = int(math.floor(T(pw) * bin_w))
                hend = int(math.ceil(T(ph + 1) * bin_h))
                wend = int(math.ceil(T(pw + 1) * bin_w))
                hstart = min(max(hstart + start_h, 0), H)
                hend = min(max(hend + start_h, 0), H)
                wstart = min(max(wstart + start_w, 0), W)
                wend = min(max(wend + start_w, 0), W)
                if not has_image or hend <= hstart or wend <= wstart:
                    best = zero
                else:
                    best = lowest
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            v = x[n, c, h, w]
                            if v > best:
                                best = v
                out[k, c, ph, pw] = best

    return roi_pool


def _build_check(T):
    zero = T(0.0)  # compare in the boxes' own dtype

    @cuda.jit(cache=True)
    def roi_count_bad_boxes(rois, batch, bad):
        """One block: each thread counts its bad rows; thread 0 adds the counts up."""
        counts = cuda.shared.array(CHECK_BLOCK, np.int32)
        t = cuda.threadIdx.x
        mine = 0
        for k in range(t, rois.shape[0], cuda.blockDim.x):
            n = rois[k, 0]
            # range first: NaN and +-inf fail it, so the truncation only sees [0, batch)
            ok = n >= zero and n < batch and T(int(n)) == n
            for j in range(1, 5):
                ok = ok and math.isfinite(rois[k, j])
            if not ok:
                mine += 1
        counts[t] = mine
        cuda.syncthreads()
        if t == 0:
            total = 0
            for i in range(cuda.blockDim.x):
                total += counts[i]
            bad[0] = total

    return roi_count_bad_boxes

