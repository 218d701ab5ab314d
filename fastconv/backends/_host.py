"""Array plumbing for the host backends (``"cpu"`` and ``"reference"``): numpy arrays, no device."""

import contextlib

import numpy as np


def check_available():
    """Host backends need only numpy (and numba for ``"cpu"``), which are dependencies."""


def as_native(obj):
    return np.asarray(obj)


def ascontiguous(a):
    return np.ascontiguousarray(a)


def device_id(a):
    return None


def use_device(device_id):
    return contextlib.nullcontext()


def to_host(a):
    return np.asarray(a)
