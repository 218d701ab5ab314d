"""CPU ``deform_conv2d``: channels-last deformable im2col per tile + register-blocked GEMM.

Algorithm (one parallel kernel, ``prange`` over tiles of output pixels):

1. The input is copied once into a zero-bordered channels-last buffer
   ``xb (N, (H+2)*(W+2), C)`` (a one-pixel frame of zeros): the 4 corners of a
   sample point are then 4 contiguous channel vectors, and corners outside the
   image read the frame's zeros (:func:`._bilinear.bilinear_zero_pad`).
2. The weight is reordered to ``wt (groups, C_out/groups, kH*kW, C_in/groups)``
   so that its reduction axis matches the column layout below.
3. For a tile of ``P`` output pixels of one image, the deformable columns
   ``cols (P, groups, kH*kW, C_in/groups)`` are built: per offset group, tap and
   pixel the bilinear corners/weights are computed once, then one vectorised
   loop over that offset group's channels does
   ``cols[p, g, t, c] = mask * sum_k w_k * xb[n, i_k, c]``.
4. ``out[n, co, p] = bias[co] + dot(wt[g, co], cols[p, g])`` for the tile, as
   register-blocked dot products (:func:`_gemm_tile`: 6 pixels x 4 output
   channels per block, 24 vector accumulators along the contiguous reduction
   axis, written as explicit 64-byte LLVM vectors by the :func:`_dot6x4`
   intrinsic).  The tile is sized so ``cols`` stays in L2.

The sampling arithmetic is torchvision's (``y*sH - pH + i*dH`` as an integer,
converted, plus the offset, in the input's dtype) and ``mask * bilinear``,
with the same NaN/Inf behaviour: corners outside the image are never read,
in-image corners are read even at weight 0, a NaN/Inf mask multiplies the
sample (NaN even for points outside the image).  NaN offsets give NaN (the
oracle's answer; torchvision's CPU kernel has undefined behaviour there).
"""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._bilinear import bilinear_zero_pad
from ._config import SERIAL_JIT_OPTIONS, multiply_add, parallel_kernel

# Target size of the per-tile column buffer (bytes), and the most pixels per tile.
# (64 KiB - 512 KiB measured the same on deform_dcnv2; 256 KiB leaves room in L2.)
_COLS_BYTES = 1 << 18
_MAX_TILE = 288
# Pixels per GEMM register block (tiles are padded to a multiple of it).
_PB = 6


def _tile_pixels(k_total, itemsize, n_pix):
    """Pixels per tile: a multiple of ``_PB`` with ``cols`` near ``_COLS_BYTES``."""
    p = _COLS_BYTES // max(1, k_total * itemsize)
    p = max(_PB, min(_MAX_TILE, p)) // _PB * _PB
    return min(p, (n_pix + _PB - 1) // _PB * _PB)


@parallel_kernel
def _to_bordered_nhwc(x, xb):
    """``xb[:] = x`` (``(N, C, H, W)``), zero-bordered channels-last ``(N, (H+2)*(W+2), C)``."""
    n_b, c_in, h, w = x.shape
    pw = w + 2
    zero = x.dtype.type(0)
    for job in numba.prange(n_b * (h + 2)):
        n = job // (h + 2)
        yy = job - n * (h + 2)
        row = yy * pw
        if yy == 0 or yy == h + 1:
            for xx in range(pw):
                for c in range(c_in):
                    xb[n, row + xx, c] = zero
            continue
        for c in range(c_in):
            xb[n, row, c] = zero
            xb[n, row + pw - 1, c] = zero
        y = yy - 1
        # blocks of 16 channels: contiguous reads along W, short strided writes
        for c0 in range(0, c_in, 16):
            c1 = min(c0 + 16, c_in)
            for xx in range(w):
                for c in range(c0, c1):
                    xb[n, row + xx + 1, c] = x[n, c, y, xx]


def _splat(builder, value, vty):
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), vty.count),
                                                    [0] * vty.count))


