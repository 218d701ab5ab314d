"""The ``"cpu"`` backend: ``numba.njit(parallel=True, cache=True)`` kernels on numpy arrays."""

from .._host import as_native, ascontiguous, check_available, device_id, to_host, use_device
from .conv import conv2d, conv_transpose2d
from .deform import deform_conv2d
from .roi import roi_align, roi_pool

__all__ = [
    "conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool",
    "as_native", "ascontiguous", "check_available", "device_id", "to_host", "use_device",
]
