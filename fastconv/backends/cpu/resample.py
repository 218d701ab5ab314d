"""Resampling and image-glue kernels of the ``"cpu"`` backend (``numba.njit``).

These back :func:`fastconv.upsample` and the scikit-image-style functions of
:mod:`fastconv.image`.  All index arithmetic (PyTorch's or scikit-image's
coordinate rules, boundary modes) is done once on the host by the public
wrappers, which pass small per-axis **tables**; the kernels only gather and
blend, so every backend runs the same arithmetic on the same tables.

Table conventions (shared by every backend's ``resample`` module):

* an index table holds source indices along one axis; ``-1`` means "outside
  the image: read ``cval``" (the ``constant`` boundary mode);
* ``gather(x, iy, ix, cval)``: ``out[n, c, y, x] = x[n, c, iy[y], ix[x]]``
  (nearest-neighbour upsampling, and explicit boundary padding);
* ``lerp(x, iy, wy, ix, wx, cval)``: ``iy``/``wy`` of shape ``(2, H_out)``,
  ``out = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)``
  with ``v_ab = x[n, c, iy[a, y], ix[b, x]]`` -- PyTorch's order of operations
  for bilinear interpolation;
* ``smooth_lerp`` (CPU only): ``lerp(sepfilter(x))`` without the full-size
  intermediate -- a pyramid reduction in one pass;
* ``sepfilter(x, wy, ty, wx, tx, dilation, cval)``: SciPy's two 1-D correlation
  passes, along H ``out[.., y, :] = sum_i wy[i] * v(ty[y + i*dH], :)``, then the
  same along W on that result (each pass pads its own input with ``cval``
  where the table says -1); the output is ``len(ty) - dH*(len(wy) - 1)`` by
  ``len(tx) - dW*(len(wx) - 1)``.

Besides the kernels, the module has the array glue of :mod:`fastconv.image`
(``to_planes``, ``from_planes``, ``subtract``, ``concat``, and ``minmax`` /
``clip`` for scikit-image's clipping of resized images), which on the host is
plain NumPy.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import prange

from ._config import SERIAL_JIT_OPTIONS, parallel_kernel

__all__ = [
    "clip",
    "concat",
    "from_planes",
    "gather",
    "lerp",
    "minmax",
    "sepfilter",
    "smooth_lerp",
    "subtract",
    "to_planes",
]


@parallel_kernel
def _gather(x, iy, ix, cval, out):
    n_img, n_ch, _, _ = x.shape
    h_out = iy.shape[0]
    w_out = ix.shape[0]
    rows = n_img * n_ch * h_out
    for r in prange(rows):
        y = r % h_out
        nc = r // h_out
        n = nc // n_ch
        c = nc % n_ch
        sy = iy[y]
        if sy < 0:
            for xx in range(w_out):
                out[n, c, y, xx] = cval
        else:
            for xx in range(w_out):
                sx = ix[xx]
                out[n, c, y, xx] = x[n, c, sy, sx] if sx >= 0 else cval


@parallel_kernel
def _lerp(x, iy, wy, ix, wx, cval, out):
    n_img, n_ch, _, _ = x.shape
    h_out = iy.shape[1]
    w_out = ix.shape[1]
    rows = n_img * n_ch * h_out
    for r in prange(rows):
        y = r % h_out
        nc = r // h_out
        n = nc // n_ch
        c = nc % n_ch
        y0 = iy[0, y]
        y1 = iy[1, y]
        a0 = wy[0, y]
        a1 = wy[1, y]
        for xx in range(w_out):
            x0 = ix[0, xx]
            x1 = ix[1, xx]
            b0 = wx[0, xx]
            b1 = wx[1, xx]
            v00 = x[n, c, y0, x0] if (y0 >= 0 and x0 >= 0) else cval
            v01 = x[n, c, y0, x1] if (y0 >= 0 and x1 >= 0) else cval
            v10 = x[n, c, y1, x0] if (y1 >= 0 and x0 >= 0) else cval
            v11 = x[n, c, y1, x1] if (y1 >= 0 and x1 >= 0) else cval
            out[n, c, y, xx] = a0 * (b0 * v00 + b1 * v01) + a1 * (b0 * v10 + b1 * v11)


#: output rows per work item of the row kernels (their scratch rows are allocated once per item)
_ROWS_PER_ITEM = 8

#: work (multiply-adds, ~0.1-0.5 ns each) below which a kernel, or a public op called by
#: fastconv.image (e.g. conv2d inside ``image.correlate``), runs on the calling thread only.
#: Waking the thread pool costs tens of microseconds on an idle machine but milliseconds on
#: a busy one (measured ~6 ms on a loaded 2-core box), and pyramids end in many tiny
#: layers; below a few ms of work one thread is the safer bet.
PARALLEL_MIN_WORK = 1 << 24


@contextlib.contextmanager
def few_threads(work):
    """Run the enclosed code on one numba thread when ``work`` is below PARALLEL_MIN_WORK."""
    threads = numba.get_num_threads()
    if work >= PARALLEL_MIN_WORK or threads == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _launch(kernel, work, *args):
    """Run ``kernel(*args)``; single-threaded when there is little ``work``."""
    with few_threads(work):
        kernel(*args)


@numba.njit(**SERIAL_JIT_OPTIONS)
def _filter_row(plane, y, wy, ty, dy, wx, tx, dx, cval, acc, buf, res):
    """One output row of the separable correlation of ``plane`` (2-D) into ``res``.

    ``acc = sum_i wy[i] * plane[ty[y + i*dy]]`` over the input's columns (a row of
    ``cval`` where ``ty`` is -1); that row padded through ``tx`` (``cval`` where -1)
    into ``buf``; then ``res = sum_i wx[i] * buf[i*dx : i*dx + len(res)]`` -- exactly
    SciPy's two 1-D passes, each padding its own input.  The inner loops run over
    contiguous 1-D rows so that LLVM vectorises them.
    """
    width = acc.shape[0]
    w_out = res.shape[0]
    acc[:] = 0
    for i in range(wy.shape[0]):
        wgt = wy[i]
        sy = ty[y + i * dy]
        if sy < 0:
            v = wgt * cval
            for xx in range(width):
                acc[xx] += v
        else:
            row = plane[sy]
            for xx in range(width):
                acc[xx] += wgt * row[xx]
    for j in range(buf.shape[0]):
        sx = tx[j]
        buf[j] = acc[sx] if sx >= 0 else cval
    res[:] = 0
    for i in range(wx.shape[0]):
        wgt = wx[i]
        seg = buf[i * dx:i * dx + w_out]
        for xx in range(w_out):
            res[xx] += wgt * seg[xx]


@parallel_kernel
def _sepfilter(x, wy, ty, dy, wx, tx, dx, cval, out):
    """Separable correlation, H then W, fused per output row (the intermediate stays in cache)."""
    n_img, n_ch, _, width = x.shape
    h_out = out.shape[2]
    per_plane = (h_out + _ROWS_PER_ITEM - 1) // _ROWS_PER_ITEM
    for item in prange(n_img * n_ch * per_plane):
        nc = item // per_plane
        n = nc // n_ch
        c = nc % n_ch
        y_lo = (item % per_plane) * _ROWS_PER_ITEM
        y_hi = min(y_lo + _ROWS_PER_ITEM, h_out)
        acc = np.empty(width, dtype=out.dtype)
        buf = np.empty(tx.shape[0], dtype=out.dtype)
        plane = x[n, c]
        for y in range(y_lo, y_hi):
            _filter_row(plane, y, wy, ty, dy, wx, tx, dx, cval, acc, buf, out[n, c, y])


@parallel_kernel
def _smooth_lerp(x, wg, ty, tx, iy, wy, ix, wx, cval, out):
    """``lerp(sepfilter(x))`` without the full-size intermediate (a pyramid reduction).

    Each work item (a band of output rows of one plane) filters the input rows its
    blend reads -- the two it needs, kept while the next output row needs them too --
    and blends them with the same arithmetic as :func:`_lerp` and :func:`_sepfilter`,
    so the result is bit for bit that of the two separate kernels.
    """
    n_img, n_ch, _, width = x.shape
    h_out = out.shape[2]
    w_out = out.shape[3]
    per_plane = (h_out + _ROWS_PER_ITEM - 1) // _ROWS_PER_ITEM
    for item in prange(n_img * n_ch * per_plane):
        nc = item // per_plane
        n = nc // n_ch
        c = nc % n_ch
        y_lo = (item % per_plane) * _ROWS_PER_ITEM
        y_hi = min(y_lo + _ROWS_PER_ITEM, h_out)
        acc = np.empty(width, dtype=out.dtype)
        buf = np.empty(tx.shape[0], dtype=out.dtype)
        rows = np.empty((2, width), dtype=out.dtype)
        held = np.full(2, -1, dtype=np.int64)  # which smoothed row each slot holds
        plane = x[n, c]
        for oy in range(y_lo, y_hi):
            y0 = iy[0, oy]
            y1 = iy[1, oy]
            s0 = 0 if held[0] == y0 else (1 if held[1] == y0 else -1)
            if s0 < 0:
                s0 = 0 if held[0] != y1 else 1
                _filter_row(plane, y0, wg, ty, 1, wg, tx, 1, cval, acc, buf, rows[s0])
                held[s0] = y0
            s1 = s0 if y1 == y0 else (0 if held[0] == y1 else (1 if held[1] == y1 else -1))
            if s1 < 0:
                s1 = 1 - s0
                _filter_row(plane, y1, wg, ty, 1, wg, tx, 1, cval, acc, buf, rows[s1])
                held[s1] = y1
            r0 = rows[s0]
            r1 = rows[s1]
            a0 = wy[0, oy]
            a1 = wy[1, oy]
            orow = out[n, c, oy]
            for ox in range(w_out):
                x0 = ix[0, ox]
                x1 = ix[1, ox]
                b0 = wx[0, ox]
                b1 = wx[1, ox]
                orow[ox] = a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1])


@parallel_kernel
def _to_planes(src, cax, scale, clip_low, use_clip, out):
    """``out[0, c, y, x] = max(float(src[...]) * scale, clip_low)`` from a 3-D source."""
    _, n_ch, height, width = out.shape
    for r in prange(n_ch * height):
        c = r // height
        y = r % height
        if cax == 0:
            for xx in range(width):
                out[0, c, y, xx] = src[c, y, xx] * scale
        elif cax == 1:
            for xx in range(width):
                out[0, c, y, xx] = src[y, c, xx] * scale
        else:
            for xx in range(width):
                out[0, c, y, xx] = src[y, xx, c] * scale
        if use_clip:
            for xx in range(width):
                out[0, c, y, xx] = max(out[0, c, y, xx], clip_low)


def gather(x, iy, ix, *, cval):
    """``out[n, c, y, x] = x[n, c, iy[y], ix[x]]`` (``cval`` where an index is -1)."""
    n, c = x.shape[:2]
    out = np.empty((n, c, iy.shape[0], ix.shape[0]), dtype=x.dtype)
    _launch(_gather, out.size, x, iy, ix, x.dtype.type(cval), out)
    return out


def lerp(x, iy, wy, ix, wx, *, cval):
    """Separable bilinear blend of the four table corners (see the module docstring)."""
    n, c = x.shape[:2]
    out = np.empty((n, c, iy.shape[1], ix.shape[1]), dtype=x.dtype)
    _launch(_lerp, 4 * out.size, x, iy, wy, ix, wx, x.dtype.type(cval), out)
    return out


def sepfilter(x, wy, ty, wx, tx, *, dilation, cval):
    """Separable correlation along H (``wy`` through table ``ty``) then W (``wx``, ``tx``).

    ``dilation = (dH, dW)`` spaces the taps; the output is
    ``len(ty) - dH*(len(wy) - 1)`` by ``len(tx) - dW*(len(wx) - 1)``.
    """
    n, c = x.shape[:2]
    h_out = ty.shape[0] - dilation[0] * (wy.shape[0] - 1)
    w_out = tx.shape[0] - dilation[1] * (wx.shape[0] - 1)
    out = np.empty((n, c, h_out, w_out), dtype=x.dtype)
    work = out.size * (wy.shape[0] + wx.shape[0])
    _launch(_sepfilter, work, x, wy, ty, dilation[0], wx, tx, dilation[1], x.dtype.type(cval),
            out)
    return out


# ----------------------------------------------------------------------------- image glue


def smooth_lerp(x, wg, ty, tx, iy, wy, ix, wx, *, cval):
    """``lerp(sepfilter(x, wg, ty, wg, tx), iy, wy, ix, wx)`` in one pass (CPU only).

    The blend tables must hold no -1 (no ``constant`` resize mode).
    """
    n, c = x.shape[:2]
    out = np.empty((n, c, iy.shape[1], ix.shape[1]), dtype=x.dtype)
    work = out.size * 4 + (x.shape[2] * x.shape[3] * n * c) * 2 * wg.shape[0]
    _launch(_smooth_lerp, work, x, wg, ty, tx, iy, wy, ix, wx, x.dtype.type(cval), out)
    return out


def to_planes(img, *, channel_axis, dtype, scale, clip_low):
    """An (H, W) image, or one with a channel axis, -> contiguous float ``(1, C, H, W)``.

    The values become ``img * scale`` in ``dtype`` (clipped below at ``clip_low``
    when that is not None) -- scikit-image's ``img_as_float`` for integer inputs.
    A contiguous (H, W) image of the right dtype comes back as a view (no step
    ever writes its input); anything else is converted into a new array.
    """
    dtype = np.dtype(dtype)
    if (channel_axis is None and img.dtype == dtype and scale == 1.0 and clip_low is None
            and img.flags.c_contiguous):
        return img[None, None]
    src = img[None] if channel_axis is None else img
    cax = 0 if channel_axis is None else channel_axis
    shape = [d for a, d in enumerate(src.shape) if a != cax]
    out = np.empty((1, src.shape[cax], shape[0], shape[1]), dtype=dtype)
    if src.dtype == np.float16:
        src = src.astype(np.float32)
    clip = -np.inf if clip_low is None else clip_low
    _launch(_to_planes, out.size, src, cax, dtype.type(scale), dtype.type(clip),
            clip_low is not None, out)
    return out


@parallel_kernel
def _from_planes(planes, minus, use_minus, cax, out):
    """``(B, C, H, W)`` (minus ``minus``) -> ``(B, ...)`` with the channel axis at ``1 + cax``."""
    n_b, n_ch, height, width = planes.shape
    for r in prange(n_b * height):
        b = r // height
        y = r % height
        for c in range(n_ch):
            for xx in range(width):
                v = planes[b, c, y, xx]
                if use_minus:
                    v = v - minus[b, c, y, xx]
                if cax == 1:
                    out[b, y, c, xx] = v
                else:
                    out[b, y, xx, c] = v


def from_planes(planes, minus=None, *, channel_axis, ndim):
    """``(B, C, H, W)`` -> ``(B, H, W)`` or ``(B, ...)`` with the channel axis placed back.

    ``channel_axis`` counts in the image's axes (``ndim`` = 2 or 3).  With ``minus``
    (same shape) the result is ``planes - minus`` (one pass instead of two).
    """
    if channel_axis is None:
        return planes[:, 0] if minus is None else planes[:, 0] - minus[:, 0]
    cax = channel_axis % ndim
    if cax == 0:
        return planes if minus is None else planes - minus
    b, c, h, w = planes.shape
    out = np.empty((b, h, c, w) if cax == 1 else (b, h, w, c), dtype=planes.dtype)
    _launch(_from_planes, out.size, planes, planes if minus is None else minus,
            minus is not None, cax, out)
    return out


def minmax(x):
    """``(nanmin, nanmax)`` of ``x`` as Python floats (``(nan, nan)`` if all NaN or empty)."""
    if x.size == 0 or np.isnan(x).all():
        return float("nan"), float("nan")
    return float(np.nanmin(x)), float(np.nanmax(x))


def clip(x, *, lo, hi):
    """``x`` clipped to ``[lo, hi]`` (NaN stays NaN)."""
    return np.clip(x, x.dtype.type(lo), x.dtype.type(hi))


def subtract(a, b):
    """``a - b`` (Laplacian layers and wavelet details)."""
    return a - b


def concat(*arrays):
    """``(B_i, C, H, W)`` arrays concatenated along the first axis."""
    return np.concatenate(arrays)
