"""numba.cuda kernels in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, own process).

The variable must be set before numba is first imported, so these tests cannot share the
normal pytest process: ``tests/test_numba_cuda_simulator.py`` runs
``python -m pytest tests/cudasim`` in a subprocess with the variable set.  Without it,
nothing here is collected.

The launch settings are shrunk (8-thread element-wise blocks, 16- and 8-thread GEMM
blocks, grids capped at 2 x 2 x 2) so that tiny inputs still run several blocks, several
tiles per block and every grid-stride loop.

The simulator is also made to check what it would otherwise let pass
(``_checked_memory.py``): negative indices are errors, each block's shared memory starts
poisoned (NaN), and two threads touching one shared element with no barrier between them
raise ``SharedMemoryRace``.

``FASTCONV_SIM_CASES`` (default 25) sets how many random configurations each op x dtype
x path draws, for a wider run by hand:
``FASTCONV_SIM_CASES=300 NUMBA_ENABLE_CUDASIM=1 python -m pytest -n 2 tests/cudasim``.
"""

import os

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIMULATOR:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session", autouse=True)
def checked_memory():
    from ._checked_memory import install

    undo = install()
    yield
    undo()


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


@pytest.fixture
def launched(monkeypatch):
    """The names of the kernels the conv, deformable and RoI ops launch, in order."""
    from fastconv.backends.numba_cuda import conv, deform, roi

    names = []
    for module in (conv, deform, roi):
        def spy(kernel, *args, _real=module.launch, **kwargs):
            names.append(kernel.py_func.__name__)
            return _real(kernel, *args, **kwargs)

        monkeypatch.setattr(module, "launch", spy)
    return names
