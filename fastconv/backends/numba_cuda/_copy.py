"""Strided -> C-contiguous copies on the device (``ascontiguous``).

One grid-stride kernel per rank (1 to 4): thread ``t`` writes element ``t`` of the
contiguous output (coalesced stores) and reads the strided source through numba's array
indexing, which handles any strides, negative ones included.
"""

from __future__ import annotations

from numba import cuda

from ._index import unravel3, unravel4
from ._launch import current_stream, empty, launch, numba_arg_types, settings


@cuda.jit(cache=True)
def copy_1d(src, dst):
    n0 = dst.shape[0]
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, n0, cuda.gridDim.x * cuda.blockDim.x):
        dst[t] = src[t]


@cuda.jit(cache=True)
def copy_2d(src, dst):
    n1 = dst.shape[1]
    size = dst.shape[0] * n1
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, size, cuda.gridDim.x * cuda.blockDim.x):
        i0 = t // n1
        dst[i0, t - i0 * n1] = src[i0, t - i0 * n1]


@cuda.jit(cache=True)
def copy_3d(src, dst):
    n1 = dst.shape[1]
    n2 = dst.shape[2]
    size = dst.shape[0] * n1 * n2
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, size, cuda.gridDim.x * cuda.blockDim.x):
        i0, i1, i2 = unravel3(t, n1, n2)
        dst[i0, i1, i2] = src[i0, i1, i2]


@cuda.jit(cache=True)
def copy_4d(src, dst):
    n1 = dst.shape[1]
    n2 = dst.shape[2]
    n3 = dst.shape[3]
    size = dst.shape[0] * n1 * n2 * n3
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for t in range(start, size, cuda.gridDim.x * cuda.blockDim.x):
        i0, i1, i2, i3 = unravel4(t, n1, n2, n3)
        dst[i0, i1, i2, i3] = src[i0, i1, i2, i3]


_BY_RANK = {1: copy_1d, 2: copy_2d, 3: copy_3d, 4: copy_4d}


def contiguous_copy(a):
    """A C-contiguous copy of device array ``a`` (rank 1 to 4) made by a kernel."""
    shape = tuple(a.shape)
    out = empty(shape, a.dtype)
    if out.size == 0:
        return out
    kern = _BY_RANK.get(len(shape))
    if kern is None:
        raise ValueError(f"ascontiguous supports arrays of rank 1 to 4, got rank {len(shape)}")
    block = settings.block
    gx = max(1, min(-(-out.size // block), settings.max_grid[0]))
    skey, stream = current_stream()
    launch(kern, (gx,), block, skey, stream, a, out)
    return out


def ptx_cases(T):
    """``[(name, kernel, argtypes)]``: each rank, strided (layout "A") source -> C output."""
    from numba import types

    ft = numba_arg_types(T)[0]
    return [
        (k.py_func.__name__, k, (types.Array(ft, r, "A"), types.Array(ft, r, "C")))
        for r, k in _BY_RANK.items()
    ]
