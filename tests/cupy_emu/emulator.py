"""Run the ``"cupy"`` backend's CUDA C kernels on the CPU, without CuPy or a GPU.

The CuPy backend's launchers (``fastconv/backends/cupy/*.py``) are pure Python
around ``cupy.empty`` and ``RawKernel`` calls.  This module swaps those two
things for CPU stand-ins and registers the result as the backend
``"cupy_emulated"``, which runs on numpy arrays through the normal public API:

* every ``.cu`` file is expanded exactly as CuPy gets it (``_module.source``),
  compiled by g++ with ``cuda_emu.h`` force-included (one OS thread per CUDA
  thread, checked ``__syncthreads``, see that header), with a small glue
  function per file that launches any registered name expression by index;
* grids may be 1-D or 2-D (blocks are 1-D);
* a kernel call checks its arguments the way the GPU cannot: arrays must be
  C-contiguous and of the parameter's element type, scalars must be numpy
  scalars of exactly the parameter's type (``np.int32`` for ``int``...), the
  launch 1-D -- a mismatch that CuPy would pass on silently as wrong bytes is an
  error here;
* ``cupy.empty`` returns NaN-filled arrays, so an output element no thread
  writes is caught by the comparison with the oracle; shared memory, static and dynamic,
  is refilled with NaN before every block, so a read of an element no thread of the
  block wrote is caught the same way;
* the grid is capped at ``MAX_BLOCKS`` blocks so grid-stride loops turn;
* when the process runs with a sanitizer's run time preloaded (as
  ``tests/test_cupy_emulated.py`` starts it), the kernels are built for it:
  under ``libasan`` with ``-fsanitize=address,undefined`` -- any out-of-bounds
  read or write, in global or dynamic shared memory, and any signed 32-bit index
  overflow aborts the run with a report; under ``libtsan`` with
  ``-fsanitize=thread`` -- a shared-memory access not ordered by a
  ``__syncthreads`` is reported as a data race.

Every launched name expression is recorded in ``LAUNCHED``, so a test can
check that each instantiation the launchers may use has run.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from fastconv import _dispatch
from fastconv.backends import _host
from fastconv.backends import cupy as cupy_backend
from fastconv.backends.cupy import _module, _nvrtc
from fastconv.backends.cupy import resample as cupy_resample

HERE = Path(__file__).resolve().parent
NAME = "cupy_emulated"
#: grid size cap (the GPU launchers use 64 blocks per SM)
MAX_BLOCKS = 3
#: (name expression) -> number of launches
LAUNCHED: dict[str, int] = {}

#: dynamic shared memory a launch may ask for without the kernel's opt-in attribute
SHARED_WITHOUT_OPT_IN = 48 * 1024

_ARRAY_CODES = {
    np.dtype(np.float16): "f2",
    np.dtype(np.float32): "f4",
    np.dtype(np.float64): "f8",
    np.dtype(np.int32): "i4",
    np.dtype(np.int64): "i8",
}
_SCALARS = {
    np.int32: ("i4", ctypes.c_int32),
    np.int64: ("i8", ctypes.c_int64),
    np.float32: ("f4", ctypes.c_float),
    np.float64: ("f8", ctypes.c_double),
}


def sanitizer() -> str | None:
    """``"address"`` or ``"thread"`` when that sanitizer's run time is loaded here, else None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return "address" if "libasan" in maps else "thread" if "libtsan" in maps else None


