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
"""

from __future__ import annotations

import numpy as np

from . import _module
from ._module import CTYPES, expr
from .conv import BLOCK, _grid, plan_conv2d

#: largest column buffer allocated per call (at least one image's worth is always used)
COL_BUDGET_BYTES = 256 * 1024 * 1024
_I32 = np.int32


def chunk_images(n: int, per_image_bytes: int) -> int:
    """Images per chunk so that the column buffer stays within ``COL_BUDGET_BYTES``."""
    return max(1, min(n, COL_BUDGET_BYTES // max(per_image_bytes, 1)))


def plan_deform_conv2d(x, offset, weight, bias, mask, out, col, stride, padding, dilation,
                       groups, offset_groups, max_blocks, empty=None):
    """Launches for ``out = deform_conv2d(...)`` using the scratch buffer ``col``.

    ``col`` has shape ``(nb, C_in*kH*kW, H_out, W_out)``; the batch is processed
    ``nb`` images at a time.  ``empty`` allocates the split-K workspace of the GEMM
    (see :func:`.conv.plan_conv2d`).
    """
    N, C_in, H, W = x.shape
    C_out, Cg, kH, kW = weight.shape
    Ho, Wo = out.shape[2], out.shape[3]
    nb = col.shape[0]
    ctype = CTYPES[x.dtype]
    sH, sW = stride
    pH, pW = padding
    dH, dW = dilation
    khw = kH * kW
    has_mask = mask is not None
    w_cols = weight.reshape(C_out, Cg * khw, 1, 1)
    name = expr("deform_im2col", ctype)
    launches = []
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        args = (
            x, offset, mask if has_mask else offset, col,
            _I32(n0), _I32(m), _I32(C_in), _I32(H), _I32(W), _I32(Ho), _I32(Wo),
            _I32(kH), _I32(kW), _I32(sH), _I32(sW), _I32(pH), _I32(pW), _I32(dH), _I32(dW),
            _I32(offset_groups), _I32(has_mask),
        )
        total = m * offset_groups * khw * Ho * Wo
        launches.append((name, _grid(-(-total // BLOCK), max_blocks), BLOCK, 0, args))
        cols = col if m == nb else col[:m]
        outs = out if (n0 == 0 and m == N) else out[n0:n0 + m]
        launches += plan_conv2d(cols, w_cols, bias, outs, (1, 1), (0, 0), (1, 1), groups,
                                max_blocks, empty)
    return launches


def deform_conv2d(x, offset, weight, bias, mask, *, stride, padding, dilation, groups,
                  offset_groups, out_hw):
    cp = _module.cupy()
    N, C_in = x.shape[0], x.shape[1]
    kh, kw = weight.shape[2], weight.shape[3]
    out = cp.empty((N, weight.shape[0], out_hw[0], out_hw[1]), dtype=x.dtype)
    if out.size == 0:
        return out
    per_image = C_in * kh * kw * out_hw[0] * out_hw[1] * x.dtype.itemsize
    nb = chunk_images(N, per_image)
    col = cp.empty((nb, C_in * kh * kw, out_hw[0], out_hw[1]), dtype=x.dtype)
    _module.run(plan_deform_conv2d(x, offset, weight, bias, mask, out, col, stride, padding,
                                   dilation, groups, offset_groups, _module.max_blocks(),
                                   cp.empty))
    return out
