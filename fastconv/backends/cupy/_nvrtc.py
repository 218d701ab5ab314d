"""Offline NVRTC builds of the cupy backend's kernels: no CuPy, no GPU needed.

``cuda.bindings.nvrtc`` compiles the same source CuPy would (``_module.source``:
the ``.cu`` file with our headers spliced in), with CuPy's options and every
template instantiation a launcher may use.  Used by ``tests/test_cupy_nvrtc.py``
(every file compiles for sm_80 and sm_90 without a warning) and by
``bench/kernel_resources.py`` (ptxas' resource report: registers, stack, spills
and static shared memory per kernel).

Run time compiles go through CuPy (``_module``); nothing here is imported by it.
"""

from __future__ import annotations

import glob
import os
import re
import sys

from . import _module

ARCHS = ("sm_80", "sm_90")

#: options CuPy adds to every RawModule compile
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


class NvrtcError(RuntimeError):
    """NVRTC refused a program; the message holds its log."""


def kernel_files() -> dict[str, tuple[str, ...]]:
    """``{.cu file: every name expression (all dtypes) the launchers may use}``."""
    return _module.all_name_expressions(_module.ALL_FILES)


def cuda_include_dir() -> str | None:
    """The folder holding ``cuda_fp16.h``: NVIDIA's wheels (via cuda.pathfinder) or a toolkit."""
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


def _check(nvrtc, result, what):
    """cuda.bindings returns ``(err,)`` or ``(err, value)``: raise unless success."""
    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcError(f"{what}: {err}")
    return rest[0] if rest else None


def _log(nvrtc, prog) -> str:
    size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    buf = b" " * size
    _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
    return buf.rstrip(b"\x00").decode(errors="replace").strip()


#: a compiler warning in NVRTC's log ("file(line): warning #177-D: ...")
_WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)


def compile_file(file: str, arch: str, names, include_dir: str, extra_options=()):
    """Compile ``file`` for ``arch`` with ``names`` instantiated: ``(lowered names, log)``.

    Warnings are errors: a log line with ``warning`` fails the build (rather than
    NVRTC's ``-Werror``, which NVRTC 13.0 rejects as an unknown option).  ``lowered``
    maps each name expression to its mangled symbol.  Raises :class:`NvrtcError` with
    the log when NVRTC fails.
    """
    lowered, log, _ = _compile(file, arch, names, include_dir, extra_options, False)
    return lowered, log


def compile_cubin(file: str, arch: str, names, include_dir: str):
    """:func:`compile_file` for a real architecture (``sm_XY``), also returning the
    machine code: ``(lowered names, log, cubin bytes)``."""
    return _compile(file, arch, names, include_dir, (), True)


def _compile(file, arch, names, include_dir, extra_options, want_cubin):
    from cuda.bindings import nvrtc

    src = _module.source(file).encode()
    prog = _check(nvrtc, nvrtc.nvrtcCreateProgram(src, file.encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        for name in names:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, name.encode()), f"add {name}")
        options = [*_module.OPTIONS, f"--gpu-architecture={arch}", *CUPY_OPTIONS,
                   f"-I{include_dir}", *extra_options]
        opts = [o.encode() for o in options]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        log = _log(nvrtc, prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcError(f"NVRTC failed on {file} for {arch} ({err}):\n{log}")
        warnings = [line for line in log.splitlines() if _WARNING.search(line)]
        if warnings:
            raise NvrtcError(f"NVRTC warned on {file} for {arch} (warnings are errors):\n{log}")
        lowered = {}
        for name in names:
            low = _check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, name.encode()), f"lowered {name}")
            lowered[name] = low.decode() if isinstance(low, bytes) else str(low)
        cubin = None
        if want_cubin:
            size = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            buf = b" " * size
            _check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
            cubin = bytes(buf)
        return lowered, log, cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


_FUNCTION = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


#: the option that makes ptxas print its resource report into the NVRTC log
PTXAS_VERBOSE = ("--ptxas-options=-v",)


def resource_usage(lowered: dict[str, str], log: str) -> dict[str, dict]:
    """Parse ptxas' report from a :func:`compile_file` log built with ``PTXAS_VERBOSE``.

    Needs a real architecture (``sm_XY``).  Returns ``{name expression:
    {"registers", "stack_bytes", "spill_store_bytes", "spill_load_bytes",
    "static_smem_bytes"}}`` for every name in ``lowered``.
    """
    by_symbol = {low: name for name, low in lowered.items()}
    usage: dict[str, dict] = {}
    current, frame = None, (0, 0, 0)
    for line in log.splitlines():
        if m := _FUNCTION.search(line):
            current, frame = by_symbol.get(m.group(1)), (0, 0, 0)
        elif m := _FRAME.search(line):
            frame = tuple(int(v) for v in m.groups())
        elif (m := _USED.search(line)) and current is not None:
            usage[current] = {
                "registers": int(m.group(1)),
                "stack_bytes": frame[0],
                "spill_store_bytes": frame[1],
                "spill_load_bytes": frame[2],
                "static_smem_bytes": int(m.group(2) or 0),
            }
            current = None
    missing = set(lowered) - set(usage)
    if missing:
        raise NvrtcError(f"no ptxas report for {sorted(missing)}:\n{log}")
    return usage
