"""Per-problem choice of the numba.cuda backend's kernels by timing them (set_autotune).

The launchers choose a kernel by fixed rules (:func:`._launch.choose_tiles`: the direct
kernel below ``gemm_min_channels`` output channels per group, the narrow GEMM tiles below
``gemm_wide_channels`` or when the wide tiles would give too few blocks; conv2d's tiled
depthwise kernel for one input channel per group).  The thresholds were set by reasoning,
not by timing on every GPU, so with autotuning on the first call of a problem also times the
other kernels that can compute it -- the arms of :data:`ARMS` -- and keeps the fastest, as
the cupy backend does (the logic is shared: :mod:`.._tuning`).

An arm names a kernel path: ``{"PATH": None}`` is the rules' own choice (always first),
``"direct"`` (one thread per output element), ``"narrow"``/``"wide"`` (the implicit GEMM
with ``settings.tiles_narrow`` / ``tiles_wide``), ``"narrow2"``/``"wide2"`` (the same tiles
compiled for two blocks per SM, float32 only: ptxas spills to fit 128 registers) and, for
conv2d, ``"depthwise"`` and ``"grouped"`` (several output channels of a group per thread). A
forced path that does not suit the problem (the tiled depthwise kernel for a conv with
several input channels per group, the grouped kernel for one input or one output channel per
group, a GEMM tile of which fewer than a third of the rows would hold output channels) falls
back to the rules' choice, so it plans alike and is not timed. roi_align's arms are the
channels per thread (``ROI_CPT``; None: ``settings.roi_channels_per_thread``). Each distinct
path is compiled on its first use (numba's disk cache keeps it), which adds seconds to the
first tuned call on a new machine.

This module imports ``numba.cuda`` only inside :func:`clock`'s functions.
"""

from __future__ import annotations

import sys
import threading

from .. import _tuning

_PATHS = [{"PATH": p} for p in (None, "direct", "narrow", "wide")]
#: op -> its arms, the rules' own choice first
ARMS = {
    "conv2d": _PATHS + [{"PATH": "depthwise"}, {"PATH": "grouped"}],
    # the GEMMs held to two blocks per SM (float32; conv2d's and the narrow transposed
    # GEMM's already are): ptxas spills to fit, so only timing can say which pays
    "conv_transpose2d": _PATHS + [{"PATH": "wide2"}],
    "deform_conv2d": _PATHS + [{"PATH": "narrow2"}, {"PATH": "wide2"}],
    "roi_align": [{"ROI_CPT": c} for c in (None, 1, 2, 8)],
}
#: timed runs of each arm after one untimed run (as the cupy backend's)
ROUNDS = 3
#: another arm replaces the rules' choice only when at least this much faster
MARGIN = 0.97

_choices: dict = {}  # (op, device, key) -> {"arm", "label", "ms", "skipped", "same_as"}
_lock = threading.Lock()


class _Clock:
    """numba's device, CuPy's graph-capture state (numba launches on CuPy's stream when CuPy
    is imported) and CUDA events on the launch stream."""

    @staticmethod
    def device() -> int:
        from . import _current_device, _gpu_count

        return 0 if _gpu_count() <= 1 else _current_device()

    @staticmethod
    def capturing() -> bool:
        if "cupy" not in sys.modules:
            return False  # numba captures no graphs itself
        from ..cupy import _module

        return _module.capturing()

    @staticmethod
    def time_ms(fn) -> float:
        from numba import cuda

        from ._launch import current_stream

        _, stream = current_stream()
        start, stop = cuda.event(), cuda.event()
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        return start.elapsed_time(stop)


def clock():
    """The tuner's clock (see :mod:`.._tuning`)."""
    return _Clock


def choices() -> list[dict]:
    """What has been tuned so far, as ``fastconv.backends.cupy.autotune.choices``."""
    return _tuning.choices(_self)


def clear() -> None:
    """Forget every choice (the next call of each problem is tuned again)."""
    _tuning.clear(_self)


def _arms(op: str) -> list[dict]:
    return ARMS[op]


def run(op: str, key, plan, launch, stream_key, stream) -> None:
    """Launch one call of ``op`` on ``stream``: ``plan(arm)`` gives ``(kernel, grid, block,
    shared, args)`` for an arm (None: the rules' choice); ``launch`` is
    :func:`._launch.launch`.

    Untuned, this is one ``plan(None)`` and its launch.  Tuned, ``key()`` (called only
    then) identifies the problem, and the plans' ``(kernel, grid, block, shared)`` are the
    signatures by which arms that launch alike are timed once.
    """
    if not _tuning.enabled():
        kernel, grid, block, shared, args = plan(None)
        launch(kernel, grid, block, stream_key, stream, *args, shared=shared)
        return

    def launch_arm(arm):
        kernel, grid, block, shared, args = plan(arm)
        launch(kernel, grid, block, stream_key, stream, *args, shared=shared)

    _tuning.run(_self, op, key(), launch_arm, lambda arm: plan(arm)[:4])


_self = sys.modules[__name__]
