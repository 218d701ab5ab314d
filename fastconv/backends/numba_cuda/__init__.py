"""The ``"numba_cuda"`` backend: ``numba.cuda.jit(cache=True)`` kernels on numba device arrays.

Importing this package does not import ``numba.cuda``: the five ops are loaded on first
attribute access (module ``__getattr__``) and the plumbing functions import it inside, so
:func:`check_available` can explain what is missing.  Kernels are launched on CuPy's current
stream when CuPy is already imported (``cuda.external_stream``), else on numba's default
stream (see :mod:`._launch`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys

from fastconv._errors import BackendUnavailableError

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "deform_conv2d",
    "roi_align",
    "roi_pool",
    "count_bad_boxes",
    "stack_boxes",
    "check_available",
    "as_native",
    "ascontiguous",
    "device_id",
    "use_device",
    "to_host",
]

_OPS = {
    "conv2d": "conv",
    "conv_transpose2d": "conv",
    "deform_conv2d": "deform",
    "roi_align": "roi",
    "roi_pool": "roi",
    "count_bad_boxes": "roi",
    "stack_boxes": "roi",
}

_INSTALL = 'pip install "numba-cuda[cu13]"'


def __getattr__(name):
    module = _OPS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = fn  # later look-ups skip __getattr__
    return fn


_available = False


def check_available() -> None:
    """Raise :class:`fastconv.BackendUnavailableError` unless numba.cuda can run kernels here."""
    global _available
    if _available:
        return
    if importlib.util.find_spec("numba_cuda") is None:
        raise BackendUnavailableError(
            f'the "numba_cuda" backend needs the numba-cuda package: {_INSTALL}'
        )
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - broken installation
        raise BackendUnavailableError(
            f'the "numba_cuda" backend could not import numba.cuda ({exc}); '
            f"reinstall it with {_INSTALL}"
        ) from exc
    try:
        ok = cuda.is_available()
    except Exception:  # pragma: no cover - driver errors
        ok = False
    if not ok:
        raise BackendUnavailableError(
            'the "numba_cuda" backend found no CUDA GPU (numba.cuda.is_available() is False: '
            'no NVIDIA driver or device); use the "cpu" backend or run on a machine with a GPU'
        )
    _available = True


def _cuda():
    from numba import cuda

    return cuda


def _is_numba_device_array(obj) -> bool:
    return bool(getattr(obj, "__cuda_ndarray__", False))


def as_native(obj):
    """Zero-copy numba device array for ``obj`` (numba device arrays are returned as they are).

    Accepts any object exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA
    tensors, ...).  The producer's stream is synchronised only when it is not the stream
    this backend launches on.
    """
    if _is_numba_device_array(obj):
        return obj
    iface = getattr(obj, "__cuda_array_interface__", None)
    if iface is None:
        raise TypeError(
            'the "numba_cuda" backend takes CUDA device arrays (numba device arrays, CuPy '
            f"arrays, or objects with __cuda_array_interface__); got {type(obj).__name__}"
        )
    from ._launch import cai_stream_matches

    cuda = _cuda()
    sync = not cai_stream_matches(iface.get("stream"))
    if _gpu_count() > 1:  # wrap the memory in the context of the device that holds it
        ptr = iface["data"][0]
        dev = _pointer_device(ptr) if ptr else None
        if dev is not None and dev != _current_device():
            with cuda.gpus[dev]:
                return cuda.from_cuda_array_interface(iface, owner=obj, sync=sync)
    return cuda.from_cuda_array_interface(iface, owner=obj, sync=sync)


def ascontiguous(a):
    """``a`` if it is C-contiguous, else a C-contiguous copy made on ``a``'s device.

    The copy is a small strided-gather kernel, so non-contiguous and negative-stride views
    never go through the host.
    """
    if a.is_c_contiguous():
        return a
    from ._copy import contiguous_copy

    return contiguous_copy(a)


_n_gpus = None
_NULL_CONTEXT = contextlib.nullcontext()


def _gpu_count() -> int:
    """Number of visible GPUs (1 in the simulator), looked up once."""
    global _n_gpus
    if _n_gpus is None:
        from ._launch import SIMULATOR

        _n_gpus = 1 if SIMULATOR else len(_cuda().gpus)
    return _n_gpus


def _current_device() -> int:
    return _cuda().get_current_device().id


def _pointer_device(ptr: int):
    """Ordinal of the device holding ``ptr`` (None if the driver cannot tell)."""
    try:
        from numba.cuda.cudadrv import driver as drv

        binding = drv.binding
        attr = binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        res = drv.driver.cuPointerGetAttribute(attr, binding.CUdeviceptr(ptr))
        return int(res)
    except Exception:
        return None


def device_id(a) -> int:
    """Ordinal of the GPU that holds ``a`` (asks the driver only when there are several)."""
    if _gpu_count() <= 1:
        return 0
    if _is_numba_device_array(a):
        ptr = a.device_ctypes_pointer.value
    else:
        ptr = a.__cuda_array_interface__["data"][0]
    dev = _pointer_device(ptr) if ptr else None
    if dev is None:
        try:
            dev = a.gpu_data.context.device.id
        except Exception:
            dev = _current_device()
    return dev


def use_device(device_id):
    """Context manager making GPU ``device_id`` current for numba (and CuPy, if imported).

    With a single GPU there is nothing to switch, and no per-call cost.
    """
    if device_id is None or _gpu_count() <= 1:
        return _NULL_CONTEXT
    return _switch_device(device_id)


@contextlib.contextmanager
def _switch_device(device_id):
    with contextlib.ExitStack() as stack:
        cp = sys.modules.get("cupy")
        if cp is not None:
            stack.enter_context(cp.cuda.Device(device_id))
        stack.enter_context(_cuda().gpus[device_id])
        yield


def to_host(a):
    """Copy a device array to a ``numpy.ndarray`` (synchronous)."""
    import numpy as np

    if isinstance(a, np.ndarray):
        return a
    if not _is_numba_device_array(a):
        a = as_native(a)
    from ._launch import current_stream

    _, stream = current_stream()
    if not stream:
        return a.copy_to_host()
    host = a.copy_to_host(stream=stream)
    stream.synchronize()
    return host
