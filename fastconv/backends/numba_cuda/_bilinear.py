"""Bilinear sampling for the numba.cuda kernels: one module, the two edge rules.

The two ops that sample bilinearly treat the image border differently (``shared/DESIGN.md``):

* :func:`corners_zero_pad` -- ``deform_conv2d``: a sample point with ``py <= -1``,
  ``py >= H``, ``px <= -1`` or ``px >= W`` is 0; otherwise each of the four corners
  ``(floor(py) + {0, 1}, floor(px) + {0, 1})`` contributes only if it lies inside the image
  (zero padding).
* :func:`corners_edge_clamp` -- ``roi_align``: a sample with ``y < -1``, ``y > H``,
  ``x < -1`` or ``x > W`` is 0; otherwise coordinates in ``[-1, 0)`` clamp to 0 and a low
  corner at ``>= H - 1`` (``W - 1``) clamps both corners to the last row (column)
  (replicate edge).

Both only *set up* a sample -- corner rows/columns, the four weights and a bit mask of the
corners to read -- so a kernel computes them once per sample point and reuses them for every
channel that shares the point; :func:`gather` then reads one channel.  The weights are
``w1 = hy*hx, w2 = hy*lx, w3 = ly*hx, w4 = ly*lx`` for the corners
``(y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)`` and the value is
``w1*v1 + w2*v2 + w3*v3 + w4*v4`` over the corners in the mask, as in torchvision.

Every function is built per float dtype ``T`` (``numpy.float32``/``numpy.float64``) so that
all constants and int->float conversions stay in ``T`` (float32 math for float32 data).
Corner loads are guarded by explicit range checks, so NaN/Inf sample coordinates can never
read out of bounds.
"""

from __future__ import annotations

import math

from numba import cuda

_cache: dict = {}

#: ``mask`` bit of a sample at a NaN coordinate (its value is NaN, read from ``w1``)
NAN_SAMPLE = 16


def functions(T):
    """``(corners_zero_pad, corners_edge_clamp, gather)`` device functions for float type ``T``."""
    fns = _cache.get(T)
    if fns is None:
        fns = _cache[T] = _build(T)
    return fns


def _build(T):
    zero = T(0.0)
    one = T(1.0)
    minus_one = T(-1.0)

    @cuda.jit(device=True, inline="always")
    def corners_zero_pad(py, px, H, W):
        """deform_conv2d's rule (zero padding outside the image).

        Returns ``(y_low, x_low, y_high, x_high, w1, w2, w3, w4, mask)``; bit 0..3 of
        ``mask`` says whether corner 1..4 is read (0: the sample is 0);
        ``NAN_SAMPLE`` marks a NaN coordinate, whose sample is NaN (``w1``).
        """
        if py != py or px != px:  # NaN coordinate: a NaN sample (as the oracle/torchvision)
            return 0, 0, 0, 0, py + px, zero, zero, zero, NAN_SAMPLE
        if py <= minus_one or py >= T(H) or px <= minus_one or px >= T(W):
            return 0, 0, 0, 0, zero, zero, zero, zero, 0
        fy = math.floor(py)
        fx = math.floor(px)
        y_low = int(fy)
        x_low = int(fx)
        y_high = y_low + 1
        x_high = x_low + 1
        ly = py - T(fy)
        lx = px - T(fx)
        hy = one - ly
        hx = one - lx
        mask = 0
        if y_low >= 0 and y_low < H:
            if x_low >= 0 and x_low < W:
                mask |= 1
            if x_high >= 0 and x_high < W:
                mask |= 2
        if y_high >= 0 and y_high < H:
            if x_low >= 0 and x_low < W:
                mask |= 4
            if x_high >= 0 and x_high < W:
                mask |= 8
        return y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx, mask

    @cuda.jit(device=True, inline="always")
    def corners_edge_clamp(y, x, H, W):
        """roi_align's rule (replicate the edge row/column).

        Returns ``(y_low, x_low, y_high, x_high, w1, w2, w3, w4, mask)`` like
        :func:`corners_zero_pad`; ``mask`` is 15 (all four corners) or 0.
        """
        if not (y >= minus_one and y <= T(H) and x >= minus_one and x <= T(W)):
            return 0, 0, 0, 0, zero, zero, zero, zero, 0
        if y <= zero:
            y = zero
        if x <= zero:
            x = zero
        y_low = int(y)
        x_low = int(x)
        if y_low >= H - 1:
            y_low = H - 1
            y_high = H - 1
            y = T(y_low)
        else:
            y_high = y_low + 1
        if x_low >= W - 1:
            x_low = W - 1
            x_high = W - 1
            x = T(x_low)
        else:
            x_high = x_low + 1
        ly = y - T(y_low)
        lx = x - T(x_low)
        hy = one - ly
        hx = one - lx
        mask = 15
        if not (y_low >= 0 and y_low < H and x_low >= 0 and x_low < W):  # NaN guard
            mask = 0
        return y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx, mask

    @cuda.jit(device=True, inline="always")
    def gather(img, n, c, y_low, x_low, y_high, x_high, w1, w2, w3, w4, mask):
        """``w1*v1 + w2*v2 + w3*v3 + w4*v4`` over the corners in ``mask`` of ``img[n, c]``."""
        if mask & NAN_SAMPLE:
            return w1
        val = zero
        if mask & 1:
            val += w1 * img[n, c, y_low, x_low]
        if mask & 2:
            val += w2 * img[n, c, y_low, x_high]
        if mask & 4:
            val += w3 * img[n, c, y_high, x_low]
        if mask & 8:
            val += w4 * img[n, c, y_high, x_high]
        return val

    return corners_zero_pad, corners_edge_clamp, gather
