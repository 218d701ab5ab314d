"""Every numba.cuda kernel compiles to PTX for compute capability 9.0 (no GPU needed).

Float32 and float64 signatures (with and without the optional bias / mask arrays) go
through ``numba.cuda.compile_ptx``.  The PTX is also checked for what the kernels are
written to guarantee: register tiles never spill to local memory, device functions are
inlined (no calls), and float32 kernels do no float64 arithmetic.

The host-side view helper of the GEMMs is tested here too, on real ``DeviceNDArray``
objects (which the simulator does not make; no device memory is needed).

What is launched is what is compiled here.  The CUDA simulator runs a kernel's Python
source and ignores argument types, so it cannot see what a real GPU does at launch: numba
types every argument (``typeof``) and compiles a specialisation for exactly those types.  A
Python ``float`` where the kernel computes in float32, an ``int32`` where the rest are
``int64``, or a layout nobody compiled, would give a specialisation that the tests above
never compiled (for spills, float64 arithmetic in a float32 kernel, or a typing error).
So the public functions run here for real on device arrays without memory, up to the
launch: every launch is recorded instead of made, and its argument types must be one of
the signatures its module's ``ptx_cases`` gives the tests above.  Every kernel of the five
modules must be launched at least once, so the calls reach them all.  Launch geometry is
checked too: block and grid within the hardware's limits, and dynamic shared memory
within the 48 KiB a kernel gets without opting in.

numba.cuda is imported inside the tests only, so collecting this file does not import it.
"""

import contextlib
import functools
import gc
import importlib
import importlib.util
import os
import re
from types import SimpleNamespace

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


def float64_arithmetic(ptx: str) -> list:
    """The PTX instructions that compute in float64: every ``.f64`` instruction but the
    loads, stores, moves and conversions that a float32 kernel reading float64 data (the RoI
    boxes' conversion) needs, and the register declarations those take."""
    found = []
    for line in ptx.splitlines():
        line = line.strip()
        if not re.search(r"\.f64\b", line) or line.startswith((".reg", "//")):
            continue
        if not re.match(r"(@!?%p\d+\s+)?(ld|st|mov|cvt)\.", line):
            found.append(line)
    return found


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
        if dtype == np.float32 and float64_arithmetic(ptx):
            problems.append(f"{name}: float64 arithmetic in a float32 kernel: "
                            f"{float64_arithmetic(ptx)[:3]}")
    assert not problems, "\n".join(problems)


def test_float64_arithmetic_is_told_from_float64_data():
    ptx = """
    .reg .f64 %fd<3>;
    ld.global.f64 %fd1, [%rd4];
    cvt.rn.f32.f64 %f1, %fd1;
    @%p1 st.global.f64 [%rd5], %fd1;
    mov.f64 %fd2, %fd1;
    fma.rn.f32 %f2, %f1, %f1, %f1;
    """
    assert float64_arithmetic(ptx) == []
    assert float64_arithmetic(ptx + "add.f64 %fd2, %fd1, %fd1;") == ["add.f64 %fd2, %fd1, %fd1;"]
    assert float64_arithmetic(ptx + "@!%p2 setp.lt.f64 %p3, %fd1, %fd2;") != []


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
            if name == "conv2d_depthwise":  # static + its most dynamic within the limit
                from fastconv.backends.numba_cuda.conv import DW_SMEM_BUDGET

                if u["static_smem_bytes"] + DW_SMEM_BUDGET > 48 * 1024:
                    problems.append(f"{what}: with {DW_SMEM_BUDGET} B of dynamic shared "
                                    "memory a block would exceed 48 KiB")
            # autotuning's two-blocks-per-SM GEMM arms trade spills for the second block
            if u["spill_store_bytes"] + u["spill_load_bytes"] and not name.endswith("_2blocks"):
                problems.append(f"{what}: spills")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_gemms_run_two_blocks_per_sm(arch):
    """The float32 conv2d implicit GEMMs (the dilated cases) and the narrow conv_transpose2d
    GEMM (transposed_fcn) fit two 256-thread blocks per SM: at most 128 registers; so do
    the other GEMMs' autotuning arms compiled for it (``*_2blocks``).  They took
    163-204 with three nested grid-stride loops and signed shared-memory indices (``_gemm``);
    this keeps either from coming back."""
    pytest.importorskip("cuda.bindings.nvjitlink")
    from fastconv.backends.numba_cuda import _resources

    cc = (int(arch[3:-1]), int(arch[-1]))
    names = {"conv2d_gemm64", "conv2d_gemm32", "conv_transpose2d_gemm32",
             "conv_transpose2d_gemm64_2blocks", "deform_conv2d_gemm64_2blocks",
             "deform_conv2d_gemm32_2blocks"}
    gemms = [(n, p) for m in ("conv", "deform") for n, p in compiled_ptx(m, "float32", cc)
             if n in names]
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


