"""Every numba.cuda kernel compiles to PTX for compute capability 9.0 (no GPU needed).

Float32 and float64 signatures (with and without the optional bias / mask arrays) go
through ``numba.cuda.compile_ptx``.  The PTX is also checked for what the kernels are
written to guarantee: register tiles never spill to local memory, device functions are
inlined (no calls), and float32 kernels do no float64 arithmetic.

The host-side view helper of the GEMMs is tested here too, on real ``DeviceNDArray``
objects (which the simulator does not make; no device memory is needed).

numba.cuda is imported inside the tests only, so collecting this file does not import it.
"""

import functools
import gc
import importlib
import importlib.util
import os
import re

import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("numba_cuda") is None,
        reason='numba-cuda is not installed (pip install "numba-cuda[cu13]")',
    ),
    pytest.mark.skipif(
        os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
        reason="compile_ptx is not available in the CUDA simulator",
    ),
]

MODULES = ["conv", "deform", "roi", "_copy", "resample"]


@functools.cache
def compiled_ptx(module: str, dtype_name: str, cc: tuple) -> tuple:
    """``((name, ptx), ...)`` for every kernel of a backend module (compiled once per
    process: the PTX and the resource tests share it)."""
    from fastconv.backends.numba_cuda._resources import kernel_ptx

    mod = importlib.import_module(f"fastconv.backends.numba_cuda.{module}")
    return tuple((name, kernel_ptx(kernel, argtypes, cc))
                 for name, kernel, argtypes in mod.ptx_cases(np.dtype(dtype_name).type))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("module", MODULES)
def test_kernels_compile_to_ptx(module, dtype):
    cases = compiled_ptx(module, np.dtype(dtype).name, (9, 0))
    assert cases
    problems = []
    for name, ptx in cases:
        if ".entry" not in ptx or ".target sm_90" not in ptx:
            problems.append(f"{name}: no sm_90 kernel entry in the PTX")
        if re.search(r"\b(ld|st)\.local\b", ptx):
            problems.append(f"{name}: uses local memory (a register tile spilled)")
        if re.search(r"\bcall(\.uni)?\b", ptx):
            problems.append(f"{name}: calls a function (a device function was not inlined)")
        if dtype == np.float32 and re.search(r"\.f64\b", ptx):
            problems.append(f"{name}: float64 arithmetic in a float32 kernel")
    assert not problems, "\n".join(problems)


def test_every_kernel_is_covered():
    """Each ``numba.cuda.jit`` kernel of the five ops' modules appears in its ``ptx_cases``."""
    import ast
    from pathlib import Path

    import fastconv.backends.numba_cuda as pkg

    root = Path(pkg.__file__).parent
    for module in MODULES:
        defined = set()
        for node in ast.walk(ast.parse((root / f"{module}.py").read_text())):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    src = ast.unparse(dec)
                    if src.startswith("cuda.jit") and "device=True" not in src:
                        defined.add(node.name)
        mod = importlib.import_module(f"fastconv.backends.numba_cuda.{module}")
        covered = {k.py_func.__name__ for _, k, _ in mod.ptx_cases(np.float32)}
        assert defined and defined <= covered, f"{module}: no PTX check for {defined - covered}"


