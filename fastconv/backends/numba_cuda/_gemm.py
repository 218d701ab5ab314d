"""Shared pieces of the implicit-GEMM kernels (conv2d, conv_transpose2d, deform_conv2d).

Each of those ops is, per (image, group), a matrix product
``out[m, p] = sum_r A[m, r] * B[r, p]`` with ``m`` the output channel inside the group,
``p`` the output pixel and ``r`` the reduction index (input channel x kernel tap).  ``A`` is
read from the weight and ``B`` is gathered from the input on the fly (never materialised).

A block computes a ``BM x BN`` tile of ``out``; it walks the reduction in chunks of ``BK``,
staging ``A`` (``As[BM][BK + 1]``, padded against bank conflicts) and ``B`` (``Bs[BK][BN]``) in
shared memory, and every thread accumulates a ``TM x TN`` register tile.  Thread ``t`` has
``tx = t % (BN // TN)`` and ``ty = t // (BN // TN)``; it owns the rows
``ty + (BM // TM) * a`` and the columns ``tx + (BN // TN) * b``, so consecutive threads read
consecutive shared-memory words (no bank conflicts) and store consecutive output pixels
(coalesced).

Loader layout (the same in every kernel):

* ``A``: thread ``t`` loads reduction row ``t % BK`` for channels ``t // BK + (NT // BK) * e``
  (consecutive threads read consecutive ``r``);
* ``B``: thread ``t`` loads pixel column ``t % BN`` for the ``RPT = BK * BN // NT`` consecutive
  reduction rows starting at ``(t // BN) * RPT`` (consecutive threads read consecutive
  pixels, i.e. consecutive input x for stride 1; a thread walks its rows incrementally).

The ops differ only in how a reduction index maps to weight and input coordinates; they keep
that mapping as small mixed-radix counters that are advanced by ``BK`` per chunk, so there is
no integer division in the inner loops (conv2d's ``A`` loader needs none: it reads the weight
as ``(K, Cg*kH*kW)`` rows, in reduction order).

The grid is one-dimensional over all the tiles (:func:`tile_coords`: pixel tile fastest, then
channel tile, then image x group), grid-strided.  Three nested grid-stride loops (x, y, z)
kept every loop's state live at once: with them, ptxas gave the 64x64 float32 conv2d kernel
202 registers (one 256-thread block per SM); with one loop, the unsigned shared-memory
indices of ``mma_chunk`` and the weight read as rows (``conv._build_gemm``), 126 on sm_90,
and its launch bounds keep it at 128 everywhere (two blocks per SM), with no spills.
"""

from __future__ import annotations

from numba import cuda, uint64

_cache: dict = {}


@cuda.jit(device=True, inline="always")
def next_row(c, i, j, ni, nj):
    """The reduction counter ``(c, i, j)`` (digits of radix ``ni`` and ``nj``) plus one."""
    j += 1
    if j == nj:
        j = 0
        i += 1
        if i == ni:
            i = 0
            c += 1
    return c, i, j


@cuda.jit(device=True, inline="always")
def advance(c, i, j, dc, di, dj, ni, nj):
    """The reduction counter ``(c, i, j)`` plus ``(dc, di, dj)``, where ``dj < nj`` and
    ``di < ni`` (``BK`` written in the counter's radices): at most one carry per digit."""
    j += dj
    i += di
    c += dc
    if j >= nj:
        j -= nj
        i += 1
    if i >= ni:
        i -= ni
        c += 1
    return c, i, j


@cuda.jit(device=True, inline="always")
def advance2(hi, lo, dhi, dlo, nlo):
    """The two-digit counter ``(hi, lo)`` (``lo`` of radix ``nlo``) plus ``(dhi, dlo)``,
    where ``dlo < nlo``: at most one carry."""
    lo += dlo
    hi += dhi
    if lo >= nlo:
        lo -= nlo
        hi += 1
    return hi, lo


@cuda.jit(device=True, inline="always")
def split_row(r, ni, nj):
    """The reduction counter ``(c, i, j)`` (digits of radix ``ni`` and ``nj``) of row ``r``."""
    c = r // (ni * nj)
    rest = r - c * (ni * nj)
    i = rest // nj
    return c, i, rest - i * nj


