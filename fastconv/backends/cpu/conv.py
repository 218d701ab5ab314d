"""CPU ``conv2d`` / ``conv_transpose2d``: register-blocked numba kernels.

The micro-kernel
----------------
Every path accumulates a register tile: ``KB`` output channels x ``NV`` SIMD vectors
(``L`` = 16 float32 / 8 float64 lanes on AVX-512; 8 / 4 on AVX2) of consecutive output
pixels, updated per (input channel, tap) by ``NV`` vector loads, ``KB`` weight broadcasts
and ``KB*NV`` fused multiply-adds -- the outer-product micro-kernel.  The tile is one LLVM
SSA value of type ``[KB*NV x <L x T>]`` built by the numba intrinsics below, so it lives
in registers (LLVM's loop vectoriser picks 256-bit vectors on AVX-512 parts and keeps
reductions in memory; measured ~190 GFLOP/s/core in L1 vs ~25 for prange loops).
``(KB, NV)`` is chosen per call from the channel count and width (``_choose_tile``).

Algorithms (chosen per call)
----------------------------
row kernel (``_make_rows_kernel``): dense, grouped, strided, dilated conv2d and every
conv_transpose2d.  A work item is one output row (all channels of one image / group).
The input rows it reads are packed (zero padding, channel-interleaved, the W stride split
into column phases so that every tap reads contiguous columns) into a per-thread ring of
packed rows, so consecutive output rows re-use them; weights are packed once per call into
one sequential stream per channel block (conv2d layers with at most ``_DIRECT_PIXELS``
output pixels read them in place instead: packing would cost as much as the convolution).
The reduction is blocked over input channels so the rows a tile reads stay in L1 while
every channel block re-uses them; partial sums live in a per-thread row buffer, and bias
is added when the row is written.  Taps that read a row of zero padding (the top and
bottom kernel rows of a dilated conv near the border: 6-36 % of an ASPP branch's
multiply-adds on 33x33 to 64x64 maps) are not computed when every weight is finite --
they would add exact zeros; an inf/NaN weight must still turn the padding into NaN, as in
the oracle.

flat layout (same kernel, ``_choose_flat``): stride-1 conv2d whose width is not a multiple
of the tile (56 -> 64 columns) or small images (7x7, 14x14): a block of output rows is
packed channel-major at width ``Wo + dW*(kW-1)``, so output pixel ``f = y*Wq + x`` and tap
``(i, j)`` read ``f + i*dH*Wq + j*dW`` -- tiles run across row ends and only the
``dW*(kW-1)`` pad columns per row are wasted.

channel-vectorised tile (same kernel, ``_choose_cv``; conv2d): the tile's roles swapped --
``KB`` consecutive output pixels x ``NV`` vectors of output channels, updated by ``NV``
(aligned) weight-vector loads and ``KB`` input broadcasts, so no lane is spent past a row
end; a work item covers several output rows (~512 pixels) so each block of weights is
streamed once per item.  Chosen where the row tile wastes lanes and the flat layout does not
fit or pads too much: DeepLabv3's 33x33 ASPP branches (33 of 48 lanes), 65x65 maps.

conv_transpose2d is decomposed by output phase ``(y mod sH, x mod sW)``: each phase is an
ordinary stride-1 correlation of the input with the taps that land on it (4 of 256 taps
for a 16x16 kernel at stride 8), so nothing is spent on inserted zeros and there is no
col2im scatter-add; the ``sW`` column phases of a row are computed into the row buffer and
interleaved by SIMD shuffles (``sW`` in 2, 4, 8; scalar otherwise).  Phases without taps
get the bias.

depthwise kernel (``C_in/groups == 1``): each item pads one channel plane into an
L1-sized buffer and runs the tile over (channel multiplier, pixels) straight into the
output: the op streams its input and output once.

pointwise kernel (1x1 kernels, ``_make_pw_kernel``): a GEMM over the image's pixels taken as
one flat run.  An item packs, per block of 128 input channels, a panel of a few SIMD tiles
of pixels (strided / padded input gathered there) and runs the tile over (output channels,
pixels) with the weights read in place, accumulating in the output itself; masked tile
loads and stores keep the image's last pixels and the shifted last channel block exact.

Planning
--------
Which algorithm, tile and index tables a call uses depends only on the shapes, dtype,
parameters and thread count, so ``_conv2d_plan`` / ``_conv_transpose2d_plan`` memoise them
per geometry (a ``NamedTuple`` with a ``launch`` method): a layer called again only packs
its weights and launches.  The test hooks' and tuning constants' values are part of the
key (``_knobs``).

Threads
-------
One ``prange`` region per call.  Items are split into one contiguous range per thread
(consecutive rows re-use packed rows); a thread that finishes takes the rest of the
other ranges (atomic counters), so a thread the OS deschedules holds back no work.  Small
images are also split over output-channel groups; weights larger than L2 are split into
one channel slice per thread.  ``numba.set_num_threads`` is respected.

All kernels accumulate in the input dtype with fused multiply-adds; NaN/Inf propagate
(no ``nnan``/``ninf`` fast-math).  conv2d's out-of-image taps multiply zeros (like
PyTorch's zero-padded convolution, so an infinite weight next to the border gives NaN).
conv_transpose2d multiplies only real inputs, as the oracle's scatter (and PyTorch's CPU
path) does; its phase kernels would multiply the zeros outside the image too, which only
an inf/NaN weight can tell apart, so weights that are not all finite (found while packing
them) go to the gathering kernel ``_conv_transpose2d_gather`` instead.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ._config import SERIAL_JIT_OPTIONS, multiply_add, parallel_kernel, target_cpu_features

__all__ = ["conv2d", "conv_transpose2d"]

# --------------------------------------------------------------------------------------
# SIMD register tiles (numba intrinsics emitting explicit LLVM vector code)
# --------------------------------------------------------------------------------------



def _target_simd() -> tuple[int, int]:
    """(bytes per SIMD register, number of SIMD registers) of numba's compilation target:
    AVX-512 (64, 32), AVX/AVX2 (32, 16), otherwise SSE/NEON-like (16, 16).  Follows
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when they are set."""
    flags = target_cpu_features()
    if "+avx512f" in flags:
        return 64, 32
    if "+avx2" in flags or "+avx" in flags:
        return 32, 16
    return 16, 16


#: bytes per SIMD register the tiles are built from, and registers available to a tile.
#: (Compiled kernels are cached per CPU model and feature set, so this is consistent
#: with the cache.)
VEC_BYTES, _NREGS = _target_simd()


def _lanes(dtype) -> int:
    return VEC_BYTES // (dtype.bitwidth // 8)


class TileType(types.Type):
    """``KB x NV`` SIMD vectors of ``dtype`` held as one SSA value (in registers)."""

    def __init__(self, dtype, kb, nv):
        self.dtype, self.kb, self.nv = dtype, kb, nv
        super().__init__(name=f"Tile({dtype}, {kb}, {nv})")


@register_model(TileType)
class _TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = dmm.lookup(fe_type.dtype).get_value_type()
        vec = ir.VectorType(elt, _lanes(fe_type.dtype))
        super().__init__(dmm, fe_type, ir.ArrayType(vec, fe_type.kb * fe_type.nv))


_I64 = ir.IntType(64)


def _c64(n):
    return ir.Constant(_I64, n)


def _axpy(builder, base, stride, k):
    """``base + stride*k`` (i64 values, ``k`` a Python int)."""
    return builder.add(base, builder.mul(stride, _c64(k)))


def _as_i64(builder, value, ty):
    if isinstance(ty, types.Integer) and ty.bitwidth < 64:
        return builder.sext(value, _I64) if ty.signed else builder.zext(value, _I64)
    return value


def _data_ptr(context, builder, aryty, ary, index):
    """Address of ``ary.ravel()[index]`` (no bounds or wraparound checks)."""
    a = context.make_array(aryty)(context, builder, ary)
    return builder.gep(a.data, [index])


def _vec_ptr(builder, ptr, vecty):
    return builder.bitcast(ptr, vecty.as_pointer())


def _splat(builder, scalar, vecty):
    v = builder.insert_element(ir.Constant(vecty, ir.Undefined), scalar,
                               ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vecty.count), [0] * vecty.count)
    return builder.shuffle_vector(v, ir.Constant(vecty, ir.Undefined), mask)


def _literal(ty):
    return ty.literal_value if isinstance(ty, types.IntegerLiteral) else None


def _tile_vecty(context, tt):
    return ir.VectorType(context.get_value_type(tt.dtype), _lanes(tt.dtype))


@intrinsic
def tile_zero(typingctx, like, kb, nv):
    """A zero tile of ``like.dtype`` with ``kb`` x ``nv`` vectors (literal ints)."""
    KB, NV = _literal(kb), _literal(nv)
    if KB is None or NV is None or not isinstance(like, types.Array):
        return None
    tt = TileType(like.dtype, KB, NV)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(tt), None)

    return tt(like, kb, nv), codegen


@intrinsic
def tile_zero_like(typingctx, like):
    """A zero tile of the same shape and dtype as ``like``."""
    if not isinstance(like, TileType):
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(sig.return_type), None)

    return like(like), codegen


@intrinsic
def tile_dims(typingctx, like):
    """``(KB, NV)`` of a tile type, as compile-time constants."""
    if not isinstance(like, TileType):
        return None
    kb, nv = like.kb, like.nv

    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, sig.return_type,
                                  [_c64(kb), _c64(nv)])

    return types.UniTuple(types.int64, 2)(like), codegen


@intrinsic
def tile_load(typingctx, like, buf, base, kstride):
    """Tile of ``like``'s shape with vector ``(k, v)`` = ``buf[base + k*kstride + v*L :][:L]``."""
    if not isinstance(like, TileType):
        return None

    def codegen(context, builder, sig, args):
        tt = sig.args[0]
        _, bufv, b, ks = args
        b = _as_i64(builder, b, sig.args[2])
        ks = _as_i64(builder, ks, sig.args[3])
        L = _lanes(tt.dtype)
        vecty = _tile_vecty(context, tt)
        acc = ir.Constant(context.get_value_type(tt), None)
        for k in range(tt.kb):
            row = builder.add(b, builder.mul(ks, _c64(k)))
            for v in range(tt.nv):
                p = _data_ptr(context, builder, sig.args[1], bufv, builder.add(row, _c64(v * L)))
                val = builder.load(_vec_ptr(builder, p, vecty), align=1)
                acc = builder.insert_value(acc, val, k * tt.nv + v)
        return acc

    return like(like, buf, base, kstride), codegen


@intrinsic
def tile_store(typingctx, acc, buf, base, kstride):
    """``buf[base + k*kstride + v*L :][:L] = acc[k, v]``."""
    if not isinstance(acc, TileType):
        return None

    def codegen(context, builder, sig, args):
        tt = sig.args[0]
        accv, bufv, b, ks = args
        b = _as_i64(builder, b, sig.args[2])
        ks = _as_i64(builder, ks, sig.args[3])
        L = _lanes(tt.dtype)
        vecty = _tile_vecty(context, tt)
        for k in range(tt.kb):
            row = builder.add(b, builder.mul(ks, _c64(k)))
            for v in range(tt.nv):
                p = _data_ptr(context, builder, sig.args[1], bufv, builder.add(row, _c64(v * L)))
                val = builder.extract_value(accv, k * tt.nv + v)
                st = builder.store(val, _vec_ptr(builder, p, vecty))
                st.align = 1
        return context.get_dummy_value()

    return types.none(acc, buf, base, kstride), codegen


