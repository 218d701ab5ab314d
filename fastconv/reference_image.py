"""The NumPy oracle of :func:`fastconv.upsample` and of the :mod:`fastconv.image` functions.

Like :mod:`fastconv.reference`, everything here is written straight from the
formulas, in float64, vectorised over batch and channels but otherwise plain,
and shares no code with the kernels or with the host-side index tables of
:mod:`fastconv.upsample` / :mod:`fastconv.image` (a bug in both would hide).
Boundary handling uses ``numpy.pad`` rather than fastconv's index tables.

Arrays are NCHW ``(B, C, H, W)`` "planes"; the public functions turn images
with a channel axis into planes and back.

Boundary modes use SciPy's names (``scipy.ndimage``) with ``numpy.pad``'s
equivalents: ``reflect`` = ``symmetric`` (``d c b a | a b c d``), ``mirror`` =
``reflect`` (``d c b | a b c d``), ``nearest`` = ``edge``, ``wrap`` = ``wrap``,
``constant`` = ``constant`` with ``cval``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "correlate",
    "correlate1d",
    "crop_regions",
    "gaussian_taps",
    "resize",
    "smooth",
    "starlet",
    "upsample",
    "warp",
]

def _quiet():
    return np.errstate(invalid="ignore", over="ignore")

#: scipy.ndimage mode -> numpy.pad mode
_NP_PAD = {
    "reflect": "symmetric",
    "grid-mirror": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "grid-wrap": "wrap",
    "constant": "constant",
    "grid-constant": "constant",
}


def _pad(planes, pads, mode, cval):
    """Pad the H and W axes of ``(B, C, H, W)`` by ``pads = ((top, bottom), (left, right))``."""
    np_mode = _NP_PAD[mode]
    width = ((0, 0), (0, 0), pads[0], pads[1])
    if np_mode == "constant":
        return np.pad(planes, width, mode="constant", constant_values=cval)
    if np_mode == "reflect":
        # numpy's 'reflect' of a length-1 axis is undefined; SciPy's 'mirror' repeats it
        short = [a for a in (2, 3) if planes.shape[a] == 1 and sum(width[a]) > 0]
        if short:
            planes = _pad(planes, tuple(width[a] if a in short else (0, 0) for a in (2, 3)),
                          "nearest", cval)
            width = tuple((0, 0) if a in short else width[a] for a in range(4))
    return np.pad(planes, width, mode=np_mode)


# ----------------------------------------------------------------------------- upsample


def upsample(x, out_hw, scale_factors, mode, align_corners):
    """PyTorch ``interpolate`` (nearest / bilinear) of ``(N, C, H, W)``, float64 result.

    ``scale_factors`` is the ``(sy, sx)`` the user gave, or None when the grid
    follows the sizes.
    """
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[2], x.shape[3]
    ho, wo = out_hw
    sfy, sfx = (None, None) if scale_factors is None else scale_factors
    if mode == "nearest":
        rows = [_nearest_source(o, h, ho, sfy) for o in range(ho)]
        cols = [_nearest_source(o, w, wo, sfx) for o in range(wo)]
        return x[:, :, rows][:, :, :, cols].copy()
    out = np.empty(x.shape[:2] + (ho, wo))
    ys = [_linear_source(o, h, ho, sfy, align_corners) for o in range(ho)]
    xs = [_linear_source(o, w, wo, sfx, align_corners) for o in range(wo)]
    with _quiet():
        for oy, (y0, y1, ly) in enumerate(ys):
            for ox, (x0, x1, lx) in enumerate(xs):
                top = (1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1]
                bottom = (1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]
                out[:, :, oy, ox] = (1 - ly) * top + ly * bottom
    return out


def _nearest_source(o, n_in, n_out, scale_factor):
    # PyTorch's legacy "nearest": shortcuts for equal and doubled sizes, else
    # floor(o * scale) in float32 arithmetic, clamped to the last index.
    if n_out == n_in:
        return o
    if n_out == 2 * n_in:
        return o // 2
    f32 = np.float32
    scale = f32(1.0 / scale_factor) if scale_factor is not None else f32(f32(n_in) / f32(n_out))
    return min(int(math.floor(f32(f32(o) * scale))), n_in - 1)


def _linear_source(o, n_in, n_out, scale_factor, align_corners):
    if n_out == n_in:  # PyTorch leaves an unchanged axis alone, whatever the scale factor
        return o, o, 0.0
    if align_corners:
        src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        scale = 1.0 / scale_factor if scale_factor is not None else n_in / n_out
        src = max(scale * (o + 0.5) - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = i0 + 1 if i0 < n_in - 1 else i0
    lam = min(max(src - i0, 0.0), 1.0)
    return i0, i1, lam


# ----------------------------------------------------------------------------- filtering


def gaussian_taps(sigma, truncate=4.0):
    """SciPy's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma == 0:
        return np.ones(1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def correlate1d(planes, taps, axis, mode, cval, dilation=1):
    """SciPy's ``correlate1d`` along ``axis`` (2 or 3) with the zero-dilated ``taps``.

    The (dilated) kernel of size ``D = dilation * (k - 1) + 1`` is centred at ``D // 2``.
    """
    x = np.asarray(planes, dtype=np.float64)
    taps = np.asarray(taps, dtype=np.float64)
    size = dilation * (len(taps) - 1) + 1
    before, after = size // 2, size - 1 - size // 2
    pads = ((before, after), (0, 0)) if axis == 2 else ((0, 0), (before, after))
    xp = _pad(x, pads, mode, cval)
    n = x.shape[axis]
    out = np.zeros_like(x)
    with _quiet():
        for i, t in enumerate(taps):
            sl = [slice(None)] * 4
            sl[axis] = slice(i * dilation, i * dilation + n)
            out += t * xp[tuple(sl)]
    return out


def smooth(planes, sigma, mode, cval, truncate=4.0):
    """``scipy.ndimage.gaussian_filter`` of each plane (H then W), float64."""
    taps = gaussian_taps(sigma, truncate)
    return correlate1d(correlate1d(planes, taps, 2, mode, cval), taps, 3, mode, cval)


def correlate(planes, kernel, dilation, mode, cval):
    """``scipy.ndimage.correlate`` of each plane with ``kernel`` dilated by ``dilation``.

    Equivalent to SciPy with the zero-dilated kernel of size
    ``D = d * (k - 1) + 1`` (centre ``D // 2``) per axis.
    """
    x = np.asarray(planes, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    (kh, kw), (dh, dw) = kernel.shape, dilation
    size = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    pads = tuple((s // 2, s - 1 - s // 2) for s in size)
    xp = _pad(x, pads, mode, cval)
    h, w = x.shape[2], x.shape[3]
    out = np.zeros_like(x)
    with _quiet():
        for i in range(kh):
            for j in range(kw):
                out += kernel[i, j] * xp[:, :, i * dh:i * dh + h, j * dw:j * dw + w]
    return out


def starlet(planes, levels, mode, cval):
    """Starlet (isotropic undecimated B3-spline) transform: ``(levels + 1, B, C, H, W)``.

    ``c_0`` = the planes, ``c_j`` = ``c_{j-1}`` filtered along H and W by
    ``[1, 4, 6, 4, 1] / 16`` with ``2**(j-1) - 1`` zeros between taps;
    details ``w_j = c_{j-1} - c_j``; the last entry is ``c_levels``.
    """
    h = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    c = np.asarray(planes, dtype=np.float64)
    out = []
    for j in range(levels):
        d = 2**j
        nxt = correlate1d(correlate1d(c, h, 2, mode, cval, d), h, 3, mode, cval, d)
        out.append(c - nxt)
        c = nxt
    out.append(c)
    return np.stack(out)


# ----------------------------------------------------------------------------- resampling


#: scikit-image mode -> scipy.ndimage mode, as scikit-image's resize translates them
_SKIMAGE_RESIZE = {"reflect": "mirror", "constant": "constant", "wrap": "wrap",
                   "edge": "nearest", "symmetric": "reflect"}


def resize(planes, out_hw, order, mode, cval):
    """``skimage.transform.resize(..., anti_aliasing=False)`` of each plane (order 0 or 1).

    ``mode`` is scikit-image's name.  Output pixel ``o`` samples the input at
    ``(o + 0.5) * n_in / n_out - 0.5`` (SciPy's ``grid_mode``); linear
    interpolation reads the neighbours beyond the edge through ``mode``.
    Order 0 takes the input pixel nearest to that coordinate (halves round up).
    With ``mode="constant"`` and a ``cval`` outside the input's range, the result
    is clipped to that range (scikit-image's ``clip=True``).
    """
    x = np.asarray(planes, dtype=np.float64)
    src = x
    for axis, n_out in ((2, out_hw[0]), (3, out_hw[1])):
        x = _resize_axis(x, axis, n_out, order, _SKIMAGE_RESIZE[mode], cval)
    if mode == "constant" and order > 0 and not np.isnan(src).all():
        # scikit-image's clip=True: back into the input's range unless cval lies in it
        lo, hi = np.nanmin(src), np.nanmax(src)
        if not lo <= cval <= hi:
            x = np.clip(x, lo, hi)
    return x


def _resize_axis(x, axis, n_out, order, nd_mode, cval):
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    pads = ((1, 1), (0, 0)) if axis == 2 else ((0, 0), (1, 1))
    xp = _pad(x, pads, nd_mode, cval)  # index i of x is i + 1 of xp
    shape = list(x.shape)
    shape[axis] = n_out
    out = np.empty(shape)
    with _quiet():
        for o in range(n_out):
            src = (o + 0.5) * n_in / n_out - 0.5
            dst = [slice(None)] * 4
            dst[axis] = o
            if order == 0:
                i = min(int(math.floor(src + 0.5)), n_in - 1)
                sl = [slice(None)] * 4
                sl[axis] = i + 1
                out[tuple(dst)] = xp[tuple(sl)]
                continue
            i0 = int(math.floor(src))
            lam = src - i0
            a = [slice(None)] * 4
            b = [slice(None)] * 4
            a[axis] = i0 + 1
            b[axis] = i0 + 2
            out[tuple(dst)] = (1 - lam) * xp[tuple(a)] + lam * xp[tuple(b)]
    return out


def warp(planes, flow):
    """``out[.., y, x] = planes[.., y + flow[0, y, x], x + flow[1, y, x]]``, bilinear, zero outside.

    Each of the four neighbours contributes only if it lies inside the image,
    so the value fades to 0 within one pixel beyond the edge (deform_conv2d's rule).
    """
    x = np.asarray(planes, dtype=np.float64)
    flow = np.asarray(flow, dtype=np.float64)
    h, w = x.shape[2], x.shape[3]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    py = yy + flow[0]
    px = xx + flow[1]
    out = np.zeros_like(x)
    with _quiet():
        y0 = np.floor(py)
        x0 = np.floor(px)
        for dy in (0, 1):
            for dx in (0, 1):
                cy = y0 + dy
                cx = x0 + dx
                wgt = (1 - np.abs(py - cy)) * (1 - np.abs(px - cx))
                inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w) & (py > -1) & (py < h) & \
                    (px > -1) & (px < w)
                cyi = np.clip(cy, 0, h - 1).astype(np.int64)
                cxi = np.clip(cx, 0, w - 1).astype(np.int64)
                out += np.where(inside, wgt * x[:, :, cyi, cxi], 0.0)
    return out


def crop_regions(planes, boxes, out_hw, sampling_ratio):
    """Fixed-size crops of ``planes[0]`` for boxes ``(min_row, min_col, max_row, max_col)``.

    RoIAlign with ``aligned=True``: the box spans pixel edges ``[min_row - 0.5,
    max_row - 0.5]``; bin ``p`` of ``n_out`` averages ``g`` samples at
    ``min - 0.5 + (p + (i + 0.5) / g) * size / n_out`` (``g = sampling_ratio``,
    or ``ceil(size / n_out)`` when it is ``-1``).  Bilinear with torchvision's
    RoIAlign edge rule: a sample beyond one pixel outside is 0, otherwise
    coordinates clamp into the image.
    """
    x = np.asarray(planes, dtype=np.float64)[0]
    c, h, w = x.shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.zeros((len(boxes), c) + tuple(out_hw))
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        gy = sampling_ratio if sampling_ratio > 0 else math.ceil((r1 - r0) / out_hw[0])
        gx = sampling_ratio if sampling_ratio > 0 else math.ceil((c1 - c0) / out_hw[1])
        ys = _sample_axis(r0, r1, out_hw[0], gy, h)
        xs = _sample_axis(c0, c1, out_hw[1], gx, w)
        for p, ylist in enumerate(ys):
            for q, xlist in enumerate(xs):
                acc = np.zeros(c)
                for ya in ylist:
                    for xa in xlist:
                        if ya is None or xa is None:
                            continue
                        (y0, y1, ly), (x0, x1, lx) = ya, xa
                        acc += (1 - ly) * (1 - lx) * x[:, y0, x0] + (1 - ly) * lx * x[:, y0, x1] \
                            + ly * (1 - lx) * x[:, y1, x0] + ly * lx * x[:, y1, x1]
                out[k, :, p, q] = acc / max(len(ylist) * len(xlist), 1)
    return out


def _sample_axis(lo, hi, n_out, grid, size):
    """Per output bin: a list of (i0, i1, frac) for each sample (None = outside, counts as 0)."""
    start = lo - 0.5
    bin_size = (hi - lo) / n_out
    bins = []
    for p in range(n_out):
        samples = []
        for i in range(grid):
            s = start + p * bin_size + (i + 0.5) * bin_size / grid
            if s < -1.0 or s > size:
                samples.append(None)
                continue
            s = max(s, 0.0)
            i0 = int(math.floor(s))
            if i0 >= size - 1:
                samples.append((size - 1, size - 1, 0.0))
            else:
                samples.append((i0, i0 + 1, s - i0))
        bins.append(samples)
    return bins
