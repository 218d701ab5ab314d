"""ptxas' resource report for the numba.cuda kernels -- no GPU needed.

``numba.cuda.compile_ptx`` gives a kernel's PTX; nvJitLink (``cuda.bindings.nvjitlink``,
from the ``nvidia-nvjitlink`` wheel that ``numba-cuda[cu13]`` installs) assembles it for a
real architecture with ptxas' verbose report, which is parsed here: registers per thread,
stack frame, spill stores and loads, static shared memory.  This is the numba.cuda
counterpart of ``fastconv.backends.cupy._nvrtc.resource_usage``; the PTX test and
``bench/kernel_resources.py --numba`` use it.
"""

from __future__ import annotations

import re

_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
# nvJitLink's own summary line, after ptxas' ("used N registers, ..., S bytes smem, ...")
_USED = re.compile(r"used (\d+) registers.*?(\d+) stack, (\d+) bytes smem")


class LinkError(RuntimeError):
    """nvJitLink could not assemble the PTX (the log is in the message)."""


def _link_log(ptx: str, arch: str) -> str:
    from cuda.bindings import nvjitlink

    handle = nvjitlink.create(2, [f"-arch={arch}", "-verbose"])
    try:
        data = ptx.encode()
        try:
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as exc:
            raise LinkError(f"{exc}\n{_log(handle, nvjitlink.get_error_log)}") from None
        return _log(handle, nvjitlink.get_info_log)
    finally:
        nvjitlink.destroy(handle)


def _log(handle, getter) -> str:
    from cuda.bindings import nvjitlink

    size = (nvjitlink.get_info_log_size if getter is nvjitlink.get_info_log
            else nvjitlink.get_error_log_size)(handle)
    buf = bytearray(size)
    if size:
        getter(handle, buf)
    return buf.decode(errors="replace").rstrip("\x00")


def parse(log: str) -> dict:
    """``{"registers", "stack_bytes", "spill_store_bytes", "spill_load_bytes",
    "static_smem_bytes"}`` from the verbose log of a one-kernel link."""
    frame = _FRAME.search(log)
    used = _USED.search(log)
    if frame is None or used is None:
        raise LinkError(f"no resource report in the link log:\n{log}")
    return {
        "registers": int(used.group(1)),
        "stack_bytes": int(frame.group(1)),
        "spill_store_bytes": int(frame.group(2)),
        "spill_load_bytes": int(frame.group(3)),
        "static_smem_bytes": int(used.group(3)),
    }


def launch_threads(name: str) -> int:
    """Threads per block the launchers use for the kernel a ``ptx_cases`` entry names."""
    from ._launch import settings

    for tiles in (settings.tiles_wide, settings.tiles_narrow):
        if name.endswith(f"gemm{tiles.BM}"):
            return tiles.threads
    if name == "conv2d_depthwise":  # TW x TR threads, at most settings.block
        from .conv import depthwise_block

        TW, TR = depthwise_block(settings.block)
        return TW * TR
    if name == "roi_count_bad_boxes":
        from .roi import CHECK_BLOCK

        return CHECK_BLOCK
    return settings.block


def resource_usage(kernel, argtypes, arch: str = "sm_90") -> dict:
    """ptxas' report for one ``numba.cuda.jit`` kernel and signature on ``arch`` (``sm_XY``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.backends.numba_cuda import conv, _resources
    >>> name, kernel, argtypes = conv.ptx_cases(np.float32)[0]
    >>> u = _resources.resource_usage(kernel, argtypes, "sm_90")  # doctest: +SKIP
    >>> sorted(u)  # doctest: +SKIP
    ['registers', 'spill_load_bytes', 'spill_store_bytes', 'stack_bytes', 'static_smem_bytes']
    """
    cc = (int(arch[3:-1]), int(arch[-1]))
    return ptx_usage(kernel_ptx(kernel, argtypes, cc), arch)


def kernel_ptx(kernel, argtypes, cc: tuple) -> str:
    """The PTX of a ``numba.cuda.jit`` kernel for one signature and compute capability, built
    with the kernel's own launch bounds and fastmath (``compile_ptx`` of the bare Python
    function would drop them, and report other registers than the launched kernel has)."""
    from numba import cuda

    opts = kernel.targetoptions
    ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=cc,
                              launch_bounds=opts.get("launch_bounds"),
                              fastmath=opts.get("fastmath", False))
    return ptx


def ptx_usage(ptx: str, arch: str) -> dict:
    """ptxas' report for the one kernel of ``ptx`` assembled for ``arch`` (``sm_XY``)."""
    return parse(_link_log(ptx, arch))
