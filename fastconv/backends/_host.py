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
    """``a`` when C-contiguous and writeable, else a C-contiguous copy.

    A read-only array (a memory map opened ``"r"``, ``np.frombuffer`` of ``bytes``) is
    copied too: numba types it as another array type and compiles every kernel again for
    it, once per combination of read-only arguments (5-9 s each on the development
    machine).  The kernels never write their inputs either way.
    """
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")


def device_id(a):
    return None


def use_device(device_id):
    return contextlib.nullcontext()


def to_host(a):
    return np.asarray(a)