def _bilerp_codegen(context, builder, sig, args):
    """LLVM for :func:`_bilerp_row`: one 64-byte vector loop, no runtime alias checks."""
    dst_ty, src_ty = sig.args[0], sig.args[2]
    dst = context.make_array(dst_ty)(context, builder, args[0])
    src = context.make_array(src_ty)(context, builder, args[2])
    i64 = ir.IntType(64)
    offs = [context.cast(builder, v, t, types.int64) for v, t in
            zip((args[1], *args[3:8]), (sig.args[1], *sig.args[3:8]), strict=True)]
    d_off, o00, o01, o10, o11, n = offs
    ws = args[8:]
    elt = context.get_data_type(dst_ty.dtype)
    esize = context.get_abi_sizeof(elt)
    lanes = 64 // esize
    vty = ir.VectorType(elt, lanes)
    d_ptr = builder.gep(dst.data, [d_off])
    s_ptrs = [builder.gep(src.data, [o]) for o in (o00, o01, o10, o11)]
    wv = [_splat(builder, w, vty) for w in ws]
    n_vec = builder.udiv(n, ir.Constant(i64, lanes))

    def body(k, ty, wvals, load, store):
        v = [load(builder.gep(p, [k]), ty) for p in s_ptrs]
        t = builder.fmul(wvals[0], v[0])
        for j in range(1, 4):
            t = multiply_add(builder, wvals[j], v[j], t)
        store(builder.fmul(wvals[4], t), builder.gep(d_ptr, [k]), ty)

    def vload(p, ty):
        return builder.load(builder.bitcast(p, ty.as_pointer()), align=esize)

    def vstore(val, p, ty):
        builder.store(val, builder.bitcast(p, ty.as_pointer()), align=esize)

    with cgutils.for_range(builder, n_vec) as loop:
        body(builder.mul(loop.index, ir.Constant(i64, lanes)), vty, wv, vload, vstore)
    k0 = builder.mul(n_vec, ir.Constant(i64, lanes))
    with cgutils.for_range(builder, builder.sub(n, k0)) as loop:
        body(builder.add(k0, loop.index), elt, ws, lambda p, ty: builder.load(p),
             lambda val, p, ty: builder.store(val, p))
    return context.get_dummy_value()


@intrinsic
def _bilerp_row(typingctx, dst, d_off, src, o00, o01, o10, o11, n, w00, w01, w10, w11, m):
    """``dst.flat[d_off + k] = m * sum_c w_c * src.flat[o_c + k]`` for ``k < n``.

    ``dst`` / ``src`` are C-contiguous arrays of one dtype addressed by flat element
    offsets (the column tile; the bordered channels-last input), ``w*`` and ``m``
    scalars of that dtype.  The caller guarantees the ranges are in bounds.  An
    explicit 64-byte vector loop: the auto-vectorised loop over array slices paid
    slice set-up, runtime alias checks and 256-bit vectors on every call (one call
    per tap and pixel, ~64 channels).
    """
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.layout == "C" and src.layout == "C" and dst.dtype == src.dtype):
        return None
    if not all(isinstance(i, types.Integer) for i in (d_off, o00, o01, o10, o11, n)):
        return None
    if not all(w == dst.dtype for w in (w00, w01, w10, w11, m)):
        return None
    sig = types.void(dst, d_off, src, o00, o01, o10, o11, n, w00, w01, w10, w11, m)
    return sig, _bilerp_codegen


# ---------------------------------------------------------------------------- GEMM