def _masked_io(builder, vecty, ptr, mask, val=None):
    """``llvm.masked.store`` of ``val`` (or, without ``val``, ``llvm.masked.load`` with
    zeros in the masked-off lanes) at ``ptr``: lanes off the mask touch no memory."""
    suffix = "f32" if isinstance(vecty.element, ir.FloatType) else "f64"
    masky = ir.VectorType(ir.IntType(1), vecty.count)
    align = ir.Constant(ir.IntType(32), 1)
    if val is not None:
        fnty = ir.FunctionType(ir.VoidType(), [vecty, vecty.as_pointer(), ir.IntType(32), masky])
        name = f"llvm.masked.store.v{vecty.count}{suffix}.p0"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        return builder.call(fn, [val, ptr, align, mask])
    fnty = ir.FunctionType(vecty, [vecty.as_pointer(), ir.IntType(32), masky, vecty])
    name = f"llvm.masked.load.v{vecty.count}{suffix}.p0"
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, [ptr, align, mask, ir.Constant(vecty, None)])


def _tile_masked_codegen(context, builder, tt, aryty, bufv, b, ks, klo, nn, accv=None):
    """Masked tile I/O at ``buf[b + k*ks + v*L + l]``, only for rows ``k >= klo`` and
    columns ``v*L + l < nn``: stores ``accv`` when given, else returns the loaded tile
    (zeros elsewhere)."""
    L = _lanes(tt.dtype)
    vecty = _tile_vecty(context, tt)
    lanes = ir.VectorType(_I64, L)
    lane = ir.Constant(lanes, list(range(L)))
    nvec = _splat(builder, nn, lanes)
    colmask = [builder.icmp_signed("<", builder.add(lane, ir.Constant(lanes, [v * L] * L)),
                                   nvec) for v in range(tt.nv)]
    masky = ir.VectorType(ir.IntType(1), L)
    acc = ir.Constant(context.get_value_type(tt), None)
    for k in range(tt.kb):
        row = builder.add(b, builder.mul(ks, _c64(k)))
        rowon = _splat(builder, builder.icmp_signed("<=", klo, _c64(k)), masky)
        for v in range(tt.nv):
            p = _vec_ptr(builder, _data_ptr(context, builder, aryty, bufv,
                                            builder.add(row, _c64(v * L))), vecty)
            mask = builder.and_(colmask[v], rowon)
            if accv is None:
                acc = builder.insert_value(acc, _masked_io(builder, vecty, p, mask),
                                           k * tt.nv + v)
            else:
                _masked_io(builder, vecty, p, mask, builder.extract_value(accv, k * tt.nv + v))
    return acc if accv is None else context.get_dummy_value()


def _masked_args(builder, sig, args):
    """``(base, kstride, klo, n)`` of a masked tile intrinsic as i64 values."""
    return [_as_i64(builder, v, t) for v, t in zip(args[2:6], sig.args[2:6], strict=True)]


@intrinsic
def tile_store_mask(typingctx, acc, buf, base, kstride, klo, n):
    """``buf[base + k*kstride + j] = acc[k, j // L][j % L]`` for rows ``k >= klo`` and
    columns ``j < n`` only (a masked store: nothing else is written)."""
    if not isinstance(acc, TileType):
        return None

    def codegen(context, builder, sig, args):
        return _tile_masked_codegen(context, builder, sig.args[0], sig.args[1], args[1],
                                    *_masked_args(builder, sig, args), args[0])

    return types.none(acc, buf, base, kstride, klo, n), codegen


@intrinsic
def tile_load_mask(typingctx, like, buf, base, kstride, klo, n):
    """``tile_load`` of rows ``k >= klo`` and columns ``j < n`` only (zeros elsewhere; no
    other memory is read)."""
    if not isinstance(like, TileType):
        return None

    def codegen(context, builder, sig, args):
        return _tile_masked_codegen(context, builder, sig.args[0], sig.args[1], args[1],
                                    *_masked_args(builder, sig, args))

    return like(like, buf, base, kstride, klo, n), codegen


@intrinsic
def tile_bcast(typingctx, like, arr, index, stride):
    """Tile of ``like``'s shape with every lane of row ``k`` = ``arr[index + k*stride]``."""
    if not isinstance(like, TileType):
        return None

    def codegen(context, builder, sig, args):
        tt = sig.args[0]
        _, av, idx, st = args
        idx = _as_i64(builder, idx, sig.args[2])
        st = _as_i64(builder, st, sig.args[3])
        vecty = _tile_vecty(context, tt)
        acc = ir.Constant(context.get_value_type(tt), None)
        for k in range(tt.kb):
            p = _data_ptr(context, builder, sig.args[1], av, _axpy(builder, idx, st, k))
            scalar = context.cast(builder, builder.load(p), sig.args[1].dtype, tt.dtype)
            val = _splat(builder, scalar, vecty)
            for v in range(tt.nv):
                acc = builder.insert_value(acc, val, k * tt.nv + v)
        return acc

    return like(like, arr, index, stride), codegen


@intrinsic
def _interleave_store(typingctx, out, obase, buf, bbase, bstride, bias, pw):
    """``out[obase + tx*PW + rx] = buf[bbase + rx*bstride + tx] + bias`` for ``tx < L`` and
    ``rx < PW`` (``PW`` a literal): PW vector loads, one shuffle, contiguous stores --
    the column-phase interleave of conv_transpose2d's epilogue."""
    PW = _literal(pw)
    if PW is None or not (isinstance(out, types.Array) and isinstance(buf, types.Array)):
        return None

    def codegen(context, builder, sig, args):
        outv, ob, bufv, bb, bs, bias_v, _ = args
        if PW < 1:
            return context.get_dummy_value()
        ob = _as_i64(builder, ob, sig.args[1])
        bb = _as_i64(builder, bb, sig.args[3])
        bs = _as_i64(builder, bs, sig.args[4])
        dt = sig.args[0].dtype
        L = _lanes(dt)
        elt = context.get_value_type(dt)
        vecty = ir.VectorType(elt, L)
        bvec = _splat(builder, context.cast(builder, bias_v, sig.args[5], dt), vecty)
        vecs = []
        for rx in range(PW):
            p = _data_ptr(context, builder, sig.args[2], bufv, _axpy(builder, bb, bs, rx))
            v = builder.load(_vec_ptr(builder, p, vecty), align=1)
            vecs.append(builder.fadd(v, bvec))
        # concatenate to one PW*L vector (pad to a power of two), then interleave
        n = 1
        while n < PW:
            n *= 2
        vecs += [ir.Constant(vecty, ir.Undefined)] * (n - PW)
        width = L
        while len(vecs) > 1:
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * width), list(range(2 * width)))
            vecs = [builder.shuffle_vector(vecs[i], vecs[i + 1], mask)
                    for i in range(0, len(vecs), 2)]
            width *= 2
        allv = vecs[0]
        perm = [rx * L + tx for tx in range(L) for rx in range(PW)]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), PW * L), perm)
        inter = builder.shuffle_vector(allv, ir.Constant(allv.type, ir.Undefined), mask)
        p = _data_ptr(context, builder, sig.args[0], outv, ob)
        st = builder.store(inter, builder.bitcast(p, inter.type.as_pointer()))
        st.align = 1
        return context.get_dummy_value()

    return types.none(out, obase, buf, bbase, bstride, bias, pw), codegen


@intrinsic
def tile_fma(typingctx, acc, xs, xoff, ws, woff, wstride):
    """Outer-product update ``acc[k, v] += ws[woff + k*wstride] * xs[xoff + v*L :][:L]``."""
    if not isinstance(acc, TileType):
        return None

    def codegen(context, builder, sig, args):
        tt = sig.args[0]
        accv, xv, xo, wv, wo, wst = args
        xo = _as_i64(builder, xo, sig.args[2])
        wo = _as_i64(builder, wo, sig.args[4])
        wst = _as_i64(builder, wst, sig.args[5])
        L = _lanes(tt.dtype)
        vecty = _tile_vecty(context, tt)
        xvecs = []
        for v in range(tt.nv):
            p = _data_ptr(context, builder, sig.args[1], xv, builder.add(xo, _c64(v * L)))
            xvecs.append(builder.load(_vec_ptr(builder, p, vecty), align=1))
        for k in range(tt.kb):
            p = _data_ptr(context, builder, sig.args[3], wv, _axpy(builder, wo, wst, k))
            w = _splat(builder, builder.load(p), vecty)
            for v in range(tt.nv):
                i = k * tt.nv + v
                prod = multiply_add(builder, xvecs[v], w, builder.extract_value(accv, i))
                accv = builder.insert_value(accv, prod, i)
        return accv

    return acc(acc, xs, xoff, ws, woff, wstride), codegen