def compiler() -> str | None:
    """The C++ compiler to build with (``$CXX`` or g++), or None when there is none."""
    cxx = os.environ.get("CXX", "g++")
    try:
        subprocess.run([cxx, "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return cxx


def _glue(file: str, exprs: tuple[str, ...]) -> str:
    cases = "\n".join(
        f"    case {i}: return fcemu::launch(&{e}, codes, grid_x, grid_y, block, smem, args);"
        for i, e in enumerate(exprs)
    )
    return f"""
#include "cuda_emu_launch.h"
extern "C" int fcemu_launch_{_symbol(file)}(int index, const char* codes, unsigned grid_x,
                                          unsigned grid_y, unsigned block, std::size_t smem,
                                          void** args) {{
  switch (index) {{
{cases}
  }}
  fcemu::set_error("no kernel with index " + std::to_string(index));
  return 1;
}}
"""


#: a static ``__shared__`` declaration of the kernels: optional alignment, type, name, extents
_SHARED_DECL = re.compile(
    r"(?<!extern )__shared__\s+(?:__align__\(\d+\)\s+)?[\w:<>]+\s+(\w+)\s*(?:\[[^\]]+\]\s*)*;")


def _register_shared(source: str) -> str:
    """``source`` with a ``fcemu::register_shared`` call after each static ``__shared__``
    declaration, so the runtime can refill those arrays with 0xFF bytes before every block
    as it does the dynamic buffer (a static array otherwise keeps the last block's values,
    and starts as zeros).  Only the emulator's copy changes; NVRTC builds the source as is."""
    def register(m):
        return f"{m.group(0)} fcemu::register_shared(&{m.group(1)}, sizeof({m.group(1)}));"

    out, n = _SHARED_DECL.subn(register, source)
    if n != source.count("__shared__") - source.count("extern __shared__") \
            - len(re.findall(r"//[^\n]*__shared__", source)):
        raise RuntimeError("a __shared__ declaration the emulator does not recognise")
    return out


def _symbol(file: str) -> str:
    return file.replace(".", "_")


def _flags(sanitize: str | None) -> list[str]:
    # -Wno-maybe-uninitialized: g++ cannot see that BilinearTaps' offsets are read only
    # where their flags were set (NVRTC, which builds them for the GPU, does not warn)
    flags = ["-std=c++20", "-O1", "-g", "-fPIC", "-pthread", "-ffp-contract=off",
             "-fno-strict-aliasing", "-Wall", "-Werror", "-Wno-unused-variable",
             "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized",
             "-include", "cuda_emu.h", f"-I{HERE}"]
    if sanitize == "address":
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"]
    elif sanitize == "thread":
        flags += ["-fsanitize=thread", "-fno-omit-frame-pointer"]
    return flags


def build(cxx: str = "g++") -> Path:
    """Compile the kernels and the emulator into one shared library (cached by content)."""
    sanitize = sanitizer()
    files = _nvrtc.kernel_files()
    units = {f"{_symbol(f)}.cpp": _register_shared(_module.source(f)) + _glue(f, e)
             for f, e in files.items()}
    runtime = (HERE / "cuda_emu_runtime.cpp").read_text()
    headers = "".join((HERE / h).read_text() for h in ("cuda_emu.h", "cuda_emu_launch.h"))
    digest = hashlib.sha256(
        "\0".join([cxx, *_flags(sanitize), runtime, headers, *units, *units.values()]).encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("FASTCONV_EMU_BUILD", Path(tempfile.gettempdir()) / "fastconv-emu"))
    out = root / digest
    lib = out / "libfastconv_emu.so"
    if lib.exists():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    stub = out / "include"
    stub.mkdir(exist_ok=True)
    # Concurrent builds of one digest (pytest-xdist workers) may share this folder: every
    # file is written under a per-process name and moved into place atomically, and the
    # objects stay per-process, so no build reads another's half-written file.
    pid = os.getpid()

    def write(path: Path, text: str) -> None:
        tmp = path.with_name(f"{path.name}.{pid}.tmp")
        tmp.write_text(text)
        tmp.replace(path)

    write(stub / "cuda_fp16.h", "// emulated: __half comes from cuda_emu.h\n")
    for name, text in units.items():
        write(out / name, text)
    flags = _flags(sanitize) + [f"-I{stub}"]

    def compile_one(src: Path) -> Path:
        obj = out / f"{src.stem}.{pid}.o"  # in the build folder, never beside our sources
        proc = subprocess.run([cxx, *flags, "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"emulator build of {src.name} failed:\n{proc.stderr[-20000:]}")
        return obj

    sources = [out / n for n in units] + [HERE / "cuda_emu_runtime.cpp"]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        objs = list(pool.map(compile_one, sources))
    tmp = out / f"libfastconv_emu.{pid}.so"
    link = [cxx, *flags, "-shared", *map(str, objs), "-o", str(tmp)]
    proc = subprocess.run(link, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"emulator link failed:\n{proc.stderr[-20000:]}")
    tmp.replace(lib)  # atomic: a concurrent build never sees half a library
    return lib


# ----------------------------------------------------------------------- kernels


class EmulatedKernel:
    """Callable like a ``cupy.RawKernel``: ``k((grid,), (block,), args, shared_mem=0)``."""

    def __init__(self, lib, file: str, index: int, name: str):
        self._fn = getattr(lib, f"fcemu_launch_{_symbol(file)}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                             ctypes.c_uint, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
        self._error = lib.fcemu_last_error
        self._error.restype = ctypes.c_char_p
        self.index = index
        self.name = name

    def __call__(self, grid, block, args, shared_mem=0):
        if len(grid) not in (1, 2) or len(block) != 1:
            raise ValueError(f"{self.name}: the kernels use 1-D blocks and 1-D or 2-D grids, "
                             f"launched with {grid} x {block}")
        if shared_mem > SHARED_WITHOUT_OPT_IN:
            # a GPU refuses the launch unless the kernel's max_dynamic_shared_size_bytes
            # attribute was raised first, which fastconv never does
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, over "
                             f"the {SHARED_WITHOUT_OPT_IN} a kernel gets without opting in")
        grid_x, grid_y = (tuple(grid) + (1,))[:2]
        codes, holders = [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous")
                if a.dtype not in _ARRAY_CODES:
                    raise TypeError(f"{self.name}: argument {i} has dtype {a.dtype}")
                codes.append(_ARRAY_CODES[a.dtype] + "*")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            elif type(a) in _SCALARS:
                code, ctype = _SCALARS[type(a)]
                codes.append(code)
                holders.append(ctype(a))
            else:
                # CuPy would guess a C type for a Python scalar (int -> long long): never rely on it
                raise TypeError(f"{self.name}: argument {i} is {type(a).__name__} {a!r}, "
                                "not a numpy scalar of the parameter's type")
        argv = (ctypes.c_void_p * max(1, len(holders)))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        rc = self._fn(self.index, ("".join(c + "," for c in codes)).encode(), int(grid_x),
                      int(grid_y), int(block[0]), int(shared_mem), argv)
        if rc:
            raise RuntimeError(f"{self.name}: {self._error().decode()}")
        LAUNCHED[self.name] = LAUNCHED.get(self.name, 0) + 1


_lib = None
_kernels: dict[str, EmulatedKernel] = {}


def kernel(name: str) -> EmulatedKernel:
    global _lib
    k = _kernels.get(name)
    if k is None:
        if _lib is None:
            _lib = ctypes.CDLL(str(build(compiler() or "g++")))
        for file, exprs in _nvrtc.kernel_files().items():
            if name in exprs:
                k = _kernels[name] = EmulatedKernel(_lib, file, exprs.index(name), name)
                break
        else:
            raise KeyError(f"{name!r} is not a registered fastconv kernel")
    return k


def all_names() -> set[str]:
    return {e for exprs in _nvrtc.kernel_files().values() for e in exprs}


# ----------------------------------------------------------------------- the backend


class _Runtime:
    @staticmethod
    def getDevice():  # noqa: N802 - CuPy's spelling
        return 0


class _Cuda:
    runtime = _Runtime


class FakeCupy(types.ModuleType):
    """numpy under CuPy's name, with ``empty`` filling floats with NaN (unwritten = visible)."""

    cuda = _Cuda

    def __init__(self):
        super().__init__("cupy (emulated by numpy)")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float, order="C"):
        a = np.empty(shape, dtype, order)
        a.fill(np.nan if a.dtype.kind == "f" else -(2**30))
        return a


def _host_time_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def install() -> None:
    """Point the cupy backend's launchers at the emulator and register ``"cupy_emulated"``."""
    fake = FakeCupy()
    _module.cupy = lambda: fake
    _module._load = lambda device, name: kernel(name)
    _module.max_blocks = lambda: MAX_BLOCKS
    _module.time_ms = _host_time_ms  # no CUDA events: the kernels run on the host, in the call
    _module.capturing = lambda: False

    backend = types.ModuleType("fastconv_cupy_emulated")
    for op in cupy_backend.__all__:
        setattr(backend, op, getattr(cupy_backend, op))
    for f in ("check_available", "as_native", "ascontiguous", "device_id", "use_device",
              "to_host"):
        setattr(backend, f, getattr(_host, f))
    backend.resample = cupy_resample
    sys.modules[backend.__name__] = backend
    sys.modules[backend.__name__ + ".resample"] = cupy_resample
    # runs on host (numpy) arrays, accepts float16 like the real cupy backend
    _dispatch.BACKENDS[NAME] = (backend.__name__, False, True)
