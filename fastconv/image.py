"""scikit-image-style functions on fastconv kernels: pyramids, filtering, wavelets, warps, crops.

Every function takes an ``(H, W)`` image, or an image with a channel axis
(``channel_axis=`` as in scikit-image), as a NumPy, CuPy or numba device array
and returns the same kind of array on the same device; ``backend=`` overrides
the choice as for the core ops (``"reference"`` runs the NumPy float64 oracle
in :mod:`fastconv.reference_image`).

dtype rules (scikit-image's): integer and boolean images are converted with
``img_as_float`` (unsigned ``x / max``, signed ``max(x / max, -1)``, float64)
unless ``preserve_range=True`` (then just cast to float64); float16 becomes
float32; float32 and float64 stay as they are.  The result has that float dtype.

Internally an image becomes ``(1, C, H, W)`` planes; boundary modes are index
tables computed here on the host (``fastconv/backends/cpu/resample.py``
describes them) and applied by the backend's ``resample`` kernels, by
:func:`fastconv.conv2d` (``correlate``), :func:`fastconv.deform_conv2d`
(``warp_by_flow``) and :func:`fastconv.roi_align` (``crop_regions``).

==========================  ==========================================================
function                    equal to
==========================  ==========================================================
``pyramid_reduce`` ...      ``skimage.transform.pyramid_*`` (order 0 or 1)
``correlate``               ``scipy.ndimage.correlate`` with the zero-dilated kernel
``atrous_wavelet``          the starlet transform (B3-spline a trous), exact sum
``warp_by_flow``            ``skimage.transform.warp(order=1)`` (``mode='constant'``, ``cval=0``)
``crop_regions``            crop + ``skimage.transform.resize(order=1)`` (see its notes)
==========================  ==========================================================
"""

from __future__ import annotations

import contextlib
import importlib
import math
import numbers

import numpy as np

from . import _args, _dispatch
from .backends import _host

__all__ = [
    "atrous_wavelet",
    "correlate",
    "crop_regions",
    "pyramid_expand",
    "pyramid_gaussian",
    "pyramid_laplacian",
    "pyramid_reduce",
    "warp_by_flow",
]

#: scipy.ndimage boundary modes accepted by ``correlate`` and ``atrous_wavelet``
NDIMAGE_MODES = ("reflect", "constant", "nearest", "mirror", "wrap",
                 "grid-mirror", "grid-constant", "grid-wrap")
#: scikit-image pyramid modes -> (mode of the Gaussian filter, mode of the resize), both SciPy's
PYRAMID_MODES = {
    "reflect": ("reflect", "mirror"),
    "constant": ("constant", "constant"),
    "wrap": ("wrap", "wrap"),
}


# ============================================================================= host tables


