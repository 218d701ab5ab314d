"""Resampling kernels of the ``"cupy"`` backend (``kernels/resample.cu``) and the image glue.

The ops and table conventions are those of ``fastconv/backends/cpu/resample.py``:
``gather``, ``lerp`` and ``sepfilter`` (two launches: H then W) run the CUDA C
templates of ``kernels/resample.cu``; the array glue of :mod:`fastconv.image`
(``to_planes``, ``from_planes``, ``subtract``, ``concat``, ``minmax``, ``clip``)
is plain CuPy.

``resample.cu`` is registered with ``_module`` like the ops' files: one
``cupy.RawModule`` per (device, dtype) with the name expressions of
:func:`name_expressions` (the list ``tests/test_resample_nvrtc.py`` compiles with
NVRTC), each kernel memoised there.  CuPy is imported on the first launch only.
"""

from __future__ import annotations

import numpy as np

from . import _module
from ._module import CTYPES, expr

FILE = "resample.cu"
KERNELS = _module.RESAMPLE_KERNELS
BLOCK = 256

_I32 = np.int32

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


def name_expressions(ctype: str) -> tuple[str, ...]:
    """Every instantiation of ``resample.cu`` for storage type ``ctype``."""
    return _module.name_expressions(FILE, ctype)


def all_name_expressions() -> tuple[str, ...]:
    return _module.all_name_expressions((FILE,))[FILE]


def _acc(dtype, value):
    """A scalar in the kernels' accumulator type (double for float64, else float)."""
    return np.float64(value) if np.dtype(dtype) == np.float64 else np.float32(value)


def _launch(kernel: str, dtype, total: int, args) -> None:
    ctype = CTYPES[np.dtype(dtype)]
    grid = max(1, min(-(-total // BLOCK), _module.max_blocks()))
    _module.kernel(expr(kernel, ctype))((grid,), (BLOCK,), args)


# ----------------------------------------------------------------------- plans (for tests)


def plan_gather(x, iy, ix, out, cval):
    n, c, h, w = x.shape
    args = (x, iy, ix, out, _I32(n * c), _I32(h), _I32(w), _I32(out.shape[2]),
            _I32(out.shape[3]), _acc(x.dtype, cval))
    return [("resample_gather", x.dtype, n * c * out.shape[2] * out.shape[3], args)]


def plan_lerp(x, iy, wy, ix, wx, out, cval):
    n, c, h, w = x.shape
    args = (x, iy, wy, ix, wx, out, _I32(n * c), _I32(h), _I32(w), _I32(out.shape[2]),
            _I32(out.shape[3]), _acc(x.dtype, cval))
    return [("resample_lerp", x.dtype, n * c * out.shape[2] * out.shape[3], args)]


def plan_sepfilter(x, wy, ty, wx, tx, tmp, out, dilation, cval):
    n, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    cv = _acc(x.dtype, cval)
    first = (x, wy, ty, tmp, _I32(n * c), _I32(h), _I32(w), _I32(ho), _I32(wy.shape[0]),
             _I32(dilation[0]), cv)
    second = (tmp, wx, tx, out, _I32(n * c), _I32(ho), _I32(w), _I32(wo), _I32(wx.shape[0]),
              _I32(dilation[1]), cv)
    return [("resample_filter_h", x.dtype, n * c * ho * w, first),
            ("resample_filter_w", x.dtype, n * c * ho * wo, second)]


def _run(plans) -> None:
    for kernel, dtype, total, args in plans:
        if total:
            _launch(kernel, dtype, total, args)


# ----------------------------------------------------------------------- ops


def gather(x, iy, ix, *, cval):
    """``out[n, c, y, x] = x[n, c, iy[y], ix[x]]`` (``cval`` where an index is -1)."""
    cp = _module.cupy()
    out = cp.empty((x.shape[0], x.shape[1], iy.shape[0], ix.shape[0]), dtype=x.dtype)
    _run(plan_gather(x, iy, ix, out, cval))
    return out


def lerp(x, iy, wy, ix, wx, *, cval):
    """Separable bilinear blend of the four table corners."""
    cp = _module.cupy()
    out = cp.empty((x.shape[0], x.shape[1], iy.shape[1], ix.shape[1]), dtype=x.dtype)
    _run(plan_lerp(x, iy, wy, ix, wx, out, cval))
    return out


def sepfilter(x, wy, ty, wx, tx, *, dilation, cval):
    """Correlation along H (``wy`` through ``ty``), then along W (``wx`` through ``tx``)."""
    cp = _module.cupy()
    n, c, _, w = x.shape
    ho = ty.shape[0] - dilation[0] * (wy.shape[0] - 1)
    wo = tx.shape[0] - dilation[1] * (wx.shape[0] - 1)
    tmp = cp.empty((n, c, ho, w), dtype=x.dtype)
    out = cp.empty((n, c, ho, wo), dtype=x.dtype)
    _run(plan_sepfilter(x, wy, ty, wx, tx, tmp, out, dilation, cval))
    return out


def to_planes(img, *, channel_axis, dtype, scale, clip_low):
    """An (H, W) image or one with a channel axis -> float ``(1, C, H, W)``, ``img * scale``."""
    cp = _module.cupy()
    a = img[None] if channel_axis is None else cp.moveaxis(img, channel_axis, 0)
    out = a.astype(dtype, copy=False)  # a view when nothing changes: no step writes its input
    if scale != 1.0:
        out = out * np.dtype(dtype).type(scale)
    if clip_low is not None:
        out = cp.maximum(out, np.dtype(dtype).type(clip_low))
    return cp.ascontiguousarray(out)[None]


def from_planes(planes, minus=None, *, channel_axis, ndim):
    """``(B, C, H, W)`` (minus ``minus``) -> ``(B, H, W)``, or with the channel axis put back."""
    cp = _module.cupy()
    if minus is not None:
        planes = planes - minus
    if channel_axis is None:
        return planes[:, 0]
    return cp.ascontiguousarray(cp.moveaxis(planes, 1, 1 + channel_axis % ndim))


def minmax(x):
    """``(nanmin, nanmax)`` of ``x`` as Python floats (one small device-to-host copy)."""
    cp = _module.cupy()
    if x.size == 0 or bool(cp.isnan(x).all()):
        return float("nan"), float("nan")
    return float(cp.nanmin(x)), float(cp.nanmax(x))


def clip(x, *, lo, hi):
    return _module.cupy().clip(x, x.dtype.type(lo), x.dtype.type(hi))


def subtract(a, b):
    return a - b


def concat(*arrays):
    return _module.cupy().concatenate(arrays)
