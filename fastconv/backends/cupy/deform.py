"""``deform_conv2d`` on CuPy arrays (kernels in ``kernels/deform.cu`` and ``kernels/conv.cu``).

Two stages per chunk of images, both on CuPy's current stream:

1. ``deform_im2col`` samples the input at the deformed tap positions into a
   column buffer ``col`` of shape ``(n_chunk, C_in*kH*kW, H_out, W_out)``
   (bilinear weights computed once per sample point and offset group, reused
   for all channels of the group; DCNv2 mask applied);
2. ``col`` is convolved as a 1x1 ``conv2d`` (implicit GEMM, or the direct
   kernel for few channels per group) with the weight viewed as
   ``(C_out, C_in/groups*kH*kW, 1, 1)``, straight into the output rows.

The batch is split so that ``col`` holds at most ``COL_BUDGET_BYTES`` (one image
at least), which bounds the scratch memory for large inputs.

With :data:`DEFORM_FUSED`, ``deform_conv2d_gemm`` does both stages in one kernel: the
implicit GEMM samples its input columns as it loads them, from a per-tile table of
bilinear set-ups in shared memory, so there is no column buffer (see ``deform.cu``).
"""

from __future__ import annotations

import functools

import numpy as np

from . import _module, autotune, conv
from ._module import CTYPES, expr
from .conv import BLOCK, _grid, gemm_launches, gemm_tiles, plan_conv2d, split_k

#: largest column buffer allocated per call (at least one image's worth is always used)
COL_BUDGET_BYTES = 256 * 1024 * 1024
#: deform_conv2d through the one fused kernel deform_conv2d_gemm (bilinear sampling inside
#: the implicit GEMM's loads, no column buffer) where it applies (:func:`fused_config`),
#: instead of deform_im2col + conv2d.  Off by default until a GPU run of
#: ``bench/ab_cupy_variants.py`` shows that it pays (on the H100 the two-stage form ran
#: deform_dcnv2 at 1.38x torchvision; the target is 0.5x).  Split-K follows conv.SPLIT_K.
DEFORM_FUSED = False
_I32 = np.int32