def boundary_index(idx, n: int, mode: str) -> np.ndarray:
    """Map integer positions along an axis of length ``n`` into it with SciPy's ``mode``.

    Returns int64 indices in ``[0, n)``, or ``-1`` (read ``cval``) for ``constant``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if mode in ("reflect", "grid-mirror"):  # d c b a | a b c d | d c b a
        m = np.mod(idx, 2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    if mode == "mirror":  # d c b | a b c d | c b a
        if n == 1:
            return np.zeros_like(idx)
        period = 2 * n - 2
        m = np.mod(idx, period)
        return np.where(m >= n, period - m, m)
    if mode == "nearest":
        return np.clip(idx, 0, n - 1)
    if mode in ("wrap", "grid-wrap"):
        return np.mod(idx, n)
    if mode in ("constant", "grid-constant"):
        return np.where((idx >= 0) & (idx < n), idx, -1)
    raise ValueError(f"unknown boundary mode {mode!r}")  # pragma: no cover - checked before


def filter_table(n: int, size: int, mode: str) -> np.ndarray:
    """Source indices of a length-``n`` axis padded for a (dilated) kernel of extent ``size``.

    SciPy centres a kernel of size ``size`` at ``size // 2``.
    """
    before = size // 2
    after = size - 1 - before
    return boundary_index(np.arange(-before, n + after), n, mode)


def gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter``'s 1-D weights (radius ``int(truncate*sigma + 0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * x**2)
    return phi / phi.sum()


def resize_tables(n_in: int, n_out: int, order: int, mode: str, dtype):
    """``skimage.transform.resize`` sampling along one axis (SciPy ``zoom`` with ``grid_mode``).

    Output ``o`` reads input coordinate ``(o + 0.5) * n_in / n_out - 0.5``; order 1
    blends ``floor`` and ``floor + 1`` (mapped through SciPy ``mode``), order 0 takes
    ``floor(coord + 0.5)``.  Returns an index table (order 0) or ``(idx, w)`` (order 1).
    """
    o = np.arange(n_out, dtype=np.int64)
    if n_in == n_out:
        return o if order == 0 else (np.stack([o, o]), np.stack([np.ones(n_out), np.zeros(n_out)])
                                     .astype(dtype))
    src = (o + 0.5) * (n_in / n_out) - 0.5
    if order == 0:
        return np.minimum(np.floor(src + 0.5).astype(np.int64), n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    lam = src - i0
    idx = np.stack([boundary_index(i0, n_in, mode), boundary_index(i0 + 1, n_in, mode)])
    return idx, np.stack([1.0 - lam, lam]).astype(dtype)


# ============================================================================= the engine


def _real(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _check_mode(mode, allowed, name="mode"):
    if not isinstance(mode, str) or mode not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {mode!r}")
    return mode


class _Engine:
    """One call: the image's backend, its float dtype, and the steps on ``(B, C, H, W)`` planes.

    On the ``"reference"`` backend the steps are the oracle's (float64 NumPy);
    otherwise they run the backend's ``resample`` kernels and the public ops.
    """

    def __init__(self, image, backend, channel_axis, preserve_range, name="image"):
        kind = _dispatch.array_kind(image)
        self.name = _dispatch.select_backend(backend, kind, name, image)
        on_gpu = _dispatch.BACKENDS[self.name][1]
        self.kind = kind
        self.is_reference = self.name == "reference"
        if self.is_reference:
            self.module = None
            native = _host.as_native(image)
        else:
            self.module = _dispatch.get_backend(self.name)
            self.kernels = importlib.import_module(f"{self.module.__name__}.resample")
            native = self.module.as_native(image)
        self.device = None if not on_gpu else self.module.device_id(native)
        self.image = native
        self.image_shape = tuple(native.shape)
        self.ndim = len(self.image_shape)

        # dimensions and the channel axis
        if channel_axis is None:
            if self.ndim != 2:
                raise ValueError(
                    f"{name} must be 2-D (H, W) when channel_axis is None, got shape "
                    f"{self.image_shape}; pass channel_axis for a multichannel image"
                )
            self.cax = None
        else:
            cax = _args._as_int(channel_axis, "channel_axis") if not isinstance(
                channel_axis, (bool, np.bool_)) else None
            if cax is None:
                raise TypeError(f"channel_axis must be an int or None, got {channel_axis!r}")
            if self.ndim != 3:
                raise ValueError(
                    f"{name} must be 3-D (two spatial axes and channel_axis={channel_axis}), "
                    f"got shape {self.image_shape}"
                )
            if not -3 <= cax < 3:
                raise ValueError(f"channel_axis={channel_axis} is out of range for a 3-D {name}")
            self.cax = cax % 3
        spatial = [d for a, d in enumerate(self.image_shape) if a != self.cax]
        self.hw = (spatial[0], spatial[1])
        self.channels = 1 if self.cax is None else self.image_shape[self.cax]
        if min(self.hw) < 1:
            raise ValueError(f"{name} must not be empty, got shape {self.image_shape}")

        # scikit-image's dtype rules
        if not isinstance(preserve_range, (bool, np.bool_)):
            raise TypeError(f"preserve_range must be a bool, got {preserve_range!r}")
        dt = np.dtype(native.dtype)
        self.scale, self.clip_low = 1.0, None
        if dt.kind == "f":
            self.dtype = np.dtype(np.float32) if dt.itemsize <= 4 else np.dtype(np.float64)
            if dt.itemsize > 8:
                raise TypeError(f"{name} must have a float16/32/64, integer or bool dtype, "
                                f"got {dt}")
        elif dt.kind in "uib":
            self.dtype = np.dtype(np.float64)
            if not preserve_range and dt.kind != "b":
                self.scale = 1.0 / np.iinfo(dt).max
                self.clip_low = -1.0 if dt.kind == "i" else None
        else:
            raise TypeError(f"{name} must have a float, integer or bool dtype, got {dt}")
        self.work_dtype = np.dtype(np.float64) if self.is_reference else self.dtype

    # ------------------------------------------------------------------ plumbing

    def run(self, op, *arrays, **params):
        """A backend ``resample`` op on native arrays (made contiguous, on the image's device)."""
        with self.module.use_device(self.device):
            arrays = [None if a is None else self.module.ascontiguous(a) for a in arrays]
            return getattr(self.kernels, op)(*arrays, **params)

    def upload(self, host):
        """A host array (a table, a weight) on the image's device, in the backend's type."""
        return _dispatch.upload(self.name, self.module, self.device, np.ascontiguousarray(host))

    def native(self, obj, name):
        """Another array of the call (flow, boxes): same kind as the image, as a native array."""
        return _dispatch.native_like(self.module, self.device, obj, name, owner="the image")

    def host(self, a) -> np.ndarray:
        return np.asarray(a) if self.device is None else np.asarray(self.module.to_host(a))

    def to_planes(self, img=None, channel_axis="image", dtype=None):
        """The image (or another array) as contiguous ``(1, C, H, W)`` planes of the work dtype."""
        if img is None:
            img, scale, clip = self.image, self.scale, self.clip_low
        else:
            scale, clip = 1.0, None
        cax = self.cax if channel_axis == "image" else channel_axis
        dtype = self.work_dtype if dtype is None else dtype
        if self.is_reference:
            a = np.asarray(img)
            a = a[None] if cax is None else np.moveaxis(a, cax, 0)
            out = a.astype(np.float64) * scale
            if clip is not None:
                out = np.maximum(out, clip)
            return out[None]
        return self.run("to_planes", img, channel_axis=cax, dtype=dtype, scale=scale,
                        clip_low=clip)

    def float_image(self):
        """The image itself, converted by the dtype rules, in its own layout (a new array)."""
        if self.is_reference or self.cax is None:
            return self.finish(self.to_planes())
        # all three axes as one "plane": the conversion without moving the channel axis
        out = self.run("to_planes", self.image, channel_axis=0, dtype=self.dtype,
                       scale=self.scale, clip_low=self.clip_low)
        return self.wrap(out.reshape(self.image_shape))

    def finish(self, planes, batch=False, minus=None):
        """``(B, C, H, W)`` planes (minus ``minus``) -> the image layout, wrapped.

        ``(B, ...)`` with ``batch``, else the single image.
        """
        if self.is_reference:
            p = np.asarray(planes) if minus is None else np.asarray(planes) - minus
            img = p[:, 0] if self.cax is None else np.moveaxis(p, 1, 1 + self.cax)
            out = np.ascontiguousarray(img.astype(self.dtype))
        else:
            out = self.run("from_planes", planes, minus, channel_axis=self.cax, ndim=self.ndim)
            out = self.wrap(out)
        return out if batch else out[0]

    def wrap(self, out):
        kind = self.kind
        if kind == "numpy":
            return out
        if kind in ("cupy", "cai") and self.name != "cupy":
            import cupy

            return cupy.asarray(out)
        if kind == "numba" and self.name != "numba_cuda":
            from numba import cuda

            return cuda.as_cuda_array(out)
        return out

    # ------------------------------------------------------------------ steps on planes

    def subtract(self, a, b):
        return a - b if self.is_reference else self.run("subtract", a, b)

    def concat(self, arrays):
        if self.is_reference:
            return np.concatenate(arrays)
        return self.run("concat", *arrays)

    def sepfilter(self, planes, taps, mode, cval, dilation=1):
        """SciPy's ``correlate1d`` with ``taps`` (dilated) along H, then along W."""
        if self.is_reference:
            from . import reference_image

            along_h = reference_image.correlate1d(planes, taps, 2, mode, cval, dilation)
            return reference_image.correlate1d(along_h, taps, 3, mode, cval, dilation)
        size = dilation * (len(taps) - 1) + 1
        ty = filter_table(planes.shape[2], size, mode)
        tx = filter_table(planes.shape[3], size, mode)
        w = self.upload(np.asarray(taps, dtype=self.dtype))
        return self.run("sepfilter", planes, w, self.upload(ty), w, self.upload(tx),
                        dilation=(dilation, dilation), cval=cval)

    def smooth(self, planes, sigma, mode, cval):
        """``scipy.ndimage.gaussian_filter`` over H and W of each plane (SciPy ``mode``)."""
        if self.is_reference:
            from . import reference_image

            return reference_image.smooth(planes, sigma, mode, cval)
        return self.sepfilter(planes, gaussian_taps(sigma), mode, cval)

    def resize(self, planes, out_hw, order, sk_mode, cval):
        """``skimage.transform.resize(anti_aliasing=False)`` per plane (scikit-image ``mode``)."""
        if self.is_reference:
            from . import reference_image

            return reference_image.resize(planes, out_hw, order, sk_mode, cval)
        h, w = planes.shape[2], planes.shape[3]
        nd_mode = PYRAMID_MODES[sk_mode][1]
        if order == 0:
            iy = resize_tables(h, out_hw[0], 0, nd_mode, self.dtype)
            ix = resize_tables(w, out_hw[1], 0, nd_mode, self.dtype)
            return self.run("gather", planes, self.upload(iy), self.upload(ix), cval=cval)
        wdt = np.float64 if self.dtype == np.float64 else np.float32
        iy, wy = resize_tables(h, out_hw[0], 1, nd_mode, wdt)
        ix, wx = resize_tables(w, out_hw[1], 1, nd_mode, wdt)
        tables = [self.upload(t) for t in (iy, wy, ix, wx)]
        out = self.run("lerp", planes, *tables, cval=cval)
        if sk_mode == "constant":
            # scikit-image clips a resized image to the input's range (with clip=True, its
            # default): a cval outside that range is blended in at the edge, then clipped away
            lo, hi = self.run("minmax", planes)
            if lo <= hi and not lo <= cval <= hi:
                out = self.run("clip", out, lo=lo, hi=hi)
        return out


# ============================================================================= pyramids


def _pyramid_args(factor, fname, sigma, order, mode, cval):
    factor = _real(factor, fname)
    if not math.isfinite(factor) or factor <= 1:
        raise ValueError(f"{fname} must be greater than 1, got {factor!r}")
    if sigma is None:
        sigma = 2 * factor / 6.0
    sigma = _real(sigma, "sigma")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be finite and non-negative, got {sigma!r}")
    if isinstance(order, (bool, np.bool_)) or not isinstance(order, numbers.Integral):
        raise TypeError(f"order must be an int, got {order!r}")
    if order not in (0, 1):
        raise ValueError(
            f"order must be 0 (nearest) or 1 (linear) in fastconv, got {order!r}; "
            "use skimage.transform for spline orders 2-5"
        )
    _check_mode(mode, PYRAMID_MODES)
    return factor, sigma, int(order), mode, _real(cval, "cval")


def _max_layer(max_layer):
    if isinstance(max_layer, (bool, np.bool_)) or not isinstance(max_layer, numbers.Integral):
        raise TypeError(f"max_layer must be an int, got {max_layer!r}")
    if max_layer < -1:
        raise ValueError(f"max_layer must be -1 (all layers) or >= 0, got {max_layer!r}")
    return int(max_layer)


def _reduced(hw, factor):
    return (math.ceil(hw[0] / factor), math.ceil(hw[1] / factor))


def _reduce(eng, planes, factor, sigma, order, mode, cval):
    out_hw = _reduced(planes.shape[2:], factor)
    smooth_mode, resize_mode = PYRAMID_MODES[mode]
    if (not eng.is_reference and order == 1 and mode != "constant"
            and hasattr(eng.kernels, "smooth_lerp")):
        # one pass, no full-size intermediate (measured ~2x faster than the two steps on
        # the CPU); same arithmetic, same result.  ("constant" needs the smoothed image's
        # range for scikit-image's clipping, so it takes the two steps.)
        taps = eng.upload(np.asarray(gaussian_taps(sigma), dtype=eng.dtype))
        size = len(taps)
        ty = eng.upload(filter_table(planes.shape[2], size, smooth_mode))
        tx = eng.upload(filter_table(planes.shape[3], size, smooth_mode))
        wdt = np.float64 if eng.dtype == np.float64 else np.float32
        iy, wy = resize_tables(planes.shape[2], out_hw[0], 1, resize_mode, wdt)
        ix, wx = resize_tables(planes.shape[3], out_hw[1], 1, resize_mode, wdt)
        tables = [eng.upload(t) for t in (iy, wy, ix, wx)]
        return eng.run("smooth_lerp", planes, taps, ty, tx, *tables, cval=cval)
    smoothed = eng.smooth(planes, sigma, smooth_mode, cval)
    return eng.resize(smoothed, out_hw, order, mode, cval)


def pyramid_reduce(image, downscale=2, sigma=None, order=1, mode="reflect", cval=0,
                   preserve_range=False, *, channel_axis=None, backend=None):
    """Smooth and then downsample an image (``skimage.transform.pyramid_reduce``).

    Gaussian smoothing (``sigma`` default ``2 * downscale / 6``, truncated at
    4 sigma, SciPy's weights) followed by ``resize`` to
    ``ceil(H / downscale) x ceil(W / downscale)`` with linear (``order=1``) or
    nearest (``order=0``) interpolation -- scikit-image's result to rounding.

    Parameters
    ----------
    image : array, shape (H, W) or with a channel axis
        numpy, cupy or numba device array; any real dtype.
    downscale : float, default 2
        Greater than 1.
    sigma : float, optional
    order : {0, 1}, default 1
        Spline orders 2-5 of scikit-image are not implemented.
    mode : {"reflect", "constant", "wrap"}, default "reflect"
        scikit-image's names (its pyramids accept only these).
    cval : float, default 0
    preserve_range : bool, default False
    channel_axis : int, optional, keyword-only
    backend : {"cpu", "cupy", "numba_cuda", "reference"}, optional, keyword-only

    Returns
    -------
    out : array, float32 (float16/float32 input) or float64

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> img = np.arange(36, dtype=np.uint8).reshape(6, 6)
    >>> image.pyramid_reduce(img).shape
    (3, 3)
    """
    factor, sigma, order, mode, cval = _pyramid_args(downscale, "downscale", sigma, order,
                                                     mode, cval)
    eng = _Engine(image, backend, channel_axis, preserve_range)
    return eng.finish(_reduce(eng, eng.to_planes(), factor, sigma, order, mode, cval))


def pyramid_expand(image, upscale=2, sigma=None, order=1, mode="reflect", cval=0,
                   preserve_range=False, *, channel_axis=None, backend=None):
    """Upsample and then smooth an image (``skimage.transform.pyramid_expand``).

    ``resize`` to ``ceil(H * upscale) x ceil(W * upscale)`` (linear, the
    neighbours beyond the edge read through ``mode``: ``reflect`` mirrors
    without repeating the edge, as scikit-image's resize does), then Gaussian
    smoothing with ``sigma`` (default ``2 * upscale / 6``).

    Parameters are those of :func:`pyramid_reduce` with ``upscale`` (> 1).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> image.pyramid_expand(np.ones((3, 4, 3)), channel_axis=-1).shape
    (6, 8, 3)
    """
    factor, sigma, order, mode, cval = _pyramid_args(upscale, "upscale", sigma, order, mode,
                                                     cval)
    eng = _Engine(image, backend, channel_axis, preserve_range)
    planes = eng.to_planes()
    out_hw = (math.ceil(planes.shape[2] * factor), math.ceil(planes.shape[3] * factor))
    resized = eng.resize(planes, out_hw, order, mode, cval)
    return eng.finish(eng.smooth(resized, sigma, PYRAMID_MODES[mode][0], cval))


def pyramid_gaussian(image, max_layer=-1, downscale=2, sigma=None, order=1, mode="reflect",
                     cval=0, preserve_range=False, *, channel_axis=None, backend=None):
    """Yield the Gaussian pyramid of an image (``skimage.transform.pyramid_gaussian``).

    Layer 0 is the image (as float); each next layer is :func:`pyramid_reduce`
    of the previous one.  Stops after ``max_layer`` layers (``-1``: all) or when
    a reduction no longer changes the shape.  Arguments are checked at the
    call, not at the first ``next()``.

    Returns
    -------
    generator of arrays

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> [layer.shape for layer in image.pyramid_gaussian(np.zeros((5, 8)))]
    [(5, 8), (3, 4), (2, 2), (1, 1)]
    """
    factor, sigma, order, mode, cval = _pyramid_args(downscale, "downscale", sigma, order,
                                                     mode, cval)
    max_layer = _max_layer(max_layer)
    eng = _Engine(image, backend, channel_axis, preserve_range)
    return _gaussian_layers(eng, max_layer, factor, sigma, order, mode, cval)


def _gaussian_layers(eng, max_layer, factor, sigma, order, mode, cval):
    yield eng.float_image()
    planes = eng.to_planes()
    layer = 0
    while layer != max_layer:
        layer += 1
        reduced = _reduce(eng, planes, factor, sigma, order, mode, cval)
        if reduced.shape == planes.shape:
            break
        planes = reduced
        yield eng.finish(planes)


def pyramid_laplacian(image, max_layer=-1, downscale=2, sigma=None, order=1, mode="reflect",
                      cval=0, preserve_range=False, *, channel_axis=None, backend=None):
    """Yield the Laplacian pyramid of an image (``skimage.transform.pyramid_laplacian``).

    Layer 0 is ``image - smooth(image)``; then ``resized = resize(smoothed,
    ceil(shape / downscale))`` and the layer is ``resized - smooth(resized)``.
    ``max_layer=-1`` gives ``ceil(log_downscale(max(H, W)))`` further layers
    (scikit-image's count; the last ones may be 1 x 1).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> [layer.shape for layer in image.pyramid_laplacian(np.zeros((5, 8)))]
    [(5, 8), (3, 4), (2, 2), (1, 1)]
    """
    factor, sigma, order, mode, cval = _pyramid_args(downscale, "downscale", sigma, order,
                                                     mode, cval)
    max_layer = _max_layer(max_layer)
    eng = _Engine(image, backend, channel_axis, preserve_range)
    if max_layer == -1:
        max_layer = math.ceil(math.log(max(eng.hw), factor))
    return _laplacian_layers(eng, max_layer, factor, sigma, order, mode, cval)


def _laplacian_layers(eng, max_layer, factor, sigma, order, mode, cval):
    smooth_mode = PYRAMID_MODES[mode][0]
    planes = eng.to_planes()
    smoothed = eng.smooth(planes, sigma, smooth_mode, cval)
    yield eng.finish(planes, minus=smoothed)
    for _ in range(max_layer):
        resized = eng.resize(smoothed, _reduced(smoothed.shape[2:], factor), order, mode, cval)
        smoothed = eng.smooth(resized, sigma, smooth_mode, cval)
        yield eng.finish(resized, minus=smoothed)


# ============================================================================= filtering


def correlate(image, kernel, dilation=1, mode="reflect", cval=0.0, channel_axis=None,
              preserve_range=False, *, backend=None):
    """Dilated (atrous) 2-D correlation, ``scipy.ndimage.correlate`` with a zero-dilated kernel.

    ``out[y, x] = sum_{i, j} kernel[i, j] * image[y + i*dH - cH, x + j*dW - cW]``,
    where ``D = d*(k - 1) + 1`` is the dilated size and ``c = D // 2`` its
    centre (SciPy's ``origin=0``), the image extended beyond its edge by
    ``mode``.  Each channel is filtered on its own.  The work is one gather
    (boundary padding) plus a depthwise :func:`fastconv.conv2d` with
    ``dilation``: the cost does not grow with the dilation.

    Parameters
    ----------
    image : array, shape (H, W) or with a channel axis
    kernel : array-like, shape (kH, kW)
        On the host or on the image's device.
    dilation : int or (int, int), default 1
    mode : {"reflect", "constant", "nearest", "mirror", "wrap"}, default "reflect"
        SciPy's names (``"grid-mirror"``, ``"grid-constant"``, ``"grid-wrap"`` are aliases).
    cval : float, default 0.0
    channel_axis : int, optional
    preserve_range : bool, default False
        Integer images are converted with ``img_as_float`` unless True.
        (For float images the result equals SciPy's; SciPy would keep an
        integer image's dtype and round, fastconv returns floats.)
    backend : str, optional, keyword-only

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> img = np.zeros((7, 7)); img[3, 3] = 1.0
    >>> out = image.correlate(img, np.ones((3, 3)), dilation=2, mode="constant")
    >>> np.argwhere(out).tolist()
    [[1, 1], [1, 3], [1, 5], [3, 1], [3, 3], [3, 5], [5, 1], [5, 3], [5, 5]]
    """
    dil = _args.positive_pair(dilation, "dilation")
    _check_mode(mode, NDIMAGE_MODES)
    cval = _real(cval, "cval")
    eng = _Engine(image, backend, channel_axis, preserve_range)
    k = eng.host(eng.native(kernel, "kernel")) if _dispatch.array_kind(kernel) != "numpy" \
        else np.asarray(kernel)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"kernel must be a non-empty 2-D array (kH, kW), got shape {k.shape}")
    if k.dtype.kind not in "biuf":
        raise TypeError(f"kernel must hold real numbers, got dtype {k.dtype}")
    planes = eng.to_planes()
    if eng.is_reference:
        from . import reference_image

        return eng.finish(reference_image.correlate(planes, k, dil, mode, cval))
    (kh, kw), (h, w) = k.shape, eng.hw
    ty = filter_table(h, dil[0] * (kh - 1) + 1, mode)
    tx = filter_table(w, dil[1] * (kw - 1) + 1, mode)
    padded = eng.run("gather", planes, eng.upload(ty), eng.upload(tx), cval=cval)
    c = eng.channels
    weight = eng.upload(np.ascontiguousarray(
        np.broadcast_to(k.astype(eng.dtype), (c, 1, kh, kw))))
    from .conv import conv2d

    few_threads = getattr(eng.kernels, "few_threads", None)  # the CPU's small-work policy
    with few_threads(c * h * w * kh * kw) if few_threads else contextlib.nullcontext():
        out = conv2d(padded, weight, None, 1, 0, dil, c, backend=eng.name)
    return eng.finish(eng.module.as_native(out))