@cuda.jit(device=True, inline="always")
def tile_coords(tile, n_pt, n_mt):
    """``(pixel tile, channel tile, image x group)`` of a flat tile index (pixel tile fastest,
    so consecutive blocks share their weight tile)."""
    pt = tile % n_pt
    rest = tile // n_pt
    mt = rest % n_mt
    return pt, mt, rest // n_mt


def functions(T, tiles):
    """``(mma_chunk, zero_acc, stage_b_rows, store_tile)`` device functions for float type
    ``T`` and a tile shape."""
    key = (T, tiles)
    fns = _cache.get(key)
    if fns is None:
        fns = _cache[key] = _build(T, tiles)
    return fns


def _build(T, tiles):
    RPT = tiles.BK * tiles.BN // tiles.threads  # B rows per loader thread
    BK = tiles.BK
    TM = tiles.TM
    TN = tiles.TN
    TXS = tiles.BN // tiles.TN
    TYS = tiles.BM // tiles.TM
    zero = T(0.0)

    @cuda.jit(device=True, inline="always")
    def zero_acc(acc):
        for e in range(TM * TN):
            acc[e] = zero

    @cuda.jit(device=True, inline="always")
    def mma_chunk(As, Bs, acc, ra, rb, tx, ty):
        """``acc += As[ty rows, :] @ Bs[:, tx columns]`` for one staged ``BK`` chunk.

        The shared-memory indices are unsigned: with signed ones numba adds its negative-index
        wrap-around, and LLVM then kept ``TM + TN`` separate 64-bit addresses live instead of
        two bases with constant offsets (about 70 registers more over the whole kernel, and the
        ``kk`` loop not unrolled).
        """
        for kk in range(BK):
            ukk = uint64(kk)
            for a in range(TM):
                ra[a] = As[uint64(ty + TYS * a), ukk]
            for b in range(TN):
                rb[b] = Bs[ukk, uint64(tx + TXS * b)]
            for a in range(TM):
                for b in range(TN):
                    acc[a * TN + b] += ra[a] * rb[b]

    @cuda.jit(device=True, inline="always")
    def stage_b_rows(x, Bs, n, cbase, c, i, j, c_end, iy0, ix0, dy, dx, ni, nj, krb, pc):
        """Stage this thread's ``RPT`` rows of the ``B`` tile (column ``pc``, rows from
        ``krb``) for conv2d and conv_transpose2d: the row with reduction counter ``(c, i, j)``
        holds input pixel ``(iy0 + i * dy, ix0 + j * dx)`` of channel ``cbase + c``, or zero
        outside the image and from channel ``c_end`` on."""
        H = x.shape[2]
        W = x.shape[3]
        for row in range(RPT):
            v = zero
            if c < c_end:
                iy = iy0 + i * dy
                ix = ix0 + j * dx
                if iy >= 0 and iy < H and ix >= 0 and ix < W:
                    v = x[n, cbase + c, iy, ix]
            Bs[krb + row, pc] = v
            c, i, j = next_row(c, i, j, ni, nj)

    @cuda.jit(device=True, inline="always")
    def store_tile(out, b, acc, n, kbase, m0, p0, tx, ty, Kg, P, Wp, y0, sy, x0, sx):
        """``out[n, kbase + m, y, x] = acc + b[kbase + m]`` for this thread's ``TM x TN``
        outputs (``b`` may be empty).  The GEMM's pixel ``p`` (of ``P``, in rows of ``Wp``)
        is the output pixel ``y = y0 + sy * (p // Wp)``, ``x = x0 + sx * (p % Wp)``: the
        plain raster order for conv2d (0, 1, 0, 1), an output phase for conv_transpose2d.
        ``out`` stays 4-D: a flat view would cost a new DeviceNDArray per call on the host
        (3-4 us) to save at most 4 registers."""
        for a in range(TM):
            m = m0 + ty + TYS * a
            if m < Kg:
                bias = zero
                if b.shape[0] != 0:
                    bias = b[kbase + m]
                for bb in range(TN):
                    p = p0 + tx + TXS * bb
                    if p < P:
                        u = p // Wp
                        y = y0 + sy * u
                        x = x0 + sx * (p - u * Wp)
                        out[n, kbase + m, y, x] = acc[a * TN + bb] + bias

    return mma_chunk, zero_acc, stage_b_rows, store_tile
