"""conv2d and conv_transpose2d as numba.cuda kernels.

Two kernels per op:

* ``*_gemm`` -- implicit GEMM (see :mod:`._gemm`) for groups with many output channels:
  ``BM`` output channels x ``BN`` output pixels per block, weights and gathered input staged
  in shared memory, a ``TM x TN`` register tile per thread.  Grid: x = pixel tiles,
  y = channel tiles, z = (image, group[, output phase]); all three grid-stride.
* ``*_direct`` -- one thread per output element (depthwise and few channels per group):
  grid x over the output pixels of a plane (consecutive threads -> consecutive output x),
  grid y over the (image, output channel) planes, both grid-stride; the weights a block
  reads are the same for all its threads (broadcast).

conv_transpose2d never visits taps that do not land on an output pixel: an output row
``y`` only receives taps ``i`` with ``i*dH = y + pH (mod sH)``, an arithmetic progression
with step ``sH / gcd(sH, dH)``.  Its GEMM kernel splits the output into the ``sH x sW``
phases ``(y + pH) mod sH``, in each of which it is a dense correlation over those taps.
"""

from __future__ import annotations

import math

from numba import cuda

from ._gemm import advance, next_row
from ._gemm import functions as _gemm_functions
from ._launch import (
    absent,
    cdiv,
    choose_tiles,
    current_stream,
    empty,
    grid_2d,
    grid_3d,
    launch,
    numba_arg_types,
    settings,
)