def _dot_tile_codegen(context, builder, sig, args):
    """LLVM for :func:`_dot6x4`: explicit 64-byte vectors, so AVX-512 machines use zmm.

    (LLVM's auto-vectoriser prefers 256-bit vectors on these CPUs; explicit
    ``<16 x float>`` IR is legal at 512 bits and is not split.)
    """
    a_v, b_v, q_v, c0_v, g_v = args
    a_ty, b_ty = sig.args[0], sig.args[1]
    i64 = ir.IntType(64)
    q_v, c0_v, g_v = (context.cast(builder, v, t, types.int64)
                      for v, t in zip((q_v, c0_v, g_v), sig.args[2:], strict=True))
    a_arr = context.make_array(a_ty)(context, builder, a_v)
    b_arr = context.make_array(b_ty)(context, builder, b_v)
    elt = context.get_data_type(a_ty.dtype)
    esize = context.get_abi_sizeof(elt)
    lanes = 64 // esize
    vty = ir.VectorType(elt, lanes)

    def row(arr, ty, i0, i1):
        return cgutils.get_item_pointer2(
            context, builder, data=arr.data, shape=cgutils.unpack_tuple(builder, arr.shape),
            strides=cgutils.unpack_tuple(builder, arr.strides), layout=ty.layout,
            inds=[i0, i1, ir.Constant(i64, 0)])

    kk = cgutils.unpack_tuple(builder, a_arr.shape)[2]
    pa = [row(a_arr, a_ty, builder.add(q_v, ir.Constant(i64, i)), g_v) for i in range(6)]
    pb = [row(b_arr, b_ty, g_v, builder.add(c0_v, ir.Constant(i64, j))) for j in range(4)]
    zero_v = ir.Constant(vty, None)
    acc = [[cgutils.alloca_once_value(builder, zero_v) for _ in range(4)] for _ in range(6)]
    n_vec = builder.udiv(kk, ir.Constant(i64, lanes))
    with cgutils.for_range(builder, n_vec) as loop:
        k = builder.mul(loop.index, ir.Constant(i64, lanes))
        bv = [builder.load(builder.bitcast(builder.gep(p, [k]), vty.as_pointer()), align=esize)
              for p in pb]
        for i in range(6):
            av = builder.load(builder.bitcast(builder.gep(pa[i], [k]), vty.as_pointer()),
                              align=esize)
            for j in range(4):
                builder.store(multiply_add(builder, av, bv[j], builder.load(acc[i][j])),
                              acc[i][j])
    # the K % lanes tail, in scalars
    zero_s = ir.Constant(elt, 0.0)
    tail = [[cgutils.alloca_once_value(builder, zero_s) for _ in range(4)] for _ in range(6)]
    k0 = builder.mul(n_vec, ir.Constant(i64, lanes))
    with cgutils.for_range(builder, builder.sub(kk, k0)) as loop:
        k = builder.add(k0, loop.index)
        bs = [builder.load(builder.gep(p, [k])) for p in pb]
        for i in range(6):
            av = builder.load(builder.gep(pa[i], [k]))
            for j in range(4):
                builder.store(multiply_add(builder, av, bs[j], builder.load(tail[i][j])),
                              tail[i][j])
    sums = []
    for i in range(6):
        for j in range(4):
            v = builder.load(acc[i][j])
            h = lanes // 2
            while h >= 1:  # shuffle-tree horizontal sum
                m = ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                [(x + h) % lanes for x in range(lanes)])
                v = builder.fadd(v, builder.shuffle_vector(v, v, m))
                h //= 2
            s = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
            sums.append(builder.fadd(s, builder.load(tail[i][j])))
    return context.make_tuple(builder, sig.return_type, sums)


@intrinsic
def _dot6x4(typingctx, a, b, q, c0, g):
    """``s[4*i + j] = sum_k a[q + i, g, k] * b[g, c0 + j, k]`` for ``i < 6, j < 4``.

    ``a`` (P, groups, K) and ``b`` (groups, cog, K) are C-contiguous of one float
    dtype.  24 vector accumulators (6 pixels x 4 output channels) over K in
    64-byte vectors: 10 vector loads per 24 FMAs.
    """
    if not (isinstance(a, types.Array) and isinstance(b, types.Array) and a.dtype == b.dtype
            and a.ndim == 3 and b.ndim == 3 and a.layout == "C" and b.layout == "C"):
        return None
    return types.UniTuple(a.dtype, 24)(a, b, q, c0, g), _dot_tile_codegen


@numba.njit(**SERIAL_JIT_OPTIONS)
def _store_px(out, n, co, p, v0, v1, v2, v3):
    out[n, co, p] = v0
    out[n, co + 1, p] = v1
    out[n, co + 2, p] = v2
    out[n, co + 3, p] = v3


