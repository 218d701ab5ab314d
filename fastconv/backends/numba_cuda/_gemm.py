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
no integer division in the inner loops.
"""

from __future__ import annotations

from numba import cuda

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


def functions(T, tiles):
    """``(mma_chunk, zero_acc)`` device functions for float type ``T`` and a tile shape."""
    key = (T, tiles)
    fns = _cache.get(key)
    if fns is None:
        fns = _cache[key] = _build(T, tiles)
    return fns


def _build(T, tiles):
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
        """``acc += As[ty rows, :] @ Bs[:, tx columns]`` for one staged ``BK`` chunk."""
        for kk in range(BK):
            for a in range(TM):
                ra[a] = As[ty + TYS * a, kk]
            for b in range(TN):
                rb[b] = Bs[kk, tx + TXS * b]
            for a in range(TM):
                for b in range(TN):
                    acc[a * TN + b] += ra[a] * rb[b]

    return mma_chunk, zero_acc
