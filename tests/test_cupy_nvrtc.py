"""Compile every CUDA C kernel of the cupy backend with NVRTC, for sm_80 and sm_90.

Runs without a GPU and without CuPy: ``cuda.bindings.nvrtc`` compiles the same
source CuPy would (``_module.source``: the ``.cu`` file with our headers
spliced in), with the options CuPy uses plus warnings as errors, and every
template instantiation the launchers can ask for (``_module.name_expressions``)
must come out with a lowered (mangled) name.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) not installed")

from fastconv.backends.cupy import _module  # noqa: E402  (must not import cupy)

ARCHS = ("sm_80", "sm_90")


def _cuda_include_dir() -> str | None:
    """The directory holding ``cuda_fp16.h``: NVIDIA's wheels (via cuda.pathfinder) or a toolkit."""
    try:
        from cuda.pathfinder import locate_nvidia_header_directory

        located = locate_nvidia_header_directory("cudart")
        path = getattr(located, "abs_path", located)
        if path and os.path.exists(os.path.join(path, "cuda_fp16.h")):
            return path
    except Exception:  # noqa: BLE001 - older pathfinder, or nothing found
        pass
    candidates = []
    for site in sys.path:
        candidates += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        candidates += glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "include"))
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            candidates.append(os.path.join(os.environ[env], "include"))
    candidates.append("/usr/local/cuda/include")
    for path in candidates:
        if os.path.exists(os.path.join(path, "cuda_fp16.h")):
            return path
    return None


def _check(result, what):
    """cuda.bindings returns ``(err,)`` or ``(err, value)``: assert success, return the value."""
    err, *rest = result
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{what}: {err}"
    return rest[0] if rest else None


def _log(prog) -> str:
    size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    buf = b" " * size
    _check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
    return buf.rstrip(b"\x00").decode(errors="replace").strip()


