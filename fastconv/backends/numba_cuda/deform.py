"""deform_conv2d (DCNv1 / DCNv2) as numba.cuda kernels.

* ``deform_conv2d_gemm`` -- a fused deformable implicit GEMM (no column buffer): the
  ``B`` tile is gathered by bilinear sampling while it is staged in shared memory.  The
  reduction runs tap-major (``r = tap * C_g + c``), and every loader thread keeps the sample
  set-up (corners, weights, mask value) of its current (tap, offset group) in registers, so
  the bilinear weights of a sample point are computed once and reused for all the channels
  of its offset group that the thread stages.  1-D grid, grid-stride, over the (pixel
  tile, output-channel tile, image x weight group) tiles.
* ``deform_conv2d_direct`` -- one thread per output element (few output channels per
  group): for every tap, the sample set-up is computed once per offset group and reused
  across that group's channels.

The edge rule is :func:`._bilinear.functions` ``corners_zero_pad`` (zero padding).
"""

from __future__ import annotations

import functools

from numba import cuda

from . import autotune
from ._bilinear import functions as _bilinear_functions
from ._gemm import advance2, tile_coords
from ._gemm import functions as _gemm_functions
from ._launch import (
    absent,
    bounded_path,
    current_stream,
    empty,
    grid_2d,
    grid_tiles,
    launch,
    numba_arg_types,
    path_tiles,
    settings,
    two_blocks_bounds,
)


def deform_conv2d(
    x, offset, weight, bias, mask, *, stride, padding, dilation, groups, offset_groups, out_hw
):
    """Backend deform_conv2d; see :mod:`fastconv.backends` for the contract."""
    N = x.shape[0]
    K, Cg, kH, kW = weight.shape
    Ho, Wo = out_hw
    out = empty((N, K, Ho, Wo), x.dtype)
    if out.size == 0:
        return out
    T = x.dtype.type
    has_mask, has_bias = mask is not None, bias is not None
    mask, bias = absent(mask, x.dtype, 4), absent(bias, x.dtype, 1)
    args = (x, offset, mask, weight, bias, out, *stride, *padding, *dilation, groups)
    args += (offset_groups,)
    Kg = K // groups

    def plan(arm):
        tiles, rules = path_tiles(arm and arm["PATH"], Kg, Cg * kH * kW, Ho * Wo, N * groups)
        if tiles is not None:
            return (_gemm_kernel(T, tiles, bounded_path(arm, rules)),
                    grid_tiles(tiles, Ho * Wo, Kg, N * groups),
                    tiles.threads, 0, args)
        block = settings.block
        return _direct_kernel(T), grid_2d(Ho * Wo, N * K, block), block, 0, args

    autotune.run("deform_conv2d", lambda: (x.shape, weight.shape, has_bias, has_mask, stride,
                                           padding, dilation, groups, offset_groups,
                                           out_hw, x.dtype.char),
                 plan, launch, *current_stream())
    return out


@functools.cache  # built once per dtype and compile-time shape
def _direct_kernel(T):
    return _build_direct(T)


def _gemm_kernel(T, tiles, two_blocks=False):
    """The GEMM kernel; ``two_blocks``: held to two blocks per SM (autotuning's arms), where
    that can apply (else the default kernel, the same object: one plan, one compile)."""
    return _built_gemm_kernel(T, tiles, bool(two_blocks and two_blocks_bounds(T, tiles)))


@functools.cache  # built once per dtype, compile-time shape and launch bounds (positional
def _built_gemm_kernel(T, tiles, two_blocks):  # arguments: one cache key each)
    return _build_gemm(T, tiles, two_blocks)


def ptx_cases(T):
    """``[(name, kernel, argtypes)]`` for every kernel of this module and float type ``T``."""
    _, i, a1, _, a4 = numba_arg_types(T)
    # DCNv1 (no mask) passes a zero-size mask: one signature covers both
    dcn = (a4, a4, a4, a4, a1, a4) + (i,) * 8
    cases = [("deform_conv2d_direct", _direct_kernel(T), dcn)]
    for tiles in (settings.tiles_wide, settings.tiles_narrow):
        cases.append((f"deform_conv2d_gemm{tiles.BM}", _gemm_kernel(T, tiles), dcn))
        bounded = _gemm_kernel(T, tiles, True)
        if bounded is not cases[-1][1]:  # autotuning's two-blocks-per-SM arms (float32)
            cases.append((f"deform_conv2d_gemm{tiles.BM}_2blocks", bounded, dcn))
    return cases


