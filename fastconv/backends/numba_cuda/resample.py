"""Resampling and image-glue kernels of the ``"numba_cuda"`` backend.

The same ops, tables and arithmetic as ``fastconv/backends/cpu/resample.py``
(whose docstring describes the table conventions): ``gather``, ``lerp``,
``sepfilter`` (two passes, H then W, each padding its own input), and the
array glue of :mod:`fastconv.image` -- ``to_planes``, ``from_planes``,
``subtract``, ``concat``, ``minmax``, ``clip`` -- so that images held as numba device arrays never
leave the device.

Every kernel is a 1-D grid-stride loop over the flattened output (consecutive
threads write consecutive addresses), launched through
:func:`._launch.launch` on the current stream.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._index import unravel3, unravel4
from ._launch import cdiv, current_stream, empty, launch, numba_arg_types, scalar, settings

__all__ = [
    "clip",
    "concat",
    "from_planes",
    "gather",
    "lerp",
    "minmax",
    "sepfilter",
    "subtract",
    "to_planes",
]


# ----------------------------------------------------------------------------- kernels


@cuda.jit(cache=True)
def _gather(x, iy, ix, cval, out):
    n_ch = out.shape[1]
    h_out = out.shape[2]
    w_out = out.shape[3]
    total = out.shape[0] * n_ch * h_out * w_out
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        n, c, y, xx = unravel4(t, n_ch, h_out, w_out)
        sy = iy[y]
        sx = ix[xx]
        if sy >= 0 and sx >= 0:
            out[n, c, y, xx] = x[n, c, sy, sx]
        else:
            out[n, c, y, xx] = cval


@cuda.jit(cache=True)
def _lerp(x, iy, wy, ix, wx, cval, out):
    n_ch = out.shape[1]
    h_out = out.shape[2]
    w_out = out.shape[3]
    total = out.shape[0] * n_ch * h_out * w_out
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        n, c, y, xx = unravel4(t, n_ch, h_out, w_out)
        y0 = iy[0, y]
        y1 = iy[1, y]
        x0 = ix[0, xx]
        x1 = ix[1, xx]
        v00 = x[n, c, y0, x0] if (y0 >= 0 and x0 >= 0) else cval
        v01 = x[n, c, y0, x1] if (y0 >= 0 and x1 >= 0) else cval
        v10 = x[n, c, y1, x0] if (y1 >= 0 and x0 >= 0) else cval
        v11 = x[n, c, y1, x1] if (y1 >= 0 and x1 >= 0) else cval
        b0 = wx[0, xx]
        b1 = wx[1, xx]
        out[n, c, y, xx] = wy[0, y] * (b0 * v00 + b1 * v01) + wy[1, y] * (b0 * v10 + b1 * v11)


@cuda.jit(cache=True)
def _filter_h(x, w, table, dil, cval, out):
    n_ch = out.shape[1]
    h_out = out.shape[2]
    width = out.shape[3]
    taps = w.shape[0]
    total = out.shape[0] * n_ch * h_out * width
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        n, c, y, xx = unravel4(t, n_ch, h_out, width)
        sy = table[y]
        acc = w[0] * (x[n, c, sy, xx] if sy >= 0 else cval)
        for i in range(1, taps):
            sy = table[y + i * dil]
            v = x[n, c, sy, xx] if sy >= 0 else cval
            acc += w[i] * v
        out[n, c, y, xx] = acc


@cuda.jit(cache=True)
def _filter_w(x, w, table, dil, cval, out):
    n_ch = out.shape[1]
    height = out.shape[2]
    w_out = out.shape[3]
    taps = w.shape[0]
    total = out.shape[0] * n_ch * height * w_out
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        n, c, y, xx = unravel4(t, n_ch, height, w_out)
        sx = table[xx]
        acc = w[0] * (x[n, c, y, sx] if sx >= 0 else cval)
        for i in range(1, taps):
            sx = table[xx + i * dil]
            v = x[n, c, y, sx] if sx >= 0 else cval
            acc += w[i] * v
        out[n, c, y, xx] = acc


@cuda.jit(cache=True)
def _to_planes(src, cax, scale, clip_low, use_clip, out):
    """``out[0, c, y, x] = max(src[...] * scale, clip_low)``; 3-D ``src``, channels at ``cax``."""
    n_ch = out.shape[1]
    height = out.shape[2]
    width = out.shape[3]
    total = n_ch * height * width
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        c, y, xx = unravel3(t, height, width)
        if cax == 0:
            v = src[c, y, xx] * scale
        elif cax == 1:
            v = src[y, c, xx] * scale
        else:
            v = src[y, xx, c] * scale
        if use_clip and v < clip_low:
            v = clip_low
        out[0, c, y, xx] = v


@cuda.jit(cache=True)
def _from_planes(planes, cax, out):
    """``(B, C, H, W)`` -> ``(B, ...)`` with the channel axis at ``1 + cax``."""
    n_ch = planes.shape[1]
    height = planes.shape[2]
    width = planes.shape[3]
    total = planes.shape[0] * n_ch * height * width
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        b, c, y, xx = unravel4(t, n_ch, height, width)
        if cax == 0:
            out[b, c, y, xx] = planes[b, c, y, xx]
        elif cax == 1:
            out[b, y, c, xx] = planes[b, c, y, xx]
        else:
            out[b, y, xx, c] = planes[b, c, y, xx]


@cuda.jit(cache=True)
def _subtract(a, b, out):
    total = out.shape[0]
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        out[t] = a[t] - b[t]


@cuda.jit(cache=True)
def _copy_into(src, dst, offset):
    total = src.shape[0]
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        dst[offset + t] = src[t]


@cuda.jit(cache=True)
def _minmax_partial(x, inf, lo, hi):
    """Per-thread NaN-ignoring min and max of a grid-stride slice of flat ``x``.

    ``inf`` is passed in ``x``'s dtype (and ``lo``, ``hi`` have it) so that a float32
    reduction compares in float32, not in float64 as ``np.inf`` would make it.
    """
    tid = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    mn = inf
    mx = -inf
    for t in range(tid, x.shape[0], step):
        v = x[t]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    lo[tid] = mn
    hi[tid] = mx


@cuda.jit(cache=True)
def _clip(x, lo, hi, out):
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, x.shape[0], cuda.gridDim.x * cuda.blockDim.x):
        v = x[t]
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
        out[t] = v


#: blocks of the min/max reduction (each thread leaves one partial result for the host)
_MINMAX_BLOCKS = 32


def _run(kernel, total, *args):
    block = settings.block
    grid = (max(1, min(cdiv(total, block), settings.max_grid[0])),)
    skey, stream = current_stream()
    launch(kernel, grid, block, skey, stream, *args)


def ptx_cases(T):
    """``[(name, kernel, argtypes)]`` for every kernel of this module and float type ``T``.

    Index tables are int64 (``fastconv.image`` builds them so); ``_to_planes`` reads the
    image in its own dtype, so it is listed for a ``T`` source and, for float64, a uint8 one.
    """
    from numba import types

    f, i, a1, a2, a4 = numba_arg_types(T)
    i1 = types.Array(types.int64, 1, "C")
    i2 = types.Array(types.int64, 2, "C")
    a3 = types.Array(f, 3, "A")
    u3 = types.Array(types.uint8, 3, "A")
    return [
        ("gather", _gather, (a4, i1, i1, f, a4)),
        ("lerp", _lerp, (a4, i2, a2, i2, a2, f, a4)),
        ("filter_h", _filter_h, (a4, a1, i1, i, f, a4)),
        ("filter_w", _filter_w, (a4, a1, i1, i, f, a4)),
        ("to_planes", _to_planes, (a3, i, f, f, types.boolean, a4)),
        # integer images become float64 planes (scikit-image's rule)
        *([("to_planes_uint8", _to_planes, (u3, i, f, f, types.boolean, a4))]
          if np.dtype(T) == np.float64 else []),
        ("from_planes", _from_planes, (a4, i, types.Array(f, 4, "C"))),
        ("subtract", _subtract, (a1, a1, a1)),
        ("copy_into", _copy_into, (a1, a1, i)),
        ("minmax_partial", _minmax_partial, (a1, f, a1, a1)),
        ("clip", _clip, (a1, f, f, a1)),
    ]


# ----------------------------------------------------------------------------- ops


def gather(x, iy, ix, *, cval):
    """``out[n, c, y, x] = x[n, c, iy[y], ix[x]]`` (``cval`` where an index is -1)."""
    out = empty((x.shape[0], x.shape[1], iy.shape[0], ix.shape[0]), x.dtype)
    if out.size:
        _run(_gather, out.size, x, iy, ix, scalar(x.dtype, cval), out)
    return out


def lerp(x, iy, wy, ix, wx, *, cval):
    """Separable bilinear blend of the four table corners, PyTorch's order of operations."""
    out = empty((x.shape[0], x.shape[1], iy.shape[1], ix.shape[1]), x.dtype)
    if out.size:
        _run(_lerp, out.size, x, iy, wy, ix, wx, scalar(x.dtype, cval), out)
    return out


