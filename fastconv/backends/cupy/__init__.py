"""The ``"cupy"`` backend: CUDA C kernels (``kernels/*.cu``) compiled by CuPy.

Arrays are ``cupy.ndarray`` (anything with ``__cuda_array_interface__`` is
wrapped zero-copy); float32, float64 and float16 (float16 accumulates in
float32).  Work runs on CuPy's current stream.  CuPy is imported lazily, inside
these functions, so importing this package costs nothing on a machine without
a GPU stack.
"""

from __future__ import annotations

from .conv import conv2d, conv_transpose2d
from .deform import deform_conv2d
from .roi import count_bad_boxes, roi_align, roi_pool

__all__ = ["conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool",
           "count_bad_boxes"]

_available = None  # None: not checked yet; True; or the message of the error to raise


def check_available() -> None:
    """Raise ``BackendUnavailableError`` unless CuPy imports and sees a CUDA device."""
    global _available
    if _available is True:
        return
    if _available is None:
        _available = _probe()
    if _available is not True:
        from ..._errors import BackendUnavailableError

        raise BackendUnavailableError(_available)


def _probe():
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return (
            f"the cupy backend needs CuPy, which cannot be imported ({exc}); "
            "pip install cupy-cuda13x"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError: no driver / no device
        return f"the cupy backend found no CUDA device ({exc})"
    if count < 1:
        return "the cupy backend found no CUDA device"
    return True


def as_native(obj):
    """A cupy array viewing ``obj`` (zero-copy for ``__cuda_array_interface__`` objects)."""
    import cupy

    return cupy.asarray(obj)


def ascontiguous(a):
    if a.flags.c_contiguous:  # the usual case: no call into CuPy's conversion
        return a
    import cupy

    return cupy.ascontiguousarray(a)


def device_id(a) -> int:
    return a.device.id


def use_device(device_id):
    import cupy

    return cupy.cuda.Device(device_id)


def stack_boxes(items, is_list, dtype):
    """RoI boxes in either torchvision format as a ``(K, 5)`` array, built on the device."""
    import cupy

    from ..._dispatch import stack_boxes as stack

    return stack(cupy, items, is_list, dtype)


def to_host(a):
    import cupy

    return cupy.asnumpy(a)