@functools.cache
def _sample_function(T):
    """``sample_setup`` for float type ``T``: the one place both kernels compute a deformed
    sample point."""
    one = T(1.0)
    corners_zero_pad = _bilinear_functions(T)[0]

    @cuda.jit(device=True, inline="always")
    def sample_setup(offset, mask, n, ch, yo, xo, by, bx, H, W):
        """The bilinear set-up of offset channel pair ``ch`` (``og * kH*kW + tap``) at output
        pixel ``(yo, xo)``, whose undeformed input position is ``(by, bx)``.

        Returns :func:`._bilinear.functions`' ``corners_zero_pad`` tuple followed by the
        DCNv2 mask value (1 without a mask: multiplying by it is exact).
        """
        py = by + offset[n, 2 * ch, yo, xo]
        px = bx + offset[n, 2 * ch + 1, yo, xo]
        yl, xl, yh, xh, w1, w2, w3, w4, msk = corners_zero_pad(py, px, H, W)
        mv = one
        if mask.shape[0] != 0:
            mv = mask[n, ch, yo, xo]
        return yl, xl, yh, xh, w1, w2, w3, w4, msk, mv

    return sample_setup


def _build_direct(T):
    zero = T(0.0)
    gather = _bilinear_functions(T)[2]
    sample_setup = _sample_function(T)

    @cuda.jit(cache=True)
    def deform_conv2d_direct(x, offset, mask, w, b, out, sH, sW, pH, pW, dH, dW, groups, G):
        """One thread per output element; grid x: pixels of a plane, grid y: (n, k) planes."""
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = w.shape[0]
        Cg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        kk = kH * kW
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Q = out.shape[0] * K
        Kg = K // groups
        Cpg = C // G  # channels per offset group
        pstart = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        pstep = cuda.gridDim.x * cuda.blockDim.x
        for q in range(cuda.blockIdx.y, Q, cuda.gridDim.y):
            n = q // K
            k = q - n * K
            cbase = (k // Kg) * Cg
            og0 = cbase // Cpg
            orem0 = cbase - og0 * Cpg
            for p in range(pstart, P, pstep):
                yo = p // Wo
                xo = p - yo * Wo
                acc = zero
                for i in range(kH):
                    for j in range(kW):
                        t = i * kW + j
                        by = T(yo * sH - pH + i * dH)
                        bx = T(xo * sW - pW + j * dW)
                        og = og0
                        orem = orem0
                        cur = -1
                        yl = 0
                        xl = 0
                        yh = 0
                        xh = 0
                        w1 = zero
                        w2 = zero
                        w3 = zero
                        w4 = zero
                        msk = 0
                        mv = zero
                        for c in range(Cg):
                            if og != cur:
                                cur = og
                                yl, xl, yh, xh, w1, w2, w3, w4, msk, mv = sample_setup(
                                    offset, mask, n, og * kk + t, yo, xo, by, bx, H, W)
                            val = gather(x, n, cbase + c, yl, xl, yh, xh, w1, w2, w3, w4, msk)
                            acc += w[k, c, i, j] * (mv * val)
                            orem += 1
                            if orem == Cpg:
                                orem = 0
                                og += 1
                if b.shape[0] != 0:
                    acc += b[k]
                out[n, k, yo, xo] = acc

    return deform_conv2d_direct


def _build_gemm(T, tiles, two_blocks=False):
    BM, BN, BK, TM, TN = tiles.BM, tiles.BN, tiles.BK, tiles.TM, tiles.TN
    NT = tiles.threads
    TXS = BN // TN
    RPT = BK * BN // NT
    AROWS = NT // BK
    APT = BM * BK // NT
    ACC = TM * TN
    BKP = BK + 1
    zero = T(0.0)
    mma_chunk, zero_acc, _, store_tile = _gemm_functions(T, tiles)
    gather = _bilinear_functions(T)[2]
    sample_setup = _sample_function(T)

    # unbounded by default: ptxas takes 148-162 registers (float32, sm_90), one block per SM;
    # two_blocks (autotuning's "narrow2"/"wide2" arms) holds it to 128 with 30-170 B spilled
    @cuda.jit(cache=True, **(two_blocks_bounds(T, tiles) if two_blocks else {}))
    def deform_conv2d_gemm(x, offset, mask, w, b, out, sH, sW, pH, pW, dH, dW, groups, G):
        """Fused deformable implicit GEMM; reduction index r = tap * Cg + c."""
        As = cuda.shared.array((BM, BKP), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array(ACC, T)
        ra = cuda.local.array(TM, T)
        rb = cuda.local.array(TN, T)
        C = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        K = w.shape[0]
        Cg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        kk = kH * kW
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Kg = K // groups
        Cpg = C // G
        R = Cg * kk
        n_mt = (Kg + BM - 1) // BM
        n_pt = (P + BN - 1) // BN
        n_tiles = out.shape[0] * groups * n_mt * n_pt
        tid = cuda.threadIdx.x
        tx = tid % TXS
        ty = tid // TXS
        # BK as a mixed-radix step (tap, c)
        bk_t = BK // Cg
        bk_c = BK - bk_t * Cg
        kra = tid % BK
        ma = tid // BK
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
            pvalid = pb < P
            yb = pb // Wo
            xb = pb - yb * Wo
            if not pvalid:
                yb = 0
                xb = 0
            by0 = yb * sH - pH
            bx0 = xb * sW - pW
            ta = kra // Cg
            ca = kra - ta * Cg
            tb = krb // Cg
            cb = krb - tb * Cg
            # the B loader's current sample set-up, keyed by (tap, offset group)
            cur_t = -1
            cur_og = -1
            yl = 0
            xl = 0
            w1 = zero
            w2 = zero
            w3 = zero
            w4 = zero
            msk = 0
            mv = zero
            zero_acc(acc)
            ia = 0
            ja = 0
            for _k0 in range(0, R, BK):
                if ta < kk:
                    ia = ta // kW
                    ja = ta - ia * kW
                for e in range(APT):
                    m = ma + AROWS * e
                    v = zero
                    if m0 + m < Kg and ta < kk:
                        v = w[kbase + m0 + m, ca, ia, ja]
                    As[m, kra] = v
                t = tb
                c = cb
                og = (cbase + c) // Cpg
                orem = cbase + c - og * Cpg
                for row in range(RPT):
                    v = zero
                    if pvalid and t < kk:
                        if t != cur_t or og != cur_og:
                            cur_t = t
                            cur_og = og
                            i = t // kW
                            j = t - i * kW
                            # the high corners are yl + 1 and xl + 1 (zero padding); not
                            # keeping them across the loop saves 12 registers (174 -> 162)
                            yl, xl, _, _, w1, w2, w3, w4, msk, mv = sample_setup(
                                offset, mask, n, og * kk + t, yb, xb, T(by0 + i * dH),
                                T(bx0 + j * dW), H, W)
                        v = mv * gather(x, n, cbase + c, yl, xl, yl + 1, xl + 1, w1, w2, w3,
                                        w4, msk)
                    Bs[krb + row, pc] = v
                    c += 1
                    orem += 1
                    if orem == Cpg:
                        orem = 0
                        og += 1
                    if c == Cg:
                        c = 0
                        t += 1
                        og = cbase // Cpg
                        orem = cbase - og * Cpg
                cuda.syncthreads()
                mma_chunk(As, Bs, acc, ra, rb, tx, ty)
                cuda.syncthreads()
                ta, ca = advance2(ta, ca, bk_t, bk_c, Cg)
                tb, cb = advance2(tb, cb, bk_t, bk_c, Cg)
            store_tile(out, b, acc, n, kbase, m0, p0, tx, ty, Kg, P, Wo, 0, 1, 0, 1)

    return deform_conv2d_gemm