def compile_file(file: str, arch: str, names, include_dir: str):
    """Compile ``file`` for ``arch`` with ``names`` instantiated; return (lowered names, log)."""
    src = _module.source(file).encode()
    prog = _check(nvrtc.nvrtcCreateProgram(src, file.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        for name in names:
            _check(nvrtc.nvrtcAddNameExpression(prog, name.encode()), f"add {name}")
        options = [
            *_module.OPTIONS,
            f"--gpu-architecture={arch}",
            # what CuPy adds for every RawModule
            "-ftz=true",
            "--device-as-default-execution-space",
            f"-I{include_dir}",
            # any warning is an error
            "-Werror",
            "all-warnings",
        ]
        opts = [o.encode() for o in options]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        log = _log(prog)
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, (
            f"NVRTC failed on {file} for {arch} ({err}):\n{log}"
        )
        lowered = {}
        for name in names:
            low = _check(nvrtc.nvrtcGetLoweredName(prog, name.encode()), f"lowered {name}")
            lowered[name] = low.decode() if isinstance(low, bytes) else str(low)
        return lowered, log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.fixture(scope="module")
def include_dir():
    path = _cuda_include_dir()
    if path is None:
        pytest.fail(
            "cuda_fp16.h not found: install the test extras (numba-cuda[cu13] brings "
            "nvidia-cuda-runtime) or set CUDA_PATH"
        )
    return path


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", _module.FILES)
def test_compiles(file, arch, include_dir):
    names = _module.all_name_expressions()[file]
    assert names, f"no kernels registered for {file}"
    lowered, log = compile_file(file, arch, names, include_dir)
    assert "warning" not in log.lower(), f"NVRTC warnings for {file} ({arch}):\n{log}"
    assert set(lowered) == set(names)
    for name, low in lowered.items():
        assert low.startswith("_Z"), f"{name} lowered to {low!r}"
    assert len(set(lowered.values())) == len(names), "two name expressions share a kernel"


def test_every_launcher_kernel_is_registered():
    """The names the launchers build are exactly registered ones (spelling included)."""
    registered = {n for names in _module.all_name_expressions().values() for n in names}
    for ctype in _module.CTYPES.values():
        for k in _module.GEMM_KSZ:
            assert _module.expr("conv2d_gemm", ctype, k) in registered
        for k in _module.DEPTHWISE_KSZ:
            assert _module.expr("conv2d_depthwise_tiled", ctype, k) in registered
        for kb in _module.DIRECT_KB:
            assert _module.expr("conv2d_direct", ctype, kb) in registered
            assert _module.expr("conv_transpose2d_direct", ctype, kb) in registered
        for cb in _module.ROI_CB:
            assert _module.expr("roi_align", ctype, cb) in registered
            assert _module.expr("roi_pool", ctype, cb) in registered
        assert _module.expr("conv2d_depthwise_direct", ctype) in registered
        assert _module.expr("deform_im2col", ctype) in registered
    # the spelling libcufilt demangles to (", " between template arguments; cupy#10173)
    assert _module.expr("roi_align", "float", 8) == "fc::roi_align<float, 8>"


def test_plans_use_registered_kernels():
    """Every launch the planners produce names a registered kernel with typed scalar args."""
    import numpy as np

    from fastconv.backends.cupy import conv, deform, roi

    registered = {n for names in _module.all_name_expressions().values() for n in names}

    class Arr:  # shape/dtype stand-in for a cupy array
        def __init__(self, shape, dtype):
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)

        def reshape(self, *shape):
            return Arr(shape, self.dtype)

        def __getitem__(self, s):
            return Arr((len(range(*s.indices(self.shape[0]))), *self.shape[1:]), self.dtype)

    launches = []
    for dt in ("float32", "float64", "float16"):
        for (cin, cout, g, k) in [(1, 8, 1, 3), (8, 8, 8, 3), (8, 8, 8, 5), (16, 64, 1, 3),
                                  (16, 64, 1, 1), (32, 32, 8, 3), (4, 6, 2, 7), (8, 8, 8, 40),
                                  (64, 256, 1, 2)]:
            x, w = Arr((2, cin, 9, 9), dt), Arr((cout, cin // g, k, k), dt)
            out = Arr((2, cout, 5, 5), dt)
            launches += conv.plan_conv2d(x, w, None, out, (1, 2), (1, 0), (2, 1), g, 100)
            wt = Arr((cin, cout // g, k, k), dt)
            launches += conv.plan_conv_transpose2d(x, wt, w, out, (2, 3), (1, 0), (2, 1), g, 100)
        x = Arr((3, 4, 9, 9), dt)
        out = Arr((3, 6, 9, 9), dt)
        col = Arr((2, 4 * 9, 9, 9), dt)
        launches += deform.plan_deform_conv2d(
            x, Arr((3, 36, 9, 9), dt), Arr((6, 2, 3, 3), dt), None, None, out, col,
            (1, 1), (1, 1), (1, 1), 2, 2, 100)
        for c in (1, 5, 16):
            x = Arr((2, c, 9, 9), dt)
            out = Arr((7, c, 3, 2), dt)
            launches += roi.plan_roi_align(x, Arr((7, 5), dt), out, 0.5, -1, True, 100)
            launches += roi.plan_roi_pool(x, Arr((7, 5), dt), out, 0.5, 100)
    used = set()
    for name, grid, block, smem, args in launches:
        assert name in registered, name
        assert 1 <= grid <= 100 and block == 256 and 0 <= smem <= 48 * 1024
        for a in args:
            assert isinstance(a, (Arr, np.int32, np.float32, np.float64)), (name, type(a))
        used.add(name.split("<")[0])
    assert used == {
        "fc::conv2d_gemm", "fc::conv2d_direct", "fc::conv2d_depthwise_tiled",
        "fc::conv2d_depthwise_direct", "fc::conv_transpose2d_direct", "fc::deform_im2col",
        "fc::roi_align", "fc::roi_pool",
    }


def test_module_does_not_import_cupy():
    code = (
        "import sys, fastconv, fastconv.backends.cupy, fastconv.backends.cupy._module as m; "
        "m.all_name_expressions(); m.source('conv.cu'); "
        "assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