_B3 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def atrous_wavelet(image, levels, mode="reflect", cval=0.0, channel_axis=None,
                   preserve_range=False, *, backend=None):
    """The starlet transform: B3-spline *à trous* wavelet planes that sum back to the image.

    ``c_0`` is the image; ``c_j`` is ``c_{j-1}`` filtered along both axes with
    ``[1, 4, 6, 4, 1] / 16`` dilated by ``2**(j-1)`` (the *à trous* holes),
    boundary ``mode``; the detail plane is ``w_j = c_{j-1} - c_j``.

    Parameters
    ----------
    image : array, shape (H, W) or with a channel axis
    levels : int
        Number of detail planes (>= 1).
    mode : SciPy boundary mode, default "reflect"
    cval : float, default 0.0
    channel_axis : int, optional
    preserve_range : bool, default False
    backend : str, optional, keyword-only

    Returns
    -------
    planes : array, shape (levels + 1, *image.shape)
        ``planes[:levels]`` are the details ``w_1 .. w_levels`` (fine to
        coarse), ``planes[levels]`` the smooth residual ``c_levels``;
        ``planes.sum(axis=0)`` is the (float) image up to rounding (the
        differences telescope: ``sum_j (c_{j-1} - c_j) + c_levels = c_0``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> img = np.random.default_rng(0).random((32, 32))
    >>> w = image.atrous_wavelet(img, 3)
    >>> w.shape, bool(np.allclose(w.sum(axis=0), img, rtol=0, atol=1e-12))
    ((4, 32, 32), True)
    """
    if isinstance(levels, (bool, np.bool_)) or not isinstance(levels, numbers.Integral):
        raise TypeError(f"levels must be an int, got {levels!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels!r}")
    _check_mode(mode, NDIMAGE_MODES)
    cval = _real(cval, "cval")
    eng = _Engine(image, backend, channel_axis, preserve_range)
    planes = eng.to_planes()
    if eng.is_reference:
        from . import reference_image

        out = reference_image.starlet(planes, int(levels), mode, cval)[:, 0]
        return eng.finish(out, batch=True)
    parts = []
    c = planes
    for j in range(int(levels)):
        d = 2**j
        nxt = eng.sepfilter(c, _B3, mode, cval, d)
        parts.append(eng.subtract(c, nxt))
        c = nxt
    parts.append(c)
    return eng.finish(eng.concat(parts), batch=True)


