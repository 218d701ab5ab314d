"""Array plumbing for the host backends (``"cpu"`` and ``"reference"``): numpy arrays, no device."""

import contextlib

import numpy as np


def check_available():
    """Host backends need only numpy (and numba for ``"cpu"``), which are dependencies."""


def as_native(obj):
    """``obj`` as a numpy array in the machine's byte order: a copy only when it is not.

    numba types only native-order arrays, and data read from files (FITS images,
    ``np.dtype(">f4")`` buffers) is often big-endian; NumPy and SciPy accept it, so
    the host backends do too (the result has the native dtype).
    """
    a = np.asarray(obj)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def ascontiguous(a):
    return np.ascontiguousarray(a)


def device_id(a):
    return None


def use_device(device_id):
    return contextlib.nullcontext()


def to_host(a):
    return np.asarray(a)
