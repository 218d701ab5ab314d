"""The NumPy oracle: every fastconv op written straight from its formula.

Each function has the PyTorch/torchvision name, argument order and defaults, takes
NumPy arrays (or array-likes) in NCHW layout and returns a new ``float64`` array.
All data arithmetic is done in ``float64``. The code follows the formulas of the
"semantic contract" in ``DESIGN.md`` one to one and shares no code with the
kernels in ``fastconv.backends`` (it imports nothing from ``fastconv``), so that a
bug cannot hide by being in both. It is written to be read and checked, not to be
fast; loops run over kernel taps, boxes or bins and are vectorised over batch and
channels.

There is only minimal argument handling here (int-or-pair, ``"same"``/``"valid"``,
the two box formats); the public functions of :mod:`fastconv` validate their input.

Matching torchvision to the last bit
------------------------------------
- **Box geometry is computed in the input's precision.** torchvision computes the
  box corners, bin sizes, sample grids and sample positions of ``roi_align`` and
  ``roi_pool`` in the input dtype ``T``, and several of those numbers feed discrete
  decisions (``round``, ``floor``, ``ceil``, the "outside the image" test). In
  float32 they can come out differently from float64: e.g. for a 29-row RoI pooled
  to 7 rows, ``ceil(7 * (29 / 7))`` is 30 in float64 and 29 in float32, so
  torchvision's last bin reaches one row further in float64 than in float32. The
  oracle therefore computes that geometry in float32 for float16/float32 inputs and
  in float64 otherwise, exactly in torchvision's operation order, and only then
  turns to float64 for the data (bilinear weights, sums, means, maxima).
- **Non-finite data.** Bilinear interpolation multiplies and adds *every* corner
  that lies inside the image, so a NaN/Inf corner spreads even where its weight is
  0 (a sample on an integer coordinate still reads its right/bottom neighbour).
  A whole sample that falls outside the image is exactly 0 and reads nothing
  (torchvision's CUDA kernels; its CPU ``roi_align`` instead adds ``0 * in[0, 0]``
  for such samples, so a NaN/Inf at pixel (0, 0) leaks there -- the oracle does not
  copy that artefact). ``roi_pool`` keeps torchvision's running maximum that starts
  at ``-FLT_MAX`` and replaces it only on ``value > max``: NaN is skipped, and a bin
  holding only NaN, ``-inf`` or values below ``-FLT_MAX`` gives ``-FLT_MAX``
  (``-3.4028234663852886e38``, as a float64 too; ``-inf`` for float16 inputs, where
  ``-FLT_MAX`` overflows).

Examples
--------
>>> import numpy as np
>>> from fastconv import reference
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> reference.conv2d(x, np.ones((1, 1, 2, 2)))[0, 0, 0]
array([10., 14., 18.])
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool"]

# NaN/Inf in the data are meant to propagate: no floating-point warnings for them.
_quiet = np.errstate(invalid="ignore", over="ignore")

# The start value of torchvision's running maximum in roi_pool (C's FLT_MAX).
_FLT_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------------------
# minimal argument handling
# --------------------------------------------------------------------------------------


def _pair(value) -> tuple[int, int]:
    """``int`` or ``(int, int)`` -> ``(int, int)``."""
    if isinstance(value, (tuple, list, np.ndarray)):
        first, second = value
        return int(first), int(second)
    return int(value), int(value)


def _f64(array) -> np.ndarray:
    """A float64 copy/view of ``array`` (never written)."""
    return np.asarray(array, dtype=np.float64)


def _geometry_dtype(array) -> type:
    """The precision torchvision computes box geometry in: the input's float dtype.

    float16 inputs use float32, as fastconv's GPU backends do (torchvision's CUDA
    kernels would round every step of the geometry to half).
    """
    dtype = getattr(array, "dtype", None)
    if dtype is not None and np.dtype(dtype) in (np.dtype(np.float16), np.dtype(np.float32)):
        return np.float32
    return np.float64


def has_image(batch_index, n_images: int) -> bool:
    """Whether a box's batch index names an image: ``trunc(b)`` in ``[0, N)``, not NaN.

    The public ops check this by default (``check_boxes=True``).  Without the check,
    every backend gives zeros for a box that fails it, instead of reading outside the
    input; ``-1 < b < N`` is that test before the truncation, and NaN fails it.
    """
    return bool(-1 < batch_index < n_images)


def _rois(boxes, gdt) -> np.ndarray:
    """Boxes as a ``(K, 5)`` array of ``(batch_index, x1, y1, x2, y2)`` rows in ``gdt``.

    ``boxes`` is either already ``(K, 5)`` or a list/tuple of N ``(L_n, 4)`` arrays, in
    which case the rows of entry ``n`` get batch index ``n``.
    """
    if isinstance(boxes, (list, tuple)):
        rows = [np.zeros((0, 5), dtype=gdt)]
        for n, b in enumerate(boxes):
            b = np.asarray(b, dtype=gdt).reshape(-1, 4)
            rows.append(np.concatenate([np.full((b.shape[0], 1), n, dtype=gdt), b], axis=1))
        return np.concatenate(rows, axis=0)
    return np.asarray(boxes, dtype=gdt).reshape(-1, 5)


def _round_half_away(value):
    """C's ``round``: halves go away from zero (NumPy's ``rint`` goes to even)."""
    whole = np.trunc(value)
    if abs(value - whole) >= 0.5:  # exact: value - trunc(value) is representable
        whole = whole + np.sign(value)
    return whole


# --------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------


@_quiet
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation (PyTorch's ``conv2d``), computed in float64.

    ``out[n, k, y, x] = bias[k] + sum_{c, i, j} weight[k, c, i, j]
    * in[n, g*C_in/groups + c, y*sH - pH + i*dH, x*sW - pW + j*dW]`` with zeros outside
    the image, where ``g = k // (C_out/groups)``.

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W)
    weight : array_like, shape (C_out, C_in/groups, kH, kW)
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), ``"valid"`` or ``"same"``
        ``"valid"`` is no padding; ``"same"`` (stride 1) pads ``d*(k-1)`` in total per
        axis, half on each side with the odd extra at the bottom/right.
    groups : int

    Returns
    -------
    numpy.ndarray, shape (N, C_out, H_out, W_out), float64
        ``H_out = (H + pad_top + pad_bottom - dH*(kH-1) - 1) // sH + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2))
    >>> conv2d(x, w)[0, 0]
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]])
    >>> conv2d(x, w, padding="same").shape
    (1, 1, 4, 4)
    """
    x = _f64(input)
    w = _f64(weight)
    N, C_in, H, W = x.shape
    C_out, C_g, kH, kW = w.shape
    G = int(groups)
    sH, sW = _pair(stride)
    dH, dW = _pair(dilation)

    # padding before/after along each axis
    if isinstance(padding, str) and padding == "valid":
        top = bottom = left = right = 0
    elif isinstance(padding, str) and padding == "same":
        total_h, total_w = dH * (kH - 1), dW * (kW - 1)
        top, left = total_h // 2, total_w // 2
        bottom, right = total_h - top, total_w - left
    else:
        top, left = _pair(padding)
        bottom, right = top, left

    H_out = (H + top + bottom - dH * (kH - 1) - 1) // sH + 1
    W_out = (W + left + right - dW * (kW - 1) - 1) // sW + 1

    # zero-padded input, split into groups: (N, G, C_in/G, Hp, Wp)
    xp = np.zeros((N, C_in, H + top + bottom, W + left + right))
    xp[:, :, top : top + H, left : left + W] = x
    xp = xp.reshape(N, G, C_in // G, xp.shape[2], xp.shape[3])
    # weight split into groups: (G, C_out/G, C_in/G, kH, kW)
    wg = w.reshape(G, C_out // G, C_g, kH, kW)

    out = np.zeros((N, G, C_out // G, H_out * W_out))
    for i in range(kH):
        for j in range(kW):
            # in[n, g, c, y*sH + i*dH, x*sW + j*dW] for every output (y, x) (padded coordinates)
            tap = xp[
                :,
                :,
                :,
                i * dH : i * dH + sH * (H_out - 1) + 1 : sH,
                j * dW : j * dW + sW * (W_out - 1) + 1 : sW,
            ].reshape(N, G, C_g, H_out * W_out)
            # sum over c of weight[g, k, c, i, j] * tap[n, g, c, :]
            out += np.matmul(wg[:, :, :, i, j], tap)
    out = out.reshape(N, C_out, H_out, W_out)
    if bias is not None:
        out += _f64(bias).reshape(1, C_out, 1, 1)
    return out


# --------------------------------------------------------------------------------------
# conv_transpose2d
# --------------------------------------------------------------------------------------


@_quiet
def conv_transpose2d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """Transposed 2-D convolution (PyTorch's ``conv_transpose2d``), computed in float64.

    The adjoint of :func:`conv2d`: every product ``in[n, c, iy, ix] * weight[c, k, i, j]``
    is added to ``out[n, g*C_out/groups + k, iy*sH - pH + i*dH, ix*sW - pW + j*dW]``
    (dropped where that lies outside the output), ``g = c // (C_in/groups)``.

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W)
    weight : array_like, shape (C_in, C_out/groups, kH, kW)
    bias : array_like, shape (C_out,), optional
    stride, padding, output_padding, dilation : int or (int, int)
        PyTorch's argument order: ``groups`` comes before ``dilation``.
    groups : int

    Returns
    -------
    numpy.ndarray, shape (N, C_out, H_out, W_out), float64
        ``H_out = (H - 1)*sH - 2*pH + dH*(kH - 1) + output_padding_h + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[[1.0, 2.0]]]])
    >>> w = np.ones((1, 1, 1, 2))
    >>> conv_transpose2d(x, w, stride=2)[0, 0]
    array([[1., 1., 2., 2.]])
    """
    x = _f64(input)
    w = _f64(weight)
    N, C_in, H, W = x.shape
    _, C_out_g, kH, kW = w.shape
    G = int(groups)
    C_in_g = C_in // G
    C_out = C_out_g * G
    sH, sW = _pair(stride)
    pH, pW = _pair(padding)
    oH, oW = _pair(output_padding)
    dH, dW = _pair(dilation)

    H_out = (H - 1) * sH - 2 * pH + dH * (kH - 1) + oH + 1
    W_out = (W - 1) * sW - 2 * pW + dW * (kW - 1) + oW + 1

    # Scatter into a buffer whose row r is output row r - pH (so nothing is negative),
    # large enough for every product and for the whole output window.
    H_full = max((H - 1) * sH + dH * (kH - 1) + 1, pH + H_out)
    W_full = max((W - 1) * sW + dW * (kW - 1) + 1, pW + W_out)
    full = np.zeros((N, G, C_out_g, H_full, W_full))

    xg = x.reshape(N, G, C_in_g, H * W)
    wg = w.reshape(G, C_in_g, C_out_g, kH, kW)
    for i in range(kH):
        for j in range(kW):
            # sum over c of weight[g, c, k, i, j] * in[n, g, c, iy, ix] ...
            contrib = np.matmul(wg[:, :, :, i, j].transpose(0, 2, 1), xg)
            # ... lands at buffer row iy*sH + i*dH, column ix*sW + j*dW
            full[
                :,
                :,
                :,
                i * dH : i * dH + sH * (H - 1) + 1 : sH,
                j * dW : j * dW + sW * (W - 1) + 1 : sW,
            ] += contrib.reshape(N, G, C_out_g, H, W)

    out = full[:, :, :, pH : pH + H_out, pW : pW + W_out].reshape(N, C_out, H_out, W_out)
    out = np.ascontiguousarray(out)
    if bias is not None:
        out += _f64(bias).reshape(1, C_out, 1, 1)
    return out


# --------------------------------------------------------------------------------------
# deform_conv2d
# --------------------------------------------------------------------------------------


def _bilinear_zero_pad(img, py, px):
    """Bilinear samples of ``img`` with zero padding (deform_conv2d's edge rule).

    ``img`` is ``(N, G, C, H, W)``; ``py``/``px`` are ``(N, G, Ho, Wo)`` and sample
    ``img[n, g, :]``. Returns ``(N, G, C, Ho, Wo)``. The sample is 0 if ``py <= -1``,
    ``py >= H``, ``px <= -1`` or ``px >= W``; otherwise every corner inside the image adds
    ``weight * value`` (also when the weight is 0) and corners outside add nothing.
    """
    N, G, C, H, W = img.shape
    outside = (py <= -1) | (py >= H) | (px <= -1) | (px >= W)

    y_low = np.floor(py)
    x_low = np.floor(px)
    ly = py - y_low
    lx = px - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx

    n_idx = np.arange(N).reshape(N, 1, 1, 1)
    g_idx = np.arange(G).reshape(1, G, 1, 1)

    def corner(yc, xc):
        """``img[n, g, :, yc, xc]`` where that is inside the image, else 0: (N, G, Ho, Wo, C)."""
        inside = (yc >= 0) & (yc <= H - 1) & (xc >= 0) & (xc <= W - 1)
        yi = np.where(inside, yc, 0).astype(np.intp)
        xi = np.where(inside, xc, 0).astype(np.intp)
        values = img[n_idx, g_idx, :, yi, xi]
        return np.where(inside[..., None], values, 0.0)

    v1 = corner(y_low, x_low)
    v2 = corner(y_low, x_low + 1)
    v3 = corner(y_low + 1, x_low)
    v4 = corner(y_low + 1, x_low + 1)
    w1 = (hy * hx)[..., None]
    w2 = (hy * lx)[..., None]
    w3 = (ly * hx)[..., None]
    w4 = (ly * lx)[..., None]
    value = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
    value = np.where(outside[..., None], 0.0, value)
    return np.moveaxis(value, -1, 2)


@_quiet
def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable 2-D convolution (torchvision's ``deform_conv2d``), computed in float64.

    Like :func:`conv2d`, but tap ``t = i*kW + j`` of output ``(y, x)`` reads the input at
    ``(y*sH - pH + i*dH + dy, x*sW - pW + j*dW + dx)`` by bilinear interpolation with zero
    padding, where ``dy = offset[n, 2*(g*kH*kW + t), y, x]``, ``dx`` is the next channel
    and ``g`` is the offset group of the input channel. With a mask (DCNv2) the sample is
    multiplied by ``mask[n, g*kH*kW + t, y, x]``.

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W)
    offset : array_like, shape (N, 2*G*kH*kW, H_out, W_out)
        ``G`` offset groups, ``C_in % G == 0``; channel ``2*(g*kH*kW + t)`` is ``dy``.
    weight : array_like, shape (C_out, C_in/weight_groups, kH, kW)
        The weight groups are ``C_in // weight.shape[1]``.
    bias : array_like, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
    mask : array_like, shape (N, G*kH*kW, H_out, W_out), optional

    Returns
    -------
    numpy.ndarray, shape (N, C_out, H_out, W_out), float64
        ``H_out = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1``.

    Notes
    -----
    A sample is 0 if ``py <= -1``, ``py >= H``, ``px <= -1`` or ``px >= W``; otherwise
    each of its 4 corners contributes ``weight * value`` only if it lies inside the
    image. With zero offsets and no mask this is :func:`conv2d`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> w = np.ones((1, 1, 1, 1))
    >>> off = np.zeros((1, 2, 3, 3))
    >>> off[0, 1] = 0.5  # move every sample half a pixel to the right
    >>> deform_conv2d(x, off, w)[0, 0]
    array([[0.5, 1.5, 1. ],
           [3.5, 4.5, 2.5],
           [6.5, 7.5, 4. ]])
    """
    x = _f64(input)
    off = _f64(offset)
    w = _f64(weight)
    N, C_in, H, W = x.shape
    C_out, C_w, kH, kW = w.shape
    sH, sW = _pair(stride)
    pH, pW = _pair(padding)
    dH, dW = _pair(dilation)
    taps = kH * kW
    G = off.shape[1] // (2 * taps)  # offset groups
    Gw = C_in // C_w if C_w else 1  # weight groups
    H_out = (H + 2 * pH - dH * (kH - 1) - 1) // sH + 1
    W_out = (W + 2 * pW - dW * (kW - 1) - 1) // sW + 1

    off = off.reshape(N, G, taps, 2, H_out, W_out)
    m = None if mask is None else _f64(mask).reshape(N, G, taps, H_out, W_out)
    xg = x.reshape(N, G, C_in // G, H, W)
    wg = w.reshape(Gw, C_out // Gw, C_w, kH, kW)
    base_y = (np.arange(H_out) * sH - pH).reshape(H_out, 1)
    base_x = (np.arange(W_out) * sW - pW).reshape(1, W_out)

    out = np.zeros((N, Gw, C_out // Gw, H_out * W_out))
    for i in range(kH):
        for j in range(kW):
            t = i * kW + j
            py = (base_y + i * dH) + off[:, :, t, 0]  # (N, G, H_out, W_out)
            px = (base_x + j * dW) + off[:, :, t, 1]
            val = _bilinear_zero_pad(xg, py, px)  # (N, G, C_in/G, H_out, W_out)
            if m is not None:
                val = m[:, :, t][:, :, None] * val
            cols = val.reshape(N, Gw, C_w, H_out * W_out)  # channel order c = g*C_in/G + ...
            out += np.matmul(wg[:, :, :, i, j], cols)
    out = out.reshape(N, C_out, H_out, W_out)
    if bias is not None:
        out += _f64(bias).reshape(1, C_out, 1, 1)
    return out


# --------------------------------------------------------------------------------------
# roi_align
# --------------------------------------------------------------------------------------


def _bilinear_replicate_axis(coord, size):
    """roi_align's edge rule along one axis, in torchvision's order of operations.

    ``coord`` holds sample coordinates (in the geometry dtype). Returns
    ``(valid, low, high, l, h)``: ``valid`` is False where the coordinate is below -1
    or above ``size`` (such a sample contributes 0 but still counts); otherwise a
    coordinate in [-1, 0] becomes 0, and one at or past ``size - 1`` is replaced by
    ``size - 1`` with both corners there (replicate edge). ``l`` and ``h`` are the
    float64 weights of the high and low corner.
    """
    valid = ~((coord < -1.0) | (coord > size))
    c = np.where(coord <= 0, np.zeros_like(coord), coord)
    low = np.floor(c).astype(np.int64)  # == C's (int) cast, c >= 0 here
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    c = np.where(at_edge, (size - 1) + np.zeros_like(c), c)
    ly = c.astype(np.float64) - low  # exact: the fractional part of c
    hy = 1.0 - ly
    # indices only used where valid; keep the others inside the array
    low = np.where(valid, low, 0)
    high = np.where(valid, high, 0)
    return valid, low, high, ly, hy


@_quiet
def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign (torchvision's ``roi_align``), computed in float64.

    For box ``(b, x1, y1, x2, y2)`` let ``start = coord * spatial_scale - (0.5 if aligned
    else 0)`` and ``size = end - start`` (clamped to >= 1 unless ``aligned``). Output bin
    ``(ph, pw)`` is the mean of a ``grid_h x grid_w`` grid of bilinear samples at
    ``y = start_y + ph*bin_h + (iy + 0.5)*bin_h/grid_h`` (likewise x), with
    ``bin = size/output_size`` and ``grid = sampling_ratio`` if > 0 else
    ``ceil(size/output_size)`` per axis. The mean divides by ``max(grid_h*grid_w, 1)``.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W)
    boxes : array_like, shape (K, 5), or list of N arrays of shape (L_n, 4)
        Rows ``(batch_index, x1, y1, x2, y2)``; in the list form the batch index is the
        position in the list.
    output_size : int or (int, int)
        ``(PH, PW)``.
    spatial_scale : float
    sampling_ratio : int
        Samples per bin and axis; <= 0 means adaptive (``ceil(size/output_size)``).
    aligned : bool
        Shift the box by -0.5 pixel (pixel centres at integer + 0.5) and do not clamp
        its size.

    Returns
    -------
    numpy.ndarray, shape (K, C, PH, PW), float64

    Notes
    -----
    Edge rule (different from :func:`deform_conv2d`): a sample with ``y < -1``,
    ``y > H``, ``x < -1`` or ``x > W`` contributes 0 but counts; otherwise coordinates
    <= 0 become 0 and a coordinate >= ``H - 1`` (``W - 1``) is replaced by ``H - 1``
    (``W - 1``), replicating the edge. The box geometry is computed in the input's
    precision (float32 for float16/float32 inputs), as torchvision does; see the
    module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> roi_align(x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 1, sampling_ratio=2)
    array([[[[5.]]]])
    >>> roi_align(x, [np.array([[0.5, 0.5, 1.5, 1.5]])], (1, 2), aligned=True)
    array([[[[2.25, 2.75]]]])
    """
    x = _f64(input)
    N, C, H, W = x.shape
    gdt = _geometry_dtype(input)
    rois = _rois(boxes, gdt)
    PH, PW = _pair(output_size)
    K = rois.shape[0]
    out = np.zeros((K, C, PH, PW))
    scale = gdt(spatial_scale)
    shift = gdt(0.5) if aligned else gdt(0.0)

    for k in range(K):
        if not has_image(rois[k, 0], N):
            continue  # batch index outside [0, N) (only with check_boxes=False): zeros
        b = int(rois[k, 0])
        # box geometry, in the geometry dtype, in torchvision's order of operations
        start_x = rois[k, 1] * scale - shift
        start_y = rois[k, 2] * scale - shift
        end_x = rois[k, 3] * scale - shift
        end_y = rois[k, 4] * scale - shift
        size_x = end_x - start_x
        size_y = end_y - start_y
        if not aligned:
            size_x = max(size_x, gdt(1.0))
            size_y = max(size_y, gdt(1.0))
        bin_y = size_y / gdt(PH)
        bin_x = size_x / gdt(PW)
        grid_y = sampling_ratio if sampling_ratio > 0 else int(math.ceil(size_y / gdt(PH)))
        grid_x = sampling_ratio if sampling_ratio > 0 else int(math.ceil(size_x / gdt(PW)))
        count = max(grid_y * grid_x, 1)
        if grid_y <= 0 or grid_x <= 0:
            continue  # no samples: the bins stay 0

        # sample coordinates: ys[ph, iy] and xs[pw, ix]
        ph = np.arange(PH, dtype=gdt).reshape(PH, 1)
        iy = np.arange(grid_y, dtype=gdt).reshape(1, grid_y)
        ys = (start_y + ph * bin_y) + (iy + gdt(0.5)) * bin_y / gdt(grid_y)
        pw = np.arange(PW, dtype=gdt).reshape(PW, 1)
        ix = np.arange(grid_x, dtype=gdt).reshape(1, grid_x)
        xs = (start_x + pw * bin_x) + (ix + gdt(0.5)) * bin_x / gdt(grid_x)

        # one axis at a time (the bilinear weights factor): flatten to S_y / S_x samples
        vy, y_lo, y_hi, ly, hy = _bilinear_replicate_axis(ys.reshape(-1), H)
        vx, x_lo, x_hi, lx, hx = _bilinear_replicate_axis(xs.reshape(-1), W)
        img = x[b]  # (C, H, W)

        def corner(yi, xi, img=img):
            return img[:, yi[:, None], xi[None, :]]  # (C, S_y, S_x): img[c, yi[a], xi[b]]

        w1 = hy[:, None] * hx[None, :]
        w2 = hy[:, None] * lx[None, :]
        w3 = ly[:, None] * hx[None, :]
        w4 = ly[:, None] * lx[None, :]
        samples = (
            w1 * corner(y_lo, x_lo)
            + w2 * corner(y_lo, x_hi)
            + w3 * corner(y_hi, x_lo)
            + w4 * corner(y_hi, x_hi)
        )
        valid = vy[:, None] & vx[None, :]
        samples = np.where(valid, samples, 0.0)  # outside: 0, reads nothing
        samples = samples.reshape(C, PH, grid_y, PW, grid_x)
        out[k] = samples.sum(axis=(2, 4)) / count
    return out


# --------------------------------------------------------------------------------------
# roi_pool
# --------------------------------------------------------------------------------------


@_quiet
def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """RoIPool (torchvision's ``roi_pool``): max over quantised bins, in float64.

    For box ``(b, x1, y1, x2, y2)`` the corners are ``round(coord * spatial_scale)``
    with C rounding (half away from zero), the end is inclusive and the size is
    ``max(end - start + 1, 1)``. With ``bin = size/output_size``, bin ``ph`` covers rows
    ``[floor(ph*bin), ceil((ph + 1)*bin))`` shifted by the box start and clipped to
    ``[0, H]`` (likewise columns). The output is the maximum over the bin, 0 for an empty
    bin.

    Parameters
    ----------
    input : array_like, shape (N, C, H, W)
    boxes : array_like, shape (K, 5), or list of N arrays of shape (L_n, 4)
        Rows ``(batch_index, x1, y1, x2, y2)``; in the list form the batch index is the
        position in the list.
    output_size : int or (int, int)
        ``(PH, PW)``.
    spatial_scale : float

    Returns
    -------
    numpy.ndarray, shape (K, C, PH, PW), float64

    Notes
    -----
    As in torchvision, the corners, bin size and bin limits are computed in the input's
    precision (float32 for float16/float32 inputs), which decides ties in rounding and
    sometimes makes the last bin end one pixel past the box; and the maximum is a
    running ``value > max`` starting at ``-FLT_MAX``, so NaN is skipped and a bin of
    only NaN/``-inf`` gives ``-FLT_MAX``. See the module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> roi_pool(x, np.array([[0, 0.0, 0.0, 3.0, 3.0]]), 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    """
    x = _f64(input)
    N, C, H, W = x.shape
    gdt = _geometry_dtype(input)
    rois = _rois(boxes, gdt)
    PH, PW = _pair(output_size)
    K = rois.shape[0]
    out = np.zeros((K, C, PH, PW))
    scale = gdt(spatial_scale)

    # torchvision's running maximum starts at -FLT_MAX in the input dtype
    in_dtype = np.dtype(getattr(input, "dtype", np.float64))
    if in_dtype.kind != "f":
        in_dtype = np.dtype(np.float64)
    with np.errstate(over="ignore"):
        lowest = float(np.asarray(-_FLT_MAX).astype(in_dtype))

    for k in range(K):
        if not has_image(rois[k, 0], N):
            continue  # batch index outside [0, N) (only with check_boxes=False): zeros
        b = int(rois[k, 0])
        start_x = int(_round_half_away(rois[k, 1] * scale))
        start_y = int(_round_half_away(rois[k, 2] * scale))
        end_x = int(_round_half_away(rois[k, 3] * scale))
        end_y = int(_round_half_away(rois[k, 4] * scale))
        size_x = max(end_x - start_x + 1, 1)
        size_y = max(end_y - start_y + 1, 1)
        bin_y = gdt(size_y) / gdt(PH)
        bin_x = gdt(size_x) / gdt(PW)
        img = x[b]  # (C, H, W)
        for ph in range(PH):
            y0 = int(math.floor(gdt(ph) * bin_y))
            y1 = int(math.ceil(gdt(ph + 1) * bin_y))
            y0 = min(max(y0 + start_y, 0), H)
            y1 = min(max(y1 + start_y, 0), H)
            for pw in range(PW):
                x0 = int(math.floor(gdt(pw) * bin_x))
                x1 = int(math.ceil(gdt(pw + 1) * bin_x))
                x0 = min(max(x0 + start_x, 0), W)
                x1 = min(max(x1 + start_x, 0), W)
                if y1 <= y0 or x1 <= x0:
                    continue  # empty bin: 0
                region = img[:, y0:y1, x0:x1].reshape(C, (y1 - y0) * (x1 - x0))
                region = np.where(np.isnan(region), -np.inf, region)  # `>` skips NaN
                out[k, :, ph, pw] = np.maximum(region.max(axis=1, initial=-np.inf), lowest)
    return out