# ============================================================================= warping, crops


def warp_by_flow(image, flow, preserve_range=False, channel_axis=None, *, backend=None):
    """Bilinear warp by a displacement field: ``out[y, x] = image[y + dy, x + dx]``.

    Runs :func:`fastconv.deform_conv2d` with a 1 x 1 identity kernel, one
    offset group, the flow as its offsets.

    Border rule (deform_conv2d's zero padding): a sample point with
    ``y + dy <= -1``, ``>= H``, ``x + dx <= -1`` or ``>= W`` is 0; otherwise
    each of its four neighbours contributes only if it lies inside the image
    (the value fades to 0 across the one-pixel band outside the edge).

    Relation to scikit-image: with ``coords = (rows + dy, cols + dx)``,
    ``skimage.transform.warp(image, coords, order=1)`` -- its default
    ``mode="constant", cval=0`` reads 0 for neighbours outside the image --
    gives the same result everywhere (to rounding).  With any other ``mode``
    or ``cval`` the two agree wherever the sample stays inside the image,
    ``0 <= y + dy <= H - 1`` and ``0 <= x + dx <= W - 1``.

    Parameters
    ----------
    image : array, shape (H, W) or with a channel axis
    flow : array, shape (2, H, W)
        ``flow[0]`` = dy (rows), ``flow[1]`` = dx (columns); float, same kind
        and device as ``image``.
    preserve_range : bool, default False
    channel_axis : int, optional
    backend : str, optional, keyword-only

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> img = np.arange(16.0).reshape(4, 4)
    >>> flow = np.zeros((2, 4, 4)); flow[1] = 0.5        # half a pixel to the right
    >>> image.warp_by_flow(img, flow)[0]
    array([0.5, 1.5, 2.5, 1.5])
    """
    eng = _Engine(image, backend, channel_axis, preserve_range)
    fl = eng.native(flow, "flow")
    if tuple(fl.shape) != (2,) + eng.hw:
        raise ValueError(f"flow must have shape {(2,) + eng.hw} (dy, dx per pixel), "
                         f"got {tuple(fl.shape)}")
    if np.dtype(fl.dtype).kind != "f":
        raise TypeError(f"flow must have a float dtype, got {np.dtype(fl.dtype)}")
    planes = eng.to_planes()
    if eng.is_reference:
        from . import reference_image

        return eng.finish(reference_image.warp(planes, np.asarray(fl, dtype=np.float64)))
    offset = eng.to_planes(fl, channel_axis=0)
    weight = eng.upload(np.ones((eng.channels, 1, 1, 1), dtype=eng.dtype))
    from .deform import deform_conv2d

    out = deform_conv2d(planes, offset, weight, backend=eng.name)
    return eng.finish(eng.module.as_native(out))


