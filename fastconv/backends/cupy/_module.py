"""Load, compile and cache the CUDA C kernels of the ``"cupy"`` backend.

The kernels live in ``kernels/*.cu`` (templates over ``float``, ``double`` and
``__half``) and ``kernels/*.cuh`` (shared headers).  :func:`source` reads a
``.cu`` file with :mod:`importlib.resources` and splices in its
``#include "x.cuh"`` lines, so the program needs no include path of ours.

Every template instantiation a launcher may use is listed here, in pure Python
(:func:`name_expressions`), so that ``tests/test_cupy_nvrtc.py`` compiles exactly
those with NVRTC on a machine without CuPy or a GPU.  At run time one
``cupy.RawModule`` per (device, ``.cu`` file, dtype) is compiled with that dtype's
name expressions (CuPy keeps the binary, mangled names included, in its disk
cache ``~/.cupy/kernel_cache``), and each kernel object is memoised per
(device, name expression), so a warm call costs a dict lookup.  The kernels of the
optional paths (:func:`optional`) are a second module per file and dtype, compiled
only when one of them is first asked for.

CuPy is imported lazily (first launch), never at import time.
"""

from __future__ import annotations

import importlib.resources
import re

import numpy as np

# ----------------------------------------------------------------------- what exists

#: numpy dtype -> the C++ storage type of the templates
CTYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.float16): "__half",
}

#: compile-time square kernel sizes of conv2d_gemm (0 = any size, read at run time)
GEMM_KSZ = (0, 1, 3)
#: register tiles of the implicit GEMMs (gemm.cuh's GemmTile): (output channels per tile,
#: 4-wide vector fragments).  (64, False) is the default; the others are conv.GEMM_VEC's;
#: 128-row tiles not for double (64 accumulators of 8 bytes per thread would spill)
GEMM_TILES = ((64, False), (64, True), (128, True))
#: compile-time square kernel sizes of conv2d_depthwise_tiled (0 = any size)
DEPTHWISE_KSZ = (0, 3, 5)
#: input elements each thread of conv2d_depthwise_tiled loads before storing them to shared
#: memory (conv.DEPTHWISE_LOADS; 4 is optional)
DEPTHWISE_LOADS = (1, 4)
#: compile-time square kernel sizes of deform_conv2d_gemm (0 = any size); not 3 for double,
#: whose 3x3 sampling table does not fit in shared memory (deform.fused_config)
DEFORM_KSZ = (0, 3)
#: register tiles of conv_transpose2d_gemm (as GEMM_TILES, and 32 rows for narrow groups)
TRANSPOSED_GEMM_TILES = ((32, False), (64, False), (32, True), (64, True), (128, True))
#: output channels per thread of conv2d_direct / conv_transpose2d_direct
DIRECT_KB = (1, 2, 4, 8, 16)
#: channels per thread of roi_align / roi_pool
ROI_CB = (1, 4, 8)
#: how roi_align / roi_pool hand out work (roi.cu's BOX_GRID): one grid-stride loop, or
#: boxes on grid y
ROI_BOX_GRID = (False, True)

#: the resampling kernels of the image toolkit (``resample.py`` launches them)
RESAMPLE_KERNELS = ("resample_gather", "resample_lerp", "resample_filter_h", "resample_filter_w")

#: the five ops' kernel files, and every kernel file (with the image toolkit's)
FILES = ("conv.cu", "deform.cu", "roi.cu")
ALL_FILES = FILES + ("resample.cu",)

#: NVRTC options given to CuPy (CuPy adds its own: the -arch for the device,
#: -ftz=true, --device-as-default-execution-space and its include paths).
OPTIONS = ("-std=c++17",)


def expr(kernel: str, ctype: str, *params: int | bool) -> str:
    """The name expression of one instantiation, spelled as the demangler spells it."""
    spelled = [("true" if p else "false") if isinstance(p, bool) else str(p) for p in params]
    return "fc::" + kernel + "<" + ", ".join([ctype, *spelled]) + ">"


def gemm_tile_exists(ctype: str, bm: int) -> bool:
    """Whether the implicit-GEMM kernels are instantiated with ``bm``-row tiles for ``ctype``."""
    return bm < 128 or ctype != "double"


