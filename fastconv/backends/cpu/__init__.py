"""The ``"cpu"`` backend: ``numba.njit(parallel=True, cache=True)`` kernels on numpy arrays."""

import contextlib
import threading

import numba

from .._host import as_native, ascontiguous, check_available, device_id, to_host
from .conv import conv2d, conv_transpose2d
from .deform import deform_conv2d
from .roi import count_bad_boxes, roi_align, roi_pool

#: numba's threading layers that several Python threads may enter at once
_THREADSAFE_LAYERS = frozenset({"tbb", "omp"})
_LAUNCH_LOCK = threading.RLock()
_UNLOCKED = contextlib.nullcontext()
_layer_is_threadsafe = None  # known after the first parallel launch


def use_device(device_id):
    """The context every op of this backend runs in (``Call.run``, the image toolkit).

    The kernels release the GIL (``nogil``), so Python threads can run them at the same
    time.  Numba's ``workqueue`` threading layer, its fallback where neither TBB nor an
    OpenMP runtime is found, aborts the whole process when two threads launch parallel
    kernels at once; under it, launches take turns on a lock.  Under ``tbb`` and ``omp``
    they run concurrently.  Until the first parallel launch has picked the layer, the
    lock is taken too.
    """
    global _layer_is_threadsafe
    if _layer_is_threadsafe is None:
        try:
            _layer_is_threadsafe = numba.threading_layer() in _THREADSAFE_LAYERS
        except ValueError:  # not chosen yet: the first parallel launch picks it
            return _LAUNCH_LOCK
    return _UNLOCKED if _layer_is_threadsafe else _LAUNCH_LOCK


__all__ = [
    "conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool", "count_bad_boxes",
    "as_native", "ascontiguous", "check_available", "device_id", "to_host", "use_device",
]
