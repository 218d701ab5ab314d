"""Shared fixtures: the backends under test, dtypes, and the random-case check against the oracle.

GPU backends carry the ``gpu`` marker and skip cleanly when they cannot run
(no CuPy / numba-cuda, or no GPU).  ``FASTCONV_TEST_EXAMPLES`` sets how many
random configurations each op x dtype x backend test draws (default 200).

``FASTCONV_TEST_BACKENDS`` (comma-separated, default ``cpu,cupy,numba_cuda``)
sets the backends of the ``backend`` fixture.  ``cupy_emulated`` is the cupy
backend's CUDA C kernels compiled for the CPU (``tests/cupy_emu``); a list
without ``cpu`` runs only the tests that take the ``backend`` fixture (and
``tests/cupy_emu``) -- ``tests/test_cupy_emulated.py`` runs the suite that way.
"""

import importlib.util
import os
from pathlib import Path

# Idle GNU OpenMP threads sleep instead of spinning.  pytest-xdist runs one process per
# core, each with numba's full thread pool, and spinning threads then take the cores the
# other workers need: on the 2-core CI machine, tests/test_cpu_conv_paths.py took 102 s
# of CPU (75 s wall) spinning and 59 s (56 s) passive.  Set before numba starts its
# threading layer; child processes inherit it.  Results do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fastconv import _dispatch, _random_cases

N_EXAMPLES = int(os.environ.get("FASTCONV_TEST_EXAMPLES", "200"))
TEST_BACKENDS = os.environ.get("FASTCONV_TEST_BACKENDS", "cpu,cupy,numba_cuda").split(",")
GPU_BACKENDS = ("cupy", "numba_cuda")

if "cupy_emulated" in TEST_BACKENDS:
    from cupy_emu import emulator

    emulator.install()

ORACLE_SETTINGS = settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    derandomize=True,  # CI runs the same cases every time; FASTCONV_TEST_EXAMPLES widens them
)


def _backend_param(name):
    return pytest.param(name, marks=pytest.mark.gpu) if name in GPU_BACKENDS else name


@pytest.fixture(params=[_backend_param(n) for n in TEST_BACKENDS])
def backend(request):
    name = request.param
    if name in GPU_BACKENDS:
        ok, why = _dispatch.backend_status(name)
        if not ok:
            pytest.skip(f"{name} backend unavailable: {why}")
    return name


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


#: tests that each run a long child process (1-4 minutes on the 2-core CI machine) and do
#: not use this process's numba cache: started first, longest first, so that pytest-xdist's
#: other worker works through the rest meanwhile instead of one of them ending the run alone
RUN_FIRST = (
    "tests/test_cupy_emulated.py::test_cupy_kernels_in_the_emulator",
    "tests/test_numba_cuda_simulator.py::",
    "tests/test_cupy_emulated.py::test_no_shared_memory_races",
    "tests/test_cpu_conv_paths.py::test_avx2_target_in_subprocess",
)
#: ... and ones whose child process compiles every CPU kernel again unless the on-disk
#: cache is warm: started last, when the other tests have filled it
RUN_LAST = ("tests/test_cli.py::test_check_passes_on_cpu",)


def _run_order(item) -> int:
    nodeid = item.nodeid.replace("\\", "/")
    first = [i for i, prefix in enumerate(RUN_FIRST) if nodeid.startswith(prefix)]
    if first:
        return first[0]  # longest first
    return len(RUN_FIRST) + (1 if nodeid.startswith(RUN_LAST) else 0)


def pytest_collection_modifyitems(config, items):
    """Long child-process tests first (see ``RUN_FIRST``), then the rest in file order.

    Without ``cpu`` in ``FASTCONV_TEST_BACKENDS``, keep only the tests that use a backend.
    """
    items.sort(key=_run_order)  # stable: every xdist worker collects the same order
    if "cpu" in TEST_BACKENDS:
        return
    keep, drop = [], []
    for item in items:
        in_emu_dir = item.nodeid.replace("\\", "/").startswith("tests/cupy_emu/")
        wanted = in_emu_dir or "backend" in getattr(item, "fixturenames", ())
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _snapshot(arrays):
    def copy(a):
        if a is None:
            return None
        return [b.copy() for b in a] if isinstance(a, list) else a.copy()

    return {k: copy(v) for k, v in arrays.items()}


def assert_unchanged(before, after):
    for name, a in after.items():
        b = before[name]
        pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
        for x, y in pairs:
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=f"{name} was modified")


def check_random_case(op, backend, dtype, data):
    """Draw one configuration of ``op`` and compare ``backend`` with the oracle."""

    def pick(lo, hi):
        return data.draw(st.integers(lo, hi))

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    case = _random_cases.GENERATORS[op](pick, rng, dtype)
    before = _snapshot(case.arrays)
    err, out, ref = _random_cases.run_case(case, backend)
    assert out.dtype == dtype, f"result dtype {out.dtype} for {dtype} input"
    assert out.shape == ref.shape, f"shape {out.shape} != oracle {ref.shape}: {case.describe()}"
    tol = _random_cases.TOLERANCE[dtype]
    assert err <= tol, f"relative error {err:.3g} > {tol:g} for {case.describe()}"
    assert_unchanged(before, case.arrays)



def bench_script(name: str):
    """``bench/<name>.py`` (a script, not a package module) imported as a module."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
