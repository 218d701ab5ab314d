"""``roi_align`` and ``roi_pool`` on CuPy arrays (kernels in ``kernels/roi.cu``).

One thread per (box, chunk of CB channels, output bin); the box geometry and the
bilinear taps (roi_align) or bin limits (roi_pool) are computed once per thread
and reused for its CB channels.  ``rois`` is ``(K, 5)`` in the input's dtype,
already checked by the public wrapper.

Two settings, both measured against torchvision by ``bench/ab_cupy_variants.py``
before a default changes: :data:`ROI_CB` (channels per thread) and
:data:`ROI_BOX_GRID` (boxes on grid y with 32-bit index arithmetic, instead of one
grid-stride loop over every output split by 64-bit divisions).
"""

from __future__ import annotations

import functools

import numpy as np

from .. import _tuning
from . import _module, autotune
from ._module import CTYPES, expr
from .conv import BLOCK, _grid

_I32 = np.int32

#: channels per thread: None picks 8, 4 or 1 by the channel count; 1, 4 or 8 forces it
ROI_CB: int | None = None
#: boxes on grid y (``roi.cu``'s BOX_GRID).  Off until a GPU run of
#: ``bench/ab_cupy_variants.py`` shows that it pays (the H100 run of 2026-11-22 timed the
#: grid-stride form only, and with the box check's sync inside the timed window)
ROI_BOX_GRID = False
#: grid y limit of CUDA
_MAX_GRID_Y = 65535


def _cb(c: int, forced: int | None = None) -> int:
    if forced is not None:
        return forced
    return 8 if c >= 8 else 4 if c >= 4 else 1


def _scale(dtype, spatial_scale):
    return np.float64(spatial_scale) if dtype == np.float64 else np.float32(spatial_scale)


def _roi_settings(arm):
    """``(ROI_CB, ROI_BOX_GRID)``: the module's, or where ``arm`` names them, the arm's."""
    if arm is None:
        return ROI_CB, ROI_BOX_GRID
    return arm.get("ROI_CB", ROI_CB), arm.get("ROI_BOX_GRID", ROI_BOX_GRID)


def plan_roi_align(x, rois, out, spatial_scale, sampling_ratio, aligned, max_blocks, arm=None):
    """The launch of ``out = roi_align(x, rois)``; ``arm`` overrides the module settings it
    names (see :mod:`.autotune`)."""
    name, grid, scalars = roi_align_config(x, rois, out, spatial_scale, sampling_ratio, aligned,
                                           max_blocks, arm)
    return [(name, grid, BLOCK, 0, (x, rois, out) + scalars)]


def plan_roi_pool(x, rois, out, spatial_scale, max_blocks, arm=None):
    """The launch of ``out = roi_pool(x, rois)``; ``arm`` as :func:`plan_roi_align`'s."""
    name, grid, scalars = roi_pool_config(x, rois, out, spatial_scale, max_blocks, arm)
    return [(name, grid, BLOCK, 0, (x, rois, out) + scalars)]


def roi_align_config(x, rois, out, spatial_scale, sampling_ratio, aligned, max_blocks,
                     arm=None):
    """``(kernel name, grid, scalar args)`` of :func:`plan_roi_align`'s launch (autotuning
    compares the arms' configurations to time each distinct plan once)."""
    cb, box_grid = _roi_settings(arm)
    return _roi_config("roi_align", x.shape, out.shape, x.dtype.char, max_blocks, cb, box_grid,
                       spatial_scale, int(sampling_ratio), bool(aligned))


def roi_pool_config(x, rois, out, spatial_scale, max_blocks, arm=None):
    """``(kernel name, grid, scalar args)`` of :func:`plan_roi_pool`'s launch."""
    cb, box_grid = _roi_settings(arm)
    return _roi_config("roi_pool", x.shape, out.shape, x.dtype.char, max_blocks, cb, box_grid,
                       spatial_scale)


@functools.lru_cache(maxsize=4096)
def _roi_config(kernel, xshape, oshape, dchar, max_blocks, cb, box_grid, spatial_scale, *extra):
    """``(kernel name, grid, scalar args)``, memoised on shapes and parameters.

    ``cb`` and ``box_grid`` are :data:`ROI_CB` and :data:`ROI_BOX_GRID`.
    """
    N, C, H, W = xshape
    K, _, PH, PW = oshape
    dtype = np.dtype(dchar)
    cb = _cb(C, cb)
    scalars = (_I32(K), _I32(N), _I32(C), _I32(H), _I32(W), _I32(PH), _I32(PW),
               _scale(dtype, spatial_scale)) + tuple(_I32(v) for v in extra)
    per_box = -(-C // cb) * PH * PW
    box_grid = bool(box_grid) and per_box < 2**31  # the kernel's 32-bit index inside a box
    name = expr(kernel, CTYPES[dtype], cb, box_grid)
    if box_grid:
        # x: the blocks of one box's items (all of them: no grid-stride loop in x);
        # y: boxes, striding when there are more than the cap
        grid = (-(-per_box // BLOCK), max(1, min(K, _MAX_GRID_Y, max_blocks)))
        return name, grid, scalars
    return name, _grid(-(-K * per_box // BLOCK), max_blocks), scalars


def roi_align(x, rois, *, output_size, spatial_scale, sampling_ratio, aligned):
    cp = _module.cupy()
    out = cp.empty((rois.shape[0], x.shape[1], output_size[0], output_size[1]), dtype=x.dtype)
    if out.size:
        args = (x, rois, out, spatial_scale, sampling_ratio, aligned, _module.max_blocks())
        if autotune.enabled():
            autotune.run("roi_align", (x.shape, _tuning.box_bucket(rois.shape[0]), output_size,
                                       sampling_ratio, bool(aligned), x.dtype.char),
                         lambda arm: _module.run(plan_roi_align(*args, arm)),
                         lambda arm: roi_align_config(*args, arm))
        else:
            _module.run(plan_roi_align(*args))
    return out


def roi_pool(x, rois, *, output_size, spatial_scale):
    cp = _module.cupy()
    out = cp.empty((rois.shape[0], x.shape[1], output_size[0], output_size[1]), dtype=x.dtype)
    if out.size:
        args = (x, rois, out, spatial_scale, _module.max_blocks())
        if autotune.enabled():
            autotune.run("roi_pool", (x.shape, _tuning.box_bucket(rois.shape[0]), output_size,
                                      x.dtype.char),
                         lambda arm: _module.run(plan_roi_pool(*args, arm)),
                         lambda arm: roi_pool_config(*args, arm))
        else:
            _module.run(plan_roi_pool(*args))
    return out


#: threads of the one block of roi_count_bad_boxes
CHECK_BLOCK = 256


def plan_count_bad_boxes(rois, batch, bad):
    """The launch that writes to ``bad[0]`` how many rows of ``rois`` fail the box check."""
    name = expr("roi_count_bad_boxes", CTYPES[np.dtype(rois.dtype)])
    return [(name, 1, CHECK_BLOCK, 0, (rois, _I32(rois.shape[0]), _I32(batch), bad))]


def count_bad_boxes(rois, batch: int) -> int:
    """How many rows of the ``(K, 5)`` float boxes ``rois`` have a non-finite coordinate
    or a batch index that is not an integer in ``[0, batch)``.

    One kernel and a 4-byte copy back (a sync), instead of copying the boxes to the
    host; the public wrapper copies them only when it must word an error.
    """
    bad = _module.cupy().empty((1,), np.int32)
    _module.run(plan_count_bad_boxes(rois, batch, bad))
    return int(bad[0])