def chunk_images(n: int, per_image_bytes: int) -> int:
    """Images per chunk so that the column buffer stays within ``COL_BUDGET_BYTES``."""
    return max(1, min(n, COL_BUDGET_BYTES // max(per_image_bytes, 1)))


def plan_deform_conv2d(x, offset, weight, bias, mask, out, col, stride, padding, dilation,
                       groups, offset_groups, max_blocks, empty=None, arm=None):
    """Launches for ``out = deform_conv2d(...)`` using the scratch buffer ``col``.

    ``col`` has shape ``(nb, C_in*kH*kW, H_out, W_out)``; the batch is processed
    ``nb`` images at a time.  ``empty`` allocates the split-K workspace of the GEMM
    and ``arm`` overrides the GEMM's settings (see :func:`.conv.plan_conv2d`).
    """
    N = x.shape[0]
    C_out, Cg, kH, kW = weight.shape
    nb = col.shape[0]
    w_cols = weight.reshape(C_out, Cg * kH * kW, 1, 1)
    launches = []
    for n0, m, name, grid, scalars in _im2col_chunks(
            x.shape, weight.shape, out.shape, nb, stride, padding, dilation, offset_groups,
            mask is not None, x.dtype.char, max_blocks):
        args = (x, offset, offset if mask is None else mask, col) + scalars
        launches.append((name, grid, BLOCK, 0, args))
        cols = col if m == nb else col[:m]
        outs = out if (n0 == 0 and m == N) else out[n0:n0 + m]
        launches += plan_conv2d(cols, w_cols, bias, outs, (1, 1), (0, 0), (1, 1), groups,
                                max_blocks, empty, arm)
    return launches


@functools.lru_cache(maxsize=1024)
def _im2col_chunks(xshape, wshape, oshape, nb, stride, padding, dilation, offset_groups,
                   has_mask, dchar, max_blocks):
    """``[(n0, images, kernel name, grid, scalar args)]``: the deform_im2col launch of each
    chunk of ``nb`` images, memoised on the shapes and parameters."""
    N, C_in, H, W = xshape
    kH, kW = wshape[2], wshape[3]
    Ho, Wo = oshape[2], oshape[3]
    name = expr("deform_im2col", CTYPES[np.dtype(dchar)])
    chunks = []
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        scalars = tuple(_I32(v) for v in (
            n0, m, C_in, H, W, Ho, Wo, kH, kW, *stride, *padding, *dilation, offset_groups,
            has_mask))
        total = m * offset_groups * kH * kW * Ho * Wo
        chunks.append((n0, m, name, _grid(-(-total // BLOCK), max_blocks), scalars))
    return tuple(chunks)


def offset_group_span(c_in: int, groups: int, offset_groups: int) -> int:
    """The most offset groups that the input channels of one conv group fall in."""
    cg, cpo = c_in // groups, c_in // offset_groups
    if cg == 0:
        return 1  # no input channels: nothing to sample (fused_config declines)
    return max((g * cg + cg - 1) // cpo - (g * cg) // cpo + 1 for g in range(groups))


@functools.lru_cache(maxsize=1024)
def fused_config(xshape, wshape, oshape, stride, padding, dilation, groups, offset_groups,
                 has_mask, has_bias, dchar, max_blocks, split=1, vec=False):
    """``(kernel name, grid, shared memory bytes, scalar args, splits)`` of one
    deform_conv2d_gemm launch, or None where the fused kernel does not apply.

    It applies where conv2d would take the implicit GEMM (``C_out/groups >=
    conv.GEMM_MIN_KG``), there are input channels, the sampling table and the GEMM tiles fit in
    ``conv.SMEM_BUDGET`` of shared memory, and ``(H+1)*(W+1) < 2**31`` (the table's
    corner offsets are 32-bit).  ``split`` is :data:`conv.SPLIT_K`, ``vec``
    :data:`conv.GEMM_VEC` (the vector register tiles, 64 rows).
    """
    N, C_in, H, W = xshape
    C_out, Cg, kH, kW = wshape
    Ho, Wo = oshape[2], oshape[3]
    dtype = np.dtype(dchar)
    acc = conv._acc_size(dtype)
    Kg = C_out // groups
    khw = kH * kW
    span = offset_group_span(C_in, groups, offset_groups)
    gemm_smem = (16 * (64 + 4) + 16 * 128) * acc  # As and Bs of gemm.cuh's tiles
    table = span * khw * 128 * (4 * acc + 4 + 1)
    if (Kg < conv.GEMM_MIN_KG or Cg == 0 or gemm_smem + table > conv.SMEM_BUDGET
            or (H + 1) * (W + 1) >= 2**31):
        return None  # (no input channels: the two-stage path writes the bias alone)
    tiles = gemm_tiles(N * Ho * Wo, Kg, groups)
    splits, r_slice = split_k(tiles, Cg * khw, max_blocks // 64, split)
    vec = bool(vec)  # 64-row tiles either way (the table leaves no room for 128)
    (sH, sW), (pH, pW), (dH, dW) = stride, padding, dilation
    scalars = tuple(_I32(v) for v in (
        N, C_in, H, W, C_out, Ho, Wo, kH, kW, sH, sW, pH, pW, dH, dW, groups, offset_groups,
        span, has_mask, has_bias, splits, r_slice))
    name = expr("deform_conv2d_gemm", CTYPES[dtype], kH if kH == kW else 0, vec)
    if name not in _module.registered():
        name = expr("deform_conv2d_gemm", CTYPES[dtype], 0, vec)
    return name, _grid(tiles * splits, max_blocks), table, scalars, splits


def plan_deform_conv2d_fused(x, offset, weight, bias, mask, out, config, max_blocks,
                             empty=None):
    """The launches of :func:`fused_config`'s ``config`` (split-K adds ``conv_sum_splits``)."""
    name, grid, smem, scalars, splits = config
    args = (x, offset, offset if mask is None else mask, weight,
            weight if bias is None else bias, out) + scalars
    return gemm_launches((name, grid, BLOCK, smem, args), splits, bias, out, max_blocks, empty)


def deform_conv2d(x, offset, weight, bias, mask, *, stride, padding, dilation, groups,
                  offset_groups, out_hw):
    cp = _module.cupy()
    out = cp.empty((x.shape[0], weight.shape[0], out_hw[0], out_hw[1]), dtype=x.dtype)
    if out.size == 0:
        return out
    max_blocks = _module.max_blocks()
    rows = x.shape[1] * weight.shape[2] * weight.shape[3]  # C_in * kH * kW
    nb = chunk_images(x.shape[0], rows * out_hw[0] * out_hw[1] * x.dtype.itemsize)

    def fused(arm):  # the fused kernel's configuration, None for the two-stage path
        a = autotune.NO_ARM if arm is None else arm
        if not a.get("DEFORM_FUSED", DEFORM_FUSED):
            return None
        return fused_config(x.shape, weight.shape, out.shape, stride, padding, dilation,
                            groups, offset_groups, mask is not None, bias is not None,
                            x.dtype.char, max_blocks, a.get("SPLIT_K", conv.SPLIT_K),
                            a.get("GEMM_VEC", conv.GEMM_VEC))

    def launch(arm):
        config = fused(arm)
        if config is not None:
            _module.run(plan_deform_conv2d_fused(x, offset, weight, bias, mask, out, config,
                                                 max_blocks, cp.empty))
            return
        col = cp.empty((nb, rows, out_hw[0], out_hw[1]), dtype=x.dtype)
        _module.run(plan_deform_conv2d(x, offset, weight, bias, mask, out, col, stride, padding,
                                       dilation, groups, offset_groups, max_blocks, cp.empty,
                                       arm))

    def signature(arm):
        config = fused(arm)
        if config is not None:
            return config
        # the two-stage path: only its 1x1 GEMM depends on the arm (per chunk size)
        chunks = sorted({nb, x.shape[0] % nb or nb})
        return tuple(conv._conv2d_config(
            (m, rows, *out_hw), (weight.shape[0], rows // groups, 1, 1), bias is not None,
            (m, weight.shape[0], *out_hw), (1, 1), (0, 0), (1, 1), groups, x.dtype.char,
            max_blocks, *conv.conv2d_settings(arm, True)) for m in chunks)

    if autotune.enabled():
        autotune.run("deform_conv2d", (x.shape, weight.shape, bias is not None,
                                       mask is not None, stride, padding, dilation, groups,
                                       offset_groups, x.dtype.char), launch, signature)
    else:
        launch(None)
    return out
