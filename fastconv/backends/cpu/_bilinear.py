"""The bilinear sampling helpers of the CPU backend, shared by deform_conv2d and roi_align.

The two ops sample the same way inside the image but treat its edge differently
(``shared/DESIGN.md``, "The semantic contract"), so there are two helpers, one
per edge rule:

* :func:`bilinear_zero_pad` -- deform_conv2d: a point with ``py <= -1``,
  ``py >= H``, ``px <= -1`` or ``px >= W`` is 0; otherwise each of the four
  corners contributes only if it lies inside the image.
* :func:`bilinear_clamp` -- roi_align: a point with ``y < -1``, ``y > H``,
  ``x < -1`` or ``x > W`` contributes 0; coordinates in ``[-1, 0]`` clamp to 0
  and those ``>= H - 1`` (``W - 1``) to ``H - 1`` (``W - 1``) (replicate edge).

Both return the four corner indices and weights of one sample point **once**,
so a kernel computes them per point and reuses them for every channel that
shares the point (channels-last loops: ``sum(w_k * plane[idx_k, c])``).
roi_align's channels-last path samples a separable grid and uses the
one-axis half of the clamp rule, :func:`clamp_axis`, per sample row / column.  The
arithmetic follows torchvision's CPU kernels (``floor``, ``1 - l`` and the
products ``hy*hx, hy*lx, ly*hx, ly*lx``) in the input's dtype, so float32
results agree with torchvision's to rounding.

These are serial ``numba.njit`` functions called from the parallel kernels in
``deform.py`` and ``roi.py`` (LLVM inlines them there).  ``T`` is the scalar
type (``numpy.float32`` or ``numpy.float64``) that all arithmetic stays in.
"""

import numba
import numpy as np

from ._config import EXACT_JIT_OPTIONS


@numba.njit(**EXACT_JIT_OPTIONS)
def bilinear_zero_pad(py, px, height, width, T):
    """Corners and weights of point ``(py, px)`` with deform_conv2d's zero padding.

    The indices are flat indices into a **zero-bordered** plane of shape
    ``(height + 2, width + 2)`` (the image at ``[1:height+1, 1:width+1]``, a
    one-pixel frame of zeros around it): corners outside the image land on the
    frame and read 0, so a channel loop needs no per-corner branch and never
    reads a value that torchvision's kernel would not read (NaN stays out).

    Returns ``(i00, i01, i10, i11, w00, w01, w10, w11)`` for the corners
    ``(y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1)``.  A point outside
    (``py <= -1``, ``py >= height``, ``px <= -1`` or ``px >= width``) gives
    index 0 (a frame zero) and weight 0 for all four corners, so the sample is
    exactly 0.  A NaN coordinate gives index 0 and NaN weights, so the sample is
    NaN (the oracle's answer; torchvision's CPU kernel converts ``floor(NaN)`` to
    an int there, which is undefined behaviour and crashed in our tests).
    """
    zero = T(0)
    if py <= -1 or py >= height or px <= -1 or px >= width:
        return 0, 0, 0, 0, zero, zero, zero, zero
    if py != py or px != px:
        nan = T(np.nan)
        return 0, 0, 0, 0, nan, nan, nan, nan
    fy = np.floor(py)
    fx = np.floor(px)
    ly = py - fy
    lx = px - fx
    hy = T(1) - ly
    hx = T(1) - lx
    # (y0 + 1, x0 + 1) in the bordered plane; y0 in [-1, height-1], x0 in [-1, width-1]
    pw = width + 2
    i00 = (int(fy) + 1) * pw + int(fx) + 1
    return i00, i00 + 1, i00 + pw, i00 + pw + 1, hy * hx, hy * lx, ly * hx, ly * lx


@numba.njit(**EXACT_JIT_OPTIONS)
def clamp_axis(v, size, T):
    """One axis of :func:`bilinear_clamp` (the rule is separable).

    Returns ``(inside, low, high, l, h)``: ``inside`` is False for
    ``v < -1`` or ``v > size``; otherwise ``v`` is clamped to ``[0, size-1]``
    (replicate edge) and the corners are ``low``/``high`` with weights
    ``h = 1 - l`` and ``l``.  Outside points give ``(False, 0, 0, 0, 0)``.
    """
    zero = T(0)
    if v < -1 or v > size:
        return False, 0, 0, zero, zero
    if v <= 0:
        v = zero
    low = int(v)
    if low >= size - 1:
        low = size - 1
        high = low
        v = T(low)
    else:
        high = low + 1
    frac = v - T(low)
    return True, low, high, frac, T(1) - frac


@numba.njit(**EXACT_JIT_OPTIONS)
def bilinear_clamp(y, x, height, width, T):
    """Corners and weights of point ``(y, x)`` with roi_align's replicate edge.

    Indices are flat indices into the ``(height, width)`` plane (no border).
    Returns ``(inside, i1, i2, i3, i4, w1, w2, w3, w4)`` in torchvision's order
    (``(y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)``,
    weights ``hy*hx, hy*lx, ly*hx, ly*lx``).  ``inside`` is False for a point
    that contributes 0 (``y < -1``, ``y > height``, ``x < -1`` or
    ``x > width``); its indices are 0 and its weights 0, so callers may either
    skip it or use it.  Kernels that sample a separable grid call
    :func:`clamp_axis` per row / column instead and form the same products.
    """
    zero = T(0)
    in_y, y_low, y_high, ly, hy = clamp_axis(y, height, T)
    in_x, x_low, x_high, lx, hx = clamp_axis(x, width, T)
    if not (in_y and in_x):
        return False, 0, 0, 0, 0, zero, zero, zero, zero
    return (
        True,
        y_low * width + x_low,
        y_low * width + x_high,
        y_high * width + x_low,
        y_high * width + x_high,
        hy * hx,
        hy * lx,
        ly * hx,
        ly * lx,
    )


__all__ = ["bilinear_clamp", "bilinear_zero_pad", "clamp_axis"]