_direct_cache: dict = {}
_gemm_cache: dict = {}


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
    bias = absent(bias, x.dtype, 1)
    args = (x, weight, bias, out, *stride, *padding, *dilation, groups)
    skey, stream = current_stream()
    Kg = K // groups
    tiles = choose_tiles(Kg, Cg * kH * kW, Ho * Wo, N * groups)
    if tiles is not None:
        grid = grid_3d(cdiv(Ho * Wo, tiles.BN), cdiv(Kg, tiles.BM), N * groups)
        launch(_gemm_kernels(T, tiles)[0], grid, tiles.threads, skey, stream, *args)
    else:
        block = settings.block
        grid = grid_2d(Ho * Wo, N * K, block)
        launch(_direct_kernels(T)[0], grid, block, skey, stream, *args)
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
    bias = absent(bias, x.dtype, 1)
    args = (x, weight, bias, out, sH, sW, *padding, dH, dW, groups, stepI, stepJ)
    skey, stream = current_stream()
    phase_pixels = cdiv(Ho, sH) * cdiv(Wo, sW)  # the largest output phase
    n_z = N * groups * sH * sW
    taps = cdiv(kH, stepI) * cdiv(kW, stepJ)  # at most, per output pixel
    tiles = choose_tiles(Kg, (C // groups) * taps, phase_pixels, n_z)
    if tiles is not None:
        grid = grid_3d(cdiv(phase_pixels, tiles.BN), cdiv(Kg, tiles.BM), n_z)
        launch(_gemm_kernels(T, tiles)[1], grid, tiles.threads, skey, stream, *args)
    else:
        block = settings.block
        grid = grid_2d(Ho * Wo, N * Kg * groups, block)
        launch(_direct_kernels(T)[1], grid, block, skey, stream, *args)
    return out


def _direct_kernels(T):
    ks = _direct_cache.get(T)
    if ks is None:
        ks = _direct_cache[T] = _build_direct(T)
    return ks


def _gemm_kernels(T, tiles):
    key = (T, tiles)
    ks = _gemm_cache.get(key)
    if ks is None:
        ks = _gemm_cache[key] = _build_gemm(T, tiles)
    return ks


def ptx_cases(T):
    """``[(name, kernel, argtypes)]`` for every kernel of this module and float type ``T``.

    Used by the tests to compile each kernel to PTX without a GPU (a missing bias is a
    zero-size array, so one signature covers both).
    """
    _, i, a1, _, a4 = numba_arg_types(T)
    conv = (a4, a4, a1, a4) + (i,) * 7
    cases = []
    d = _direct_kernels(T)
    for tiles in (settings.tiles_wide, settings.tiles_narrow):
        g = _gemm_kernels(T, tiles)
        cases += [
            (f"conv2d_gemm{tiles.BM}", g[0], conv),
            (f"conv_transpose2d_gemm{tiles.BM}", g[1], conv + (i, i)),
        ]
    cases += [
        ("conv2d_direct", d[0], conv),
        ("conv_transpose2d_direct", d[1], conv + (i, i)),
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
                    if iy >= 0 and iy < H:
                        for j in range(kW):
                            ix = ix0 + j * dW
                            if ix >= 0 and ix < W:
                                for c in range(Cg):
                                    acc += x[n, cbase + c, iy, ix] * w[k, c, i, j]
                if b.shape[0] != 0:
                    acc += b[k]
                out[n, k, yo, xo] = acc

    @cuda.jit(cache=True)
    def conv_transpose2d_direct(x, w, b, out, sH, sW, pH, pW, dH, dW, groups, stepI, stepJ):
        """One thread per output element, visiting only the taps that land on it."""
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


def _build_gemm(T, tiles):
    BM, BN, BK, TM, TN = tiles.BM, tiles.BN, tiles.BK, tiles.TM, tiles.TN
    NT = tiles.threads
    TXS = BN // TN
    TYS = BM // TM
    RPT = BK * BN // NT  # B rows per thread
    AROWS = NT // BK  # channel rows per A-loader pass
    APT = BM * BK // NT  # A elements per thread
    ACC = TM * TN
    BKP = BK + 1  # padded row of As (no bank conflicts)
    zero = T(0.0)
    mma_chunk, zero_acc = _gemm_functions(T, tiles)

    @cuda.jit(cache=True)
    def conv2d_gemm(x, w, b, out, sH, sW, pH, pW, dH, dW, groups):
        """Implicit GEMM; reduction index r = (c * kH + i) * kW + j (the weight's own order)."""
        As = cuda.shared.array((BM, BKP), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array(ACC, T)
        ra = cuda.local.array(TM, T)
        rb = cuda.local.array(TN, T)
        H = x.shape[2]
        W = x.shape[3]
        K = w.shape[0]
        Cg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        Wo = out.shape[3]
        P = out.shape[2] * Wo
        Kg = K // groups
        kk = kH * kW
        R = Cg * kk
        NZ = out.shape[0] * groups
        n_mt = (Kg + BM - 1) // BM
        n_pt = (P + BN - 1) // BN
        tid = cuda.threadIdx.x
        tx = tid % TXS
        ty = tid // TXS
        # BK as a mixed-radix step (c, i, j)
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
        for z in range(cuda.blockIdx.z, NZ, cuda.gridDim.z):
            n = z // groups
            g = z - n * groups
            kbase = g * Kg
            cbase = g * Cg
            for mt in range(cuda.blockIdx.y, n_mt, cuda.gridDim.y):
                m0 = mt * BM
                for pt in range(cuda.blockIdx.x, n_pt, cuda.gridDim.x):
                    p0 = pt * BN
                    pb = p0 + pc
                    pvalid = pb < P
                    yb = pb // Wo
                    iy0 = yb * sH - pH
                    ix0 = (pb - yb * Wo) * sW - pW
                    # reduction counters of the A row and of the first B row
                    ca = kra // kk
                    ia = (kra - ca * kk) // kW
                    ja = kra - ca * kk - ia * kW
                    cb = krb // kk
                    ib = (krb - cb * kk) // kW
                    jb = krb - cb * kk - ib * kW
                    zero_acc(acc)
                    for _k0 in range(0, R, BK):
                        for e in range(APT):
                            m = ma + AROWS * e
                            v = zero
                            if m0 + m < Kg and ca < Cg:
                                v = w[kbase + m0 + m, ca, ia, ja]
                            As[m, kra] = v
                        c = cb
                        i = ib
                        j = jb
                        for row in range(RPT):
                            v = zero
                            if pvalid and c < Cg:
                                iy = iy0 + i * dH
                                ix = ix0 + j * dW
                                if iy >= 0 and iy < H and ix >= 0 and ix < W:
                                    v = x[n, cbase + c, iy, ix]
                            Bs[krb + row, pc] = v
                            c, i, j = next_row(c, i, j, kH, kW)
                        cuda.syncthreads()
                        mma_chunk(As, Bs, acc, ra, rb, tx, ty)
                        cuda.syncthreads()
                        # both loaders' counters move on by BK
                        ca, ia, ja = advance(ca, ia, ja, bk_c, bk_i, bk_j, kH, kW)
                        cb, ib, jb = advance(cb, ib, jb, bk_c, bk_i, bk_j, kH, kW)
                    for bb in range(TN):
                        p = p0 + tx + TXS * bb
                        if p < P:
                            yo = p // Wo
                            xo = p - yo * Wo
                            for a in range(TM):
                                m = m0 + ty + TYS * a
                                if m < Kg:
                                    v = acc[a * TN + bb]
                                    if b.shape[0] != 0:
                                        v += b[kbase + m]
                                    out[n, kbase + m, yo, xo] = v

    @cuda.jit(cache=True)
    def conv_transpose2d_gemm(x, w, b, out, sH, sW, pH, pW, dH, dW, groups, stepI, stepJ):
        """Implicit GEMM per output phase; reduction index r = (c * nI + mi) * nJ + mj."""
        As = cuda.shared.array((BM, BKP), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array(ACC, T)
        ra = cuda.local.array(TM, T)
        rb = cuda.local.array(TN, T)
        H = x.shape[2]
        W = x.shape[3]
        Cg = x.shape[1] // groups
        Kg = w.shape[1]
        kH = w.shape[2]
        kW = w.shape[3]
        Ho = out.shape[2]
        Wo = out.shape[3]
        NZ = out.shape[0] * groups * sH * sW
        n_mt = (Kg + BM - 1) // BM
        tid = cuda.threadIdx.x
        tx = tid % TXS
        ty = tid // TXS
        kra = tid % BK
        ma = tid // BK
        pc = tid % BN
        krb = (tid // BN) * RPT
        for z in range(cuda.blockIdx.z, NZ, cuda.gridDim.z):
            t = z
            ax = t % sW
            t = t // sW
            ay = t % sH
            t = t // sH
            g = t % groups
            n = t // groups
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
            # output rows y = ay - pH + sH * u for u in [u0, u0 + Hp)
            u0 = -((ay - pH) // sH)
            Hp = (Ho - 1 + pH - ay) // sH - u0 + 1
            v0 = -((ax - pW) // sW)
            Wp = (Wo - 1 + pW - ax) // sW - v0 + 1
            if Hp < 0:
                Hp = 0
            if Wp < 0:
                Wp = 0
            P = Hp * Wp
            taps = nI * nJ
            R = Cg * taps
            n_pt = (P + BN - 1) // BN
            bk_c = 0
            bk_i = 0
            bk_j = 0
            if taps > 0:
                bk_c = BK // taps
                bk_i = (BK - bk_c * taps) // nJ
                bk_j = BK - bk_c * taps - bk_i * nJ
            for mt in range(cuda.blockIdx.y, n_mt, cuda.gridDim.y):
                m0 = mt * BM
                for pt in range(cuda.blockIdx.x, n_pt, cuda.gridDim.x):
                    p0 = pt * BN
                    pb = p0 + pc
                    pvalid = pb < P
                    ub = pb // Wp
                    iyb = u0 + ub - e0y
                    ixb = v0 + (pb - ub * Wp) - e0x
                    ca = 0
                    ia = 0
                    ja = 0
                    cb = 0
                    ib = 0
                    jb = 0
                    if taps > 0:
                        ca = kra // taps
                        ia = (kra - ca * taps) // nJ
                        ja = kra - ca * taps - ia * nJ
                        cb = krb // taps
                        ib = (krb - cb * taps) // nJ
                        jb = krb - cb * taps - ib * nJ
                    zero_acc(acc)
                    for _k0 in range(0, R, BK):
                        for e in range(APT):
                            m = ma + AROWS * e
                            v = zero
                            if m0 + m < Kg and ca < Cg:
                                v = w[cbase + ca, m0 + m, i0 + ia * stepI, j0 + ja * stepJ]
                            As[m, kra] = v
                        c = cb
                        i = ib
                        j = jb
                        for row in range(RPT):
                            v = zero
                            if pvalid and c < Cg:
                                iy = iyb - i * esy
                                ix = ixb - j * esx
                                if iy >= 0 and iy < H and ix >= 0 and ix < W:
                                    v = x[n, cbase + c, iy, ix]
                            Bs[krb + row, pc] = v
                            c, i, j = next_row(c, i, j, nI, nJ)
                        cuda.syncthreads()
                        mma_chunk(As, Bs, acc, ra, rb, tx, ty)
                        cuda.syncthreads()
                        ca, ia, ja = advance(ca, ia, ja, bk_c, bk_i, bk_j, nI, nJ)
                        cb, ib, jb = advance(cb, ib, jb, bk_c, bk_i, bk_j, nI, nJ)
                    for bb in range(TN):
                        p = p0 + tx + TXS * bb
                        if p < P:
                            u = p // Wp
                            yo = ay - pH + sH * (u0 + u)
                            xo = ax - pW + sW * (v0 + p - u * Wp)
                            for a in range(TM):
                                m = m0 + ty + TYS * a
                                if m < Kg:
                                    v = acc[a * TN + bb]
                                    if b.shape[0] != 0:
                                        v += b[kbase + m]
                                    out[n, kbase + m, yo, xo] = v

    return conv2d_gemm, conv_transpose2d_gemm
