"""Public ``upsample`` (PyTorch's ``interpolate``, nearest/bilinear) and ``bilinear_kernel``.

The coordinate rules are computed here, once, on the host, as small per-axis
tables (source indices and weights); every backend's ``resample`` module only
gathers and blends with them (``fastconv/backends/cpu/resample.py`` documents
the table conventions).  The oracle is :func:`fastconv.reference_image.upsample`,
which recomputes everything from the formulas below without these tables.

PyTorch's rules, matched here
-----------------------------
For an axis with input size ``n_in`` and output size ``n_out``:

* ``scale`` is ``1 / scale_factor`` when ``scale_factor`` was given (and
  ``recompute_scale_factor`` is not true), else ``n_in / n_out`` -- so with a
  non-integer ``scale_factor`` the sampling grid follows the factor, not the
  rounded output size.  ``n_out = floor(n_in * scale_factor)``.
* ``"nearest"``: source index ``min(floor(o * scale), n_in - 1)`` computed in
  **float32** whatever the dtype (as PyTorch does, so indices agree with it
  bit for bit), with PyTorch's shortcuts ``n_out == n_in`` (identity) and
  ``n_out == 2 * n_in`` (``o // 2``).
* ``"bilinear"``: an axis whose size does not change is kept as it is (both
  corners the pixel itself, weights ``(1, 0)``), whatever ``scale_factor`` says.
  Otherwise, with ``align_corners=False``: ``src = scale * (o + 0.5) - 0.5``,
  clamped below at 0; ``align_corners=True``: ``src = o * (n_in - 1) / (n_out - 1)``
  (0 when ``n_out == 1``), ignoring ``scale_factor``.  Then ``i0 = floor(src)``,
  ``i1 = i0 + 1`` unless ``i0`` is the last index (edge replicated),
  ``l1 = src - i0``, ``l0 = 1 - l1``; arithmetic in the input's precision
  (float32 for float16/float32, float64 for float64).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _args, _dispatch

__all__ = ["bilinear_kernel", "upsample"]

_MODES = ("nearest", "bilinear")


# ----------------------------------------------------------------------------- arguments


def _real_pair(value, name: str) -> tuple[float, float]:
    if isinstance(value, (tuple, list)):
        items = list(value)
        if len(items) != 2:
            raise ValueError(f"{name} must be a number or a pair of numbers, got {value!r}")
    else:
        items = [value, value]
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a number or a pair of numbers, got {value!r}")
        v = float(v)
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be finite and positive, got {value!r}")
        out.append(v)
    return (out[0], out[1])


def upsample_spec(x_shape, size, scale_factor, mode, align_corners, recompute_scale_factor):
    """Validate ``upsample``'s arguments; return ``(out_hw, scale_factors or None, align)``."""
    _args.check_ndim(x_shape, 4, "input", "(N, C, H, W)")
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if align_corners is not None and not isinstance(align_corners, (bool, np.bool_)):
        raise TypeError(f"align_corners must be a bool or None, got {align_corners!r}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(
            "align_corners can only be set with mode='bilinear' (it has no meaning for "
            f"'nearest'), got align_corners={align_corners!r}"
        )
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be given, got both")
    if size is None and scale_factor is None:
        raise ValueError("either size or scale_factor must be given")
    if recompute_scale_factor not in (None, True, False):
        raise TypeError(
            f"recompute_scale_factor must be a bool or None, got {recompute_scale_factor!r}"
        )
    if recompute_scale_factor and size is not None:
        raise ValueError("recompute_scale_factor is not meaningful with an explicit size")
    h, w = x_shape[2], x_shape[3]
    if size is not None:
        out_hw = _args.positive_pair(size, "size")
        scales = None
    else:
        scales = _real_pair(scale_factor, "scale_factor")
        out_hw = (math.floor(h * scales[0]), math.floor(w * scales[1]))
        if out_hw[0] < 1 or out_hw[1] < 1:
            raise ValueError(
                f"output size is empty ({out_hw[0]} x {out_hw[1]}): input {h} x {w} with "
                f"scale_factor={scale_factor!r}"
            )
        if recompute_scale_factor:
            scales = None
    if h < 1 or w < 1:
        raise ValueError(f"input must have a non-empty image, got shape {tuple(x_shape)}")
    return out_hw, scales, bool(align_corners) if align_corners is not None else False


# ----------------------------------------------------------------------------- tables