@numba.njit(**SERIAL_JIT_OPTIONS)
def _gemm_tile(a, b, bias, use_bias, out, n, g, p_start, n_p):
    """``out[n, g*cog + co, p_start + q] = bias + <b[g, co], a[q, g]>`` for ``q < n_p``.

    ``a`` (P, groups, K) holds ``P`` (a multiple of ``_PB``) pixels' columns, ``b``
    (groups, cog, K) the weights.  Blocks of 6 pixels x 4 output channels
    (:func:`_dot6x4`, explicit 512-bit vectors along K; with scalar accumulators
    left to LLVM's vectoriser 6x4 measured > 7x4 > 4x4 > 8x4 > 4x8, and the explicit
    tile another ~15%), then 1 channel x 6 pixels for the channels left over.
    """
    T = a.dtype.type
    n_pb = a.shape[0]
    kk = a.shape[2]
    cog = b.shape[1]
    co4 = cog // 4 * 4
    # pixel blocks outer: the block's 6 rows of ``a`` stay in L1 while the weights
    # stream from L2 (the other order measured ~10% slower)
    for q in range(0, n_pb, 6):
        for c0 in range(0, co4, 4):
            co = g * cog + c0
            bb0 = bias[co] if use_bias else T(0)
            bb1 = bias[co + 1] if use_bias else T(0)
            bb2 = bias[co + 2] if use_bias else T(0)
            bb3 = bias[co + 3] if use_bias else T(0)
            s = _dot6x4(a, b, q, c0, g)
            p = p_start + q
            _store_px(out, n, co, p, s[0] + bb0, s[1] + bb1, s[2] + bb2, s[3] + bb3)
            if q + 1 < n_p:
                _store_px(out, n, co, p + 1, s[4] + bb0, s[5] + bb1, s[6] + bb2, s[7] + bb3)
            if q + 2 < n_p:
                _store_px(out, n, co, p + 2, s[8] + bb0, s[9] + bb1, s[10] + bb2, s[11] + bb3)
            if q + 3 < n_p:
                _store_px(out, n, co, p + 3, s[12] + bb0, s[13] + bb1, s[14] + bb2, s[15] + bb3)
            if q + 4 < n_p:
                _store_px(out, n, co, p + 4, s[16] + bb0, s[17] + bb1, s[18] + bb2, s[19] + bb3)
            if q + 5 < n_p:
                _store_px(out, n, co, p + 5, s[20] + bb0, s[21] + bb1, s[22] + bb2, s[23] + bb3)
    for c0 in range(co4, cog):
        co = g * cog + c0
        bb0 = bias[co] if use_bias else T(0)
        for q in range(0, n_pb, 6):
            s0 = s1 = s2 = s3 = s4 = s5 = T(0)
            for k in range(kk):
                b0 = b[g, c0, k]
                s0 += a[q, g, k] * b0
                s1 += a[q + 1, g, k] * b0
                s2 += a[q + 2, g, k] * b0
                s3 += a[q + 3, g, k] * b0
                s4 += a[q + 4, g, k] * b0
                s5 += a[q + 5, g, k] * b0
            p = p_start + q
            out[n, co, p] = s0 + bb0
            if q + 1 < n_p:
                out[n, co, p + 1] = s1 + bb0
            if q + 2 < n_p:
                out[n, co, p + 2] = s2 + bb0
            if q + 3 < n_p:
                out[n, co, p + 3] = s3 + bb0
            if q + 4 < n_p:
                out[n, co, p + 4] = s4 + bb0
            if q + 5 < n_p:
                out[n, co, p + 5] = s5 + bb0


