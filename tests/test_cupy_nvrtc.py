"""Compile every CUDA C kernel of the cupy backend with NVRTC, for sm_80 and sm_90.

Runs without a GPU and without CuPy: ``cuda.bindings.nvrtc`` compiles the same
source CuPy would (``_module.source``: the ``.cu`` file with our headers
spliced in), with the options CuPy uses plus warnings as errors, and every
template instantiation the launchers can ask for (``_module.name_expressions``)
must come out with a lowered (mangled) name.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) not installed")

from fastconv.backends.cupy import _module, _nvrtc  # noqa: E402  (must not import cupy)

ARCHS = _nvrtc.ARCHS


def compile_file(file: str, arch: str, names, include_dir: str):
    """``_nvrtc.compile_file`` with a test failure (and the log) instead of ``NvrtcError``."""
    try:
        return _nvrtc.compile_file(file, arch, names, include_dir)
    except _nvrtc.NvrtcError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def include_dir():
    path = _nvrtc.cuda_include_dir()
    if path is None:
        pytest.fail(
            "cuda_fp16.h not found: install the test extras (numba-cuda[cu13] brings "
            "nvidia-cuda-runtime) or set CUDA_PATH"
        )
    return path


_BUILDS: dict = {}


def build(file: str, arch: str, include_dir: str):
    """``(lowered names, log)`` of ``file`` with every instantiation, ptxas report included."""
    key = (file, arch)
    if key not in _BUILDS:
        names = _nvrtc.kernel_files()[file]
        try:
            _BUILDS[key] = _nvrtc.compile_file(file, arch, names, include_dir,
                                               _nvrtc.PTXAS_VERBOSE)
        except _nvrtc.NvrtcError as exc:
            pytest.fail(str(exc))
    return _BUILDS[key]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", _module.FILES)
def test_compiles(file, arch, include_dir):
    names = _module.all_name_expressions()[file]
    assert names, f"no kernels registered for {file}"
    lowered, log = build(file, arch, include_dir)
    assert "warning" not in log.lower(), f"NVRTC warnings for {file} ({arch}):\n{log}"
    assert set(lowered) == set(names)
    for name, low in lowered.items():
        assert low.startswith("_Z"), f"{name} lowered to {low!r}"
    assert len(set(lowered.values())) == len(names), "two name expressions share a kernel"


def _may_spill(name: str) -> bool:
    """Kernels with a known, recorded spill (``bench/results/*-nvrtc-resources.json``).

    ``conv2d_direct`` (grouped convolutions; grouped_resnext runs ``<float, 8>``)
    and ``conv_transpose2d_direct`` with fewer than 16 output channels per thread
    spill 4-84 bytes at 40-80 registers -- not a register shortage, and the same
    code with 32-bit index divisions still spills; ``roi_align<double, 8, false>``
    spills 40 bytes on sm_90.  The RoI kernels' boxes-on-grid-y form (``BOX_GRID`` true,
    off by default until measured) spills 4-24 bytes in a few instantiations at 32-80
    registers.  Five instantiations of the vector GEMM tiles (``GEMM_VEC``, off by
    default; built for two blocks per SM at 64 rows) spill 4-132 bytes at 128 registers:
    four in float16, and the any-size fused deformable kernel in float.  Their spill
    instructions are outside the main loop (at entry and once per work item;
    ``bench/sass_report.py``), except one in the float16 any-size fused deformable
    kernel's.  ``conv2d_depthwise_tiled<double, 0, 4>`` (any kernel size, 4 loads in
    flight, off by default) spills 12 bytes at 48 registers on sm_80.  All the other
    kernels -- GEMM, depthwise, deformable, the default RoI kernels, resampling, and
    the 16-channel transposed kernel of transposed_fcn/_decoder -- must stay spill-free.
    """
    if name in ("fc::conv2d_gemm<__half, 0, 64, true>",
                "fc::conv_transpose2d_gemm<__half, 64, true>",
                "fc::deform_conv2d_gemm<__half, 3, true>",
                "fc::deform_conv2d_gemm<__half, 0, true>",
                "fc::deform_conv2d_gemm<float, 0, true>",
                "fc::conv2d_depthwise_tiled<double, 0, 4>"):
        return True
    base, _, params = name.partition("<")
    if base == "fc::conv2d_direct":
        return True
    if base == "fc::conv_transpose2d_direct":
        return int(params.rstrip(">").split(", ")[1]) < 16
    if base in ("fc::roi_align", "fc::roi_pool") and params.endswith(", true>"):
        return True
    return name == "fc::roi_align<double, 8, false>"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", _nvrtc.kernel_files())
def test_resource_usage(file, arch, include_dir):
    """ptxas' report: every kernel launches with 256 threads; the hot ones never spill."""
    usage = _nvrtc.resource_usage(*build(file, arch, include_dir))
    for name, u in usage.items():
        # 256 threads x registers must fit the 64K-register file of one SM
        assert u["registers"] * 256 <= 65536, (name, arch, u)
        assert u["static_smem_bytes"] <= 48 * 1024, (name, arch, u)
        if not _may_spill(name):
            assert u["spill_store_bytes"] == 0 and u["spill_load_bytes"] == 0, (name, arch, u)
        if name.split("<")[0] in _WHOLE_BUDGET:
            assert u["static_smem_bytes"] == 0, (name, arch, u)


#: kernels whose launchers give them dynamic shared memory up to conv.SMEM_BUDGET, the
#: whole 48 KiB a block may have without opting in: one static byte more fails the launch
#: (deform_conv2d_gemm's launcher counts its static tiles in the budget)
_WHOLE_BUDGET = ("fc::conv2d_direct", "fc::conv_transpose2d_direct",
                 "fc::conv2d_depthwise_tiled")


def test_every_launcher_kernel_is_registered():
    """The names the launchers build are exactly registered ones (spelling included)."""
    registered = {n for names in _module.all_name_expressions().values() for n in names}
    for ctype in _module.CTYPES.values():
        for k in _module.GEMM_KSZ:
            for bm, vec in _module.GEMM_TILES:
                assert (_module.expr("conv2d_gemm", ctype, k, bm, vec) in registered) == (
                    bm < 128 or ctype != "double")
        for k in _module.DEPTHWISE_KSZ:
            for n in _module.DEPTHWISE_LOADS:
                assert _module.expr("conv2d_depthwise_tiled", ctype, k, n) in registered
        for kb in _module.DIRECT_KB:
            assert _module.expr("conv2d_direct", ctype, kb) in registered
            assert _module.expr("conv_transpose2d_direct", ctype, kb) in registered
        for cb in _module.ROI_CB:
            for box_grid in (False, True):
                assert _module.expr("roi_align", ctype, cb, box_grid) in registered
                assert _module.expr("roi_pool", ctype, cb, box_grid) in registered
        assert _module.expr("conv2d_depthwise_direct", ctype) in registered
        assert _module.expr("deform_im2col", ctype) in registered
    # the spelling libcufilt demangles to (", " between template arguments; cupy#10173)
    assert _module.expr("roi_align", "float", 8, True) == "fc::roi_align<float, 8, true>"


def test_plans_use_registered_kernels(monkeypatch):
    """Every launch the planners produce names a registered kernel with typed scalar args."""
    import numpy as np

    from fastconv.backends.cupy import conv, deform, roi

    registered = {n for names in _module.all_name_expressions().values() for n in names}

    class Arr:  # shape/dtype stand-in for a cupy array
        def __init__(self, shape, dtype):
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)

        size = property(lambda self: int(np.prod(self.shape)))

        def reshape(self, *shape):
            return Arr(shape, self.dtype)

        def __getitem__(self, s):
            return Arr((len(range(*s.indices(self.shape[0]))), *self.shape[1:]), self.dtype)

    # float16 GEMM launches take a float32 placeholder (made once per device with cupy)
    monkeypatch.setattr(_module, "placeholder", lambda dtype, empty=None: Arr((1,), dtype))
    launches = []
    for dt in ("float32", "float64", "float16"):
        for (cin, cout, g, k) in [(1, 8, 1, 3), (8, 8, 8, 3), (8, 8, 8, 5), (16, 64, 1, 3),
                                  (16, 64, 1, 1), (32, 32, 8, 3), (4, 6, 2, 7), (8, 8, 8, 40),
                                  (64, 256, 1, 2)]:
            x, w = Arr((2, cin, 9, 9), dt), Arr((cout, cin // g, k, k), dt)
            out = Arr((2, cout, 5, 5), dt)
            launches += conv.plan_conv2d(x, w, None, out, (1, 2), (1, 0), (2, 1), g, 100, Arr)
            wt = Arr((cin, cout // g, k, k), dt)
            launches += conv.plan_conv_transpose2d(x, wt, w, out, (2, 3), (1, 0), (2, 1), g, 100)
        x = Arr((3, 4, 9, 9), dt)
        out = Arr((3, 6, 9, 9), dt)
        col = Arr((2, 4 * 9, 9, 9), dt)
        launches += deform.plan_deform_conv2d(
            x, Arr((3, 36, 9, 9), dt), Arr((6, 2, 3, 3), dt), None, None, out, col,
            (1, 1), (1, 1), (1, 1), 2, 2, 100, Arr)
        default_split = conv.SPLIT_K
        monkeypatch.setattr(conv, "SPLIT_K", 3)  # split-K: conv2d_gemm, then conv_sum_splits
        x, w = Arr((2, 64, 9, 9), dt), Arr((64, 64, 3, 3), dt)
        launches += conv.plan_conv2d(x, w, w[:64], Arr((2, 64, 9, 9), dt), (1, 1), (1, 1),
                                     (1, 1), 1, 100, Arr)
        monkeypatch.setattr(conv, "SPLIT_K", default_split)
        monkeypatch.setattr(conv, "TRANSPOSED_GEMM", True)
        launches += conv.plan_conv_transpose2d(x, Arr((64, 8, 16, 16), dt), None,
                                               Arr((2, 8, 70, 70), dt), (8, 8), (4, 4), (1, 1),
                                               1, 100)
        monkeypatch.setattr(conv, "TRANSPOSED_GEMM", False)
        for box_grid in (False, True):
            monkeypatch.setattr(roi, "ROI_BOX_GRID", box_grid)
            for c in (1, 5, 16):
                x = Arr((2, c, 9, 9), dt)
                out = Arr((7, c, 3, 2), dt)
                launches += roi.plan_roi_align(x, Arr((7, 5), dt), out, 0.5, -1, True, 100)
                launches += roi.plan_roi_pool(x, Arr((7, 5), dt), out, 0.5, 100)
    used = set()
    for name, grid, block, smem, args in launches:
        assert name in registered, name
        if isinstance(grid, tuple):  # (x, y): y over the RoI kernels' boxes
            assert name.endswith(", true>") and grid[1] == 7, (name, grid)
            grid = grid[0]
        assert 1 <= grid <= 100 and block == 256 and 0 <= smem <= 48 * 1024
        for a in args:
            assert isinstance(a, (Arr, np.int32, np.int64, np.float32, np.float64)), (name, a)
        used.add(name.split("<")[0])
    assert used == {
        "fc::conv2d_gemm", "fc::conv2d_direct", "fc::conv2d_depthwise_tiled",
        "fc::conv2d_depthwise_direct", "fc::conv_transpose2d_direct", "fc::deform_im2col",
        "fc::roi_align", "fc::roi_pool", "fc::conv_sum_splits", "fc::conv_transpose2d_gemm",
        "fc::nonfinite_blocks",
    }


def test_module_does_not_import_cupy():
    code = (
        "import sys, fastconv, fastconv.backends.cupy, fastconv.backends.cupy._module as m; "
        "m.all_name_expressions(); m.source('conv.cu'); "
        "assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_warning_fails_the_build(monkeypatch):
    """Warnings are errors (read from the log: NVRTC 13.0 has no ``-Werror`` option)."""
    from fastconv.backends.cupy import _module

    source = 'extern "C" __global__ void k(float* a) { int unused = 1; a[0] = 1.0f; }\n'
    monkeypatch.setattr(_module, "source", lambda file: source)
    with pytest.raises(_nvrtc.NvrtcError, match="warn"):
        _nvrtc.compile_file("k.cu", "sm_90", [], _nvrtc.cuda_include_dir())


def test_sass_report_hashes_every_kernel_and_spots_a_change(include_dir, tmp_path):
    """bench/sass_report.py: one code hash per instantiation (read from the cubin's
    ``.text.<symbol>`` sections), and ``--compare`` reports exactly the kernels whose
    code changed."""
    import json

    from conftest import bench_script

    sass = bench_script("sass_report")
    rep = sass.report("sm_90", None, False, None, files=["roi.cu"])
    assert set(rep) == set(_nvrtc.kernel_files()["roi.cu"])
    assert all(e["bytes"] > 0 and len(e["sha256"]) == 64 for e in rep.values())
    # the same code twice hashes the same; different instantiations differ
    assert rep == sass.report("sm_90", None, False, None, files=["roi.cu"])
    assert len({e["sha256"] for e in rep.values()}) == len(rep)
    old = {name: dict(e) for name, e in rep.items()}
    changed = "fc::roi_pool<float, 1, false>"
    old[changed]["sha256"] = "0" * 64
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps({"arch": "sm_90", "kernels": old}))
    args = ["--arch", "sm_90", "--kernels", "roi_", "--compare", str(saved)]
    report = sass.report
    sass.report = lambda *a, **k: report(*a, **k, files=["roi.cu"])
    try:
        assert sass.main(args) == 1  # one kernel's code "changed"
        saved.write_text(json.dumps({"arch": "sm_90", "kernels": rep}))
        assert sass.main(args) == 0
    finally:
        sass.report = report


def test_optional_kernels_are_a_module_of_their_own(monkeypatch):
    """A kernel of an optional path (``_module.optional``) is compiled with the other
    optional kernels of its file and dtype, never with the default ones, so a default call
    does not wait for them (CuPy is faked: this only records what would be compiled)."""
    import types

    built = []

    class FakeModule:
        def __init__(self, code, options, name_expressions):
            built.append(tuple(name_expressions))

        def get_function(self, name):
            return name

    fake = types.SimpleNamespace(RawModule=FakeModule, cuda=types.SimpleNamespace(
        compiler=types.SimpleNamespace(CompileException=RuntimeError)))
    monkeypatch.setattr(_module, "cupy", lambda: fake)
    monkeypatch.setattr(_module, "_modules", {})
    monkeypatch.setattr(_module, "_kernels", {})
    default = _module.expr("conv2d_gemm", "float", 3, 64, False)
    vec = _module.expr("conv2d_gemm", "float", 3, 128, True)
    phase = _module.expr("conv_transpose2d_gemm", "float", 32, False)
    assert _module._load(0, default) == default
    assert len(built) == 1 and default in built[0]
    assert not any(_module.optional(n) for n in built[0])
    assert _module._load(0, vec) == vec and _module._load(0, phase) == phase
    assert len(built) == 2 and vec in built[1] and phase in built[1]
    assert all(_module.optional(n) for n in built[1])
    # together they are every conv.cu float kernel
    assert set(built[0]) | set(built[1]) == set(_module.name_expressions("conv.cu", "float"))
    assert _module.optional(_module.expr("roi_align", "float", 8, True))
    assert not _module.optional(_module.expr("roi_align", "float", 8, False))
    assert not _module.optional(_module.expr("conv2d_depthwise_direct", "float"))