def nearest_table(n_in: int, n_out: int, scale_factor) -> np.ndarray:
    """PyTorch's ``"nearest"`` source indices (float32 arithmetic), int64 of length ``n_out``."""
    o = np.arange(n_out, dtype=np.int64)
    if n_out == n_in:
        return o
    if n_out == 2 * n_in:
        return o >> 1
    if scale_factor is not None:
        scale = np.float32(1.0 / scale_factor)
    else:
        scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(o.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def linear_table(n_in: int, n_out: int, align_corners: bool, scale_factor, dtype):
    """PyTorch's bilinear corners and weights along one axis: ``(idx (2, n_out), w (2, n_out))``.

    ``dtype`` is the arithmetic type (float32 or float64).
    """
    t = np.dtype(dtype).type
    o = np.arange(n_out, dtype=np.int64)
    if n_out == n_in:
        # PyTorch keeps such an axis as it is, whatever scale_factor says: both
        # corners are the pixel itself, weights (1, 0) (so an Inf there gives NaN, as in PyTorch)
        return np.stack([o, o]), np.stack([np.ones(n_out, t), np.zeros(n_out, t)])
    if align_corners:
        scale = t(n_in - 1) / t(n_out - 1) if n_out > 1 else t(0)
        src = scale * o.astype(t)
    else:
        if scale_factor is not None:
            scale = t(1.0 / scale_factor)
        else:
            scale = t(n_in) / t(n_out)
        half = o.astype(t) + t(0.5)
        if t is np.float32:
            # PyTorch's CPU build contracts this into one fused multiply-add; a float32
            # product is exact in float64, so this rounds once, as the FMA does
            src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(t)
        else:
            src = scale * half - t(0.5)
        src = np.maximum(src, t(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(t), t(0), t(1)).astype(t)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    idx = np.stack([i0, i1])
    wgt = np.stack([t(1) - lam, lam]).astype(t)
    return idx, wgt


def _weight_dtype(dtype) -> np.dtype:
    """Tables' float type: float64 for float64 data, else float32 (float16 accumulates in it)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# ----------------------------------------------------------------------------- public


def upsample(
    input,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
    *,
    backend=None,
):
    """Resize NCHW images like ``torch.nn.functional.interpolate`` (``"nearest"``, ``"bilinear"``).

    Exactly one of ``size`` and ``scale_factor`` is given.  With
    ``scale_factor`` the output is ``floor(H * scale_factor)`` and -- as in
    PyTorch -- the source grid uses ``1 / scale_factor`` (not the ratio of the
    rounded sizes) unless ``recompute_scale_factor=True``.

    * ``"nearest"``: ``out[y] = in[min(floor(y * scale), H - 1)]`` (PyTorch's
      legacy ``"nearest"``, float32 index arithmetic).
    * ``"bilinear"``: ``align_corners=False`` (the default) samples at
      ``scale * (y + 0.5) - 0.5`` clamped at 0, ``align_corners=True`` at
      ``y * (H - 1) / (H_out - 1)``; the last row/column is replicated.

    Parameters
    ----------
    input : array, shape (N, C, H, W)
        numpy, cupy, numba device array or any ``__cuda_array_interface__`` object.
    size : int or (int, int), optional
        Output ``(H_out, W_out)``.
    scale_factor : float or (float, float), optional
        Multiplier of ``H`` and ``W`` (any positive value: down-sampling works too).
    mode : {"nearest", "bilinear"}, default "nearest"
    align_corners : bool, optional
        Only for ``"bilinear"`` (``None`` means False); an error with ``"nearest"``.
    recompute_scale_factor : bool, optional
        True: derive the grid from the rounded output size instead of ``scale_factor``.
    backend : {"cpu", "cupy", "numba_cuda", "reference"}, optional, keyword-only

    Returns
    -------
    out : array, shape (N, C, H_out, W_out)
        Same array type, dtype and device as ``input``.

    Raises
    ------
    ValueError
        Not 4-D, both or neither of ``size``/``scale_factor``, an unknown mode,
        ``align_corners`` with ``"nearest"``, an empty output.
    TypeError
        Non-float dtype, bad argument types.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], np.float32)
    >>> fastconv.upsample(x, scale_factor=2)[0, 0]
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [2., 2., 3., 3.],
           [2., 2., 3., 3.]], dtype=float32)
    >>> fastconv.upsample(x, size=3, mode="bilinear", align_corners=True)[0, 0]
    array([[0. , 0.5, 1. ],
           [1. , 1.5, 2. ],
           [2. , 2.5, 3. ]], dtype=float32)
    """
    call = _dispatch.prepare(backend, input=input)
    x = call.arrays["input"]
    out_hw, scales, align = upsample_spec(
        x.shape, size, scale_factor, mode, align_corners, recompute_scale_factor
    )
    if call.is_reference:
        from . import reference_image

        out = reference_image.upsample(np.asarray(x), out_hw, scales, mode, align)
        return call.finish_reference(out)
    h, w = x.shape[2], x.shape[3]
    sy, sx = (None, None) if scales is None else scales
    if mode == "nearest":
        iy = call.from_host(nearest_table(h, out_hw[0], sy))
        ix = call.from_host(nearest_table(w, out_hw[1], sx))
        return call.run("resample.gather", x, iy, ix, cval=0.0)
    wdt = _weight_dtype(call.dtype)
    iy, wy = linear_table(h, out_hw[0], align, sy, wdt)
    ix, wx = linear_table(w, out_hw[1], align, sx, wdt)
    tables = [call.from_host(np.ascontiguousarray(t)) for t in (iy, wy, ix, wx)]
    return call.run("resample.lerp", x, *tables, cval=0.0)


def bilinear_kernel(channels, factor, *, depthwise=False, dtype=None, like=None):
    """The FCN bilinear up-sampling weights for :func:`fastconv.conv_transpose2d`.

    A ``k x k`` tent with ``k = 2 * factor - factor % 2`` and centre
    ``factor - 1`` (odd ``k``) or ``factor - 0.5`` (even ``k``):
    ``w[i, j] = (1 - |i - centre| / factor) * (1 - |j - centre| / factor)``,
    placed on the diagonal (channel ``c`` to channel ``c``) of a
    ``(channels, channels, k, k)`` weight -- or ``(channels, 1, k, k)`` with
    ``depthwise=True``, for ``groups=channels`` (same result, ``channels``
    times less work).

    Relation to :func:`upsample`: with ``stride=factor, padding=factor // 2``
    the transposed convolution gives an ``(factor*H, factor*W)`` output whose
    output pixel ``y`` blends the input rows around ``(y + 0.5) / factor - 0.5``
    with the same weights as ``upsample(x, scale_factor=factor,
    mode="bilinear", align_corners=False)``.  The two are **equal except in a
    border band** ``factor // 2`` pixels wide on each side (the rows/columns
    where that source coordinate is below 0 or above ``H - 1``): there ``upsample``
    replicates the edge pixel while the transposed convolution has zero
    padding, so its tent weights do not sum to 1 and the border darkens.
    Exactly::

        conv_transpose2d(x, K, stride=f, padding=f // 2)
            == upsample(x, scale_factor=f, mode="bilinear") * conv_transpose2d(ones, K, ...)

    i.e. dividing by the transposed convolution of an all-ones image
    (normalised convolution) recovers ``upsample`` everywhere.

    Parameters
    ----------
    channels : int
    factor : int
        Integer up-sampling factor (>= 1).
    depthwise : bool, default False, keyword-only
    dtype : float dtype, optional, keyword-only
        Default: ``like``'s dtype, else float32.
    like : array, optional, keyword-only
        Return the weights as this kind of array on its device (cupy, numba).

    Returns
    -------
    weight : array, shape (channels, channels or 1, k, k)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> fastconv.bilinear_kernel(1, 2)[0, 0]
    array([[0.0625, 0.1875, 0.1875, 0.0625],
           [0.1875, 0.5625, 0.5625, 0.1875],
           [0.1875, 0.5625, 0.5625, 0.1875],
           [0.0625, 0.1875, 0.1875, 0.0625]], dtype=float32)
    >>> x = np.random.default_rng(0).random((1, 3, 5, 5))
    >>> k = fastconv.bilinear_kernel(3, 2, depthwise=True, dtype=np.float64)
    >>> y = fastconv.conv_transpose2d(x, k, stride=2, padding=1, groups=3)
    >>> ref = fastconv.upsample(x, scale_factor=2, mode="bilinear")
    >>> bool(np.allclose(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1]))
    True
    """
    channels = _args.positive_int(channels, "channels")
    factor = _args.positive_int(factor, "factor")
    if not isinstance(depthwise, (bool, np.bool_)):
        raise TypeError(f"depthwise must be a bool, got {depthwise!r}")
    call = None
    if like is not None:
        call = _dispatch.prepare(None, like=like)
    if dtype is None:
        dtype = call.dtype if call is not None else np.float32
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    k = 2 * factor - factor % 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    tent = 1.0 - np.abs(np.arange(k) - centre) / factor
    filt = np.outer(tent, tent)
    if depthwise:
        weight = np.broadcast_to(filt, (channels, 1, k, k)).astype(dtype)
    else:
        weight = np.zeros((channels, channels, k, k), dtype=dtype)
        weight[np.arange(channels), np.arange(channels)] = filt
    if call is None:
        return weight
    return call.wrap(call.from_host(weight))