def test_weight_views_are_memoised_per_array_and_shape_and_die_with_the_array():
    """conv2d's GEMM takes the weight as (K, Cg*kH*kW) rows and the exact transposed pass's
    flag scan as one flat row: views (same memory), made once per (weight array, shape),
    whose cache entries go with the array."""
    from fastconv.backends.numba_cuda import _launch

    w = fake_device_array((6, 2, 3, 3), np.float32)
    rows = _launch.weight_rows(w)
    assert rows.shape == (6, 18) and rows.strides == (72, 4)
    assert rows.gpu_data is w.gpu_data  # a view, not a copy
    assert _launch.weight_rows(w) is rows  # made once per array
    flat = _launch.memo_view(w, (108,))
    assert flat.shape == (108,) and flat.gpu_data is w.gpu_data
    assert _launch.memo_view(w, (108,)) is flat and _launch.weight_rows(w) is rows
    other = fake_device_array((6, 2, 3, 3), np.float32)
    assert _launch.weight_rows(other) is not rows
    before = len(_launch._views_cache)
    del w, rows, flat
    gc.collect()
    assert len(_launch._views_cache) == before - 1


# ------------------------------------------------- what is launched is what is compiled

#: dynamic shared memory a launch may ask for: 48 KiB without the kernel's opt-in attribute,
#: less the 1 KiB of static shared memory ptxas reports for every numba kernel with shared
#: memory on sm_90 (test_resource_usage's report)
SHARED_WITHOUT_OPT_IN = 47 * 1024


def geometry_problem(kernel, grid, block, shared) -> str | None:
    """What is wrong with a launch's geometry for the hardware, or None: at most 3 grid
    dimensions within their limits, 1-1024 threads, dynamic shared memory within
    :data:`SHARED_WITHOUT_OPT_IN`."""
    from fastconv.backends.numba_cuda import _launch

    grid = (grid,) if np.isscalar(grid) else tuple(grid)
    name = kernel.py_func.__name__
    if not (1 <= block <= 1024 and len(grid) <= 3 and all(
            1 <= g <= m for g, m in zip(grid, _launch._HW_MAX_GRID[:len(grid)], strict=True))):
        return f"{name}: grid {grid} x block {block}"
    if not 0 <= shared <= SHARED_WITHOUT_OPT_IN:
        return f"{name}: {shared} bytes of dynamic shared memory"
    return None


@functools.cache
def _no_memory_array_type():
    from numba.cuda.cudadrv import devicearray

    class NoMemoryArray(devicearray.DeviceNDArray):
        """A numba device array without device memory; reading it back gives zeros."""

        def copy_to_host(self, ary=None, stream=0):
            return np.zeros(self.shape, self.dtype)

    # fastconv tells numba arrays by their module, as it does the real ones
    NoMemoryArray.__module__ = devicearray.__name__
    return NoMemoryArray


class _NoMemory:
    """``gpu_data`` of a :func:`fake_device_array`: views of it are itself."""

    def view(self, *_):
        return self


def fake_device_array(shape, dtype=np.float64, *, every_other_row=False, **_):
    """A ``DeviceNDArray`` with shape, strides and views but no device memory (slicing
    needs the ``launches`` fixture, which stands in for the CUDA context);
    ``every_other_row`` makes it strided, as ``a[::2]``.  Reading it back gives zeros (the
    RoI box check and the min/max reduction read 4-byte results)."""
    from numba.cuda.cudadrv import devicearray

    cls = _no_memory_array_type()
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    strides, step = [], np.dtype(dtype).itemsize  # C order, without allocating the shape
    for n in reversed(shape):
        strides.insert(0, step)
        step *= max(n, 1)
    strides = tuple(strides)
    if every_other_row:
        strides = (2 * strides[0],) + strides[1:]
    if 0 in shape:  # the null pointer of a zero-size array names its context
        real = devicearray.devices.get_context
        devicearray.devices.get_context = lambda *a: SimpleNamespace()
        try:
            return cls(shape=shape, strides=strides, dtype=dtype)
        finally:
            devicearray.devices.get_context = real
    return cls(shape=shape, strides=strides, dtype=dtype, gpu_data=_NoMemory())


