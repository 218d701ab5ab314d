"""numba.cuda kernels in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, own process).

The variable must be set before numba is first imported, so these tests cannot share the
normal pytest process: ``tests/test_numba_cuda_simulator.py`` runs
``python -m pytest tests/cudasim`` in a subprocess with the variable set.  Without it,
nothing here is collected.

The launch settings are shrunk (8-thread element-wise blocks, 16- and 8-thread GEMM
blocks, grids capped at 2 x 2 x 2) so that tiny inputs still run several blocks, several
tiles per block and every grid-stride loop.

A kernel's array accesses go through numpy here, where a negative index wraps around to
the end of the axis; on a GPU it reads or writes before the allocation.  So the simulator's
in-kernel arrays (and shared and local arrays) refuse negative indices for the session: a
kernel that loads ``x[..., -1]`` and then multiplies it by a zero padding weight would
otherwise pass here and read out of bounds on the device.
"""

import os
import sys

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIMULATOR:
    collect_ignore_glob = ["test_*.py"]


def _check_index(idx, shape):
    for i in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(i, int | np.integer) and i < 0:
            raise IndexError(f"negative index {idx} into an array of shape {tuple(shape)} "
                             "(on a GPU: an access outside the array)")


@pytest.fixture(scope="session", autouse=True)
def no_negative_indices():
    from numba.cuda.simulator import kernelapi
    from numba.cuda.simulator.cudadrv import devicearray

    class NoNegativeIndices(np.ndarray):
        """Shared and local arrays of a simulated kernel, refusing negative indices."""

        def __getitem__(self, idx):
            _check_index(idx, self.shape)
            return super().__getitem__(idx)

        def __setitem__(self, idx, val):
            _check_index(idx, self.shape)
            super().__setitem__(idx, val)

    wrapper = devicearray.FakeWithinKernelCUDAArray
    saved = {name: getattr(wrapper, name) for name in ("__getitem__", "__setitem__")}

    def getitem(self, idx):
        _check_index(idx, self._item.shape)
        return saved["__getitem__"](self, idx)

    def setitem(self, idx, val):
        _check_index(idx, self._item.shape)
        saved["__setitem__"](self, idx, val)

    wrapper.__getitem__, wrapper.__setitem__ = getitem, setitem
    real_shared, real_local = kernelapi.FakeCUDAShared.array, kernelapi.FakeCUDALocal.array

    def shared_array(self, shape, dtype, alignment=None):
        if shape == 0:  # dynamic shared memory: one buffer for every call
            return real_shared(self, shape, dtype, alignment).view(NoNegativeIndices)
        # the simulator tells a block's static arrays apart by the line that makes them (the
        # caller's, so it cannot be wrapped: its own lookup would see this line)
        frame = sys._getframe(1)
        where = (frame.f_code.co_filename, frame.f_lineno)
        a = self._allocations.get(where)
        if a is None:
            a = real_local(None, shape, dtype, alignment).view(NoNegativeIndices)
            self._allocations[where] = a
        return a

    def local_array(self, shape, dtype, alignment=None):
        return real_local(self, shape, dtype, alignment).view(NoNegativeIndices)

    kernelapi.FakeCUDAShared.array, kernelapi.FakeCUDALocal.array = shared_array, local_array
    yield
    wrapper.__getitem__, wrapper.__setitem__ = saved["__getitem__"], saved["__setitem__"]
    kernelapi.FakeCUDAShared.array, kernelapi.FakeCUDALocal.array = real_shared, real_local


@pytest.fixture(scope="session", autouse=True)
def small_launches():
    from fastconv.backends.numba_cuda import _launch

    assert _launch.SIMULATOR, "numba was imported before NUMBA_ENABLE_CUDASIM=1 was set"
    old = _launch.configure(
        block=8,
        max_grid=(2, 2, 2),
        tiles_wide=_launch.Tiles(BM=8, BN=8, BK=4, TM=2, TN=2),  # 16 threads
        tiles_narrow=_launch.Tiles(BM=4, BN=8, BK=4, TM=2, TN=2),  # 8 threads
        gemm_wide_channels=4,
        gemm_wide_min_blocks=1,
        roi_channels_per_thread=2,
    )
    yield
    _launch.configure(**{f: getattr(old, f) for f in old.__dataclass_fields__})


@pytest.fixture(params=["direct", "gemm"])
def path(request):
    """Force the direct (one thread per output) or the implicit-GEMM kernels."""
    from fastconv.backends.numba_cuda import _launch

    if request.param == "direct":
        old = _launch.configure(gemm_min_channels=10**9)
    else:
        old = _launch.configure(gemm_min_channels=1, gemm_min_reduction=1)
    yield request.param
    _launch.configure(
        gemm_min_channels=old.gemm_min_channels, gemm_min_reduction=old.gemm_min_reduction
    )