def name_expressions(file: str, ctype: str) -> tuple[str, ...]:
    """Every instantiation in ``file`` for storage type ``ctype`` that a launcher may use."""
    if file == "conv.cu":
        return (
            *(expr("conv2d_gemm", ctype, k, bm, vec) for bm, vec in GEMM_TILES
              if gemm_tile_exists(ctype, bm) for k in GEMM_KSZ),
            expr("conv_sum_splits", ctype),
            *(expr("conv2d_direct", ctype, kb) for kb in DIRECT_KB),
            *(expr("conv2d_depthwise_tiled", ctype, k, n) for k in DEPTHWISE_KSZ
              for n in DEPTHWISE_LOADS),
            expr("conv2d_depthwise_direct", ctype),
            *(expr("conv_transpose2d_direct", ctype, kb) for kb in DIRECT_KB),
            *(expr("conv_transpose2d_gemm", ctype, bm, vec) for bm, vec in TRANSPOSED_GEMM_TILES
              if gemm_tile_exists(ctype, bm)),
            expr("nonfinite_blocks", ctype),
        )
    if file == "deform.cu":
        return (expr("deform_im2col", ctype),
                *(expr("deform_conv2d_gemm", ctype, k, vec) for k in DEFORM_KSZ
                  if k == 0 or ctype != "double" for vec in (False, True)))
    if file == "roi.cu":
        return (
            *(expr("roi_align", ctype, cb, g) for cb in ROI_CB for g in ROI_BOX_GRID),
            *(expr("roi_pool", ctype, cb, g) for cb in ROI_CB for g in ROI_BOX_GRID),
            expr("roi_count_bad_boxes", ctype),
        )
    if file == "resample.cu":
        return tuple(expr(k, ctype) for k in RESAMPLE_KERNELS)
    raise KeyError(file)


def optional(name: str) -> bool:
    """Whether instantiation ``name`` is launched only by an optional path (``variants``,
    off by default): the phase GEMM (``TRANSPOSED_GEMM``) with its non-finite weight check
    (``nonfinite_blocks``), the fused deformable kernel
    (``DEFORM_FUSED``), the vector GEMM tiles (``GEMM_VEC``), the RoI kernels with boxes
    on grid y (``ROI_BOX_GRID``) and the depthwise tile loaded 4 elements at a time
    (``DEPTHWISE_LOADS``).

    Those are compiled in a module of their own, on first use, so a call on the default
    paths never waits for them: NVRTC took 2.7 s for conv.cu's 18 default float kernels
    and 14.4 s with its 11 optional ones (sm_90, 2-core dev VM).
    """
    base, _, params = name.partition("<")
    if base in ("fc::conv_transpose2d_gemm", "fc::deform_conv2d_gemm", "fc::nonfinite_blocks"):
        return True
    if base in ("fc::conv2d_gemm", "fc::roi_align", "fc::roi_pool"):
        return params.endswith(", true>")  # GEMM_VEC, ROI_BOX_GRID
    if base == "fc::conv2d_depthwise_tiled":
        return not params.endswith(", 1>")  # DEPTHWISE_LOADS
    return False


def all_name_expressions(files=FILES) -> dict[str, tuple[str, ...]]:
    """``{file: every name expression of every dtype}`` (what the NVRTC test compiles)."""
    return {f: tuple(e for c in CTYPES.values() for e in name_expressions(f, c)) for f in files}


#: name expression -> (file, ctype); the launchers may only ask for these
_REGISTRY = {
    e: (f, c) for f in ALL_FILES for c in CTYPES.values() for e in name_expressions(f, c)
}


def registered():
    """Every name expression a launcher may ask for (a read-only view)."""
    return _REGISTRY.keys()


_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.MULTILINE)
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def source(file: str) -> str:
    """The text of ``kernels/<file>`` with our ``#include "x.cuh"`` lines spliced in (once each)."""
    root = importlib.resources.files(__package__).joinpath("kernels")
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return f"// {name}: already included\n"
        seen.add(name)
        text = root.joinpath(name).read_text(encoding="utf-8")
        text = _PRAGMA_ONCE.sub("", text)  # inclusion is once-only here already
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(file)


# ----------------------------------------------------------------------- run time

_cupy = None
_modules: dict = {}  # (device, file, ctype, optional) -> cupy.RawModule
_kernels: dict = {}  # (device, name expression) -> cupy.RawKernel
_max_blocks: dict = {}  # device -> grid size cap for grid-stride kernels
_placeholders: dict = {}  # (device, dtype) -> one-element array for unread pointer arguments
_extra_options: tuple = ()


def cupy():
    """The cupy module, imported on first use."""
    global _cupy
    if _cupy is None:
        import cupy as cp

        _cupy = cp
    return _cupy