@pytest.fixture
def launches(monkeypatch):
    """``[(module, kernel, grid, block, shared, args)]`` of every launch the backend asks for,
    none of them made; allocations and uploads give arrays without memory, and the public
    functions take those for numba arrays on the one GPU."""
    import importlib

    from numba import cuda
    from numba.cuda.cudadrv import devices

    from fastconv import _dispatch
    from fastconv.backends import numba_cuda as backend
    from fastconv.backends.numba_cuda import _launch

    monkeypatch.setattr(cuda, "device_array", fake_device_array)
    monkeypatch.setattr(cuda, "to_device", lambda a, *_, **__: fake_device_array(a.shape, a.dtype))
    monkeypatch.setattr(cuda, "current_context",
                        lambda *a: SimpleNamespace(device=SimpleNamespace(id=0)))
    monkeypatch.setattr(devices._runtime, "ensure_context", contextlib.nullcontext)
    monkeypatch.setattr(backend, "_n_gpus", 1)
    monkeypatch.setitem(_dispatch._ready, "numba_cuda", backend)  # no driver to ask
    # the stand-ins and scratch buffers made here must not outlive the test
    monkeypatch.setattr(_launch, "_absent_cache", {})
    monkeypatch.setattr(_launch, "_scratch_cache", {})
    recorded = []
    for name in MODULES:
        mod = importlib.import_module(f"fastconv.backends.numba_cuda.{name}")

        def record(kernel, grid, block, stream_key, stream, *args, shared=0, _mod=name):
            recorded.append((_mod, kernel, grid, block, shared, args))

        monkeypatch.setattr(mod, "launch", record)
    return recorded