@parallel_kernel
def _deform_kernel(xb, offset, mask, use_mask, wt, bias, use_bias, out, h, w,
                   s_h, s_w, p_h, p_w, d_h, d_w, k_w, offset_groups, out_h, out_w, tile):
    T = xb.dtype.type
    n_b, xb_pix, c_in = xb.shape
    xb_img = xb_pix * c_in
    groups, cog, taps, cg = wt.shape
    cpo = c_in // offset_groups
    n_pix = out_h * out_w
    n_tiles = (n_pix + tile - 1) // tile
    off = offset.reshape((n_b, offset_groups * taps, 2, n_pix))
    if use_mask:
        msk = mask.reshape((n_b, offset_groups * taps, n_pix))
    else:
        msk = mask.reshape((1, 1, mask.size))
    for job in numba.prange(n_b * n_tiles):
        n = job // n_tiles
        p_start = (job - n * n_tiles) * tile
        n_p = min(tile, n_pix - p_start)
        n_pb = (n_p + _PB - 1) // _PB * _PB
        cols = np.empty((n_pb, groups, taps, cg), xb.dtype)
        # padding pixels of the last tile: zeros (computed, never stored)
        for pl in range(n_p, n_pb):
            for g in range(groups):
                for t in range(taps):
                    for c in range(cg):
                        cols[pl, g, t, c] = T(0)
        # ---- deformable im2col (channels-last) ----
        for og in range(offset_groups):
            for t in range(taps):
                ki = t // k_w
                kj = t - ki * k_w
                ch = og * taps + t
                for pl in range(n_p):
                    p = p_start + pl
                    oy = p // out_w
                    ox = p - oy * out_w
                    py = T(oy * s_h - p_h + ki * d_h) + off[n, ch, 0, p]
                    px = T(ox * s_w - p_w + kj * d_w) + off[n, ch, 1, p]
                    i00, i01, i10, i11, w00, w01, w10, w11 = bilinear_zero_pad(py, px, h, w, T)
                    # mask * bilinear (not folded into the weights: an Inf mask times a
                    # zero weight would give NaN where torchvision gives Inf)
                    m = msk[n, ch, p] if use_mask else T(1)
                    # this offset group's channels, split at weight-group boundaries
                    c = og * cpo
                    c_end = c + cpo
                    while c < c_end:
                        g = c // cg
                        seg = min(c_end, (g + 1) * cg) - c
                        cl = c - g * cg
                        src = n * xb_img + c  # flat offsets: no array slices in this hot loop
                        _bilerp_row(cols, ((pl * groups + g) * taps + t) * cg + cl, xb,
                                    src + i00 * c_in, src + i01 * c_in, src + i10 * c_in,
                                    src + i11 * c_in, seg, w00, w01, w10, w11, m)
                        c += seg
        # ---- GEMM: out[n, co, p] = bias + <wt[g, co], cols[p, g]> ----
        a = cols.reshape((n_pb, groups, taps * cg))
        b = wt.reshape((groups, cog, taps * cg))
        for g in range(groups):
            _gemm_tile(a, b, bias, use_bias, out, n, g, p_start, n_p)


def deform_conv2d(x, offset, weight, bias, mask, *, stride, padding, dilation, groups,
                  offset_groups, out_hw):
    """Deformable convolution (DCNv1 with ``mask=None``, DCNv2 with a mask).

    See ``fastconv.backends`` for the argument contract.

    Returns
    -------
    out : numpy.ndarray, shape (N, C_out, H_out, W_out)
    """
    n_b, c_in, h, w = x.shape
    c_out, cg, k_h, k_w = weight.shape
    out_h, out_w = out_hw
    if n_b == 0 or c_out == 0:
        return np.zeros((n_b, c_out, out_h, out_w), x.dtype)
    taps = k_h * k_w
    # (C_out, Cg, kH, kW) -> (groups, C_out/groups, kH*kW, Cg)
    wt = np.ascontiguousarray(
        weight.reshape(groups, c_out // groups, cg, taps).transpose(0, 1, 3, 2)
    )
    # NumPy allocates the large arrays, not the kernels (see _config)
    xb = np.empty((n_b, (h + 2) * (w + 2), c_in), x.dtype)
    _to_bordered_nhwc(x, xb)
    use_mask = mask is not None
    m = mask if use_mask else np.zeros((1, 1, 1, 1), x.dtype)  # one compiled signature
    use_bias = bias is not None
    b = bias if use_bias else np.zeros(1, x.dtype)
    tile = _tile_pixels(taps * c_in, x.dtype.itemsize, out_h * out_w)
    out = np.empty((n_b, c_out, out_h * out_w), x.dtype)
    _deform_kernel(
        xb, offset, m, use_mask, wt, b, use_bias, out, h, w,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], k_w,
        offset_groups, out_h, out_w, tile,
    )
    return out.reshape(n_b, c_out, out_h, out_w)


__all__ = ["deform_conv2d"]
