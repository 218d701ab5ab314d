"""conv2d and conv_transpose2d as numba.cuda kernels.

Kernels:

* ``conv2d_depthwise`` -- depthwise conv2d (one input channel per group, any channel
  multiplier): one ``TW x TH`` output tile of one (image, output channel) plane per work
  item (32 x 32 with 256-thread blocks: 32 columns x 8 thread rows, 4 output rows per
  thread).  The input tile it reads, halo included, is staged in dynamic shared memory by
  coalesced loads, so each input element is loaded once per tile instead of ``kH*kW``
  times, and each weight load serves a thread's 4 rows; 48 registers (float32, sm_90)
  against conv2d_direct's 94.  1-D grid, grid-stride.
* ``*_gemm`` -- implicit GEMM (see :mod:`._gemm`) for groups with many output channels:
  ``BM`` output channels x ``BN`` output pixels per block, weights and gathered input staged
  in shared memory, a ``TM x TN`` register tile per thread.  1-D grid, grid-stride, over
  the (pixel tile, channel tile, image x group [x output phase]) tiles.
* ``conv2d_grouped`` -- conv2d with several input and output channels per group but too
  few output channels for the GEMM: one output pixel and ``KB`` consecutive output
  channels of one group per thread (``KB`` the smallest power of two >= ``Kg``, at most 8,
  a compile-time constant; a tail variant guards ``Kg`` not a multiple of it), ``KB``
  register accumulators, so each input value loaded serves ``KB`` outputs (conv2d_direct
  loads it once per output channel); weights from global memory, the same address for the
  whole block (broadcast).  Grid x over the output pixels of a plane, grid y over (image,
  group, channel chunk), both grid-stride; 70-101 registers against conv2d_direct's 94-120.
* ``*_direct`` -- one thread per output element (few channels per group, and depthwise
  convs whose input tile would not fit in shared memory): grid x over the output pixels of
  a plane (consecutive threads -> consecutive output x), grid y over the (image, output
  channel) planes, both grid-stride; the weights a block reads are the same for all its
  threads (broadcast).

conv2d's dispatch: input channels per group ``Cg == 1`` -> ``conv2d_depthwise`` where its
input tile fits in :data:`DW_SMEM_BUDGET` (:func:`depthwise_geometry`) and the work items
number fewer than 2**31; else (and for ``Cg > 1``) ``conv2d_gemm`` where
:func:`._launch.choose_tiles` finds enough output channels and reduction per group, else
``conv2d_grouped`` where ``Cg > 1`` and ``Kg >= 2`` (and a plane's pixels and the (image,
group, chunk) planes number fewer than 2**31), else ``conv2d_direct``.  Autotuning's
``"direct"`` arm forces conv2d_direct, its ``"grouped"`` arm conv2d_grouped where it suits.
conv_transpose2d: ``conv_transpose2d_gemm`` or ``_direct`` likewise; after the GEMM,
``nonfinite_blocks`` flags inf/NaN weights and an exact pass of ``_direct`` runs only where
one is (the GEMM multiplies out-of-image zeros, which the oracle's scatter never does).

conv_transpose2d never visits taps that do not land on an output pixel: an output row
``y`` only receives taps ``i`` with ``i*dH = y + pH (mod sH)``, an arithmetic progression
with step ``sH / gcd(sH, dH)``.  Its GEMM kernel splits the output into the ``sH x sW``
phases ``(y + pH) mod sH``, in each of which it is a dense correlation over those taps.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from . import autotune
from ._gemm import advance, split_row, tile_coords
from ._gemm import functions as _gemm_functions
from ._launch import (
    absent,
    bounded_path,
    cdiv,
    current_stream,
    empty,
    grid_2d,
    grid_tiles,
    launch,
    memo_view,
    numba_arg_types,
    path_tiles,
    settings,
    stream_scratch,
    two_blocks_bounds,
    weight_rows,
)


# ============================================================================ host side


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw):
    """Backend conv2d; see :mod:`fastconv.backends` for the contract."""
    N = x.shape[0]
    K, Cg, kH, kW = weight.shape
    Ho, Wo = out_hw
    out = empty((N, K, Ho, Wo), x.dtype)
    if out.size == 0:
        return out
    T = x.dtype.type
    has_bias = bias is not None
    bias = absent(bias, x.dtype, 1)
    Kg = K // groups

    def plan(arm):  # (kernel, grid, block, dynamic shared memory, args) of arm's path
        tiles, rules = path_tiles(arm and arm["PATH"], Kg, Cg * kH * kW, Ho * Wo, N * groups)
        if Cg == 1 and rules:
            dw = depthwise_geometry(kH, kW, *stride, *dilation, x.dtype.itemsize, settings.block)
            if dw is not None:
                TW, TR, smem = dw
                items = N * K * cdiv(Ho, TR * DW_ROWS) * cdiv(Wo, TW)
                if items <= _I32_MAX:  # the kernel splits work items with 32-bit divisions
                    grid = (max(1, min(items, settings.max_grid[0])),)
                    return (_depthwise_kernel(T, TW, TR), grid, TW * TR, smem,
                            (x, weight, bias, out, *stride, *padding, *dilation))
        if tiles is not None:
            # the weight viewed as (K, Cg*kH*kW) rows: the GEMM's A loader then indexes by
            # reduction row, with no (c, i, j) counter (6 registers fewer: 132 -> 126, which
            # lets two blocks share an SM)
            return (_gemm_kernels(T, tiles)[0], grid_tiles(tiles, Ho * Wo, Kg, N * groups),
                    tiles.threads, 0, (x, weight_rows(weight), bias, out, kH, kW, *stride,
                                       *padding, *dilation, groups))
        block = settings.block
        # several output channels per thread where a group has several; an arm forcing the
        # grouped path where it does not suit falls back to the rules' plan
        grouped = rules or arm["PATH"] == "grouped"
        if grouped and Cg > 1 and Kg >= 2 and Ho * Wo <= _I32_MAX:
            KB = grouped_kb(Kg)
            planes = N * groups * cdiv(Kg, KB)
            if planes <= _I32_MAX:  # the kernel splits both with 32-bit divisions
                return (_grouped_kernel(T, KB, Kg % KB != 0), grid_2d(Ho * Wo, planes, block),
                        block, 0, (x, weight_rows(weight), bias, out, kH, kW, *stride, *padding,
                         *dilation, groups))
        if not rules and arm["PATH"] == "grouped":
            return plan(None)
        return (_direct_kernels(T)[0], grid_2d(Ho * Wo, N * K, block), block, 0,
                (x, weight, bias, out, *stride, *padding, *dilation, groups))

    autotune.run("conv2d", lambda: (x.shape, weight.shape, has_bias, stride, padding, dilation,
                                    groups, out_hw, x.dtype.char),
                 plan, launch, *current_stream())
    return out


def conv_transpose2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw):
    """Backend conv_transpose2d; see :mod:`fastconv.backends` for the contract."""
    N, C = x.shape[0], x.shape[1]
    _, Kg, kH, kW = weight.shape
    Ho, Wo = out_hw
    out = empty((N, Kg * groups, Ho, Wo), x.dtype)
    if out.size == 0:
        return out
    (sH, sW), (dH, dW) = stride, dilation
    # the taps landing on one output row form a progression with this step
    stepI = sH // math.gcd(sH, dH)
    stepJ = sW // math.gcd(sW, dW)
    T = x.dtype.type
    has_bias = bias is not None
    bias = absent(bias, x.dtype, 1)
    args = (x, weight, bias, out, sH, sW, *padding, dH, dW, groups, stepI, stepJ)
    phase_pixels = cdiv(Ho, sH) * cdiv(Wo, sW)  # the largest output phase
    n_z = N * groups * sH * sW
    taps = cdiv(kH, stepI) * cdiv(kW, stepJ)  # at most, per output pixel

    direct = _direct_kernels(T)[1]
    block = settings.block
    direct_grid = grid_2d(Ho * Wo, N * Kg * groups, block)

    def plan(arm):
        tiles, rules = path_tiles(arm and arm["PATH"], Kg, (C // groups) * taps, phase_pixels,
                                  n_z)
        if tiles is not None:
            return (_gemm_kernels(T, tiles, bounded_path(arm, rules))[1],
                    grid_tiles(tiles, phase_pixels, Kg, n_z), tiles.threads, 0, args)
        # unguarded: no flags (the kernel tests nonfinite.shape[0])
        return direct, direct_grid, block, 0, args + (absent(None, np.int32, 1),)

    def launch_exact(kernel, grid, block_, stream_key, stream, *launch_args, shared=0):
        launch(kernel, grid, block_, stream_key, stream, *launch_args, shared=shared)
        if kernel is not direct:
            # the GEMM multiplies the zeros outside the image, the oracle (PyTorch's CPU
            # scatter) only real inputs: the same unless a weight is inf/NaN (0 * inf =
            # NaN), so an exact pass follows that runs only where one is (no sync)
            blocks = max(1, min(block, cdiv(weight.size, 8 * block)))
            flags = stream_scratch(blocks, np.int32, stream_key)
            launch(nonfinite_blocks, (blocks,), block, stream_key, stream,
                   memo_view(weight, (weight.size,)), flags)
            launch(direct, direct_grid, block, stream_key, stream, *args, flags)

    autotune.run("conv_transpose2d", lambda: (x.shape, weight.shape, has_bias, stride, padding,
                                              dilation, groups, out_hw, x.dtype.char),
                 plan, launch_exact, *current_stream())
    return out


#: output rows per thread of conv2d_depthwise: its accumulators are registers, and each
#: weight it loads serves this many outputs (ptxas, sm_90: 48 registers with 2 or 4 rows,
#: 58 (float32) / 72 (float64) with 8)
DW_ROWS = 4
#: input elements each thread of conv2d_depthwise loads before it stores them to shared
#: memory (4 loads in flight per thread: 32x32 tiles with a 3x3 halo take two passes; no
#: register more than loading one at a time, 48 on sm_90)
DW_LOADS = 4
#: the most dynamic shared memory conv2d_depthwise asks for: the default per-block limit of
#: 48 KiB (more needs an opt-in attribute per kernel) less the 1 KiB that ptxas reports as
#: the kernel's static shared memory on sm_90 (nvJitLink; 0 on sm_80), which counts towards
#: that limit if it is real; a larger input tile goes to the other kernels
DW_SMEM_BUDGET = 47 * 1024
_I32_MAX = 2**31 - 1


def depthwise_block(block):
    """``(TW, TR)``: conv2d_depthwise's block shape for at most ``block`` threads."""
    TW = min(32, max(1, block // 2))
    return TW, max(1, block // TW)


@functools.lru_cache(maxsize=1024)
def depthwise_geometry(kH, kW, sH, sW, dH, dW, itemsize, block):
    """``(TW, TR, shared bytes)`` of a conv2d_depthwise launch with at most ``block``
    threads, or None where its input tile would not fit in :data:`DW_SMEM_BUDGET`.

    A block is ``TW`` (output columns) x ``TR`` (thread rows) threads, each computing
    :data:`DW_ROWS` consecutive output rows of one column: a ``TW x TH`` output tile with
    ``TH = TR * DW_ROWS`` (32 x 32 for 256 threads: a warp is one row of 32 outputs, so its
    loads and stores are coalesced).  ``TW`` shrinks with the tests' tiny blocks so that they
    still have two thread rows.  The shared memory holds the input tile the output tile
    reads, its halo included: ``((TH-1)*sH + (kH-1)*dH + 1) x ((TW-1)*sW + (kW-1)*dW + 1)``.
    """
    TW, TR = depthwise_block(block)
    IH = (TR * DW_ROWS - 1) * sH + (kH - 1) * dH + 1
    IW = (TW - 1) * sW + (kW - 1) * dW + 1
    smem = IH * IW * itemsize
    if smem > DW_SMEM_BUDGET:
        return None
    return TW, TR, smem


@functools.cache  # built once per dtype and compile-time shape
def _depthwise_kernel(T, TW, TR):
    return _build_depthwise(T, TW, TR)


#: the most output channels per thread of conv2d_grouped
GROUPED_MAX_KB = 8


def grouped_kb(Kg):
    """Output channels per thread of conv2d_grouped for ``Kg`` per group: the smallest power
    of two >= ``Kg``, at most :data:`GROUPED_MAX_KB`."""
    kb = 1
    while kb < Kg and kb < GROUPED_MAX_KB:
        kb *= 2
    return kb


@functools.cache  # built once per dtype and compile-time shape
def _grouped_kernel(T, KB, tail):
    return _build_grouped(T, KB, tail)


@cuda.jit(cache=True)
def nonfinite_blocks(w, nonfinite):
    """``nonfinite[b] = 1`` where block ``b``'s share of the 1-D ``w`` (strided by the grid)
    holds an inf or NaN, else 0: every block writes its flag, so they need no clearing.
    The guard of conv_transpose2d_direct's exact pass after the GEMM."""
    mine = 0
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    while i < w.shape[0]:
        v = w[i]
        if v - v != 0:  # inf - inf and NaN - NaN are NaN
            mine = 1
        i += cuda.gridDim.x * cuda.blockDim.x
    found = cuda.syncthreads_or(mine)
    if cuda.threadIdx.x == 0:
        nonfinite[cuda.blockIdx.x] = 1 if found != 0 else 0


@functools.cache  # built once per dtype and compile-time shape
def _direct_kernels(T):
    return _build_direct(T)


def _gemm_kernels(T, tiles, transposed_two_blocks=False):
    """``(conv2d_gemm, conv_transpose2d_gemm)``; ``transposed_two_blocks``: the transposed
    GEMM held to two blocks per SM (autotuning's arm).  Where that changes nothing (the
    narrow tile already is, float64 cannot be) the default kernels are returned, the same
    objects, so autotuning sees one plan and nothing is compiled twice."""
    bounded = bool(transposed_two_blocks and tiles.TM * tiles.TN > 8
                   and two_blocks_bounds(T, tiles))
    return _built_gemm_kernels(T, tiles, bounded)


@functools.cache  # built once per dtype, compile-time shape and launch bounds (positional
def _built_gemm_kernels(T, tiles, transposed_two_blocks):  # arguments: one cache key each)
    return _build_gemm(T, tiles, transposed_two_blocks)


def ptx_cases(T):
    """``[(name, kernel, argtypes)]`` for every kernel of this module and float type ``T``.

    Used by the tests to compile each kernel to PTX without a GPU (a missing bias is a
    zero-size array, so one signature covers both).
    """
    from numba import types

    _, i, a1, a2, a4 = numba_arg_types(T)
    conv = (a4, a4, a1, a4) + (i,) * 7
    conv_gemm = (a4, a2, a1, a4) + (i,) * 9
    cases = []
    d = _direct_kernels(T)
    for tiles in (settings.tiles_wide, settings.tiles_narrow):
        g = _gemm_kernels(T, tiles)
        cases += [
            (f"conv2d_gemm{tiles.BM}", g[0], conv_gemm),
            (f"conv_transpose2d_gemm{tiles.BM}", g[1], conv + (i, i)),
        ]
        bounded = _gemm_kernels(T, tiles, True)[1]
        if bounded is not g[1]:  # autotuning's two-blocks-per-SM arm (float32 only)
            cases.append((f"conv_transpose2d_gemm{tiles.BM}_2blocks", bounded, conv + (i, i)))
    cases += [
        ("conv2d_depthwise", _depthwise_kernel(T, *depthwise_block(settings.block)), conv[:-1]),
        ("conv2d_direct", d[0], conv),
        # the (KB, tail) variants some Kg >= 2 reaches: all but KB 2 with a tail
        *((f"conv2d_grouped_kb{kb}{'_tail' * tail}", _grouped_kernel(T, kb, tail), conv_gemm)
          for kb, tail in sorted({(grouped_kb(k), k % grouped_kb(k) != 0)
                                  for k in range(2, 2 * GROUPED_MAX_KB + 1)})),
        ("conv_transpose2d_direct", d[1], conv + (i, i, types.Array(types.int32, 1, "C"))),
        ("nonfinite_blocks", nonfinite_blocks, (a1, types.Array(types.int32, 1, "C"))),
    ]
    return cases


# ============================================================================ kernels


def _build_direct(T):
    zero = T(0.0)

    @cuda.jit(cache=True)
    def conv2d_direct(x, w, b, out, sH, sW, pH, pW, dH, dW, groups):
        """One thread per output element; grid x: pixels of a plane, grid y: (n, k) planes."""
        H = x.shape[2]
        W = x.shape[3]
        K = w.shape[0]
        Cg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Q = out.shape[0] * K
        Kg = K // groups
        pstart = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        pstep = cuda.gridDim.x * cuda.blockDim.x
        for q in range(cuda.blockIdx.y, Q, cuda.gridDim.y):
            n = q // K
            k = q - n * K
            cbase = (k // Kg) * Cg
            for p in range(pstart, P, pstep):
                yo = p // Wo
                xo = p - yo * Wo
                iy0 = yo * sH - pH
                ix0 = xo * sW - pW
                acc = zero
                for i in range(kH):
                    iy = iy0 + i * dH
                    row_in = iy >= 0 and iy < H
                    for j in range(kW):
                        ix = ix0 + j * dW
                        inside = row_in and ix >= 0 and ix < W
                        for c in range(Cg):
                            v = zero  # a padding zero is multiplied, not skipped: 0*inf = NaN
                            if inside:
                                v = x[n, cbase + c, iy, ix]
                            acc += v * w[k, c, i, j]
                if b.shape[0] != 0:
                    acc += b[k]
                out[n, k, yo, xo] = acc

    @cuda.jit(cache=True)
    def conv_transpose2d_direct(x, w, b, out, sH, sW, pH, pW, dH, dW, groups, stepI, stepJ,
                                nonfinite):
        """One thread per output element, visiting only the taps that land on it.

        With ``nonfinite`` (the flags of :func:`nonfinite_blocks`, at most one per thread
        of a block; zero-size: always runs) it is the exact pass after the GEMM and returns
        at once unless a flag is set (block-uniform)."""
        if nonfinite.shape[0] != 0:
            t = cuda.threadIdx.x
            flag = 0
            if t < nonfinite.shape[0]:
                flag = nonfinite[t]
            if cuda.syncthreads_or(flag) == 0:
                return
        H = x.shape[2]
        W = x.shape[3]
        Cg = x.shape[1] // groups
        Kg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        K = out.shape[1]
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Q = out.shape[0] * K
        pstart = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        pstep = cuda.gridDim.x * cuda.blockDim.x
        for q in range(cuda.blockIdx.y, Q, cuda.gridDim.y):
            n = q // K
            k = q - n * K
            g = k // Kg
            kl = k - g * Kg
            cbase = g * Cg
            for p in range(pstart, P, pstep):
                yo = p // Wo
                xo = p - yo * Wo
                ty = yo + pH
                tx = xo + pW
                i0 = 0
                while i0 < kH and (ty - i0 * dH) % sH != 0:
                    i0 += 1
                j0 = 0
                while j0 < kW and (tx - j0 * dW) % sW != 0:
                    j0 += 1
                acc = zero
                for i in range(i0, kH, stepI):
                    iy = (ty - i * dH) // sH
                    if iy < 0:
                        break
                    if iy < H:
                        for j in range(j0, kW, stepJ):
                            ix = (tx - j * dW) // sW
                            if ix < 0:
                                break
                            if ix < W:
                                for c in range(Cg):
                                    acc += x[n, cbase + c, iy, ix] * w[cbase + c, kl, i, j]
                if b.shape[0] != 0:
                    acc += b[k]
                out[n, k, yo, xo] = acc

    return conv2d_direct, conv_transpose2d_direct


def _build_grouped(T, KB, TAIL):
    zero = T(0.0)
    u32 = numba.uint32
    u64 = numba.uint64
    i64 = numba.int64

    @cuda.jit(cache=True)
    def conv2d_grouped(x, w, b, out, kH, kW, sH, sW, pH, pW, dH, dW, groups):
        """KB consecutive output channels of one group per thread, one output pixel each:
        grid x over the pixels of a plane, grid y over (n, group, chunk of KB channels).

        Each in-range input value is loaded once per (c, tap) and multiplied into KB
        register accumulators (conv2d_direct loads it once per output channel).  Weights
        are read from global memory, not staged in shared memory: every thread of a block
        has the same (n, group, chunk), so a weight load has one address for the whole
        block (a broadcast served by L1), and there is no Cg*kH*kW-sized buffer to bound,
        no staging pass and no barrier.  With ``TAIL`` (Kg not a multiple of KB) the last
        chunk of a group skips its channels past the group by a block-uniform test;
        without it the test is compiled out.

        Registers (ptxas, float32 sm_90: 72 with KB 4 or 8, against conv2d_direct's 94):
        the sizes and the plane / pixel are split with 32-bit divisions (the launcher sends
        fewer than 2**31 of each), the plane loop is a while loop (a stepped range()
        divides by its step), global indices are uint64 (no wraparound code), and the
        channel loop is outermost with one bounds test per tap: with the channel loop
        innermost, LLVM unrolls it (runtime count, small body) and keeps an address per
        unrolled load live (up to 126-160 registers).  ``w`` is the weight viewed as
        (K, Cg*kH*kW) rows (:func:`._launch.weight_rows`), column t = (c*kH + i)*kW + j.
        """
        H = x.shape[2]
        W = x.shape[3]
        Cg = i64(u32(x.shape[1]) // u32(groups))
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Kg = i64(u32(w.shape[0]) // u32(groups))
        n_ch = (Kg + KB - 1) // KB
        gch = groups * n_ch
        Q = out.shape[0] * gch
        acc = cuda.local.array(KB, T)
        pstart = i64(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
        pstep = i64(cuda.gridDim.x * cuda.blockDim.x)
        q = i64(cuda.blockIdx.y)
        while q < Q:  # (a range() with a step would divide by it: a 64-bit division)
            n = i64(u32(q) // u32(gch))
            r = q - n * gch
            g = i64(u32(r) // u32(n_ch))
            kc = (r - g * n_ch) * KB  # first channel of the chunk within the group
            nk = min(KB, Kg - kc)  # channels of the chunk (fewer in the tail)
            k0 = g * Kg + kc
            cbase = g * Cg
            p = pstart
            while p < P:
                yo = i64(u32(p) // u32(Wo))
                xo = p - yo * Wo
                iy0 = yo * sH - pH
                ix0 = xo * sW - pW
                for kb in range(KB):
                    acc[kb] = zero
                t = 0  # the weight column (c * kH + i) * kW + j
                for c in range(Cg):
                    for i in range(kH):
                        iy = iy0 + i * dH
                        for j in range(kW):
                            ix = ix0 + j * dW
                            v = zero  # a padding zero is multiplied too: 0 * inf = NaN
                            if iy >= 0 and iy < H and ix >= 0 and ix < W:
                                v = x[u64(n), u64(cbase + c), u64(iy), u64(ix)]
                            for kb in range(KB):
                                if not TAIL or kb < nk:
                                    acc[kb] += v * w[u64(k0 + kb), u64(t)]
                            t += 1
                for kb in range(KB):
                    if kb < nk:
                        bv = zero
                        if b.shape[0] != 0:
                            bv = b[u64(k0 + kb)]
                        out[u64(n), u64(k0 + kb), u64(yo), u64(xo)] = acc[kb] + bv
                p += pstep
            q += cuda.gridDim.y

    return conv2d_grouped


def _build_depthwise(T, TW, TR):
    zero = T(0.0)
    ROWS = DW_ROWS
    LOADS = DW_LOADS
    NT = TW * TR
    TH = TR * ROWS
    i32 = numba.int32
    u32 = numba.uint32
    u64 = numba.uint64
    i64 = numba.int64
    ST = numba.from_dtype(np.dtype(T))  # (the simulator sizes a dynamic array by its type)

    @cuda.jit(cache=True)
    def conv2d_depthwise(x, w, b, out, sH, sW, pH, pW, dH, dW):
        """Depthwise (one input channel per group, channel multiplier ``M = K // C``):
        1-D grid-stride over work items, each one ``TW x TH`` output tile of one (n, k)
        plane (tiles of a plane consecutive: neighbours share their halo in L2).

        A shared-memory input tile rather than register reuse along a row: it serves any
        stride and dilation alike (a register window would need them at compile time); each
        input element is loaded from global memory once per tile, in coalesced rows, instead
        of ``kH*kW`` times; and each thread's ``ROWS`` accumulators reuse one weight load.
        Padding is stored as zeros and multiplied like the oracle's zero-padded input, so
        every in-bounds input, NaN included, meets its weight.

        Registers: integer division of int64 costs ptxas ~24 registers, so the work item is
        split with 32-bit divisions (the launcher sends at most 2**31 - 1 items here) and the
        tile offsets, bounded by the tile that fits in shared memory, are int32; global
        indices stay 64-bit (``u64`` also spares numba's negative-index wraparound code).
        """
        sm = cuda.shared.array(0, ST)  # the [IHe, IWe] input tile (dynamic size)
        H = x.shape[2]
        W = x.shape[3]
        K = w.shape[0]
        kH = i32(w.shape[2])
        kW = i32(w.shape[3])
        Ho = out.shape[2]
        Wo = out.shape[3]
        M = u32(K) // u32(x.shape[1])
        # stride / dilation inside the tile (bounded by its size; the 64-bit ones place it)
        sH32 = i32(sH)
        sW32 = i32(sW)
        dH32 = i32(dH)
        dW32 = i32(dW)
        tid = i32(cuda.threadIdx.x)
        tx = i32(tid % TW)
        r0 = i32((tid // TW) * ROWS)  # this thread's first row in the tile
        tiles_x = (Wo + TW - 1) // TW
        tiles_y = (Ho + TH - 1) // TH
        n_items = out.shape[0] * K * tiles_y * tiles_x
        acc = cuda.local.array(ROWS, T)
        vals = cuda.local.array(LOADS, T)
        item = i64(cuda.blockIdx.x)
        while item < n_items:
            t = i64(u32(item) // u32(tiles_x))
            ox0 = (item - t * tiles_x) * TW
            plane = i64(u32(t) // u32(tiles_y))
            oy0 = (t - plane * tiles_y) * TH
            n = i64(u32(plane) // u32(K))
            k = plane - n * K
            c = i64(u32(k) // M)
            # the part of the tile inside the output, and the input it reads (row pitch IWe)
            th = i32(min(TH, Ho - oy0))
            tw = i32(min(TW, Wo - ox0))
            IHe = i32((th - 1) * sH32 + (kH - 1) * dH32 + 1)
            IWe = i32((tw - 1) * sW32 + (kW - 1) * dW32 + 1)
            iy0 = oy0 * sH - pH
            ix0 = ox0 * sW - pW
            cuda.syncthreads()  # the previous item's tile is read by now
            # a flat walk of the tile, NT consecutive elements at a time (coalesced rows);
            # (ly, lx) advance with a carry instead of a division per element
            dly = i32(u32(NT) // u32(IWe))
            dlx = i32(NT - dly * IWe)
            ly = i32(u32(tid) // u32(IWe))
            lx = i32(tid - ly * IWe)
            n_el = i32(IHe * IWe)
            e = tid
            while e < n_el:
                # LOADS elements per pass, NT apart: their loads are all in flight before the
                # first store (one at a time, each element would wait a whole memory latency)
                for u in range(LOADS):
                    iy = iy0 + ly
                    ix = ix0 + lx
                    v = zero
                    if e + u * NT < n_el and iy >= 0 and iy < H and ix >= 0 and ix < W:
                        v = x[u64(n), u64(c), u64(iy), u64(ix)]
                    vals[u] = v
                    ly = i32(ly + dly)
                    lx = i32(lx + dlx)
                    if lx >= IWe:
                        lx = i32(lx - IWe)
                        ly = i32(ly + 1)
                for u in range(LOADS):
                    if e + u * NT < n_el:
                        sm[u32(e + u * NT)] = vals[u]
                e = i32(e + LOADS * NT)
            cuda.syncthreads()
            if r0 < th:  # else all of this thread row is past the output (whole warps idle)
                # columns tx >= tw read the tile's next row (inside the allocation) and
                # store nothing: no branch in the tap loop
                for r in range(ROWS):
                    acc[r] = zero
                a = i32(r0 * sH32 * IWe + tx * sW32)
                rstep = i32(sH32 * IWe)
                dstep = i32(dH32 * IWe)
                for i in range(kH):
                    aj = a
                    for j in range(kW):
                        wv = w[u64(k), 0, u64(i), u64(j)]  # the same for the block: broadcast
                        for r in range(ROWS):
                            acc[r] += sm[u32(aj + r * rstep)] * wv
                        aj = i32(aj + dW32)
                    a = i32(a + dstep)
                bv = zero
                if b.shape[0] != 0:
                    bv = b[u64(k)]
                if tx < tw:
                    for r in range(ROWS):
                        if r0 + r < th:
                            out[u64(n), u64(k), u64(oy0 + r0 + r), u64(ox0 + tx)] = acc[r] + bv
            item += cuda.gridDim.x

    return conv2d_depthwise


def _build_gemm(T, tiles, transposed_two_blocks=False):
    BM, BN, BK, TM, TN = tiles.BM, tiles.BN, tiles.BK, tiles.TM, tiles.TN
    NT = tiles.threads
    TXS = BN // TN
    RPT = BK * BN // NT  # B rows per thread
    AROWS = NT // BK  # channel rows per A-loader pass
    APT = BM * BK // NT  # A elements per thread
    ACC = TM * TN
    BKP = BK + 1  # padded row of As (no bank conflicts)
    zero = T(0.0)
    mma_chunk, zero_acc, stage_b_rows, store_tile = _gemm_functions(T, tiles)

    # Two blocks per SM, i.e. at most 128 registers, where that costs no spills: the float32
    # conv2d GEMMs (ptxas takes 119-126 on sm_90 unasked, 129 on sm_80) and the float32
    # conv_transpose2d GEMM with the narrow 2x4 register tile (134 unasked).  float64's
    # accumulators take twice the registers, and the 4x4 transposed tile spills at 128.
    # Larger blocks (configure(tiles_...)) would get fewer than 128 registers: no bounds.
    # The 4x4 transposed tile gets them only as autotuning's "wide2" arm (it spills 96 B).
    two_blocks = two_blocks_bounds(T, tiles)
    transposed_bounds = two_blocks if TM * TN <= 8 or transposed_two_blocks else {}

    @cuda.jit(cache=True, **two_blocks)
    def conv2d_gemm(x, w, b, out, kH, kW, sH, sW, pH, pW, dH, dW, groups):
        """Implicit GEMM; reduction index r = (c * kH + i) * kW + j (the weight's own order,
        so that ``w``, the weight viewed as (K, Cg*kH*kW), is indexed by it directly)."""
        As = cuda.shared.array((BM, BKP), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array(ACC, T)
        ra = cuda.local.array(TM, T)
        rb = cuda.local.array(TN, T)
        K = w.shape[0]
        R = w.shape[1]
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Kg = K // groups
        Cg = x.shape[1] // groups
        kk = kH * kW
        n_mt = (Kg + BM - 1) // BM
        n_pt = (P + BN - 1) // BN
        n_tiles = out.shape[0] * groups * n_mt * n_pt
        tid = cuda.threadIdx.x
        tx = tid % TXS
        ty = tid // TXS
        # BK as a mixed-radix step (c, i, j) of the B loader's counter
        bk_c = BK // kk
        bk_r = BK - bk_c * kk
        bk_i = bk_r // kW
        bk_j = bk_r - bk_i * kW
        # A loader: one reduction row, channels ma + AROWS * e
        kra = tid % BK
        ma = tid // BK
        # B loader: one pixel column, rows krb .. krb + RPT - 1
        pc = tid % BN
        krb = (tid // BN) * RPT
        for tile in range(cuda.blockIdx.x, n_tiles, cuda.gridDim.x):
            pt, mt, z = tile_coords(tile, n_pt, n_mt)
            n = z // groups
            g = z - n * groups
            kbase = g * Kg
            cbase = g * Cg
            m0 = mt * BM
            p0 = pt * BN
            pb = p0 + pc
            yb = pb // Wo
            iy0 = yb * sH - pH
            ix0 = (pb - yb * Wo) * sW - pW
            # a pixel column past the end loads zeros: no channel is below its bound
            c_end = Cg if pb < P else 0
            cb, ib, jb = split_row(krb, kH, kW)  # the B loader's counter of its first row
            zero_acc(acc)
            for k0 in range(0, R, BK):
                for e in range(APT):
                    m = ma + AROWS * e
                    v = zero
                    if m0 + m < Kg and k0 + kra < R:
                        v = w[kbase + m0 + m, k0 + kra]
                    As[m, kra] = v
                stage_b_rows(x, Bs, n, cbase, cb, ib, jb, c_end, iy0, ix0, dH, dW, kH, kW, krb, pc)
                cuda.syncthreads()
                mma_chunk(As, Bs, acc, ra, rb, tx, ty)
                cuda.syncthreads()
                cb, ib, jb = advance(cb, ib, jb, bk_c, bk_i, bk_j, kH, kW)
            store_tile(out, b, acc, n, kbase, m0, p0, tx, ty, Kg, P, Wo, 0, 1, 0, 1)

    @cuda.jit(cache=True, **transposed_bounds)
    def conv_transpose2d_gemm(x, w, b, out, sH, sW, pH, pW, dH, dW, groups, stepI, stepJ):
        """Implicit GEMM per output phase; reduction index r = (c * nI + mi) * nJ + mj.

        Tiles run over (pixel tile, channel tile, (image, group, phase)); the pixel tiles are
        counted for the largest phase, and a smaller phase skips the ones past its end.
        """
        As = cuda.shared.array((BM, BKP), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array(ACC, T)
        ra = cuda.local.array(TM, T)
        rb = cuda.local.array(TN, T)
        Cg = x.shape[1] // groups
        Kg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        Ho = out.shape[2]
        Wo = out.shape[3]
        n_mt = (Kg + BM - 1) // BM
        n_pt = (((Ho + sH - 1) // sH) * ((Wo + sW - 1) // sW) + BN - 1) // BN
        n_tiles = out.shape[0] * groups * sH * sW * n_mt * n_pt
        tid = cuda.threadIdx.x
        tx = tid % TXS
        ty = tid // TXS
        kra = tid % BK
        ma = tid // BK
        pc = tid % BN
        krb = (tid // BN) * RPT
        for tile in range(cuda.blockIdx.x, n_tiles, cuda.gridDim.x):
            pt, mt, t = tile_coords(tile, n_pt, n_mt)
            ax = t % sW
            t = t // sW
            ay = t % sH
            t = t // sH
            g = t % groups
            n = t // groups
            # output rows y = ay - pH + sH * u for u in [u0, u0 + Hp)
            u0 = -((ay - pH) // sH)
            Hp = (Ho - 1 + pH - ay) // sH - u0 + 1
            v0 = -((ax - pW) // sW)
            Wp = (Wo - 1 + pW - ax) // sW - v0 + 1
            p0 = pt * BN
            if Hp <= 0 or Wp <= 0 or p0 >= Hp * Wp:
                continue  # past the end of this (smaller) phase
            P = Hp * Wp
            cbase = g * Cg
            kbase = g * Kg
            # taps of this phase: i = i0 + mi * stepI, iy = u - (e0y + mi * esy)
            i0 = 0
            while i0 < kH and (i0 * dH - ay) % sH != 0:
                i0 += 1
            nI = 0
            if i0 < kH:
                nI = (kH - i0 + stepI - 1) // stepI
            e0y = (i0 * dH - ay) // sH
            esy = stepI * dH // sH
            j0 = 0
            while j0 < kW and (j0 * dW - ax) % sW != 0:
                j0 += 1
            nJ = 0
            if j0 < kW:
                nJ = (kW - j0 + stepJ - 1) // stepJ
            e0x = (j0 * dW - ax) // sW
            esx = stepJ * dW // sW
            taps = nI * nJ
            R = Cg * taps
            m0 = mt * BM
            pb = p0 + pc
            ub = pb // Wp
            iyb = u0 + ub - e0y
            ixb = v0 + (pb - ub * Wp) - e0x
            c_end = Cg if pb < P else 0
            bk_c = 0
            bk_i = 0
            bk_j = 0
            ca = 0
            ia = 0
            ja = 0
            cb = 0
            ib = 0
            jb = 0
            if taps > 0:
                bk_c = BK // taps
                bk_i = (BK - bk_c * taps) // nJ
                bk_j = BK - bk_c * taps - bk_i * nJ
                ca, ia, ja = split_row(kra, nI, nJ)
                cb, ib, jb = split_row(krb, nI, nJ)
            zero_acc(acc)
            for _k0 in range(0, R, BK):
                for e in range(APT):
                    m = ma + AROWS * e
                    v = zero
                    if m0 + m < Kg and ca < Cg:
                        v = w[cbase + ca, m0 + m, i0 + ia * stepI, j0 + ja * stepJ]
                    As[m, kra] = v
                # tap mi of the phase reads input row iyb - mi * esy
                stage_b_rows(x, Bs, n, cbase, cb, ib, jb, c_end, iyb, ixb, -esy, -esx, nI, nJ,
                             krb, pc)
                cuda.syncthreads()
                mma_chunk(As, Bs, acc, ra, rb, tx, ty)
                cuda.syncthreads()
                ca, ia, ja = advance(ca, ia, ja, bk_c, bk_i, bk_j, nI, nJ)
                cb, ib, jb = advance(cb, ib, jb, bk_c, bk_i, bk_j, nI, nJ)
            # output pixel of phase pixel p: (ay - pH + sH * (u0 + p // Wp), ax - pW + ...)
            store_tile(out, b, acc, n, kbase, m0, p0, tx, ty, Kg, P, Wp,
                       ay - pH + sH * u0, sH, ax - pW + sW * v0, sW)

    return conv2d_gemm, conv_transpose2d_gemm