def _op_calls(dt):
    """``(function, args, kwargs)`` through the public API, reaching every kernel of the five
    ops.  Sizes are free (nothing is allocated), so the wide GEMM tiles get their blocks.
    Parameters come as users write them, numpy scalars included."""
    import fastconv

    a = fake_device_array
    calls = []
    # conv2d: direct (1 output channel per group), depthwise, grouped KB 2/4/8 and their
    # tails, the narrow and the wide GEMM tiles; with and without a bias
    for c_in, k, g, hw in [(4, 2, 2, 9), (3, 6, 3, 9), (4, 4, 2, 9), (3, 3, 1, 9),
                           (4, 8, 2, 9), (4, 5, 1, 9), (4, 8, 1, 9), (4, 9, 1, 9),
                           (8, 16, 1, 9), (8, 64, 1, 96)]:
        for bias in (None, a((k,), dt)):
            calls.append((fastconv.conv2d, (a((1, c_in, hw, hw), dt), a((k, c_in // g, 3, 3), dt),
                                            bias), dict(padding=np.int64(1), groups=g)))
    # conv_transpose2d: direct, then narrow and wide GEMMs (each followed by the guarded pass)
    for c_in, kg, hw in [(4, 3, 5), (8, 16, 5), (64, 64, 64)]:
        for bias in (None, a((kg,), dt)):
            calls.append((fastconv.conv_transpose2d,
                          (a((1, c_in, hw, hw), dt), a((c_in, kg, 4, 4), dt), bias),
                          dict(stride=np.int32(2), padding=1)))
    # deform_conv2d, DCNv1 and v2: direct, narrow and wide GEMMs
    for c_in, k, hw in [(2, 3, 6), (8, 16, 6), (8, 64, 96)]:
        for mask, bias in [(None, None), (a((1, 9, hw, hw), dt), a((k,), dt))]:
            calls.append((fastconv.deform_conv2d,
                          (a((1, c_in, hw, hw), dt), a((1, 18, hw, hw), dt),
                           a((k, c_in, 3, 3), dt)), dict(bias=bias, mask=mask, padding=(1, 1))))
    # RoI ops with the box check; the list form from integer boxes, boxes of another dtype
    x = a((2, 5, 9, 9), dt)
    for boxes in (a((7, 5), dt), [a((3, 4), np.int64, every_other_row=True), a((4, 4), np.int64)],
                  [a((3, 4), np.int32)], [a((3, 4), dt), a((2, 4), dt)],
                  a((7, 5), np.float64 if dt == np.float32 else np.float32)):
        calls.append((fastconv.roi_align, (x, boxes, (2, 3)),
                      dict(spatial_scale=np.float32(0.5), sampling_ratio=2, aligned=True)))
        calls.append((fastconv.roi_pool, (x, boxes, np.int64(2)), dict(spatial_scale=0.5)))
    return calls


def _image_calls(dt):
    """The image toolkit and upsampling, reaching every resample kernel, and contiguous
    copies of strided arrays of every rank."""
    import fastconv
    import fastconv.image as fi

    a = fake_device_array
    gray, rgb = a((16, 20), dt), a((16, 20, 3), np.uint8)
    x = a((1, 3, 8, 10), dt)
    return [
        (fastconv.upsample, (x,), dict(scale_factor=2, mode="nearest")),
        (fastconv.upsample, (x,), dict(scale_factor=2, mode="bilinear")),
        (fi.correlate, (gray, np.ones((3, 3))), dict(dilation=2)),
        (fi.correlate, (rgb, np.ones((3, 3))), dict(channel_axis=-1)),
        (fi.pyramid_laplacian, (gray, 2), {}),
        # a cval outside the image's range (zeros here) is clipped away after the resize
        (fi.pyramid_expand, (gray,), dict(mode="constant", cval=5.0)),
        (fi.atrous_wavelet, (rgb, 2), dict(channel_axis=-1)),
        (fi.atrous_wavelet, (a((16, 20, 3), dt), 2), dict(channel_axis=-1)),
        # a strided input is copied to a contiguous one first
        (fastconv.conv2d, (a((2, 3, 8, 10), dt, every_other_row=True), a((4, 3, 3, 3), dt)), {}),
    ]


def _covers(checked, launched) -> bool:
    """Whether the checked signature compiles the launched one: equal types, or a layout
    "A" array where the launch passes a C- or F-contiguous one of the same dtype and rank."""
    from numba import types

    if len(checked) != len(launched):
        return False
    for c, t in zip(checked, launched, strict=True):
        if c == t:
            continue
        if not (isinstance(c, types.Array) and isinstance(t, types.Array) and c.layout == "A"
                and c.dtype == t.dtype and c.ndim == t.ndim):
            return False
    return True


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # zeros read back for min/max
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_every_launch_uses_a_signature_the_ptx_tests_compile(launches, monkeypatch, dtype):
    import importlib

    from fastconv.backends import _tuning
    from fastconv.backends import numba_cuda as backend
    from fastconv.backends.numba_cuda import autotune

    for fn, args, kwargs in _op_calls(dtype) + _image_calls(dtype):
        fn(*args, **kwargs, backend="numba_cuda")
    for shape in [(8,), (8, 3), (8, 3, 4)]:  # the other ranks of the backend's copy
        backend.ascontiguous(fake_device_array(shape, dtype, every_other_row=True))
    # again with autotuning, which launches every arm that plans differently (a stand-in
    # clock: no kernel runs)
    untuned = len(launches)

    def time_ms(fn):
        fn()
        return 1.0

    monkeypatch.setattr(autotune, "clock", lambda: SimpleNamespace(
        device=lambda: 0, capturing=lambda: False, time_ms=time_ms))
    monkeypatch.setattr(autotune, "_choices", {})
    monkeypatch.setattr(_tuning, "_enabled", True)
    for fn, args, kwargs in _op_calls(dtype):
        fn(*args, **kwargs, backend="numba_cuda")
    assert len(launches) > untuned

    # the image toolkit computes in float64 for integer images, whatever ``dtype`` is here
    checked = {}
    for name in MODULES:
        mod = importlib.import_module(f"fastconv.backends.numba_cuda.{name}")
        for T in (np.float32, np.float64):
            for _, kernel, argtypes in mod.ptx_cases(T):
                checked.setdefault(id(kernel), []).append(tuple(argtypes))
    problems, names = [], set()
    for module, kernel, grid, block, shared, args in launches:
        name = kernel.py_func.__name__
        names.add((module, name))
        sig = tuple(kernel.typeof_pyval(v) for v in args)
        if not any(_covers(c, sig) for c in checked.get(id(kernel), [])):
            problems.append(f"{module}.{name} launched with {sig}, which no ptx_cases entry "
                            f"compiles (checked: {checked.get(id(kernel))})")
        wrong = geometry_problem(kernel, grid, block, shared)
        if wrong:
            problems.append(f"{module}.{wrong}")
    assert not problems, "\n".join(sorted(set(problems)))

    # and every signature compiled there is one that a call launches
    sigs = {(id(k), tuple(k.typeof_pyval(v) for v in args)) for _, k, _, _, _, args in launches}
    unlaunched = []
    for name in MODULES:
        mod = importlib.import_module(f"fastconv.backends.numba_cuda.{name}")
        for case, kernel, argtypes in mod.ptx_cases(dtype):
            if not any(kid == id(kernel) and _covers(tuple(argtypes), sig) for kid, sig in sigs):
                unlaunched.append(f"{name}.{case}")
    assert not unlaunched, "\n".join(unlaunched)


@pytest.mark.parametrize("case", ["depthwise", "grouped_planes", "grouped_pixels"])
def test_32_bit_kernels_are_left_where_their_counts_pass_2_31(launches, case):
    """conv2d_depthwise and conv2d_grouped split their work with 32-bit divisions, so the
    launcher takes them only while the counts they split fit (issue #3's large tensors);
    one past the limit goes to a 64-bit kernel, on the same launch check as above."""
    import fastconv

    a, f4 = fake_device_array, np.float32
    big = {  # (input, weight, groups, what the 32-bit kernel would count)
        # N*K*ceil(Ho/32)*ceil(Wo/32) tiles: 2**21 * 2**10 * 1 * 1 = 2**31
        "depthwise": (a((2**21, 2**10, 32, 32), f4), a((2**10, 1, 3, 3), f4), 2**10),
        # N*groups*ceil(Kg/KB) planes: 2**28 * 8 * 1 = 2**31
        "grouped_planes": (a((2**28, 16, 4, 4), f4), a((16, 2, 3, 3), f4), 8),
        # Ho*Wo pixels of a plane: 2**16 * 2**15 = 2**31
        "grouped_pixels": (a((1, 4, 2**16, 2**15), f4), a((4, 2, 3, 3), f4), 2),
    }[case]
    x, w, groups = big
    want = "conv2d_depthwise" if case == "depthwise" else "conv2d_grouped"
    fastconv.conv2d(x, w, padding=1, groups=groups, backend="numba_cuda")
    _, kernel, grid, block, shared, _ = launches.pop()
    assert kernel.py_func.__name__ != want
    assert geometry_problem(kernel, grid, block, shared) is None
    # one less (the first dimension that the count scales with, less one) takes it
    shape = list(x.shape)
    if case == "grouped_pixels":
        shape[3] -= 1
    else:
        shape[0] -= 1
    fastconv.conv2d(a(tuple(shape), f4), w, padding=1, groups=groups, backend="numba_cuda")
    assert launches.pop()[1].py_func.__name__ == want


def test_huge_problems_launch_within_the_grid_limits(launches):
    """Past 2**31 elements and 65535 planes or RoIs, every launch still fits the hardware's
    grid (x < 2**31, y and z < 65536): the kernels grid-stride over the rest."""
    import fastconv

    a, f4 = fake_device_array, np.float32
    x = a((2**12, 2**10, 32, 32), f4)  # 2**32 elements, 2**22 (image, channel) planes
    fastconv.conv2d(x, a((2**10, 2**10, 3, 3), f4), padding=1)  # GEMM
    fastconv.conv2d(x, a((2**11, 2, 3, 3), f4), padding=1, groups=2**9)  # grouped
    fastconv.conv2d(x, a((2**10, 1, 3, 3), f4), padding=1, groups=2**10)  # depthwise
    fastconv.conv2d(x, a((2, 2**9, 1, 1), f4), groups=2)  # direct: 1 output channel a group
    fastconv.conv_transpose2d(x, a((2**10, 4, 4, 4), f4), stride=2, padding=1)
    fastconv.conv_transpose2d(x, a((2**10, 64, 4, 4), f4), stride=2, padding=1)
    fastconv.deform_conv2d(x, a((2**12, 18, 32, 32), f4), a((2**10, 2**10, 3, 3), f4),
                           padding=1)
    boxes = a((2**20, 5), f4)
    fastconv.roi_align(x, boxes, 7, spatial_scale=0.25, sampling_ratio=2)
    fastconv.roi_pool(x, boxes, 7, spatial_scale=0.25)
    assert {k.py_func.__name__ for _, k, *_ in launches} >= {
        "conv2d_gemm", "conv2d_grouped", "conv2d_depthwise", "conv2d_direct",
        "conv_transpose2d_direct",
        "conv_transpose2d_gemm", "nonfinite_blocks", "deform_conv2d_gemm", "roi_align",
        "roi_pool", "roi_count_bad_boxes"}
    problems = [geometry_problem(k, grid, block, shared)
                for _, k, grid, block, shared, _ in launches]
    assert not any(problems), [w for w in problems if w]