def test_kernels_compile_where_numpy_has_no_row_stack():
    """numpy 2.5 removed ``np.row_stack``; numba-cuda <= 0.30.4 refers to it when it builds
    its target.  The backend lends the alias for that one import: a conv kernel compiles and
    numpy is left without ``row_stack`` afterwards (own process: numpy's namespace is changed)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, scipy._lib._array_api\n"  # scipy lists numpy's names at import
        "if hasattr(np, 'row_stack'): del np.row_stack\n"
        "from numba import cuda\n"
        "from fastconv.backends.numba_cuda import conv\n"
        "name, kernel, argtypes = conv.ptx_cases(np.float32)[0]\n"
        "ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(9, 0))\n"
        "assert '.entry' in ptx\n"
        "assert not hasattr(np, 'row_stack')\n"
        "print('compiled', name)\n"
    )
    pytest.importorskip("scipy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled" in proc.stdout


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("module", MODULES)
def test_resource_usage(module, arch):
    """ptxas' real report (through nvJitLink): every kernel fits its block in one SM's
    register file and static shared-memory window, and none spills to local memory
    (the PTX check above cannot see spills: ptxas makes them after PTX)."""
    pytest.importorskip("cuda.bindings.nvjitlink")
    from fastconv.backends.numba_cuda import _resources

    cc = (int(arch[3:-1]), int(arch[-1]))
    problems = []
    for dtype in ("float32", "float64"):
        for name, ptx in compiled_ptx(module, dtype, cc):
            u = _resources.ptx_usage(ptx, arch)
            what = f"{name} {dtype} {arch}: {u}"
            if u["registers"] * _resources.launch_threads(name) > 65536:
                problems.append(f"{what}: the block does not fit one SM's registers")
            if u["static_smem_bytes"] > 48 * 1024:
                problems.append(f"{what}: more than 48 KiB of static shared memory")
            if u["spill_store_bytes"] + u["spill_load_bytes"]:
                problems.append(f"{what}: spills")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_gemms_run_two_blocks_per_sm(arch):
    """The float32 conv2d implicit GEMMs (the dilated cases) and the narrow conv_transpose2d
    GEMM (transposed_fcn) fit two 256-thread blocks per SM: at most 128 registers.  They took
    163-204 with three nested grid-stride loops and signed shared-memory indices (``_gemm``);
    this keeps either from coming back."""
    pytest.importorskip("cuda.bindings.nvjitlink")
    from fastconv.backends.numba_cuda import _resources

    cc = (int(arch[3:-1]), int(arch[-1]))
    names = {"conv2d_gemm64", "conv2d_gemm32", "conv_transpose2d_gemm32"}
    gemms = [(n, p) for n, p in compiled_ptx("conv", "float32", cc) if n in names]
    assert len(gemms) == len(names)
    for name, ptx in gemms:
        u = _resources.ptx_usage(ptx, arch)
        blocks = 65536 // (u["registers"] * _resources.launch_threads(name))
        assert blocks >= 2, f"{name} {arch}: {u['registers']} registers, {blocks} block per SM"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_depthwise_runs_four_blocks_per_sm(arch):
    """conv2d_depthwise (memory-bound) fits at least four 256-thread blocks per SM in either
    dtype: at most 64 registers (48-53 with 32-bit tile arithmetic; conv2d_direct, which
    depthwise convs ran before, takes 94-120 and fits two)."""
    pytest.importorskip("cuda.bindings.nvjitlink")
    from fastconv.backends.numba_cuda import _resources

    cc = (int(arch[3:-1]), int(arch[-1]))
    for dtype in ("float32", "float64"):
        (ptx,) = [p for n, p in compiled_ptx("conv", dtype, cc) if n == "conv2d_depthwise"]
        u = _resources.ptx_usage(ptx, arch)
        blocks = 65536 // (u["registers"] * _resources.launch_threads("conv2d_depthwise"))
        assert blocks >= 4, f"conv2d_depthwise {dtype} {arch}: {u['registers']} registers"


def device_array_without_memory(shape, dtype=np.float32):
    """A DeviceNDArray over a stand-in pointer: enough for shapes and views, never for a launch."""
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    strides = np.empty(shape, dtype).strides
    return DeviceNDArray(shape=shape, strides=strides, dtype=dtype, gpu_data=object())


def test_weight_views_are_memoised_per_array_and_shape_and_die_with_the_array():
    """conv2d's GEMM takes the weight as (K, Cg*kH*kW) rows and the exact transposed pass's
    flag scan as one flat row: views (same memory), made once per (weight array, shape),
    whose cache entries go with the array."""
    from fastconv.backends.numba_cuda import _launch

    w = device_array_without_memory((6, 2, 3, 3))
    rows = _launch.weight_rows(w)
    assert rows.shape == (6, 18) and rows.strides == (72, 4)
    assert rows.gpu_data is w.gpu_data  # a view, not a copy
    assert _launch.weight_rows(w) is rows  # made once per array
    flat = _launch.memo_view(w, (108,))
    assert flat.shape == (108,) and flat.gpu_data is w.gpu_data
    assert _launch.memo_view(w, (108,)) is flat and _launch.weight_rows(w) is rows
    other = device_array_without_memory((6, 2, 3, 3))
    assert _launch.weight_rows(other) is not rows
    before = len(_launch._views_cache)
    del w, rows, flat
    gc.collect()
    assert len(_launch._views_cache) == before - 1