def crop_regions(image, boxes, output_shape, sampling_ratio=1, preserve_range=False,
                 channel_axis=None, *, backend=None):
    """Fixed-size patches of many regions at once, through :func:`fastconv.roi_align`.

    Parameters
    ----------
    image : array, shape (H, W) or with a channel axis
    boxes : array-like, shape (K, 4)
        Rows ``(min_row, min_col, max_row, max_col)`` with exclusive maxima --
        scikit-image's ``regionprops(...).bbox`` -- real numbers, finite,
        ``min < max``; on the host or on the image's device.
    output_shape : int or (int, int)
        ``(rows, cols)`` of every patch.
    sampling_ratio : int, default 1
        Samples per output pixel and axis; ``-1`` uses ``ceil(box / output)``
        (an average over each output pixel's footprint: anti-aliased shrinking).
    preserve_range : bool, default False
    channel_axis : int, optional
    backend : str, optional, keyword-only

    Returns
    -------
    patches : array, shape (K, rows, cols) or with the channel axis (``channel_axis + 1``)

    Notes
    -----
    RoIAlign with ``aligned=True`` on box ``(min_col, min_row, max_col, max_row)``:
    patch pixel ``p`` (per axis) samples image coordinate
    ``min - 0.5 + (p + 0.5) * size / n_out`` (``sampling_ratio=1``) -- exactly
    where ``skimage.transform.resize(image[r0:r1, c0:c1], output_shape,
    order=1, anti_aliasing=False)`` samples the crop.  So the patch **equals
    crop + resize** whenever every sample's two neighbours lie in the crop, in
    particular whenever ``output_shape <= crop shape`` (shrinking).  When
    enlarging, the outermost half output pixel of the patch differs: resize
    extends the *crop* by its ``mode`` (e.g. ``mode="edge"`` repeats the crop's
    edge) while RoIAlign reads the neighbouring *image* pixels outside the
    crop -- so on a crop that touches the image border both replicate the
    edge and agree with ``mode="edge"`` there.

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv import image
    >>> img = np.arange(64.0).reshape(8, 8)
    >>> image.crop_regions(img, [[0, 0, 4, 4], [2, 4, 6, 8]], (2, 2))[1]
    array([[24.5, 26.5],
           [40.5, 42.5]])
    """
    out_hw = _args.positive_pair(output_shape, "output_shape")
    sr = _args.sampling_ratio_arg(sampling_ratio)
    if sr == 0 or sr < -1:
        raise ValueError(f"sampling_ratio must be positive or -1, got {sampling_ratio!r}")
    eng = _Engine(image, backend, channel_axis, preserve_range)
    host_boxes = np.asarray(
        eng.host(eng.native(boxes, "boxes")) if _dispatch.array_kind(boxes) != "numpy"
        else boxes)
    if host_boxes.dtype.kind not in "biuf":
        raise TypeError(f"boxes must hold real numbers, got dtype {host_boxes.dtype}")
    b = np.asarray(host_boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        if not (b.ndim == 1 and b.size == 0):
            raise ValueError(
                "boxes must have shape (K, 4) with rows (min_row, min_col, max_row, max_col), "
                f"got {tuple(b.shape)}"
            )
        b = b.reshape(0, 4)
    if not np.isfinite(b).all():
        row = int(np.flatnonzero(~np.isfinite(b).all(axis=1))[0])
        raise ValueError(f"boxes must be finite, row {row} is {b[row].tolist()}")
    bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"boxes need min_row < max_row and min_col < max_col, row {row} is {b[row].tolist()}"
        )
    planes = eng.to_planes()
    if eng.is_reference:
        from . import reference_image

        return eng.finish(reference_image.crop_regions(planes, b, out_hw, sr), batch=True)
    rois = np.zeros((len(b), 5), dtype=eng.dtype)
    rois[:, 1], rois[:, 2], rois[:, 3], rois[:, 4] = b[:, 1], b[:, 0], b[:, 3], b[:, 2]
    from .roi import roi_align

    out = roi_align(planes, eng.upload(rois), out_hw, 1.0, sr, True, check_boxes=False,
                    backend=eng.name)
    return eng.finish(eng.module.as_native(out), batch=True)