@intrinsic
def _ld(typingctx, ary, index):
    """``ary.ravel()[index]`` without wraparound/bounds handling (lets loops vectorise)."""
    if not isinstance(ary, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        idx = _as_i64(builder, args[1], sig.args[1])
        return builder.load(_data_ptr(context, builder, sig.args[0], args[0], idx))

    return ary.dtype(ary, index), codegen


@intrinsic
def _st(typingctx, ary, index, value):
    """``ary.ravel()[index] = value`` without wraparound/bounds handling."""
    if not isinstance(ary, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        idx = _as_i64(builder, args[1], sig.args[1])
        val = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        builder.store(val, _data_ptr(context, builder, sig.args[0], args[0], idx))
        return context.get_dummy_value()

    return types.none(ary, index, value), codegen


@intrinsic
def _next_item(typingctx, counter):
    """Atomically ``counter[0] += 1``; returns the old value (a shared work queue for the
    threads of one ``prange``: a thread that the OS deschedules does not hold back work)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        p = _data_ptr(context, builder, sig.args[0], args[0], _c64(0))
        return builder.atomic_rmw("add", p, _c64(1), "monotonic")

    return types.int64(counter), codegen


@numba.njit(**SERIAL_JIT_OPTIONS)
def _take_item(counters, worker, nitems, state):
    """The next work item for ``worker`` of ``counters.size`` (-1 when none is left).

    Worker ``w`` owns items ``[w*nitems/nw, (w+1)*nitems/nw)`` and takes them in order
    (consecutive items re-use what it has cached); once they are gone it takes the
    remaining items of the other ranges, so a thread the OS deschedules holds back no
    work.  ``state[0]`` (0 at the start) is the range being drained."""
    nw = counters.size
    while state[0] < nw:
        owner = (worker + state[0]) % nw
        item = owner * nitems // nw + _next_item(counters[owner:owner + 1])
        if item < (owner + 1) * nitems // nw:
            return item
        state[0] += 1
    return -1


# --------------------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------------------


@numba.njit(**SERIAL_JIT_OPTIONS)
def _pack_row(x, xp, base, n, g, r, G, pt, pl, sW, Wq):
    """Packed input row ``r`` of image ``n``, group ``g`` into ``xp[base:]``: for every channel
    ``c`` of the group and W-stride phase ``ph``, ``Wq`` columns

        xp[base + c*RL + ph*Wq + q] = x[n, g*Cg + c, r - pt, q*sW + ph - pl]

    (zero outside the image), ``RL = sW*Wq``: zero padding, and every tap of a strided
    convolution reads contiguous columns.
    """
    N, C, H, W = x.shape
    Cg = C // G
    RL = sW * Wq
    h = r - pt
    if h < 0 or h >= H:
        for q in range(Cg * RL):
            _st(xp, base + q, 0)
        return
    for c in range(Cg):
        src = ((n * C + g * Cg + c) * H + h) * W
        for ph in range(sW):
            dst = base + c * RL + ph * Wq
            # columns q with 0 <= q*sW + ph - pl < W
            q0 = min(Wq, max(0, (pl - ph + sW - 1) // sW))
            q1 = min(Wq, max(q0, (W + pl - ph + sW - 1) // sW))
            for q in range(q0):
                _st(xp, dst + q, 0)
            if sW == 1:
                s0 = src - pl
                for q in range(q0, q1):
                    _st(xp, dst + q, _ld(x, s0 + q))
            else:
                s0 = src + ph - pl
                for q in range(q0, q1):
                    _st(xp, dst + q, _ld(x, s0 + q * sW))
            for q in range(q1, Wq):
                _st(xp, dst + q, 0)


#: largest block of packed weights (one group's channel block) that _pack_weights fills
#: one output channel at a time, for kernels of more than one tap.  Measured, 1 thread:
#: 256x256x3x3 (blocks of 55 KB) 0.39-0.42 ms that way against 0.60-0.65 in write order;
#: 512x512x3x3 (221 KB) 2.40-2.52 against 1.92-2.08.  1x1 kernels always go in write
#: order: 2048->512 in blocks of 98 KB 2.02-2.10 against 0.82-0.85, of 49 KB 2.92
#: against 1.27, 1024->256 (25 KB) 0.70 against 0.31.
_PACK_BY_CHANNEL_BYTES = 64 * 1024


@numba.njit(**SERIAL_JIT_OPTIONS)
def _pack_weights(w, transposed, G, KB, nkb, ntap, wtap, wp,
                  by_channel_bytes=_PACK_BY_CHANNEL_BYTES):
    """Fill ``wp`` with the weights as one sequential stream per (phase p, group g, block kb);
    return whether every packed weight is finite:

    ``wp[wofs_p + (((g*nkb + kb)*Cg + c)*T_p + t)*KB + kk]`` = the weight of output channel
    ``k0 + kk`` (``k0 = min(kb*KB, Kg - KB)``: the last block is shifted back to end at Kg),
    input channel ``c`` and tap ``wtap[p, t]`` (flat ``i*kW + j``) of group ``g``.  ``w`` is
    (K, Cg, kH, kW) for conv2d and (C, Kg, kH, kW) for conv_transpose2d.  Blocks of up to
    ``by_channel_bytes`` are filled one output channel at a time, larger ones in write
    order (the same stream either way).  Serial, as a parallel pass would add a thread
    barrier; conv2d layers whose packing would cost about as much as the convolution read
    their weights in place instead (``_DIRECT_PIXELS``).
    """
    finite = True
    if transposed:
        C, Kg = w.shape[0], w.shape[1]
        Cg = C // G
    else:
        K, Cg = w.shape[0], w.shape[1]
        Kg = K // G
    KK = w.shape[2] * w.shape[3]
    # source strides of output channel k and input channel c
    sk, sc = (KK, Kg * KK) if transposed else (Cg * KK, KK)
    P = ntap.shape[0]
    wofs = 0
    for p in range(P):
        T = ntap[p]
        for g in range(G):
            for kb in range(nkb):
                k0 = min(kb * KB, Kg - KB)
                src0 = (g * Cg * Kg + k0) * KK if transposed else (g * Kg + k0) * Cg * KK
                dst = wofs + (g * nkb + kb) * Cg * T * KB
                if T > 1 and Cg * T * KB * w.itemsize <= by_channel_bytes:
                    # one pass per output channel, reading its weights in order (its writes,
                    # T at a time, stay in a block small enough for L1/L2)
                    for kk in range(KB):
                        for c in range(Cg):
                            src = src0 + kk * sk + c * sc
                            for t in range(T):
                                v = _ld(w, src + wtap[p, t])
                                finite &= v - v == 0  # False for inf and NaN
                                _st(wp, dst + (c * T + t) * KB + kk, v)
                    continue
                # larger blocks are written in order, the KB channels of a tap read from KB
                # rows of w at a time
                for c in range(Cg):
                    for t in range(T):
                        src = src0 + c * sc + wtap[p, t]
                        for kk in range(KB):
                            v = _ld(w, src + kk * sk)
                            finite &= v - v == 0
                            _st(wp, dst, v)
                            dst += 1
        wofs += G * nkb * Cg * T * KB
    return finite


# --------------------------------------------------------------------------------------
# the generic row kernel
# --------------------------------------------------------------------------------------

@numba.njit(**SERIAL_JIT_OPTIONS)
def _tile_reduce(proto, first, buf, bofs, bstride, xbuf, x0, RL, itap, tb0, wp, wc, T, WB,
                 c0, c1, t0, t1, channel_vectors, wks):
    """One register tile's share of the reduction, ``buf[bofs:]`` (rows ``bstride`` apart;
    zero first when ``first``) += the sum over channels ``c0 <= c < c1`` and taps
    ``t0 <= t < t1`` of input ``xbuf[x0 + c*RL + itap[tb0 + t] ...]`` times weights
    ``wp[wc + (c*T + t)*WB ...]``.  The row tile vectorises the input (consecutive output
    pixels) and broadcasts the weights of its channels ``wks`` apart (1 in the packed
    stream; ``Cg*kH*kW`` for weights read in place, ``WB = 1``); with ``channel_vectors``
    the weights are the vectors (``WB`` output channels) and the input is broadcast.
    ``channel_vectors`` and ``wks`` are constants at every call site."""
    if first:
        acc = tile_zero_like(proto)
    else:
        acc = tile_load(proto, buf, bofs, bstride)
    for c in range(c0, c1):
        xc = x0 + c * RL
        wo = wc + c * T * WB
        for t in range(t0, t1):
            if channel_vectors:
                acc = tile_fma(acc, wp, wo + t * WB, xbuf, xc + itap[tb0 + t], 1)
            else:
                acc = tile_fma(acc, xbuf, xc + itap[tb0 + t], wp, wo + t * WB, wks)
    tile_store(acc, buf, bofs, bstride)


@numba.njit(**SERIAL_JIT_OPTIONS)
def _phase_tiles(proto, xbuf, wp, buf, pb, itap, tb0, T, t0, t1, wg, Cg, CB, kb0, kb1, nxb,
                 Wt, RL, direct_kg):
    """One output phase of one work item: for channel blocks ``kb0 <= kb < kb1``, every
    column tile and reduction block, ``buf[pb + k*Wt + x]`` = sum over (c, t) of
    ``wp[...] * xbuf[c*RL + x + itap[tb0 + t]]``, in ``KB x NV`` register tiles.

    The phase has ``T`` taps (the weight stream's stride); only taps ``t0 <= t < t1`` are
    summed (the caller drops taps that read only zero padding).  ``direct_kg > 0`` (a
    constant at each call site): ``wp`` is conv2d's (K, Cg, kH, kW) weight array itself,
    ``wg`` its group's first element and ``direct_kg`` the channels per group."""
    KB, NV = tile_dims(proto)
    TW = NV * _lanes_of(buf)
    for c0 in range(0, Cg, CB):
        c1 = min(c0 + CB, Cg)
        for kb in range(kb0, kb1):
            if direct_kg > 0:  # rows of the shifted block k0, channels Cg*T apart
                wk = wg + min(kb * KB, direct_kg - KB) * Cg * T
            else:  # the block's stream, channels adjacent
                wk = wg + kb * Cg * T * KB
            for xb in range(nxb):
                x0 = xb * TW
                _tile_reduce(proto, c0 == 0, buf, pb + kb * KB * Wt + x0, Wt, xbuf, x0, RL,
                             itap, tb0, wp, wk, T, 1 if direct_kg > 0 else KB, c0, c1, t0, t1,
                             False, Cg * T if direct_kg > 0 else 1)


@numba.njit(**SERIAL_JIT_OPTIONS)
def _phase_tiles_cv(proto, xbuf, wp, buf, itap, Tmax, tlo, thi, nr, PS, wg, T, Cg, CB, kb0, kb1,
                    ncols, Kpad, RL):
    """``_phase_tiles`` with the tile's roles swapped (channel-vectorised), for the ``nr``
    output rows of a work item: a tile is ``KP`` consecutive output pixels x ``NV`` vectors
    of output channels, updated per (c, t) by ``NV`` weight-vector loads and ``KP`` input
    broadcasts.  No lane is spent past the row end, so it suits widths that are not a
    multiple of the SIMD tile (33 columns use 33 of 48 lanes of the row tile; 7, 14, 65).

    Row ``yy`` reads taps ``tlo[yy] <= t < thi[yy]`` at ``itap[yy*Tmax + t]`` and sums into
    ``buf[yy*PS + bx*Kpad + k]``: pixel tile ``xb`` is stored at buffer pixels
    ``bx = xb*KP + i``; the last tile reads the input shifted back to end at ``ncols``
    (overlapping the one before, which has its own buffer pixels, so nothing is summed
    twice).  The weight stream has blocks of ``NV*L`` output channels; a channel block's
    weights stay in L1 while every row and pixel tile of the item re-uses them."""
    KP, NV = tile_dims(proto)
    TWc = NV * _lanes_of(buf)
    npx = (ncols + KP - 1) // KP
    for c0 in range(0, Cg, CB):
        c1 = min(c0 + CB, Cg)
        for kb in range(kb0, kb1):
            wk = wg + kb * Cg * T * TWc
            for yy in range(nr):
                tb0 = yy * Tmax
                t0 = tlo[yy]
                t1 = thi[yy]
                for xb in range(npx):
                    _tile_reduce(proto, c0 == 0, buf, yy * PS + xb * KP * Kpad + kb * TWc, Kpad,
                                 xbuf, min(xb * KP, ncols - KP), RL, itap, tb0, wp, wk, T, TWc,
                                 c0, c1, t0, t1, True, 1)


@numba.njit(**SERIAL_JIT_OPTIONS)
def _pack_block(x, xbuf, n, g, G, r0, nrows, pt, pl, Wq, RL):
    """Flat layout: ``xbuf[c*RL + r*Wq + q] = x[n, g*Cg + c, r0 + r - pt, q - pl]`` (zero
    outside) for ``r < nrows``: the rows of a block of output rows, channel-major, so that
    output pixel (y, x) of the block and tap (i, j) read ``f + i*dH*Wq + j*dW`` with
    ``f = y*Wq + x`` -- contiguous across row ends (stride 1 only)."""
    N, C, H, W = x.shape
    Cg = C // G
    q0 = min(Wq, pl)
    q1 = min(Wq, W + pl)
    for c in range(Cg):
        src0 = (n * C + g * Cg + c) * H * W
        for r in range(nrows):
            dst = c * RL + r * Wq
            h = r0 + r - pt
            if h < 0 or h >= H:
                for q in range(Wq):
                    _st(xbuf, dst + q, 0)
                continue
            s0 = src0 + h * W - pl
            for q in range(q0):
                _st(xbuf, dst + q, 0)
            for q in range(q0, q1):
                _st(xbuf, dst + q, _ld(x, s0 + q))
            for q in range(q1, Wq):
                _st(xbuf, dst + q, 0)


@numba.njit(**SERIAL_JIT_OPTIONS)
def _ring_pack(x, xbuf, tags, slot_q, padding_q, rowoffs, ry, r0, kbase, NS, rowsz, n, g, G,
               pt, pl, sWp, Wq):
    """The packed input rows ``r = r0 + rowoffs[ry, 1 + q]`` that one output row reads,
    packed into the ring unless a slot holds them already (``tags``; packed row ``r`` of
    (n, g) has key ``kbase + r`` and lives in slot ``key % NS``): ``slot_q[q]`` = the slot,
    ``padding_q[q]`` = whether the row is all zero padding."""
    H = x.shape[2]
    for q in range(rowoffs[ry, 0]):
        r = r0 + rowoffs[ry, 1 + q]
        key = kbase + r
        slot = key % NS
        if tags[slot] != key:
            _pack_row(x, xbuf, slot * rowsz, n, g, r, G, pt, pl, sWp, Wq)
            tags[slot] = key
        slot_q[q] = slot
        h = r - pt
        padding_q[q] = h < 0 or h >= H


@numba.njit(**SERIAL_JIT_OPTIONS)
def _phase_taps(itap, tb0, trow, tcol, p, T, slot_q, padding_q, rowsz, skip_padding):
    """``itap[tb0 + t]`` = where tap ``t`` of phase ``p`` reads in the ring; returns the taps
    ``[t0, t1)`` to compute.  The leading and trailing taps that read a row of zero padding
    add exact zeros when the weights are finite (``skip_padding``): they are dropped (for a
    dilated conv near the top and bottom, whole kernel rows)."""
    for t in range(T):
        itap[tb0 + t] = slot_q[trow[p, t]] * rowsz + tcol[p, t]
    t0 = 0
    t1 = T
    if skip_padding:
        while t0 < t1 and padding_q[trow[p, t0]]:
            t0 += 1
        while t1 > t0 and padding_q[trow[p, t1 - 1]]:
            t1 -= 1
    return t0, t1


# geometry vector indices
(_N, _G, _CG, _KG, _NKB, _NXB, _CB, _RL, _PH, _PW, _HO, _WO, _OYS, _PSTEP, _TYMAX, _HROWS, _PT,
 _PL, _SWP, _WQ, _NS, _FLAT, _NKG, _SKIP, _CVR) = range(25)
# per-phase table columns: output rows / cols of the phase, its taps, its weight offset
_TY, _TX, _NTAP, _WOFS = range(4)

_ROWS_KERNELS: dict = {}

# test hooks: force a register tile ``(KB, NV)``, route depthwise shapes through the row
# kernel, or force the size of the packed-row ring (tests/test_cpu_conv_paths.py)
_FORCE_TILE = None
_USE_DEPTHWISE = True
_FORCE_RING = None
_FORCE_FLAT = None  # None: choose; 0: never; R > 0: flat layout with R rows per item
_FORCE_KGROUPS = None
_SKIP_PADDING = True  # False: every tap is computed, also those on zero-padding rows
_FORCE_CV = None  # None: choose; False: never; True: the channel-vectorised tile when it applies
_FORCE_CV_ROWS = None  # output rows per work item of the channel-vectorised tile
_FORCE_DIRECT = None  # None: choose; True/False: conv2d weights read in place / packed
#: read conv2d weights in place (no packed stream) when the layer has at most this many
#: output pixels per batch: each weight is then used by few multiply-adds.  Measured
#: against packing, 1 thread: 7x7 and 10x10 maps 0.33-0.59 (2048->512 1x1, 512->512 3x3,
#: 1-2 images) and 0.66-0.73 for 4 images of 7x7; on 14x14 mixed (1x1 layers 0.84-1.19,
#: 256->256 3x3 1.16-1.18), 28x28 0.94-0.96.
_DIRECT_PIXELS = 128


#: column-phase counts (W strides of conv_transpose2d) with a SIMD interleave epilogue
_SIMD_INTERLEAVE = (2, 4, 8)


def _rows_kernel(KB: int, NV: int, PW: int = 1, cv: bool = False, direct: bool = False):
    """The row kernel specialised for a ``KB x NV`` register tile and, for conv_transpose2d,
    a W stride with a SIMD epilogue (compiled lazily, cached on disk).  ``cv``: the
    channel-vectorised tile of ``KB`` pixels x ``NV`` vectors of output channels
    (``_phase_tiles_cv``; conv2d, one column phase).  ``direct``: conv2d's weights are
    read in place instead of from the packed stream (row and flat layouts)."""
    key = (KB, NV, PW if PW in _SIMD_INTERLEAVE else 0, bool(cv), bool(direct))
    kern = _ROWS_KERNELS.get(key)
    if kern is None:
        kern = _make_rows_kernel(*key)
        _ROWS_KERNELS[key] = kern
    return kern


def _make_rows_kernel(KB, NV, PWV, CV, WD):
    @parallel_kernel
    def rows_kernel(x, wp, bias, out, geo, ptab, trow, tcol, rowoffs, nth):
        N = geo[_N]
        G = geo[_G]
        Cg = geo[_CG]
        Kg = geo[_KG]
        nkb = geo[_NKB]
        nxb = geo[_NXB]
        CB = geo[_CB]
        RL = geo[_RL]
        PH = geo[_PH]
        PW = geo[_PW]
        Ho = geo[_HO]
        Wo = geo[_WO]
        oys = geo[_OYS]
        pstep = geo[_PSTEP]
        Ty_max = geo[_TYMAX]
        Hrows = geo[_HROWS]
        pt = geo[_PT]
        pl = geo[_PL]
        sWp = geo[_SWP]
        Wq = geo[_WQ]
        NS = geo[_NS]
        flat_rows = geo[_FLAT]  # > 0: flat mode, output rows per item
        NKG = geo[_NKG]  # output-channel groups per (image, group): kblocks [kg*KBG, ...)
        skip_padding = geo[_SKIP] != 0  # drop taps on zero-padding rows (finite weights)
        cv_rows = geo[_CVR]  # channel-vectorised tile: output rows per item
        KBG = (nkb + NKG - 1) // NKG
        Tmax = trow.shape[1]
        K = G * Kg
        L = _lanes_of(out)
        TW = NV * L
        if CV:
            CKB = TW  # output channels per block of the weight stream
            Wt = nxb * KB  # buffer pixels: nxb tiles of KB pixels
        else:
            CKB = KB
            Wt = nxb * TW
        Kpad = nkb * CKB
        klast = (nkb - 1) * CKB  # first buffer row of the last (shifted) channel block
        xlast = (nxb - 1) * KB  # CV: first buffer pixel of the last (shifted) pixel tile
        rowsz = Cg * RL
        PS = Kpad * Wt  # row-buffer size of one column phase
        nitems = N * G * NKG * PH * Ty_max
        nworkers = min(nitems, nth)
        # work distribution (_take_item): contiguous ranges of items per worker, so
        # consecutive output rows re-use its cached packed rows
        counters = np.zeros(nworkers, dtype=np.int64)
        for worker in numba.prange(nworkers):
            # ring of packed input rows: packed row r of (n, g) lives in slot key % NS,
            # key = (n*G + g)*Hrows + r (NS >= the row span of one output row, so the rows
            # one output row reads never share a slot)
            # (+ slack: the last tiles of a row / flat block read past it into lanes whose
            # results are dropped; keep those reads in bounds and free of denormal garbage)
            xbuf = np.empty(NS * rowsz + TW + Wq + L, dtype=out.dtype)
            for q in range(0 if flat_rows > 0 else NS * rowsz, xbuf.size):
                _st(xbuf, q, 0)
            tags = np.full(NS, -1, dtype=np.int64)
            slot_q = np.empty(rowoffs.shape[1], dtype=np.int64)
            padding_q = np.zeros(rowoffs.shape[1], dtype=np.bool_)  # packed row q is all zeros
            # row buffers: one per column phase (CV: per output row of the item)
            RB = cv_rows if CV else PW
            itap = np.empty(RB * Tmax, dtype=np.int64)
            buf = np.empty(RB * PS, dtype=out.dtype)
            tlo = np.empty(RB, dtype=np.int64)
            thi = np.empty(RB, dtype=np.int64)
            proto = tile_zero(out, KB, NV)
            state = np.zeros(1, dtype=np.int64)
            while True:
                item = _take_item(counters, worker, nitems, state)
                if item < 0:
                    break
                # item = (((n*G + g)*NKG + kg)*PH + ry)*Ty_max + ty: output row
                # y = ry + oys*ty, channel blocks [kb0, kb1) (flat mode: output rows
                # [ty*flat_rows, ty*flat_rows + flat_rows))
                ty = item % Ty_max
                rest = item // Ty_max
                ry = rest % PH
                rest = rest // PH
                kg = rest % NKG
                rest = rest // NKG
                g = rest % G
                n = rest // G
                p0 = ry * PW
                kb0 = kg * KBG
                kb1 = min(nkb, kb0 + KBG)
                # output channels of this item (the last block is shifted to end at Kg)
                k_lo = kb0 * CKB
                k_hi = Kg if kb1 == nkb else kb1 * CKB
                if flat_rows > 0:
                    y0 = ty * flat_rows
                    nr = min(flat_rows, Ho - y0)
                    T = ptab[0, _NTAP]
                    _pack_block(x, xbuf, n, g, G, y0, nr + Hrows, pt, pl, Wq, RL)
                    for t in range(T):
                        itap[t] = tcol[0, t]
                    nxb_i = (nr * Wq + TW - 1) // TW
                    _phase_tiles(proto, xbuf, wp, buf, 0, itap, 0, T, 0, T,
                                 g * Kg * Cg * T if WD else g * nkb * Cg * T * CKB, Cg, CB,
                                 kb0, kb1, nxb_i, Wt, RL, Kg if WD else 0)
                    for k in range(k_lo, k_hi):
                        bk = bias[g * Kg + k]
                        kbuf = (k if k < klast else k + Kpad - Kg) * Wt
                        for yy in range(nr):
                            obase = ((n * K + g * Kg + k) * Ho + y0 + yy) * Wo
                            fb = kbuf + yy * Wq
                            for xx in range(Wo):
                                _st(out, obase + xx, _ld(buf, fb + xx) + bk)
                    continue
                if ty >= ptab[p0, _TY]:
                    continue
                kbase = (n * G + g) * Hrows
                if CV:
                    # output rows [y0, y0 + nr); one column phase (conv2d)
                    y0 = ty * cv_rows
                    nr = min(cv_rows, Ho - y0)
                    T = ptab[0, _NTAP]
                    for yy in range(nr):
                        _ring_pack(x, xbuf, tags, slot_q, padding_q, rowoffs, 0,
                                   (y0 + yy) * pstep, kbase, NS, rowsz, n, g, G, pt, pl,
                                   sWp, Wq)
                        tlo[yy], thi[yy] = _phase_taps(itap, yy * Tmax, trow, tcol, 0, T,
                                                       slot_q, padding_q, rowsz,
                                                       skip_padding)
                    _phase_tiles_cv(proto, xbuf, wp, buf, itap, Tmax, tlo, thi, nr, PS,
                                    ptab[0, _WOFS] + g * nkb * Cg * T * CKB, T, Cg, CB,
                                    kb0, kb1, Wo, Kpad, RL)
                    # bias + transpose the pixel-major buffer into the output rows;
                    # pixels of the last (shifted) tile sit past xlast
                    for yy in range(nr):
                        for k in range(k_lo, k_hi):
                            bk = bias[g * Kg + k]
                            obase = ((n * K + g * Kg + k) * Ho + y0 + yy) * Wo
                            kcol = yy * PS + (k if k < klast else k + Kpad - Kg)
                            for xx in range(Wo):
                                bx = xx if xx < xlast else xx + Wt - Wo
                                _st(out, obase + xx, _ld(buf, kcol + bx * Kpad) + bk)
                    continue
                _ring_pack(x, xbuf, tags, slot_q, padding_q, rowoffs, ry, ty * pstep, kbase,
                           NS, rowsz, n, g, G, pt, pl, sWp, Wq)
                for rx in range(PW):
                    p = p0 + rx
                    T = ptab[p, _NTAP]
                    pb = rx * PS
                    if Cg == 0 or T == 0:
                        for q in range(PS):
                            _st(buf, pb + q, 0)
                        continue
                    tb0 = rx * Tmax
                    t0, t1 = _phase_taps(itap, tb0, trow, tcol, p, T, slot_q, padding_q,
                                         rowsz, skip_padding)
                    _phase_tiles(proto, xbuf, wp, buf, pb, itap, tb0, T, t0, t1,
                                 g * Kg * Cg * T if WD else
                                 ptab[p, _WOFS] + g * nkb * Cg * T * CKB, Cg, CB, kb0, kb1,
                                 nxb, Wt, RL, Kg if WD else 0)
                # bias + interleave the column phases into output row y
                y = ry + oys * ty
                nfull = Wo // PW
                for k in range(k_lo, k_hi):
                    bk = bias[g * Kg + k]
                    obase = ((n * K + g * Kg + k) * Ho + y) * Wo
                    kbuf = (k if k < klast else k + Kpad - Kg) * Wt
                    if PW == 1:
                        for xx in range(Wo):
                            _st(out, obase + xx, _ld(buf, kbuf + xx) + bk)
                    else:
                        tx0 = 0
                        if PWV == PW:
                            # SIMD interleave of L columns of every phase at a time
                            while tx0 + L <= nfull:
                                _interleave_store(out, obase + tx0 * PW, buf, kbuf + tx0, PS,
                                                  bk, PWV)
                                tx0 += L
                        for tx in range(tx0, nfull):
                            for rx in range(PW):
                                v = _ld(buf, rx * PS + kbuf + tx) + bk
                                _st(out, obase + tx * PW + rx, v)
                        for rx in range(Wo - nfull * PW):
                            v = _ld(buf, rx * PS + kbuf + nfull) + bk
                            _st(out, obase + nfull * PW + rx, v)

    return rows_kernel


@intrinsic
def _lanes_of(typingctx, ary):
    """Number of SIMD lanes for ``ary``'s dtype (a compile-time constant)."""
    if not isinstance(ary, types.Array):
        return None
    n = _lanes(ary.dtype)

    def codegen(context, builder, sig, args):
        return _c64(n)

    return types.int64(ary), codegen


# --------------------------------------------------------------------------------------
# planning (Python side): tile shape, blocking, tap tables
# --------------------------------------------------------------------------------------

#: largest KB per NV so that KB*NV accumulators + NV input vectors + 1 broadcast fit
#: in the SIMD registers (AVX-512: {1: 16, 2: 12, 3: 8, 4: 6})
_MAX_KB = {1: 16, 2: 12, 3: 8, 4: 6} if _NREGS >= 32 else {1: 12, 2: 6, 3: 4, 4: 2}
#: L1 bytes a reduction block of input rows may occupy (L1d is 48 KiB on the target).
_L1_BLOCK_BYTES = 24 * 1024
#: bytes of packed input rows a thread caches (L2-resident)
_XBUF_BYTES = 512 * 1024
#: per-core L2 (2 MiB on the target Xeon); weights above ~3/4 of it are split per thread
_L2_BYTES = 3 * 512 * 1024


#: relative throughput of a register tile by its number of accumulators (measured with the
#: micro-kernel in L1 on AVX-512: 24 accumulators ~190 GFLOP/s/core, 16 ~0.88 of that, ...)
_TILE_EFF = ((24, 1.0), (20, 0.95), (16, 0.88), (12, 0.78), (8, 0.6), (6, 0.5), (4, 0.4), (1, 0.3))


def _tile_eff(acc: int) -> float:
    for n, e in _TILE_EFF:
        if acc >= n:
            return e
    return 0.3


@functools.lru_cache(maxsize=4096)  # a pure function of its arguments, called per conv call
def _choose_tile(Kg: int, ncols: int, L: int, max_tw: int | None = None
                 ) -> tuple[int, int, float]:
    """Register tile ``(KB, NV, score)`` for ``Kg`` output channels and ``ncols`` output
    columns per tile row: the best tile efficiency after the waste of the last channel
    block (computed on a shifted, overlapping block) and of the last column tile.

    The channel-vectorised tile asks with the roles swapped (``Kg`` = pixels per row,
    ``ncols`` = output channels) and ``max_tw`` = the channel count: its last channel
    block is shifted back too, so a block may not be wider than the channels."""
    best, best_score = (1, 1), -1.0
    for nv in (4, 3, 2, 1):
        tw = nv * L
        if max_tw is not None and tw > max_tw:
            continue
        xwaste = (-(-ncols // tw) * tw) / max(ncols, 1)
        for kb in range(1, min(_MAX_KB[nv], max(Kg, 1)) + 1):
            kwaste = (-(-Kg // kb) * kb) / max(Kg, 1)
            score = _tile_eff(kb * nv) / (xwaste * kwaste)
            if score > best_score + 1e-9:
                best, best_score = (kb, nv), score
    return best[0], best[1], best_score


def _choose_nv(ncols: int, L: int) -> int:
    """SIMD vectors per tile row when the channel count does not matter (depthwise)."""
    V = max(1, -(-ncols // L))
    if V <= 4:
        return V
    return min((4, 3, 2), key=lambda nv: (-(-V // nv) * nv - V, -nv))


def _even_split(n: int, most: int) -> int:
    """``ceil(n / ceil(n / most))``: cutting ``n`` into as few pieces of at most ``most`` as
    possible, the piece size that makes them even (read the other way: splitting ``n``
    into ``most`` shares of ``ceil(n / most)``, the number of shares actually used)."""
    return -(-n // -(-n // max(1, most)))


#: work items per thread below which output channels are split over items too
_ITEMS_PER_THREAD = 4


def _channel_groups(nkb: int, items: int, weight_bytes: int, nth: int, force=None) -> int:
    """Output-channel groups: how many work items share the ``nkb`` channel blocks of one
    (image, group, rows or pixels).  More than one when the images give fewer than
    ``_ITEMS_PER_THREAD`` items per thread (small images), and one slice per thread when
    the weights do not fit one core's L2 (each slice stays L2-resident: measured +3 % on
    dilated_aspp with 2 threads).  Every such item re-packs its input, so no more are
    made than that (splitting to keep each group's weights in L2 with 1 thread was
    measured slower).  ``force``: a test hook's value."""
    groups = 1
    if items < _ITEMS_PER_THREAD * nth:
        groups = -(-_ITEMS_PER_THREAD * nth // items)
    if nth > 1 and weight_bytes > _L2_BYTES:
        groups = max(groups, nth)
    if force is not None:
        groups = force
    return _even_split(nkb, max(1, min(nkb, groups)))


def _choose_cb(Cg: int, row_bytes: int, nrows: int) -> int:
    if Cg <= 0:
        return 1
    return _even_split(Cg, _L1_BLOCK_BYTES // max(1, nrows * row_bytes))


def _output_and_bias(x, bias, K, out_hw):
    """The output array and a bias vector (zeros when None), shared by both ops.

    ``done`` is True when nothing is left to compute: an empty output, or no input
    channels (the output is then the bias).
    """
    N, C = x.shape[:2]
    out = np.empty((N, K, *out_hw), dtype=x.dtype)
    b = np.zeros(K, dtype=x.dtype) if bias is None else bias
    if out.size and C == 0:
        out[...] = b.reshape(1, K, 1, 1)
    return out, b, out.size == 0 or C == 0


class _RowsPlan(NamedTuple):
    """What a row-kernel call needs besides its arrays (``_plan_rows``); memoised per
    geometry, so its arrays are shared between calls and never written."""

    kernel: tuple  # the _rows_kernel key (KB, NV, PW, cv, direct)
    geo: np.ndarray  # geometry vector; geo[_SKIP] is set per call (a copy)
    ptab: np.ndarray
    trow: np.ndarray
    tcol: np.ndarray
    rowoffs: np.ndarray
    transposed: bool
    G: int
    CKB: int  # output channels per block of the weight stream
    nkb: int
    ntap: np.ndarray  # taps per phase (ptab[:, _NTAP])
    wtap: np.ndarray
    wofs: int  # elements of the packed weight stream
    scan_finite: bool  # weights read in place: skip padding taps only if all are finite

    def launch(self, x, weight, b, out, nth, exact=None):
        """Run the row kernel; for a transposed plan whose weights hold an inf or NaN, call
        ``exact()`` instead (the phases multiply the zeros outside the image, the oracle's
        scatter only real inputs: the same unless a weight is not finite)."""
        geo = self.geo.copy()
        if self.kernel[4]:  # weights read in place
            wp = np.ascontiguousarray(weight).reshape(-1)
            finite = not self.scan_finite or bool(np.isfinite(wp).all())
        else:
            # NumPy allocates the packed weights (MBs for wide layers), not the kernel: see
            # _config (64-byte aligned: the channel-vectorised tile loads whole weight vectors)
            wp = _aligned_empty(max(self.wofs, 1), weight.dtype)
            finite = _pack_weights(weight, self.transposed, self.G, self.CKB, self.nkb,
                                   self.ntap, self.wtap, wp)
        if not finite and exact is not None:
            exact()
            return out
        # an inf or NaN weight times zero padding is NaN (as in the oracle): then no tap is
        # skipped
        geo[_SKIP] = int(finite and _SKIP_PADDING)
        _rows_kernel(*self.kernel)(x, wp, b, out.reshape(-1), geo, self.ptab, self.trow,
                                   self.tcol, self.rowoffs, nth)
        return out


def _plan_rows(N, Ho, Wo, *, transposed, G, Cg, Kg, row_phases, col_phases, taps,
               pstep, oys, pt, pl, sWp, Wq, RL, KB, NV, L, isz, nth, flat=None, cv=False):
    """Plan the row kernel for ``N`` images and an ``Ho x Wo`` output: a ``_RowsPlan``.

    row_phases[ry] = (Ty, sorted distinct packed-row offsets); col_phases[rx] = Tx;
    taps[p] = list of (row offset index, packed column offset, flat weight tap) of phase
    p = ry*PW + rx.  Output row ty of row phase ry reads packed rows ty*pstep + offset.
    ``flat = (rows per item, extra input rows)`` selects the flat layout (_pack_block):
    then row_phases = [(number of items per image and group, [0])] and col_phases = [the
    flat length rows*Wq of an item].  ``cv``: the channel-vectorised tile (``KB`` pixels x
    ``NV`` vectors of output channels; one column phase, ``Kg >= NV*L``).
    """
    cv_rows = 0
    if cv:
        # items of cv_rows output rows: a channel block's weights serve them all
        cv_rows = _FORCE_CV_ROWS or min(Ho, -(-_CV_PIXELS // Wo))
        cv_rows = _even_split(Ho, cv_rows)  # the same number of rows in every item
        row_phases = [(-(-Ho // cv_rows), row_phases[0][1])]
    PH, PW = len(row_phases), len(col_phases)
    P = PH * PW
    TW = NV * L
    CKB = TW if cv else KB  # output channels per block of the weight stream
    nkb = -(-Kg // CKB)
    nxb = -(-max(col_phases) // (KB if cv else TW))
    Tmax = max(1, max(len(t) for t in taps))
    ptab = np.zeros((P, 4), dtype=np.int64)
    trow = np.zeros((P, Tmax), dtype=np.int64)
    tcol = np.zeros((P, Tmax), dtype=np.int64)
    wtap = np.zeros((P, Tmax), dtype=np.int64)
    wofs = 0
    for p in range(P):
        T = len(taps[p])
        ptab[p] = (row_phases[p // PW][0], col_phases[p % PW], T, wofs)
        for t, (q, col, wt) in enumerate(taps[p]):
            trow[p, t], tcol[p, t], wtap[p, t] = q, col, wt
        wofs += G * nkb * CKB * Cg * T
    offsets = [o if o else [0] for _, o in row_phases]
    nq_max = max(len(o) for o in offsets)
    rowoffs = np.zeros((PH, nq_max + 1), dtype=np.int64)
    for ry, o in enumerate(offsets):
        rowoffs[ry, 0] = len(o)
        rowoffs[ry, 1:1 + len(o)] = o
    Tymax = max(1, max(ty for ty, _ in row_phases))
    # packed rows: one output row reads rows ty*pstep + offsets; the ring holds the span of
    # one output row plus the rows of the next ones (consecutive rows reuse them)
    span = max(o[-1] - o[0] + 1 for o in offsets)
    row_bytes = Cg * RL * isz
    if flat is not None:
        NS, Hrows = 1, flat[1]
        # a tile reads about TW + (extra rows + 1)*Wq elements of each channel
        CB = _choose_cb(Cg, (TW + (flat[1] + 1) * Wq) * isz, 1)
    else:
        R = max(1, cv_rows)  # output rows an item packs
        NS = max(span + R * pstep,
                 min(span + (R + 3) * pstep, _XBUF_BYTES // max(1, row_bytes)))
        if _FORCE_RING is not None:
            NS = max(span + (R - 1) * pstep, _FORCE_RING)
        Hrows = ((Ho if cv else Tymax) - 1) * pstep + max(o[-1] for o in offsets) + 1
        CB = _choose_cb(Cg, RL * isz, nq_max)
        if cv:
            # a channel block's weights (T taps x CKB channels each) are re-used by every
            # pixel tile of the row: keep them in L1
            CB = max(1, min(Cg, _CV_BLOCK_BYTES // (Tmax * CKB * isz)))
    # output-channel groups of an (image, group, row): small images, weights above L2
    NKG = _channel_groups(nkb, N * G * PH * Tymax,
                          G * nkb * CKB * Cg * int(ptab[:, _NTAP].sum()) * isz, nth,
                          _FORCE_KGROUPS)
    geo = np.zeros(25, dtype=np.int64)
    for idx, val in ((_N, N), (_G, G), (_CG, Cg), (_KG, Kg), (_NKB, nkb), (_NXB, nxb), (_CB, CB),
                     (_RL, RL), (_PH, PH), (_PW, PW), (_HO, Ho), (_WO, Wo), (_OYS, oys),
                     (_PSTEP, pstep), (_TYMAX, Tymax), (_HROWS, Hrows), (_PT, pt), (_PL, pl),
                     (_SWP, sWp), (_WQ, Wq), (_NS, NS), (_FLAT, 0 if flat is None else flat[0]),
                     (_NKG, NKG), (_CVR, cv_rows)):
        geo[idx] = val
    # conv2d weights read in place when packing them would cost about as much as the
    # convolution (few output pixels per weight: 1x1 and 3x3 layers on 7x7 maps)
    direct = (not transposed and not cv and P == 1
              and all(wt == t for t, (_, _, wt) in enumerate(taps[0])))
    if direct:
        direct = N * Ho * Wo <= _DIRECT_PIXELS if _FORCE_DIRECT is None else _FORCE_DIRECT
    # (the finiteness scan of weights read in place only matters where taps on padding rows
    # could be skipped: the row layout with padding, pt > 0; rows past the image need it too)
    return _RowsPlan((KB, NV, PW, bool(cv), bool(direct)),
                     geo, ptab, trow, tcol, rowoffs, transposed, G, CKB, nkb,
                     ptab[:, _NTAP].copy(), wtap, wofs, flat is None and pt != 0)


def _aligned_empty(n: int, dtype) -> np.ndarray:
    """``np.empty(n, dtype)`` whose data starts on a 64-byte boundary (a cache line)."""
    dtype = np.dtype(dtype)
    raw = np.empty(n + 64 // dtype.itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[skip:skip + n]


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw):
    """See :mod:`fastconv.backends`.  ``x`` (N, C, H, W) -> (N, K, H_out, W_out)."""
    out, b, done = _output_and_bias(x, bias, weight.shape[0], out_hw)
    if done:
        return out
    nth = numba.get_num_threads()
    plan = _conv2d_plan(x.shape, weight.shape, x.dtype.itemsize, stride, padding, dilation,
                        groups, out_hw, nth, _knobs())
    return plan.launch(x, weight, b, out, nth)


@functools.lru_cache(maxsize=512)
def _conv2d_plan(x_shape, w_shape, isz, stride, padding, dilation, G, out_hw, nth, knobs):
    """conv2d's kernel and tables for one geometry and thread count: a ``_RowsPlan``,
    ``_PointwisePlan`` or ``_DepthwisePlan``.  Memoised (a layer is called again and again,
    and planning in Python costs more than a small layer's convolution); ``knobs`` is the
    hooks' values (``_knobs``), part of the key only."""
    N, C, H, W = x_shape
    K, Cg, kh, kw = w_shape
    Kg = K // G
    Ho, Wo = out_hw
    sH, sW = stride
    pH, pW = padding
    dH, dW = dilation
    L = VEC_BYTES // isz
    if Cg == 1 and _USE_DEPTHWISE:
        return _plan_depthwise(x_shape, w_shape, out_hw, stride, padding, dilation, L)
    if kh == kw == 1 and _USE_POINTWISE:
        return _plan_pointwise(N, G, Cg, Kg, Ho, Wo, stride, padding, L, isz, nth)
    KB, NV, row_score = _choose_tile(Kg, Wo, L)
    flat_rows, flat_score = 0, 0.0
    if stride == (1, 1):
        flat_rows, flat_score = _choose_flat(N * G, Cg, Kg, Ho, Wo, (kh - 1) * dH,
                                             Wo + (kw - 1) * dW, L, isz, row_score, nth)
    cv = _choose_cv(Kg, Wo, L, max(row_score, flat_score))
    if cv is None and flat_rows:
        return _plan_flat(N, G, Cg, Kg, Ho, Wo, kh, kw, flat_rows, padding, dilation, L, isz,
                          nth)
    if cv is not None:
        KB, NV = cv
    elif _FORCE_TILE is not None:
        KB, NV = min(_FORCE_TILE[0], Kg), _FORCE_TILE[1]
    # packed row: sW column phases of Wq columns; output x, tap j reads phase (j*dW) % sW,
    # column x + (j*dW) // sW (the channel-vectorised tile reads only columns < Wo)
    Wt = Wo if cv else -(-Wo // (NV * L)) * NV * L
    Wq = Wt + ((kw - 1) * dW) // sW
    taps = [[(i, ((j * dW) % sW) * Wq + (j * dW) // sW, i * kw + j)
             for i in range(kh) for j in range(kw)]]
    return _plan_rows(N, Ho, Wo, transposed=False, G=G, Cg=Cg, Kg=Kg,
                      row_phases=[(Ho, [i * dH for i in range(kh)])], col_phases=[Wo],
                      taps=taps, pstep=sH, oys=1, pt=pH, pl=pW, sWp=sW, Wq=Wq, RL=sW * Wq,
                      KB=KB, NV=NV, L=L, isz=isz, nth=nth, cv=cv is not None)


#: output pixels a work item of the channel-vectorised tile covers at least (whole rows):
#: its weights are streamed once per item
_CV_PIXELS = 512
#: bytes of weights one reduction block of the channel-vectorised tile holds (L1; of
#: 6-192 KiB, 24 measured best on 33x33, 64x64 and 128x128 dilated layers)
_CV_BLOCK_BYTES = 24 * 1024

#: the channel-vectorised tile is chosen when its tile score beats the row / flat
#: layout's by this factor.  Measured (1 thread, forced A/B, calls interleaved): at equal
#: scores the two tie (dilated_aspp 0.97-1.05, dilated_small 0.99-1.06 with 1-2 threads);
#: 33x33 ASPP branches (scores 0.95 / 0.69) 0.77-0.83; 65x65 (0.98 / flat 0.84) 0.91; but
#: 56x56 stride 2 (0.93 / 0.85) 1.12, so a small lead is not enough.
_CV_MARGIN = 1.15


def _choose_cv(Kg: int, Wo: int, L: int, other_score: float):
    """``(pixels, NV)`` of the channel-vectorised tile when it beats ``other_score`` (the
    row / flat layouts' tile score) by ``_CV_MARGIN``, else None.  It needs ``Kg >= L``
    output channels, and is not chosen for rows shorter than ``2*L`` (7-28 columns measured
    1.06-1.25x slower than the flat layout: a pixel tile is most of a row there)."""
    if _FORCE_CV is False or Kg < L or Wo < 1 or (_FORCE_CV is None and _FORCE_TILE):
        return None
    kp, nv, score = _choose_tile(Wo, Kg, L, max_tw=Kg)
    if _FORCE_CV and _FORCE_TILE:  # tests: a given tile (pixels, NV), clipped to fit
        kp, nv = min(_FORCE_TILE[0], Wo), min(_FORCE_TILE[1], Kg // L)
    if _FORCE_CV or (Wo >= 2 * L and score > _CV_MARGIN * other_score):
        return kp, nv
    return None


def _choose_flat(NG, Cg, Kg, Ho, Wo, extra_rows, Wq, L, isz, row_score, nth):
    """``(rows, score)``: output rows per work item for the flat layout and its tile score,
    or ``(0, 0.0)`` to use the row layout.

    Row tiles cover whole SIMD tiles of one output row (``Wo`` = 56 computes 64 columns);
    the flat layout computes ``Wq = Wo + dW*(kW - 1)`` columns per row instead (and packs
    ``extra_rows`` more input rows per block), so it wins for widths that are not a
    multiple of the tile and for small images.  ``row_score``: the row tile's score.
    """
    if _FORCE_FLAT is not None:
        return (max(1, min(Ho, _FORCE_FLAT)), 1e9) if _FORCE_FLAT else (0, 0.0)
    # rows per item: as many as the packed block budget allows (fewer re-packed rows), as
    # long as there are >= 4 items per thread (output-channel groups count, see _plan_rows)
    kpar = max(1, Kg // 8)
    best = 1
    for R in range(2, Ho + 1):
        if Cg * (R + extra_rows) * Wq * isz > _XBUF_BYTES or Kg * R * Wq * isz > 2 * _XBUF_BYTES:
            break
        if NG * -(-Ho // R) * kpar < min(4 * nth, NG * Ho * kpar):
            break
        best = R
    flat_score = _choose_tile(Kg, best * Wq, L)[2] * Wo / Wq
    return (best, flat_score) if flat_score > 1.03 * row_score else (0, 0.0)


def _plan_flat(N, G, Cg, Kg, Ho, Wo, kh, kw, R, padding, dilation, L, isz, nth):
    """The row kernel's flat layout with ``R`` output rows per item (``_choose_flat``)."""
    dH, dW = dilation
    Wq = Wo + (kw - 1) * dW
    KB, NV, _ = _choose_tile(Kg, R * Wq, L)
    if _FORCE_TILE is not None:
        KB, NV = min(_FORCE_TILE[0], Kg), _FORCE_TILE[1]
    extra = (kh - 1) * dH
    taps = [[(0, i * dH * Wq + j * dW, i * kw + j) for i in range(kh) for j in range(kw)]]
    return _plan_rows(N, Ho, Wo, transposed=False, G=G, Cg=Cg, Kg=Kg,
                      row_phases=[(-(-Ho // R), [0])], col_phases=[R * Wq], taps=taps,
                      pstep=1, oys=1, pt=padding[0], pl=padding[1], sWp=1, Wq=Wq,
                      RL=(R + extra) * Wq + L, KB=KB, NV=NV, L=L, isz=isz, nth=nth,
                      flat=(R, extra))


def _transposed_taps(s, p, d, k, n_out):
    """Per output phase r (output index = r + s*t): list of (tap, input offset o) with
    input index = t + o, and the phase's output count."""
    res = []
    for r in range(s):
        taps = []
        for i in range(k):
            num = r + p - i * d
            if num % s == 0:
                taps.append((i, num // s))
        cnt = max(0, -(-(n_out - r) // s))
        res.append((taps, cnt))
    return res


def conv_transpose2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw):
    """See :mod:`fastconv.backends`.  ``x`` (N, C, H, W), weight (C, K/groups, kH, kW).

    Output phase ``(y mod sH, x mod sW)`` is a stride-1 correlation of the input with the
    taps that land on it: tap ``i`` reaches output ``y = ry + sH*ty`` from input row
    ``ty + (ry + pH - i*dH)/sH`` when that division is exact.
    """
    out, b, done = _output_and_bias(x, bias, groups * weight.shape[1], out_hw)
    if done:
        return out
    nth = numba.get_num_threads()
    plan = _conv_transpose2d_plan(x.shape, weight.shape, x.dtype.itemsize, stride, padding,
                                  dilation, groups, out_hw, nth, _knobs())
    return plan.launch(x, weight, b, out, nth, exact=lambda: _conv_transpose2d_gather(
        x, weight, b, out, *stride, *padding, *dilation, groups))


@parallel_kernel
def _conv_transpose2d_gather(x, w, b, out, sH, sW, pH, pW, dH, dW, G):
    """conv_transpose2d with each output gathered from the taps that land on it from real
    inputs, as the oracle (and PyTorch's CPU scatter) computes it; one (image, output
    channel) plane per item.  Only for weights holding an inf or NaN: the phase kernels
    multiply the zeros outside the image too, which gives the same sums for finite
    weights but NaN (0 * inf) near the border for an infinite one.  Scalar and simple,
    as speed does not matter there."""
    N, C, H, W = x.shape
    Kg, kH, kW = w.shape[1], w.shape[2], w.shape[3]
    K, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    Cg = C // G
    for q in numba.prange(N * K):
        n, k = q // K, q % K
        g, kl = k // Kg, k % Kg
        for yo in range(Ho):
            for xo in range(Wo):
                acc = x.dtype.type(0)
                for i in range(kH):
                    ty = yo + pH - i * dH
                    if ty < 0 or ty % sH != 0 or ty // sH >= H:
                        continue
                    for j in range(kW):
                        tx = xo + pW - j * dW
                        if tx < 0 or tx % sW != 0 or tx // sW >= W:
                            continue
                        for c in range(g * Cg, (g + 1) * Cg):
                            acc += x[n, c, ty // sH, tx // sW] * w[c, kl, i, j]
                out[n, k, yo, xo] = acc + b[k]


@functools.lru_cache(maxsize=512)
def _conv_transpose2d_plan(x_shape, w_shape, isz, stride, padding, dilation, G, out_hw, nth,
                           knobs):
    """conv_transpose2d's ``_RowsPlan`` for one geometry (memoised as ``_conv2d_plan``)."""
    N, C, H, W = x_shape
    _, Kg, kh, kw = w_shape
    Cg = C // G
    Ho, Wo = out_hw
    sH, sW = stride
    pH, pW = padding
    dH, dW = dilation
    L = VEC_BYTES // isz
    rows = _transposed_taps(sH, pH, dH, kh, Ho)
    cols = _transposed_taps(sW, pW, dW, kw, Wo)
    Txmax = max(cnt for _, cnt in cols)
    KB, NV, _ = _choose_tile(Kg, Txmax, L)
    if _FORCE_TILE is not None:
        KB, NV = min(_FORCE_TILE[0], Kg), _FORCE_TILE[1]
    Wt = -(-Txmax // (NV * L)) * NV * L
    # zero padding of the packed input so that every offset is >= 0
    PT = max(0, -min((o for taps, _ in rows for _, o in taps), default=0))
    PL = max(0, -min((o for taps, _ in cols for _, o in taps), default=0))
    Wq = max((Wt + o + PL for taps, _ in cols for _, o in taps), default=1)
    row_phases, taps = [], []
    for rtaps, ty in rows:
        offs = sorted({o + PT for _, o in rtaps})
        row_phases.append((ty, offs))
    for ry, (rtaps, _) in enumerate(rows):
        offs = row_phases[ry][1]
        for ctaps, _ in cols:
            taps.append([(offs.index(oy + PT), ox + PL, i * kw + j)
                         for i, oy in rtaps for j, ox in ctaps])
    return _plan_rows(N, Ho, Wo, transposed=True, G=G, Cg=Cg, Kg=Kg,
                      row_phases=row_phases, col_phases=[tx for _, tx in cols], taps=taps,
                      pstep=1, oys=sH, pt=PT, pl=PL, sWp=1, Wq=Wq, RL=Wq, KB=KB, NV=NV, L=L,
                      isz=isz, nth=nth)


# --------------------------------------------------------------------------------------
# depthwise (C_in / groups == 1)
# --------------------------------------------------------------------------------------

_DW_KERNELS: dict = {}


def _dw_kernel(KB: int, NV: int):
    key = (KB, NV)
    kern = _DW_KERNELS.get(key)
    if kern is None:
        kern = _make_dw_kernel(KB, NV)
        _DW_KERNELS[key] = kern
    return kern


def _make_dw_kernel(KB, NV):
    @parallel_kernel
    def dw_kernel(x, w, bias, out, geo, tapoff, nth):
        N, C, H, W = x.shape
        m = geo[0]
        Ho = geo[1]
        Wo = geo[2]
        sH = geo[3]
        sW = geo[4]
        pt = geo[5]
        pl = geo[6]
        Hp = geo[7]
        Wq = geo[8]
        T = tapoff.size
        K = C * m
        L = _lanes_of(out)
        TW = NV * L
        nxb = (Wo + TW - 1) // TW
        RL = sW * Wq
        nkb = m // KB
        nitems = N * C
        nworkers = min(nitems, nth)
        queue = np.zeros(1, dtype=np.int64)
        for _worker in numba.prange(nworkers):
            buf = np.empty(Hp * RL + TW, dtype=out.dtype)
            while True:
                item = _next_item(queue)
                if item >= nitems:
                    break
                n = item // C
                c = item - n * C
                src0 = item * H * W
                # zero-padded, phase-split copy of the plane
                for r in range(Hp):
                    h = r - pt
                    dst0 = r * RL
                    if h < 0 or h >= H:
                        for q in range(RL):
                            _st(buf, dst0 + q, 0)
                        continue
                    src = src0 + h * W
                    for ph in range(sW):
                        dst = dst0 + ph * Wq
                        q0 = min(Wq, max(0, (pl - ph + sW - 1) // sW))
                        q1 = min(Wq, max(q0, (W + pl - ph + sW - 1) // sW))
                        for q in range(q0):
                            _st(buf, dst + q, 0)
                        s0 = src + ph - pl
                        if sW == 1:
                            for q in range(q0, q1):
                                _st(buf, dst + q, _ld(x, s0 + q))
                        else:
                            for q in range(q0, q1):
                                _st(buf, dst + q, _ld(x, s0 + q * sW))
                        for q in range(q1, Wq):
                            _st(buf, dst + q, 0)
                for kb in range(nkb):
                    k0 = c * m + kb * KB
                    wb = k0 * T
                    for y in range(Ho):
                        xrow = y * sH * RL
                        obase = ((n * K + k0) * Ho + y) * Wo
                        for xb in range(nxb):
                            x0 = xb * TW
                            acc = tile_bcast(tile_zero(out, KB, NV), bias, k0, 1)
                            for t in range(T):
                                acc = tile_fma(acc, buf, xrow + x0 + _ld(tapoff, t), w, wb + t, T)
                            tile_store_mask(acc, out, obase + x0, Ho * Wo, 0, Wo - x0)

    return dw_kernel


class _DepthwisePlan(NamedTuple):
    """A depthwise call's tile and tables (``_plan_depthwise``; shared, never written)."""

    KB: int
    NV: int
    geo: np.ndarray
    tapoff: np.ndarray

    def launch(self, x, weight, b, out, nth):
        _dw_kernel(self.KB, self.NV)(x, weight.reshape(-1), b, out, self.geo, self.tapoff, nth)
        return out


def _plan_depthwise(x_shape, w_shape, out_hw, stride, padding, dilation, L):
    C = x_shape[1]
    K, _, kh, kw = w_shape
    m = K // C
    Ho, Wo = out_hw
    sH, sW = stride
    pH, pW = padding
    dH, dW = dilation
    NV = _choose_nv(Wo, L)
    KB = max(d for d in range(1, min(m, _MAX_KB[NV]) + 1) if m % d == 0)
    if _FORCE_TILE is not None:
        NV = _FORCE_TILE[1]
        KB = _FORCE_TILE[0] if m % _FORCE_TILE[0] == 0 else KB
    TW = NV * L
    nxb = -(-Wo // TW)
    Hp = (Ho - 1) * sH + (kh - 1) * dH + 1
    Wq = nxb * TW + ((kw - 1) * dW) // sW
    T = kh * kw
    ti, tj = np.divmod(np.arange(T, dtype=np.int64), kw)
    tapoff = ti * dH * (sW * Wq) + ((tj * dW) % sW) * Wq + (tj * dW) // sW
    geo = np.array([m, Ho, Wo, sH, sW, pH, pW, Hp, Wq], dtype=np.int64)
    return _DepthwisePlan(KB, NV, geo, tapoff)


# --------------------------------------------------------------------------------------
# pointwise (1x1 kernels): a GEMM over the pixels
# --------------------------------------------------------------------------------------

_PW_KERNELS: dict = {}
_USE_POINTWISE = True  # test hook: False routes 1x1 kernels through the row kernel
_FORCE_PW = None  # test hook: {"tile": (KB, NV), "KC": ..., "tiles": ..., "kgroups": ...}
#: input channels per reduction block: a block's panel of KC x TW pixels (24-32 KB for
#: float32 and 48-64-pixel tiles) stays in L1 while every output-channel block re-uses it
_PW_KC = 128
#: SIMD tiles of pixels per work item; the item's panel (KC x tiles x TW) stays in L2
_PW_TILES = 4


def _pw_kernel(KB: int, NV: int):
    key = (KB, NV)
    kern = _PW_KERNELS.get(key)
    if kern is None:
        kern = _make_pw_kernel(*key)
        _PW_KERNELS[key] = kern
    return kern


@numba.njit(**SERIAL_JIT_OPTIONS)
def _pack_pixels(x, pan, pofs, n, cg0, c0, c1, q0, q1, TW, KC, Wo, sH, sW, pH, pW):
    """The panel of one reduction block: ``pan[pofs + (j*KC + c - c0)*TW + i]`` = the input
    pixel under output pixel ``q = q0 + j*TW + i`` (flat index ``y*Wo + x``) of channel
    ``cg0 + c``, for ``c0 <= c < c1``; zero for ``q >= q1`` and outside the image.  Every
    SIMD tile of pixels then reads its KC channels from one contiguous, aligned run."""
    N, C, H, W = x.shape
    nt = (q1 - q0 + TW - 1) // TW
    contiguous = sH == 1 and sW == 1 and pH == 0 and pW == 0
    # output columns whose input column x*sW - pW lies inside the image
    x_lo = (pW + sW - 1) // sW
    x_hi = max(x_lo, (W - 1 + pW) // sW + 1)
    for c in range(c0, c1):
        src = (n * C + cg0 + c) * H * W
        for j in range(nt):
            dst = pofs + (j * KC + c - c0) * TW
            a = q0 + j * TW
            m = min(TW, q1 - a)
            if contiguous:  # output pixel q reads input pixel q
                for i in range(m):
                    _st(pan, dst + i, _ld(x, src + a + i))
            else:  # row by row: zeros outside the image, strided columns inside
                i = 0
                while i < m:
                    y = (a + i) // Wo
                    xa = a + i - y * Wo
                    xb = min(Wo, xa + m - i)
                    h = y * sH - pH
                    if h < 0 or h >= H:
                        for xx in range(xa, xb):
                            _st(pan, dst + i + xx - xa, 0)
                    else:
                        row = src + h * W - pW
                        lo = min(xb, max(xa, x_lo))
                        hi = max(lo, min(xb, x_hi))
                        for xx in range(xa, lo):
                            _st(pan, dst + i + xx - xa, 0)
                        for xx in range(lo, hi):
                            _st(pan, dst + i + xx - xa, _ld(x, row + xx * sW))
                        for xx in range(hi, xb):
                            _st(pan, dst + i + xx - xa, 0)
                    i += xb - xa
            for i in range(m, TW):
                _st(pan, dst + i, 0)


@numba.njit(**SERIAL_JIT_OPTIONS)
def _pw_tile(proto, out, obase, P, klo, nval, first, bias, kbias, pan, xo, w, wk, Cg, nc):
    """One ``KB x NV`` tile of output channels x pixels, accumulated in place in the output
    (``out[obase + k*P + j]``): starts from the bias on the first reduction block, else from
    the partial sums there, and adds ``nc`` channels of the panel (``pan[xo + c*TW:]``)
    times the weights ``w[wk + k*Cg + c]`` (conv2d's (K, Cg) weights, read in place).  Rows
    ``k < klo`` (computed by the block before a shifted last block) and pixels
    ``j >= nval`` are neither read nor written."""
    KB, NV = tile_dims(proto)
    TW = NV * _lanes_of(out)
    full = klo == 0 and nval == TW
    if first:
        acc = tile_bcast(proto, bias, kbias, 1)
    elif full:
        acc = tile_load(proto, out, obase, P)
    else:
        acc = tile_load_mask(proto, out, obase, P, klo, nval)
    for c in range(nc):
        acc = tile_fma(acc, pan, xo + c * TW, w, wk + c, Cg)
    if full:
        tile_store(acc, out, obase, P)
    else:
        tile_store_mask(acc, out, obase, P, klo, nval)


def _make_pw_kernel(KB, NV):
    @parallel_kernel
    def pw_kernel(x, w, bias, out, geo, pan, nth):
        N = geo[0]
        G = geo[1]
        Cg = geo[2]
        Kg = geo[3]
        nkb = geo[4]
        Ho = geo[5]
        Wo = geo[6]
        sH = geo[7]
        sW = geo[8]
        pH = geo[9]
        pW = geo[10]
        KC = geo[11]
        NT = geo[12]  # SIMD tiles of pixels per item
        npb = geo[13]  # items (pixel blocks) per image
        NKG = geo[14]  # output-channel groups: kblocks [kg*KBG, (kg+1)*KBG)
        PAN = geo[15]  # panel elements per worker
        L = _lanes_of(out)
        TW = NV * L
        P = Ho * Wo
        K = G * Kg
        KBG = (nkb + NKG - 1) // NKG
        nitems = NKG * N * G * npb
        nworkers = min(nitems, nth)
        # work distribution (_take_item): contiguous ranges of items per worker, so
        # consecutive items share an output-channel group, whose weights stay cached
        counters = np.zeros(nworkers, dtype=np.int64)
        for worker in numba.prange(nworkers):
            pofs = worker * PAN
            proto = tile_zero(out, KB, NV)
            state = np.zeros(1, dtype=np.int64)
            while True:
                item = _take_item(counters, worker, nitems, state)
                if item < 0:
                    break
                # item = ((kg*N + n)*G + g)*npb + pb
                pb = item % npb
                ng = (item // npb) % (N * G)
                kg = item // (npb * N * G)
                kb0 = kg * KBG
                kb1 = min(nkb, kb0 + KBG)
                q0 = pb * NT * TW
                q1 = min(P, q0 + NT * TW)
                nt = (q1 - q0 + TW - 1) // TW
                n = ng // G
                g = ng % G
                for c0 in range(0, Cg, KC):
                    c1 = min(c0 + KC, Cg)
                    _pack_pixels(x, pan, pofs, n, g * Cg, c0, c1, q0, q1, TW, KC, Wo, sH,
                                 sW, pH, pW)
                    for j in range(nt):
                        q = q0 + j * TW
                        for kb in range(kb0, kb1):
                            # the last block is shifted back to end at Kg
                            k0 = min(kb * KB, Kg - KB)
                            k = g * Kg + k0
                            _pw_tile(proto, out, (n * K + k) * P + q, P, kb * KB - k0,
                                     min(TW, P - q), c0 == 0, bias, k, pan,
                                     pofs + j * KC * TW, w, k * Cg + c0, Cg, c1 - c0)

    return pw_kernel


class _PointwisePlan(NamedTuple):
    """A pointwise call's tile and geometry (``_plan_pointwise``; shared, never written)."""

    KB: int
    NV: int
    geo: np.ndarray
    pan_size: int  # elements of the per-thread panels

    def launch(self, x, weight, b, out, nth):
        pan = _aligned_empty(self.pan_size, x.dtype)
        _pw_kernel(self.KB, self.NV)(x, weight.reshape(-1), b, out.reshape(-1), self.geo,
                                     pan, nth)
        return out


def _plan_pointwise(N, G, Cg, Kg, Ho, Wo, stride, padding, L, isz, nth):
    """Plan conv2d with a 1x1 kernel: per image and group a GEMM ``out[k, q] = b[k] + sum_c
    w[k, c] * x[c, pixel under q]`` over the ``Ho*Wo`` output pixels, taken as one flat run
    (no row ends, nothing to pad but the image's last tile).

    Work item: a block of ``NT`` SIMD tiles of pixels (and a group of output-channel
    blocks when the images give too few items).  Per reduction block of ``KC`` input
    channels it packs the pixels' panel (``_pack_pixels``: contiguous, aligned, zero past
    the end) and runs every ``KB x NV`` tile over it, accumulating in the output itself.
    The weights are read in place.
    """
    K = G * Kg
    P = Ho * Wo
    KB, NV, _ = _choose_tile(Kg, P, L)
    force = _FORCE_PW or {}
    if "tile" in force:
        KB, NV = min(force["tile"][0], Kg), force["tile"][1]
    TW = NV * L
    nkb = -(-Kg // KB)
    # reduction blocks of at most _PW_KC channels, balanced
    KC = _even_split(Cg, force.get("KC", _PW_KC))
    ntiles = -(-P // TW)
    NT = _even_split(ntiles, force.get("tiles", _PW_TILES))
    npb = -(-ntiles // NT)
    # output-channel groups of an (image, group, pixel block): small images, weights above L2
    NKG = _channel_groups(nkb, N * G * npb, K * Cg * isz, nth, force.get("kgroups"))
    PAN = -(-(KC * NT * TW) // 16) * 16  # whole cache lines per worker
    geo = np.array([N, G, Cg, Kg, nkb, Ho, Wo, stride[0], stride[1], padding[0], padding[1],
                    KC, NT, npb, NKG, PAN], dtype=np.int64)
    return _PointwisePlan(KB, NV, geo, nth * PAN)


# --------------------------------------------------------------------------------------
# the plan cache's key
# --------------------------------------------------------------------------------------

#: module constants that are not tuning knobs: geometry-vector indices, kernel caches, and
#: machine constants fixed at import (``_choose_tile``, memoised on its arguments alone,
#: reads the last two)
_NOT_KNOBS = frozenset({"_N", "_G", "_CG", "_KG", "_NKB", "_NXB", "_CB", "_RL", "_PH", "_PW",
                        "_HO", "_WO", "_OYS", "_PSTEP", "_TYMAX", "_HROWS", "_PT", "_PL",
                        "_SWP", "_WQ", "_NS", "_FLAT", "_NKG", "_SKIP", "_CVR", "_TY", "_TX",
                        "_NTAP", "_WOFS", "_ROWS_KERNELS", "_DW_KERNELS", "_PW_KERNELS",
                        "_I64", "_NREGS", "_SIMD_INTERLEAVE", "_MAX_KB", "_TILE_EFF"})
#: every other ``_UPPER_CASE`` module constant: the test hooks (``_FORCE_*``, ``_USE_*``) and
#: the tuning constants the planners read.  Their values are part of the plan cache's key,
#: so a test or an A/B script that sets one at run time gets a fresh plan.
_PLAN_KNOBS = tuple(name for name in globals()
                    if re.fullmatch(r"_[A-Z][A-Z0-9_]*", name) and name not in _NOT_KNOBS
                    and name not in ("_NOT_KNOBS", "_PLAN_KNOBS"))


def _knobs() -> tuple:
    """The current values of ``_PLAN_KNOBS`` (hashable: a dict-valued hook as its items)."""
    g = globals()
    key = tuple([g[name] for name in _PLAN_KNOBS])
    try:
        hash(key)
    except TypeError:  # _FORCE_PW = {...}
        key = tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v for v in key)
    return key
