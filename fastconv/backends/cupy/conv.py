"""``conv2d`` and ``conv_transpose2d`` on CuPy arrays (kernels in ``kernels/conv.cu``).

The public wrappers have validated everything; arrays are C-contiguous cupy
arrays of one float dtype.  Each function allocates the output, asks a
``plan_*`` function (pure Python: shapes in, kernel launches out -- no CuPy, so
it can be exercised without a GPU) which kernel to run with which grid, and
launches on CuPy's current stream.

Kernel choice for ``conv2d`` (per group: ``Cg = C_in/groups`` input and
``Kg = C_out/groups`` output channels):

* ``Cg == 1`` (depthwise, any channel multiplier): ``conv2d_depthwise_tiled``
  when its input tile fits in shared memory (and :data:`DEPTHWISE_TILED`), else
  ``conv2d_depthwise_direct``;
* ``Kg >= GEMM_MIN_KG``: the implicit-GEMM kernel ``conv2d_gemm`` (64x128 tiles; with
  :data:`GEMM_VEC`, vector register tiles of 64 or 128 rows, :func:`gemm_tile`); with
  :data:`SPLIT_K` set to None, when its tiles would leave the GPU short of
  work (fewer than ``GEMM_BLOCKS_PER_SM`` blocks per SM) and the reduction is long,
  the reduction is split (split-K) and ``conv_sum_splits`` adds the partial sums;
* otherwise (grouped convolutions with few channels per group):
  ``conv2d_direct`` with ``KB`` output channels per thread.

``conv_transpose2d`` gathers with ``conv_transpose2d_direct``, or, with
:data:`TRANSPOSED_GEMM`, runs one implicit GEMM per output phase
(``conv_transpose2d_gemm``: 32-row tiles for groups of <= 32 output channels, else
64; split-K as conv2d's), followed by :func:`exact_if_nonfinite` (an inf/NaN weight
times the GEMM's out-of-image zeros would give NaN that the oracle does not have).
The optional paths' settings are listed in ``variants``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _module, autotune
from ._module import CTYPES, expr

#: output channels per group from which conv2d uses the implicit-GEMM kernel
GEMM_MIN_KG = 32
#: resident 256-thread conv2d_gemm blocks per SM (94-128 registers: 2 fit in 64K registers;
#: the 128-row vector tiles take 171-191 registers: 1)
GEMM_BLOCKS_PER_SM = 2
#: the shortest reduction slice of a split-K launch (8 slices of 16 rows)
SPLIT_MIN_R = 128
#: split-K: None chooses where it fills the GPU (:func:`split_k`), an int forces that many
#: slices.  Off (1) by default until a GPU run of ``bench/ab_cupy_variants.py`` shows that
#: the automatic choice pays (ncu, H100: dilated_aspp ran 128 blocks, 12.5 % warps active)
SPLIT_K: int | None = 1
#: conv_transpose2d through conv_transpose2d_gemm (one implicit GEMM per output phase)
#: instead of the gathering kernel.  Off by default until a GPU run of
#: ``bench/ab_cupy_variants.py`` says for which shapes it pays (on the H100 the gathering
#: kernel ran transposed_fcn, 16x16 taps at stride 8, at 0.9 TFLOP/s: 4.99x cuDNN)
TRANSPOSED_GEMM = False
#: depthwise conv2d through the shared-memory tiled kernel where its tile fits; False sends
#: every depthwise call to conv2d_depthwise_direct (one thread per output, cached loads),
#: an A/B arm of ``bench/ab_cupy_variants.py`` for small maps (H100, depthwise 1x256x56x56:
#: tiled 11.0 us, cuDNN 10.7 us)
DEPTHWISE_TILED = True
#: input elements each thread of conv2d_depthwise_tiled loads before storing them to the
#: shared tile: a store waits for its load, so 1 costs a memory latency per 256 elements of
#: the tile (5 in a row for the depthwise case's 34x34 tile) and 4 costs 2.  1 by default
#: until a GPU run shows that 4 pays (predicted: the depthwise case is one wave of
#: latency-bound blocks, H100 11.0 us against cuDNN's 10.7)
DEPTHWISE_LOADS = 1
#: the implicit GEMMs (conv2d_gemm, conv_transpose2d_gemm, deform_conv2d_gemm) with
#: gemm.cuh's vector register tiles: 4-wide fragments read with 128-bit shared-memory loads
#: (3-4 loads per 32-64 FMAs instead of 12 per 32) and 128-row tiles for groups of more than
#: 64 output channels (not double).  Off by default until a GPU run of
#: ``bench/ab_cupy_variants.py`` shows it pays; the default tiles' main loop is bounded by
#: shared-memory bandwidth at about 2/3 of the FMA peak (H100: dilated_aspp at 18.6 TFLOP/s,
#: 36 % of the measured fp32 matmul)
GEMM_VEC = False
#: dynamic shared memory a launch may use (the default per-block limit)
SMEM_BUDGET = 48 * 1024
BLOCK = 256
_I32 = np.int32


def _acc_size(dtype) -> int:
    return 8 if dtype == np.float64 else 4


def _ksz(kh: int, kw: int, choices) -> int:
    return kh if kh == kw and kh in choices else 0


def _pick_kb(kg: int, khw: int, acc: int) -> int:
    """Output channels per thread: the smallest power of two >= kg (<= 16) whose weights fit."""
    kb = 1
    while kb < kg and kb < 16:
        kb *= 2
    while kb > 1 and khw * kb * acc > SMEM_BUDGET:
        kb //= 2
    return kb


def _grid(items: int, max_blocks: int) -> int:
    return max(1, min(items, max_blocks))


def gemm_tile(kg: int, dchar: str, vec: bool, narrow: bool = False) -> tuple[int, bool]:
    """``(BM, VEC)``: the register tile of an implicit GEMM over groups of ``kg`` output
    channels (gemm.cuh's GemmTile; ``vec`` is :data:`GEMM_VEC`).

    64 rows; 32 with ``narrow`` (conv_transpose2d_gemm) for ``kg <= 32``; with ``vec``,
    128 for ``kg > 64`` unless the dtype is double.
    """
    if narrow and kg <= 32:
        return 32, vec
    if vec and kg > 64 and _module.gemm_tile_exists(CTYPES[np.dtype(dchar)], 128):
        return 128, True
    return 64, vec


def gemm_tiles(pixels: int, kg: int, groups: int, bm: int = 64) -> int:
    """Work items of an implicit GEMM (gemm.cuh): 128-pixel by ``bm``-channel tiles per group."""
    return -(-pixels // 128) * -(-kg // bm) * groups


def plan_conv2d(x, weight, bias, out, stride, padding, dilation, groups, max_blocks,
                empty=None, arm=None):
    """Launches ``[(name, grid, block, shared_mem, args)]`` for ``out = conv2d(x, weight)``.

    ``empty(shape, dtype)`` allocates the split-K workspace; without it the
    implicit GEMM is not split.  ``arm`` (a dict of :mod:`.variants` settings, see
    :mod:`.autotune`) overrides the module settings it names.
    """
    name, grid, smem, scalars, splits = conv2d_config(
        x, weight, bias, out, stride, padding, dilation, groups, max_blocks, empty, arm)
    args = (x, weight, weight if bias is None else bias, out) + scalars
    if not name.startswith("fc::conv2d_gemm"):
        return [(name, grid, BLOCK, smem, args)]
    return gemm_launches((name, grid, BLOCK, smem, args), splits, bias, out, max_blocks, empty)


def gemm_launches(launch, splits, bias, out, max_blocks, empty=None):
    """An implicit-GEMM ``launch`` (its args without the last, ``part``) with its split-K
    workspace appended, followed by ``conv_sum_splits`` when ``splits > 1``.

    Shared by conv2d_gemm and deform_conv2d_gemm, whose last argument is the partial-sum
    buffer ``part[splits][out.size]`` in the accumulator type.
    """
    name, grid, block, smem, args = launch
    acc = np.float64 if out.dtype == np.float64 else np.float32
    if splits == 1:  # part is not read; any pointer of the accumulator type will do
        part = out if out.dtype == acc else _module.placeholder(acc, empty)
        return [(name, grid, block, smem, args + (part,))]
    total = out.size
    part = empty((splits, total), acc)
    sum_args = (part, out if bias is None else bias, out, np.int64(total),
                _I32(out.shape[1]), np.int64(out.shape[2] * out.shape[3]), _I32(splits),
                _I32(bias is not None))
    return [(name, grid, block, smem, args + (part,)),
            (expr("conv_sum_splits", CTYPES[out.dtype]), _grid(-(-total // BLOCK), max_blocks),
             BLOCK, 0, sum_args)]


def split_k(tiles: int, r: int, sms: int, forced: int | None = None,
            bm: int = 64) -> tuple[int, int]:
    """``(splits, r_slice)`` for an implicit GEMM of ``tiles`` blocks and reduction ``r``.

    Splits only when the tiles fill less than half of the resident blocks
    (``GEMM_BLOCKS_PER_SM * sms``; ``sms`` for ``bm = 128``-row tiles, one per SM) and
    each slice keeps at least ``SPLIT_MIN_R`` rows; ``r_slice`` is a multiple of 16 (the
    kernel's slice depth).  ``forced`` asks for that many slices.
    """
    target = (1 if bm >= 128 else GEMM_BLOCKS_PER_SM) * sms
    if forced is not None:
        splits = max(1, min(forced, -(-r // 16)))
    elif 2 * tiles > target:
        splits = 1
    else:
        splits = min(target // tiles, r // SPLIT_MIN_R)
    if splits < 2:
        return 1, r
    per_split = -(-r // splits)
    r_slice = -(-per_split // 16) * 16  # rounded up to whole 16-row chunks
    return -(-r // r_slice), r_slice


def plan_conv_transpose2d(x, weight, bias, out, stride, padding, dilation, groups, max_blocks,
                          empty=None, arm=None):
    """Launches computing ``out = conv_transpose2d(x, weight)``: by gathering, or with
    :data:`TRANSPOSED_GEMM` one implicit GEMM per output phase (split-K as conv2d's, when
    ``empty`` can allocate the partial sums).  ``arm`` as :func:`plan_conv2d`'s."""
    name, grid, smem, scalars, splits = conv_transpose2d_config(
        x, weight, bias, out, stride, padding, dilation, groups, max_blocks, empty, arm)
    args = (x, weight, weight if bias is None else bias, out) + scalars
    if not name.startswith("fc::conv_transpose2d_gemm"):  # unguarded: no flags, 0 blocks
        return [(name, grid, BLOCK, smem, args + (_module.placeholder(np.int32, empty), _I32(0)))]
    return (gemm_launches((name, grid, BLOCK, smem, args), splits, bias, out, max_blocks, empty)
            + exact_if_nonfinite(x, weight, bias, out, stride, padding, dilation, groups,
                                 max_blocks, empty))


#: blocks of nonfinite_blocks at most: conv_transpose2d_direct's BLOCK threads read one
#: flag each
NONFINITE_MAX_BLOCKS = BLOCK


def exact_if_nonfinite(x, weight, bias, out, stride, padding, dilation, groups, max_blocks,
                       empty=None):
    """Launches that redo ``out`` with the exact gathering kernel where ``weight`` holds an
    inf or NaN, decided on the GPU (no sync): ``nonfinite_blocks`` flags the weights,
    ``conv_transpose2d_direct`` reads the flags and exits at once when all are finite.

    The phase GEMM multiplies the zeros outside the image, the oracle (PyTorch's CPU
    scatter) multiplies only real inputs; with finite weights both give the same, with an
    inf/NaN weight the GEMM would give NaN where the oracle does not.  Nothing is
    launched where the gathering kernel cannot take the taps (over its shared memory).
    """
    n = math.prod(weight.shape)
    if n == 0:  # no input channels: no weight to be inf/NaN
        return []
    try:
        name, grid, smem, scalars, _ = _conv_transpose2d_config(
            x.shape, weight.shape, bias is not None, out.shape, stride, padding, dilation,
            groups, x.dtype.char, max_blocks)
    except ValueError:
        return []
    blocks = max(1, min(NONFINITE_MAX_BLOCKS, -(-n // (8 * BLOCK))))
    flags = (empty((blocks,), np.int32) if empty is not None
             else _module.placeholder(np.int32, empty))
    args = (x, weight, weight if bias is None else bias, out) + scalars
    return [(expr("nonfinite_blocks", CTYPES[x.dtype]), blocks, BLOCK, 0,
             (weight, np.int64(n), flags)),
            (name, grid, BLOCK, smem, args + (flags, _I32(blocks)))]


def conv2d_config(x, weight, bias, out, stride, padding, dilation, groups, max_blocks,
                  empty=None, arm=None):
    """``(kernel name, grid, shared memory bytes, scalar args, splits)`` of the conv2d launch
    that :func:`plan_conv2d` plans with the same arguments (no allocation: autotuning compares
    the arms' configurations to time each distinct plan once)."""
    return _conv2d_config(
        x.shape, weight.shape, bias is not None, out.shape, stride, padding, dilation, groups,
        x.dtype.char, max_blocks, *conv2d_settings(arm, empty is not None))


def conv2d_settings(arm, can_split: bool) -> tuple:
    """``(split, depthwise_tiled, vec, depthwise_loads)`` of :func:`_conv2d_config`:
    :data:`SPLIT_K` (1 unless ``can_split``, i.e. a workspace can be allocated),
    :data:`DEPTHWISE_TILED`, :data:`GEMM_VEC` and :data:`DEPTHWISE_LOADS`, each from ``arm``
    where it names it, else the module's."""
    a = autotune.NO_ARM if arm is None else arm
    return (a.get("SPLIT_K", SPLIT_K) if can_split else 1,
            a.get("DEPTHWISE_TILED", DEPTHWISE_TILED), a.get("GEMM_VEC", GEMM_VEC),
            a.get("DEPTHWISE_LOADS", DEPTHWISE_LOADS))


def conv_transpose2d_config(x, weight, bias, out, stride, padding, dilation, groups,
                            max_blocks, empty=None, arm=None):
    """The configuration of :func:`plan_conv_transpose2d`'s first launch, as
    :func:`conv2d_config`'s."""
    a = autotune.NO_ARM if arm is None else arm
    split = a.get("SPLIT_K", SPLIT_K) if empty is not None else 1
    return _conv_transpose2d_config(
        x.shape, weight.shape, bias is not None, out.shape, stride, padding, dilation, groups,
        x.dtype.char, max_blocks, a.get("TRANSPOSED_GEMM", TRANSPOSED_GEMM), split,
        a.get("GEMM_VEC", GEMM_VEC))


# The configurations are memoised on the shapes and parameters (all hashable), so a
# repeated call costs one cache lookup instead of the arithmetic and the numpy scalars.


@functools.lru_cache(maxsize=4096)
def _conv2d_config(xshape, wshape, has_bias, oshape, stride, padding, dilation, groups, dchar,
                   max_blocks, split=None, depthwise_tiled=True, vec=False, depthwise_loads=1):
    """``(kernel name, grid, shared memory bytes, scalar args, splits)`` of one conv2d launch.

    ``split`` is :data:`SPLIT_K` (None: automatic; an int: that many slices);
    ``depthwise_tiled`` is :data:`DEPTHWISE_TILED`; ``vec`` is :data:`GEMM_VEC`;
    ``depthwise_loads`` is :data:`DEPTHWISE_LOADS`.
    """
    N, C_in, H, W = xshape
    C_out, Cg, kH, kW = wshape
    Ho, Wo = oshape[2], oshape[3]
    dtype = np.dtype(dchar)
    ctype = CTYPES[dtype]
    acc = _acc_size(dtype)
    Kg = C_out // groups
    sH, sW = stride
    pH, pW = padding
    dH, dW = dilation
    scalars = tuple(_I32(v) for v in (
        N, C_in, H, W, C_out, Ho, Wo, kH, kW, sH, sW, pH, pW, dH, dW, groups, has_bias))
    P = N * Ho * Wo
    khw = kH * kW

    if Cg == 1:
        tile = ((31 * sH + (kH - 1) * dH + 1) * (31 * sW + (kW - 1) * dW + 1) + khw) * acc
        if tile <= SMEM_BUDGET and depthwise_tiled:
            items = N * C_out * -(-Ho // 32) * -(-Wo // 32)
            name = expr("conv2d_depthwise_tiled", ctype, _ksz(kH, kW, _module.DEPTHWISE_KSZ),
                        depthwise_loads)
            return name, _grid(items, max_blocks), tile, scalars, 1
        name = expr("conv2d_depthwise_direct", ctype)
        return name, _grid(-(-N * C_out * Ho * Wo // BLOCK), max_blocks), 0, scalars, 1

    kb = _pick_kb(Kg, khw, acc)
    if Kg >= GEMM_MIN_KG or khw * kb * acc > SMEM_BUDGET:
        bm, vec = gemm_tile(Kg, dchar, vec)
        tiles = gemm_tiles(P, Kg, groups, bm)
        splits, r_slice = split_k(tiles, Cg * khw, max_blocks // 64, split, bm)
        name = expr("conv2d_gemm", ctype, _ksz(kH, kW, _module.GEMM_KSZ), bm, vec)
        return (name, _grid(tiles * splits, max_blocks), 0,
                scalars + (_I32(splits), _I32(r_slice)), splits)

    cb = min(Cg, SMEM_BUDGET // (khw * kb * acc))
    items = -(-P // BLOCK) * -(-Kg // kb) * groups
    name = expr("conv2d_direct", ctype, kb)
    return name, _grid(items, max_blocks), cb * khw * kb * acc, scalars + (_I32(cb),), 1


@functools.lru_cache(maxsize=4096)
def _conv_transpose2d_config(xshape, wshape, has_bias, oshape, stride, padding, dilation, groups,
                             dchar, max_blocks, gemm=False, split=1, vec=False):
    """``(kernel name, grid, shared memory bytes, scalar args, splits)`` of one
    conv_transpose2d launch.

    ``gemm``: :data:`TRANSPOSED_GEMM`; ``split``: :data:`SPLIT_K` and ``vec``:
    :data:`GEMM_VEC` (the phase GEMM only).
    """
    N, C_in, H, W = xshape
    _, Kg, kH, kW = wshape
    C_out, Ho, Wo = oshape[1], oshape[2], oshape[3]
    dtype = np.dtype(dchar)
    acc = _acc_size(dtype)
    Cg = C_in // groups
    sH, sW = stride
    pH, pW = padding
    dH, dW = dilation
    khw = kH * kW
    step_i, step_j = sH // math.gcd(sH, dH), sW // math.gcd(sW, dW)
    if gemm:
        # 32-row tiles when a group has <= 32 output channels: 64 would leave half idle
        bm, vec = gemm_tile(Kg, dchar, vec, narrow=True)
        # one GEMM per phase, over the largest phase's pixels
        tiles = gemm_tiles(N * -(-Ho // sH) * -(-Wo // sW), Kg, groups, bm) * sH * sW
        # the longest phase reduction: every step_i-th tap of a column of taps, likewise rows
        r_max = Cg * -(-kH // step_i) * -(-kW // step_j)
        splits, r_slice = split_k(tiles, r_max, max_blocks // 64, split, bm)
        scalars = tuple(_I32(v) for v in (
            N, C_in, H, W, C_out, Ho, Wo, kH, kW, sH, sW, pH, pW, dH, dW, groups, has_bias,
            step_i, step_j, splits, r_slice))
        name = expr("conv_transpose2d_gemm", CTYPES[dtype], bm, vec)
        return name, _grid(tiles * splits, max_blocks), 0, scalars, splits
    kb = _pick_kb(Kg, khw, acc)
    if khw * kb * acc > SMEM_BUDGET:
        raise ValueError(
            f"conv_transpose2d kernel of {kH}x{kW} taps is too large for the cupy backend"
        )
    cb = min(Cg, SMEM_BUDGET // (khw * kb * acc))
    scalars = tuple(_I32(v) for v in (
        N, C_in, H, W, C_out, Ho, Wo, kH, kW, sH, sW, pH, pW, dH, dW, groups, has_bias,
        step_i, step_j, cb))
    items = -(-(N * Ho * Wo) // BLOCK) * -(-Kg // kb) * groups
    name = expr("conv_transpose2d_direct", CTYPES[dtype], kb)
    return name, _grid(items, max_blocks), cb * khw * kb * acc, scalars, 1


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw):
    cp = _module.cupy()
    out = cp.empty((x.shape[0], weight.shape[0], out_hw[0], out_hw[1]), dtype=x.dtype)
    if out.size:
        args = (x, weight, bias, out, stride, padding, dilation, groups, _module.max_blocks(),
                cp.empty)
        if autotune.enabled():
            autotune.run("conv2d", (x.shape, weight.shape, bias is not None, stride, padding,
                                    dilation, groups, out_hw, x.dtype.char),
                         lambda arm: _module.run(plan_conv2d(*args, arm)),
                         lambda arm: conv2d_config(*args, arm))
        else:
            _module.run(plan_conv2d(*args))
    return out


def conv_transpose2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw):
    cp = _module.cupy()
    c_out = weight.shape[1] * groups
    out = cp.empty((x.shape[0], c_out, out_hw[0], out_hw[1]), dtype=x.dtype)
    if out.size:
        args = (x, weight, bias, out, stride, padding, dilation, groups, _module.max_blocks(),
                cp.empty)
        if autotune.enabled():
            autotune.run("conv_transpose2d", (x.shape, weight.shape, bias is not None, stride,
                                              padding, dilation, groups, out_hw, x.dtype.char),
                         lambda arm: _module.run(plan_conv_transpose2d(*args, arm)),
                         lambda arm: conv_transpose2d_config(*args, arm))
        else:
            _module.run(plan_conv_transpose2d(*args))
    return out