def _header_options() -> tuple:
    """``-I`` for cuda_fp16.h from the NVIDIA wheels (used only if CuPy's own path lacks it)."""
    try:
        from cuda.pathfinder import locate_nvidia_header_directory

        located = locate_nvidia_header_directory("cudart")
    except Exception:  # noqa: BLE001 - pathfinder missing or nothing found
        return ()
    path = getattr(located, "abs_path", located)
    return (f"-I{path}",) if path else ()


def _load(device: int, name: str):
    global _extra_options
    if name not in _REGISTRY:
        raise KeyError(f"{name!r} is not a registered fastconv kernel")
    file, ctype = _REGISTRY[name]
    cp = cupy()
    part = optional(name)  # the optional paths' kernels are a module of their own
    key = (device, file, ctype, part)
    module = _modules.get(key)
    if module is None:
        module = cp.RawModule(
            code=source(file),
            options=OPTIONS + _extra_options,
            name_expressions=tuple(n for n in name_expressions(file, ctype)
                                   if optional(n) == part),
        )
        _modules[key] = module
    try:
        kernel = module.get_function(name)  # compiles (or reads the disk cache) on first use
    except cp.cuda.compiler.CompileException as exc:
        extra = _header_options()
        if "cuda_fp16.h" not in str(exc) or not extra or _extra_options:
            raise
        # CuPy found no CUDA headers of its own: point NVRTC at the NVIDIA wheels' copy.
        _extra_options = extra
        del _modules[key]
        return _load(device, name)
    _kernels[(device, name)] = kernel
    return kernel


def kernel(name: str):
    """The compiled kernel ``name`` (a registered name expression) on the current device."""
    device = cupy().cuda.runtime.getDevice()
    k = _kernels.get((device, name))
    return k if k is not None else _load(device, name)


def device() -> int:
    """The current CUDA device's ordinal."""
    return cupy().cuda.runtime.getDevice()


def time_ms(fn) -> float:
    """Device milliseconds of the work ``fn()`` enqueues on CuPy's current stream (CUDA events;
    waits for it to finish)."""
    cp = cupy()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop)


def capturing() -> bool:
    """Whether CuPy's current stream is capturing a CUDA graph (where nothing may wait on it).

    True also when CuPy cannot say, so that no caller synchronises on a guess.
    """
    try:
        return bool(cupy().cuda.get_current_stream().is_capturing())
    except Exception:  # noqa: BLE001 - e.g. the legacy stream while another one captures
        return True


def max_blocks() -> int:
    """Grid size cap for the grid-stride kernels on the current device (64 blocks per SM)."""
    cp = cupy()
    device = cp.cuda.runtime.getDevice()
    m = _max_blocks.get(device)
    if m is None:
        sms = cp.cuda.runtime.getDeviceProperties(device)["multiProcessorCount"]
        m = _max_blocks[device] = 64 * int(sms)
    return m


def placeholder(dtype, empty=None):
    """A one-element ``dtype`` array for a pointer argument that a launch does not read.

    Made with ``empty`` (``cupy.empty``) once per (device, dtype), so a call allocates
    nothing for it; a host array when ``empty`` is None (planning without a GPU).
    """
    if empty is None:
        return np.empty((1,), dtype)
    key = (cupy().cuda.runtime.getDevice(), np.dtype(dtype))
    a = _placeholders.get(key)
    if a is None:
        a = _placeholders[key] = empty((1,), dtype)
    return a


def run(launches) -> None:
    """Launch ``(name, grid, block, shared_mem, args)`` tuples in order on CuPy's current stream.

    ``grid`` is a block count, or ``(x, y)`` for a 2-D grid; blocks are 1-D.
    """
    device = cupy().cuda.runtime.getDevice()
    for name, grid, block, smem, args in launches:
        k = _kernels.get((device, name))
        if k is None:
            k = _load(device, name)
        k(grid if type(grid) is tuple else (grid,), (block,), args, shared_mem=smem)


def warm_up(dtypes=None) -> None:
    """Compile (or load from the disk cache) every kernel for ``dtypes`` on the current device."""
    device = cupy().cuda.runtime.getDevice()
    for dtype in dtypes or CTYPES:
        ctype = CTYPES[np.dtype(dtype)]
        for file in ALL_FILES:
            for name in name_expressions(file, ctype):
                if (device, name) not in _kernels:
                    _load(device, name)