def sepfilter(x, wy, ty, wx, tx, *, dilation, cval):
    """Correlation along H (``wy`` through ``ty``), then along W (``wx`` through ``tx``)."""
    n, c, _, w = x.shape
    h_out = ty.shape[0] - dilation[0] * (wy.shape[0] - 1)
    w_out = tx.shape[0] - dilation[1] * (wx.shape[0] - 1)
    cv = scalar(x.dtype, cval)
    tmp = empty((n, c, h_out, w), x.dtype)
    out = empty((n, c, h_out, w_out), x.dtype)
    if out.size:
        _run(_filter_h, tmp.size, x, wy, ty, int(dilation[0]), cv, tmp)
        _run(_filter_w, out.size, tmp, wx, tx, int(dilation[1]), cv, out)
    return out


def to_planes(img, *, channel_axis, dtype, scale, clip_low):
    """An (H, W) image or one with a channel axis -> float ``(1, C, H, W)``, ``img * scale``."""
    dtype = np.dtype(dtype)
    if channel_axis is None:
        src = img.reshape(1, img.shape[0], img.shape[1])
        cax = 0
    else:
        src, cax = img, int(channel_axis)
    spatial = [d for a, d in enumerate(src.shape) if a != cax]
    out = empty((1, src.shape[cax], spatial[0], spatial[1]), dtype)
    if out.size:
        clip = -np.inf if clip_low is None else clip_low
        _run(
            _to_planes,
            out.size,
            src,
            cax,
            scalar(dtype, scale),
            scalar(dtype, clip),
            clip_low is not None,
            out,
        )
    return out


