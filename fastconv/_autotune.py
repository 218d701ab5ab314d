"""``fastconv.set_autotune``: the GPU backends' per-shape kernel choice, switched on and off."""

from __future__ import annotations

import numpy as np


def set_autotune(enabled: bool) -> bool:
    """Choose the GPU backends' kernels per problem by timing them on the GPU.

    Like ``torch.backends.cudnn.benchmark = True``: with autotuning on, the first call of
    an op with a new problem (shapes, parameters, dtype, device) times each of the
    backend's kernel paths for that op on the current stream, and later calls of that
    problem run the fastest.  The ``"cupy"`` backend's paths are split-K, the phase-GEMM
    form of ``conv_transpose2d``, the vector register tiles, the one-kernel
    ``deform_conv2d`` and the RoI work layouts; the ``"numba_cuda"`` backend's are the
    direct, implicit-GEMM (two tile shapes) and tiled depthwise kernels, and roi_align's
    channels per thread.  Paths that would launch the same kernels for a problem are timed
    once, and a problem with only one is not timed at all.  Results are the same either way
    (every path is tested against the oracle); only speed differs.

    The first call of each problem is slower: it synchronises the stream, runs the op a
    few times per path, and may compile kernels the default paths do not use (seconds,
    once per machine thanks to CuPy's and numba's disk caches).  Problems whose shapes
    change from call to call are tuned again for each new shape, except the box count of
    ``roi_align`` and ``roi_pool``, which counts in powers of two.  While the stream
    captures a CUDA graph nothing is timed.  The CPU backend is not affected.

    Parameters
    ----------
    enabled : bool
        True to turn autotuning on, False (the default state) to turn it off.  Choices
        already made are kept across off/on.

    Returns
    -------
    bool
        The previous state, so a caller can restore it.

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.

    Examples
    --------
    >>> import fastconv
    >>> previous = fastconv.set_autotune(True)
    >>> fastconv.set_autotune(previous)
    True
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    from .backends import _tuning

    return _tuning.set_enabled(bool(enabled))