def from_planes(planes, minus=None, *, channel_axis, ndim):
    """``(B, C, H, W)`` (minus ``minus``) -> ``(B, H, W)``, or with the channel axis put back."""
    if minus is not None:
        planes = subtract(planes, minus)
    b, c, h, w = planes.shape
    if channel_axis is None:
        return planes.reshape(b, h, w)
    cax = channel_axis % ndim
    shape = [(c, h, w), (h, c, w), (h, w, c)][cax]
    out = empty((b,) + shape, planes.dtype)
    if out.size:
        _run(_from_planes, out.size, planes, cax, out)
    return out


def minmax(x):
    """``(nanmin, nanmax)`` of ``x`` as Python floats (partials reduced on the host)."""
    if x.size == 0:
        return float("nan"), float("nan")
    block = settings.block
    grid = max(1, min(_MINMAX_BLOCKS, cdiv(x.size, block), settings.max_grid[0]))
    lo = empty((grid * block,), x.dtype)
    hi = empty((grid * block,), x.dtype)
    skey, stream = current_stream()
    launch(_minmax_partial, (grid,), block, skey, stream, x.reshape(x.size),
           scalar(x.dtype, np.inf), lo, hi)
    mn = float(lo.copy_to_host(stream=stream if skey else 0).min())
    mx = float(hi.copy_to_host(stream=stream if skey else 0).max())
    if mn > mx:  # nothing but NaN
        return float("nan"), float("nan")
    return mn, mx


def clip(x, *, lo, hi):
    """``x`` clipped to ``[lo, hi]`` (NaN stays NaN)."""
    out = empty(x.shape, x.dtype)
    if out.size:
        _run(
            _clip,
            out.size,
            x.reshape(x.size),
            scalar(x.dtype, lo),
            scalar(x.dtype, hi),
            out.reshape(out.size),
        )
    return out


def subtract(a, b):
    """``a - b`` for same-shaped contiguous arrays."""
    out = empty(a.shape, a.dtype)
    if out.size:
        _run(_subtract, out.size, a.reshape(a.size), b.reshape(b.size), out.reshape(out.size))
    return out


def concat(*arrays):
    """``(B_i, C, H, W)`` arrays concatenated along the first axis."""
    first = arrays[0]
    out = empty((sum(a.shape[0] for a in arrays),) + tuple(first.shape[1:]), first.dtype)
    flat = out.reshape(out.size)
    offset = 0
    for a in arrays:
        if a.size:
            _run(_copy_into, a.size, a.reshape(a.size), flat, offset)
        offset += a.size
    return out
